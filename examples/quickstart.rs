//! The smallest tour of idem: a retry replays, concurrent duplicates run once, and a key
//! reused with other arguments is refused.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use idem::{idempotent, IdempotencyService};
use serde::{Deserialize, Serialize};

/// How many times the payment provider was actually called.
static CHARGES: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order_id: String,
    amount_cents: u64,
    charge_number: u32,
}

/// Charges an order once, however often it is called with the same order id.
#[idempotent(key = order_id, ttl = 86400)]
async fn charge(order_id: &str, amount_cents: u64) -> Result<Receipt, idem::Error> {
    let charge_number = CHARGES.fetch_add(1, Ordering::SeqCst) + 1;
    // Stands for the call to the payment provider.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    Ok(Receipt {
        order_id: order_id.to_owned(),
        amount_cents,
        charge_number,
    })
}

#[tokio::main]
async fn main() -> Result<(), idem::Error> {
    // Once, at start-up. A Redis-backed service dedupes across processes too.
    idem::global::install(IdempotencyService::in_memory()).expect("installed once");

    let first = charge("order-1", 1999).await?;
    let retry = charge("order-1", 1999).await?;
    assert_eq!(first, retry);
    println!(
        "retry:      replayed charge #{} (charges so far: {})",
        retry.charge_number,
        CHARGES.load(Ordering::SeqCst)
    );

    let duplicates = futures::future::join_all((0..10).map(|_| charge("order-2", 500))).await;
    let numbers: Vec<u32> = duplicates
        .into_iter()
        .map(|r| r.map(|r| r.charge_number))
        .collect::<Result<_, _>>()?;
    assert!(numbers.iter().all(|n| *n == numbers[0]));
    println!(
        "concurrent: 10 calls, all got charge #{} (charges so far: {})",
        numbers[0],
        CHARGES.load(Ordering::SeqCst)
    );

    match charge("order-1", 2999).await {
        Err(idem::Error::FingerprintMismatch { key, .. }) => {
            println!("mismatch:   {key} reused with another amount was refused")
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(CHARGES.load(Ordering::SeqCst), 2);
    println!("charges:    {}", CHARGES.load(Ordering::SeqCst));
    Ok(())
}
