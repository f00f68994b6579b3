//! Every option together, with `Duration` expressions and the global service.
use std::time::Duration;

use idem::{idempotent, Classify, OnError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum ChargeError {
    Declined,
    ReceiptFailed,
    #[serde(skip)]
    Idem(idem::Error),
}

impl From<idem::Error> for ChargeError {
    fn from(error: idem::Error) -> Self {
        ChargeError::Idem(error)
    }
}

impl Classify for ChargeError {
    fn on_error(&self) -> OnError {
        match self {
            ChargeError::ReceiptFailed => OnError::Record,
            _ => OnError::Release,
        }
    }
}

const LEASE: Duration = Duration::from_secs(10);

#[idempotent(
    key = format!("charge:{order}"),
    scope = "payments::charge",
    ttl = 86400,
    lock_timeout = LEASE,
    wait_timeout = Duration::from_millis(1500),
    skip(note),
    on_error = "classify",
    validate_fingerprint = true,
)]
pub async fn charge(order: u64, amount: u64, note: &str) -> Result<u64, ChargeError> {
    let _ = note;
    Ok(order + amount)
}

#[idempotent(fingerprint = (order, amount / 100), on_error = "record", failure_ttl = 600)]
pub async fn fingerprint_of_a_value(order: u64, amount: u64) -> Result<u64, ChargeError> {
    Ok(order + amount)
}

/// A plain integer type suffix is still whole seconds.
#[idempotent(ttl = 86400u64, lock_timeout = 30u32, failure_ttl = Duration::from_secs(60), on_error = "record")]
pub async fn suffixed_seconds(order: u64) -> Result<u64, ChargeError> {
    Ok(order)
}

#[idempotent]
pub async fn no_options(order: u64) -> Result<Option<u64>, idem::Error> {
    Ok(Some(order))
}

fn main() {}
