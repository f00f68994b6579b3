//! `#[idempotent]` against the same call written by hand against the service, over the
//! in-memory store: a first call (claim, run, complete) and a replay.
//!
//! The hand-written side does what any careful caller must: fingerprint the arguments,
//! claim, run the body while renewing the lease, store the serialized result, and on a
//! replay decode the stored one. The two sides should cost the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use idem::fingerprint::Fingerprinter;
use idem::{
    idempotent, Body, CallOptions, CheckOutcome, Classify, Idempotency, IdempotencyService, Key,
    OnError, RecordState, Response,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: String,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChargeError {
    Declined,
    #[serde(skip)]
    Idem(idem::Error),
}

impl From<idem::Error> for ChargeError {
    fn from(error: idem::Error) -> Self {
        ChargeError::Idem(error)
    }
}

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChargeError::Declined => f.write_str("declined"),
            ChargeError::Idem(error) => write!(f, "{error}"),
        }
    }
}

impl Classify for ChargeError {
    fn on_error(&self) -> OnError {
        OnError::Release
    }
}

struct Shop {
    service: Arc<dyn Idempotency>,
}

impl Shop {
    #[idempotent(key = order, service = self.service)]
    async fn charge(&self, order: &str, amount_cents: u64) -> Result<Receipt, ChargeError> {
        Ok(Receipt {
            order: order.to_owned(),
            amount_cents,
        })
    }

    /// What `charge` does, written out against the service.
    async fn charge_by_hand(&self, order: &str, amount_cents: u64) -> Result<Receipt, ChargeError> {
        // The scope the attribute derives for a method: module path, fn name and type.
        let scope = format!(
            "{}::charge@{}",
            module_path!(),
            std::any::type_name::<Self>()
        );
        let key = Key::scoped(scope, order);
        let mut args = Fingerprinter::new();
        args.arg("order", order)
            .and_then(|a| a.arg("amount_cents", &amount_cents))
            .expect("a string and an integer always fingerprint");
        let fingerprint = args.finish();
        match self
            .service
            .check_and_lock(&key, &fingerprint, &CallOptions::new())
            .await?
        {
            CheckOutcome::Acquired(lease) => {
                let receipt = idem::keep_alive(&*self.service, &lease, async {
                    Receipt {
                        order: order.to_owned(),
                        amount_cents,
                    }
                })
                .await;
                let body = Body::json(&receipt).expect("a receipt serializes");
                self.service.complete(&lease, Response::ok(body)).await?;
                Ok(receipt)
            }
            CheckOutcome::Completed(record) => match record.state {
                RecordState::Completed { response, .. } => {
                    Ok(response.body.decode().expect("a stored receipt"))
                }
                _ => unreachable!("a completed outcome holds a completed record"),
            },
            other => panic!("unexpected outcome {other:?}"),
        }
    }
}

fn shop(ttl: Duration) -> Shop {
    let service = IdempotencyService::builder(idem::MemoryStore::new())
        .ttl(ttl)
        .build()
        .expect("valid settings");
    Shop {
        service: Arc::new(service),
    }
}

/// Short, so that the store holds few records and sweeps them often, a little at a time:
/// each sample then holds many sweeps, on both sides alike. With 1 s, sweeps were few and
/// long, and fell unevenly: the two sides' medians differed by up to 22%, their means by 2x.
const FRESH_TTL: Duration = Duration::from_millis(50);

fn bench_macro_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("macro_overhead");
    group
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let fresh = shop(FRESH_TTL);
    let counter = AtomicU64::new(0);
    group.bench_function("fresh/macro", |b| {
        b.to_async(&rt).iter(|| async {
            let order = format!("m-{}", counter.fetch_add(1, Ordering::Relaxed));
            fresh.charge(&order, 1999).await.expect("charged")
        })
    });
    group.bench_function("fresh/by_hand", |b| {
        b.to_async(&rt).iter(|| async {
            let order = format!("h-{}", counter.fetch_add(1, Ordering::Relaxed));
            fresh.charge_by_hand(&order, 1999).await.expect("charged")
        })
    });

    let replayed = shop(Duration::from_secs(3600));
    rt.block_on(async {
        replayed.charge("order-r", 1999).await.expect("charged");
    });
    group.bench_function("replay/macro", |b| {
        b.to_async(&rt)
            .iter(|| async { replayed.charge("order-r", 1999).await.expect("replayed") })
    });
    group.bench_function("replay/by_hand", |b| {
        b.to_async(&rt).iter(|| async {
            replayed
                .charge_by_hand("order-r", 1999)
                .await
                .expect("replayed")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_macro_overhead);
criterion_main!(benches);
