//! A fn the attribute rejects is kept as written, with only the attribute's error: the
//! arguments used by the attribute alone (here in `key`) are not reported as unused.
use idem::idempotent;

#[idempotent(key = order, kee = 1)]
async fn charge(order: String, amount: u64) -> Result<u32, idem::Error> {
    Ok(7)
}

fn main() {}
