//! `crate = ".."` for a renamed or re-exported idem.
use idem::idempotent;

mod platform {
    pub use ::idem as idempotency;
}

#[idempotent(key = id, crate = "crate::platform::idempotency")]
pub async fn charge(id: String) -> Result<u64, platform::idempotency::Error> {
    Ok(id.len() as u64)
}

use idem as renamed;

#[idempotent(key = id, crate = "renamed")]
pub async fn refund(id: String) -> Result<u64, renamed::Error> {
    Ok(id.len() as u64)
}

fn main() {}
