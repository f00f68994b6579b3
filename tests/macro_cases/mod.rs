//! Behaviour of `#[idempotent]` fns, written once over any backend: each case takes a
//! [`Backend`] that builds services over one store. `macro_behaviour.rs` runs them on the
//! in-memory store, `macro_behaviour_redis.rs` on a Redis server the test starts.
//!
//! Every case uses keys of its own, so cases may share a store.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::{
    idempotent, Classify, Idempotency, IdempotencyService, Key, OnError, RecordStatus, Settings,
};
use serde::{Deserialize, Serialize};

/// Builds services over one store.
pub trait Backend {
    /// A service with `settings`, over the backend's store.
    fn service(&self, settings: Settings) -> IdempotencyService;
}

/// The error of the fns under test.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShopError {
    /// Refused before anything happened: safe to run again.
    Declined { reason: String },
    /// The payment was captured, then the receipt failed: never run again.
    ReceiptFailed { payment: u64 },
    /// A parse error raised with `?`.
    BadAmount(String),
    /// idem's own errors; never recorded.
    #[serde(skip)]
    Idem(idem::Error),
}

impl From<idem::Error> for ShopError {
    fn from(error: idem::Error) -> Self {
        ShopError::Idem(error)
    }
}

impl From<std::num::ParseIntError> for ShopError {
    fn from(error: std::num::ParseIntError) -> Self {
        ShopError::BadAmount(error.to_string())
    }
}

impl Classify for ShopError {
    fn on_error(&self) -> OnError {
        match self {
            ShopError::ReceiptFailed { .. } => OnError::Record,
            _ => OnError::Release,
        }
    }
}

/// A result whose `Serialize` implementation always fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Unserializable(pub u32);

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this type refuses to serialize"))
    }
}

/// Version 1 of a stored receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptV1 {
    pub amount: u32,
}

/// Version 2 changed the type of `amount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptV2 {
    pub amount: Money,
}

/// An amount with its currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Money {
    pub cents: u64,
    pub currency: String,
}

/// The fns under test, as methods so that the service and the run counter travel with
/// `self` (which is never fingerprinted).
pub struct Shop {
    pub service: Arc<dyn Idempotency>,
    pub runs: Arc<AtomicUsize>,
    /// Internal state that differs between two shops over one service.
    pub name: String,
}

impl Shop {
    pub fn new(service: IdempotencyService) -> Shop {
        Shop::over(Arc::new(service))
    }

    pub fn over(service: Arc<dyn Idempotency>) -> Shop {
        Shop {
            service,
            runs: Arc::new(AtomicUsize::new(0)),
            name: "main".to_owned(),
        }
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn ran(&self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn unit(&self, id: &str) -> Result<(), ShopError> {
        self.ran();
        Ok(())
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn none(&self, id: &str) -> Result<Option<u64>, ShopError> {
        self.ran();
        Ok(None)
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn empty_vec(&self, id: &str) -> Result<Vec<u64>, ShopError> {
        self.ran();
        Ok(Vec::new())
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn empty_string(&self, id: &str) -> Result<String, ShopError> {
        self.ran();
        Ok(String::new())
    }

    /// Fails with `error` while `failures` is above zero, then returns the run number.
    #[idempotent(key = id, service = self.service, skip(failures, error))]
    pub async fn release_on_error(
        &self,
        id: &str,
        failures: &AtomicUsize,
        error: fn() -> ShopError,
    ) -> Result<usize, ShopError> {
        self.ran();
        if failures.load(Ordering::SeqCst) > 0 {
            failures.fetch_sub(1, Ordering::SeqCst);
            return Err(error());
        }
        Ok(self.runs())
    }

    #[idempotent(key = id, service = self.service, on_error = "record", skip(fail))]
    pub async fn record_on_error(&self, id: &str, fail: bool) -> Result<usize, ShopError> {
        self.ran();
        if fail {
            return Err(ShopError::ReceiptFailed { payment: 7 });
        }
        Ok(self.runs())
    }

    /// Like `record_on_error`, with recorded errors kept for a minute.
    #[idempotent(
        key = id,
        service = self.service,
        on_error = "record",
        failure_ttl = 60,
        skip(fail)
    )]
    pub async fn record_for_a_minute(&self, id: &str, fail: bool) -> Result<usize, ShopError> {
        self.ran();
        if fail {
            return Err(ShopError::ReceiptFailed { payment: 8 });
        }
        Ok(self.runs())
    }

    #[idempotent(key = id, service = self.service, on_error = "classify", skip(error))]
    pub async fn classified(&self, id: &str, error: fn() -> ShopError) -> Result<usize, ShopError> {
        self.ran();
        Err(error())
    }

    #[idempotent(key = id, service = self.service, scope = "early::question_mark")]
    pub async fn question_mark(&self, id: &str, amount: &str) -> Result<u64, ShopError> {
        self.ran();
        let amount: u64 = amount.parse()?;
        Ok(amount)
    }

    #[idempotent(key = id, service = self.service, scope = "early::return_ok")]
    pub async fn return_ok_early(&self, id: &str, cached: Option<u64>) -> Result<u64, ShopError> {
        self.ran();
        if let Some(cached) = cached {
            return Ok(cached);
        }
        Ok(0)
    }

    #[idempotent(
        key = id,
        service = self.service,
        scope = "early::return_err",
        on_error = "record"
    )]
    pub async fn return_err_early(&self, id: &str, payment: u64) -> Result<u64, ShopError> {
        self.ran();
        if payment > 0 {
            return Err(ShopError::ReceiptFailed { payment });
        }
        Ok(payment)
    }

    #[idempotent(key = id, service = self.service, scope = "early::fall_off")]
    pub async fn falls_off_the_end(&self, id: &str) -> Result<(), ShopError> {
        self.ran();
        let _ = id.len();
        Ok(())
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn first_fn(&self, id: &str) -> Result<String, ShopError> {
        self.ran();
        Ok("first".to_owned())
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn second_fn(&self, id: &str) -> Result<String, ShopError> {
        self.ran();
        Ok("second".to_owned())
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn slow(&self, id: &str, pause: Duration) -> Result<u64, ShopError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        tokio::time::sleep(pause).await;
        Ok(run * 1000 + id.len() as u64)
    }

    /// Calls itself with the same key, then with another; answers what the two inner
    /// calls returned.
    #[idempotent(key = id, service = self.service, skip(depth))]
    pub async fn reenter(&self, id: &str, depth: u32) -> Result<(bool, bool), ShopError> {
        self.ran();
        if depth > 0 {
            return Ok((false, false));
        }
        let same = Box::pin(self.reenter(id, 1)).await;
        let other = Box::pin(self.reenter("another-key", 1)).await;
        let same_refused = matches!(same, Err(ShopError::Idem(idem::Error::Reentrant { .. })));
        Ok((same_refused, other.is_ok()))
    }

    #[idempotent(key = id, service = self.service, skip(size))]
    pub async fn sized(&self, id: &str, size: usize) -> Result<String, ShopError> {
        self.ran();
        Ok("x".repeat(size))
    }

    #[idempotent(key = id, service = self.service)]
    pub async fn unserializable(&self, id: &str) -> Result<Unserializable, ShopError> {
        self.ran();
        Ok(Unserializable(7))
    }

    #[idempotent(key = id, service = self.service, scope = "receipts")]
    pub async fn receipt_v1(&self, id: &str) -> Result<ReceiptV1, ShopError> {
        self.ran();
        Ok(ReceiptV1 { amount: 5 })
    }

    #[idempotent(key = id, service = self.service, scope = "receipts")]
    pub async fn receipt_v2(&self, id: &str) -> Result<ReceiptV2, ShopError> {
        self.ran();
        Ok(ReceiptV2 {
            amount: Money {
                cents: 500,
                currency: "EUR".to_owned(),
            },
        })
    }

    #[idempotent(key = id, service = self.service, lock_timeout = lease, scope = "hangs")]
    pub async fn hangs(&self, id: &str, lease: Duration) -> Result<u64, ShopError> {
        self.ran();
        std::future::pending::<()>().await;
        Ok(0)
    }

    /// Same scope, key and fingerprint as `hangs`, but returns at once.
    #[idempotent(key = id, service = self.service, lock_timeout = lease, scope = "hangs")]
    pub async fn quick(&self, id: &str, lease: Duration) -> Result<u64, ShopError> {
        self.ran();
        Ok(self.runs() as u64)
    }

    #[idempotent(key = order, service = self.service)]
    pub async fn charge(&self, order: &str, amount: u64) -> Result<u64, ShopError> {
        self.ran();
        Ok(amount)
    }

    #[idempotent(service = self.service, scope = "derived")]
    pub async fn derived_key(&self, order: &str, amount: u64) -> Result<u64, ShopError> {
        self.ran();
        Ok(amount)
    }

    #[idempotent(key = order, service = self.service, skip(note))]
    pub async fn with_note(&self, order: &str, note: &str) -> Result<usize, ShopError> {
        self.ran();
        Ok(note.len())
    }
}

/// One of two payment providers whose `charge` methods share a name and a module.
pub struct Stripe {
    pub service: Arc<dyn Idempotency>,
    pub runs: Arc<AtomicUsize>,
}

impl Stripe {
    #[idempotent(key = order, service = self.service)]
    pub async fn charge(&self, order: &str) -> Result<String, ShopError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("stripe:{order}"))
    }
}

/// The other provider.
pub struct Adyen {
    pub service: Arc<dyn Idempotency>,
    pub runs: Arc<AtomicUsize>,
}

impl Adyen {
    #[idempotent(key = order, service = self.service)]
    pub async fn charge(&self, order: &str) -> Result<String, ShopError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(format!("adyen:{order}"))
    }
}

/// The default scope of `charge` on `T`, as the attribute derives it for a method.
fn charge_scope<T>() -> String {
    format!("{}::charge@{}", module_path!(), std::any::type_name::<T>())
}

fn settings() -> Settings {
    Settings::default()
}

/// Waits (boundedly) until the record under `key` has `status`, and returns the last
/// status seen.
async fn status_soon(
    service: &dyn Idempotency,
    key: &Key,
    want: Option<RecordStatus>,
) -> Option<RecordStatus> {
    let mut seen = None;
    for _ in 0..200 {
        seen = service
            .get(key)
            .await
            .expect("reading a record")
            .map(|r| r.status());
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

/// B25: `()`, `None`, an empty `Vec` and an empty `String` replay as themselves.
pub async fn empty_ok_values_replay_without_running_again(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));

    shop.unit("unit-1").await.unwrap();
    shop.unit("unit-1").await.unwrap();
    assert_eq!(shop.runs(), 1);

    assert_eq!(shop.none("none-1").await.unwrap(), None);
    assert_eq!(shop.none("none-1").await.unwrap(), None);
    assert_eq!(shop.runs(), 2);

    assert_eq!(shop.empty_vec("vec-1").await.unwrap(), Vec::<u64>::new());
    assert_eq!(shop.empty_vec("vec-1").await.unwrap(), Vec::<u64>::new());
    assert_eq!(shop.runs(), 3);

    assert_eq!(shop.empty_string("string-1").await.unwrap(), "");
    assert_eq!(shop.empty_string("string-1").await.unwrap(), "");
    assert_eq!(shop.runs(), 4);
}

/// B28: by default an error frees the key, so the retry runs and succeeds.
pub async fn an_error_releases_the_key_by_default(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));
    let failures = AtomicUsize::new(1);
    let declined = || ShopError::Declined {
        reason: "database unavailable".into(),
    };

    let first = shop
        .release_on_error("release-1", &failures, declined)
        .await;
    assert!(matches!(first, Err(ShopError::Declined { .. })));
    let second = shop
        .release_on_error("release-1", &failures, declined)
        .await;
    assert_eq!(second.unwrap(), 2);
    assert_eq!(shop.runs(), 2);

    let third = shop
        .release_on_error("release-1", &failures, declined)
        .await;
    assert_eq!(third.unwrap(), 2, "the success is replayed");
    assert_eq!(shop.runs(), 2);
}

/// B29: with `on_error = "record"` the error is replayed as the same typed value.
pub async fn recorded_errors_replay_as_the_same_value(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));

    let first = shop.record_on_error("record-1", true).await;
    assert!(matches!(
        first,
        Err(ShopError::ReceiptFailed { payment: 7 })
    ));
    let second = shop.record_on_error("record-1", true).await;
    assert!(matches!(
        second,
        Err(ShopError::ReceiptFailed { payment: 7 })
    ));
    assert_eq!(shop.runs(), 1);
}

/// B28/B29: with `on_error = "classify"` each error value decides.
pub async fn classified_errors_release_or_record_by_variant(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));
    let before_commit = || ShopError::Declined {
        reason: "card declined".into(),
    };
    let after_commit = || ShopError::ReceiptFailed { payment: 42 };

    for _ in 0..2 {
        let result = shop.classified("classify-before", before_commit).await;
        assert!(matches!(result, Err(ShopError::Declined { .. })));
    }
    assert_eq!(shop.runs(), 2, "an error before the commit runs again");

    for _ in 0..2 {
        let result = shop.classified("classify-after", after_commit).await;
        assert!(matches!(
            result,
            Err(ShopError::ReceiptFailed { payment: 42 })
        ));
    }
    assert_eq!(shop.runs(), 3, "an error after the commit is replayed");
}

/// B54: `?`, early `return Ok`, early `return Err` and falling off the end all reach
/// completion; no record is left processing.
pub async fn early_exits_store_their_outcome(backend: &dyn Backend) {
    let service = backend.service(settings());
    let shop = Shop::new(service.clone());

    let parsed = shop.question_mark("early-1", "not a number").await;
    assert!(matches!(parsed, Err(ShopError::BadAmount(_))));
    let key = Key::scoped("early::question_mark", "early-1");
    assert_eq!(status_soon(&service, &key, None).await, None);

    assert_eq!(shop.return_ok_early("early-2", Some(9)).await.unwrap(), 9);
    let key = Key::scoped("early::return_ok", "early-2");
    let done = Some(RecordStatus::Completed);
    assert_eq!(status_soon(&service, &key, done).await, done);

    let failed = shop.return_err_early("early-3", 11).await;
    assert!(matches!(
        failed,
        Err(ShopError::ReceiptFailed { payment: 11 })
    ));
    let key = Key::scoped("early::return_err", "early-3");
    let recorded = Some(RecordStatus::Failed);
    assert_eq!(status_soon(&service, &key, recorded).await, recorded);

    shop.falls_off_the_end("early-4").await.unwrap();
    let key = Key::scoped("early::fall_off", "early-4");
    assert_eq!(status_soon(&service, &key, done).await, done);
    assert_eq!(shop.runs(), 4);
}

/// Two fns with the same key keep separate records under their default scopes.
pub async fn two_fns_with_one_key_do_not_share_a_record(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));

    assert_eq!(shop.first_fn("shared-key").await.unwrap(), "first");
    assert_eq!(shop.second_fn("shared-key").await.unwrap(), "second");
    assert_eq!(shop.first_fn("shared-key").await.unwrap(), "first");
    assert_eq!(shop.runs(), 2);
}

/// Two types in one module with a method of the same name keep separate records under
/// their default scopes, which name the type.
pub async fn methods_of_one_name_on_two_types_do_not_share_a_record(backend: &dyn Backend) {
    let service: Arc<dyn Idempotency> = Arc::new(backend.service(settings()));
    let runs = Arc::new(AtomicUsize::new(0));
    let stripe = Stripe {
        service: Arc::clone(&service),
        runs: Arc::clone(&runs),
    };
    let adyen = Adyen {
        service: Arc::clone(&service),
        runs: Arc::clone(&runs),
    };

    assert_eq!(stripe.charge("order-7").await.unwrap(), "stripe:order-7");
    assert_eq!(adyen.charge("order-7").await.unwrap(), "adyen:order-7");
    assert_eq!(stripe.charge("order-7").await.unwrap(), "stripe:order-7");
    assert_eq!(adyen.charge("order-7").await.unwrap(), "adyen:order-7");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each body ran once");

    let done = Some(RecordStatus::Completed);
    for scope in [charge_scope::<Stripe>(), charge_scope::<Adyen>()] {
        let key = Key::scoped(scope, "order-7");
        assert_eq!(status_soon(&*service, &key, done).await, done, "{key}");
    }
}

/// B01: 50 concurrent calls with one key run the body once and all get its result.
pub async fn fifty_concurrent_calls_run_the_body_once(backend: &dyn Backend) {
    let shop = Arc::new(Shop::new(backend.service(settings())));
    let barrier = Arc::new(tokio::sync::Barrier::new(50));

    let calls = (0..50).map(|_| {
        let shop = Arc::clone(&shop);
        let barrier = Arc::clone(&barrier);
        tokio::spawn(async move {
            barrier.wait().await;
            shop.slow("concurrent-1", Duration::from_millis(50)).await
        })
    });
    let results: Vec<u64> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.expect("no panic").expect("every call succeeds"))
        .collect();

    assert_eq!(shop.runs(), 1);
    assert_eq!(results, vec![1012; 50]);
}

/// A call with the same key from inside its own body is refused instead of waiting on
/// itself; another key from inside runs normally.
pub async fn a_call_from_inside_its_own_body_is_refused(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));

    let (same_refused, other_ran) = shop.reenter("reenter-1", 0).await.unwrap();
    assert!(same_refused);
    assert!(other_ran);
    assert_eq!(shop.runs(), 2, "the outer body and the other key's body");
}

/// B43: with a 1 KB cap, a 2 KB result reaches its caller and is never run again; a
/// result exactly at the cap is stored.
pub async fn an_oversized_result_reaches_its_caller_and_is_not_run_again(backend: &dyn Backend) {
    let service = backend.service(Settings {
        max_response_bytes: 1024,
        ..settings()
    });
    let shop = Shop::new(service);

    assert_eq!(shop.sized("big-1", 2048).await.unwrap().len(), 2048);
    let second = shop.sized("big-1", 2048).await;
    assert!(
        matches!(&second, Err(ShopError::Idem(idem::Error::NotReplayable { reason, .. })) if reason.contains("1024-byte cap")),
        "{second:?}"
    );
    assert_eq!(shop.runs(), 1);

    // The stored size of a JSON string is its text plus two quotes plus 16 bytes.
    let at_cap = 1024 - 16 - 2;
    assert_eq!(shop.sized("fits-1", at_cap).await.unwrap().len(), at_cap);
    assert_eq!(shop.sized("fits-1", at_cap).await.unwrap().len(), at_cap);
    assert_eq!(shop.runs(), 2);
}

/// B43: a result whose `Serialize` fails behaves like an oversized one.
pub async fn an_unserializable_result_reaches_its_caller_and_is_not_run_again(
    backend: &dyn Backend,
) {
    let shop = Shop::new(backend.service(settings()));

    assert_eq!(
        shop.unserializable("ser-1").await.unwrap(),
        Unserializable(7)
    );
    let second = shop.unserializable("ser-1").await;
    assert!(
        matches!(&second, Err(ShopError::Idem(idem::Error::NotReplayable { reason, .. })) if reason.contains("refuses to serialize")),
        "{second:?}"
    );
    assert_eq!(shop.runs(), 1);
}

/// B26: a stored result that no longer decodes is a typed error, never a second run.
pub async fn a_result_that_no_longer_decodes_is_an_error_not_a_rerun(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));

    assert_eq!(
        shop.receipt_v1("receipt-1").await.unwrap(),
        ReceiptV1 { amount: 5 }
    );
    let after_deploy = shop.receipt_v2("receipt-1").await;
    match after_deploy {
        Err(ShopError::Idem(idem::Error::ReplayDecode { key, type_name, .. })) => {
            assert_eq!(key, "receipts/receipt-1");
            assert!(type_name.ends_with("ReceiptV2"), "{type_name}");
        }
        other => panic!("expected ReplayDecode, got {other:?}"),
    }
    assert_eq!(shop.runs(), 1);
}

/// B08: a caller dropped mid-body leaves its claim to lapse; the next call is not wedged
/// and takes over once the lease ends.
pub async fn a_caller_dropped_mid_body_does_not_wedge_the_key(backend: &dyn Backend) {
    let shop = Shop::new(backend.service(settings()));
    let lease = Duration::from_millis(300);

    {
        let mut owner = Box::pin(shop.hangs("dropped-1", lease));
        assert!(futures::poll!(owner.as_mut()).is_pending());
        // Give the owner time to claim the key before it is dropped.
        let _ = tokio::time::timeout(Duration::from_millis(20), owner.as_mut()).await;
    }
    let retry = tokio::time::timeout(
        lease * 2 + Duration::from_secs(1),
        shop.quick("dropped-1", lease),
    )
    .await
    .expect("the retry returns within two leases");
    assert_eq!(retry.unwrap(), 2, "the retry took over and ran");
    assert_eq!(shop.runs(), 2);
}

/// B08: a caller that was already waiting when the owner was dropped returns too.
pub async fn a_waiter_returns_when_the_owner_is_dropped(backend: &dyn Backend) {
    let shop = Arc::new(Shop::new(backend.service(settings())));
    let lease = Duration::from_millis(300);

    let mut owner = Box::pin(shop.hangs("dropped-2", lease));
    let _ = tokio::time::timeout(Duration::from_millis(20), owner.as_mut()).await;
    let waiter = {
        let shop = Arc::clone(&shop);
        tokio::spawn(async move { shop.quick("dropped-2", lease).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(owner);

    let waited = tokio::time::timeout(lease * 2 + Duration::from_secs(1), waiter)
        .await
        .expect("the waiter returns within two leases")
        .expect("no panic");
    assert_eq!(waited.unwrap(), 2);
}

/// Fingerprint rules seen through the attribute: a key reused with other arguments is
/// refused; without `key`, identical arguments dedupe and others run; skipped arguments
/// and receivers do not count.
pub async fn fingerprints_follow_the_arguments(backend: &dyn Backend) {
    let service = Arc::new(backend.service(settings()));
    let shop = Shop::over(service.clone());

    assert_eq!(shop.charge("order-1", 100).await.unwrap(), 100);
    let reused = shop.charge("order-1", 999).await;
    assert!(matches!(
        reused,
        Err(ShopError::Idem(idem::Error::FingerprintMismatch { .. }))
    ));
    assert_eq!(shop.runs(), 1);

    assert_eq!(shop.derived_key("order-2", 5).await.unwrap(), 5);
    assert_eq!(shop.derived_key("order-2", 5).await.unwrap(), 5);
    assert_eq!(shop.derived_key("order-2", 6).await.unwrap(), 6);
    assert_eq!(shop.runs(), 3);

    assert_eq!(shop.with_note("order-3", "first note").await.unwrap(), 10);
    assert_eq!(
        shop.with_note("order-3", "a different note").await.unwrap(),
        10
    );
    assert_eq!(shop.runs(), 4);

    let other_shop = Shop {
        service: service.clone(),
        runs: Arc::clone(&shop.runs),
        name: "a shop with other state".to_owned(),
    };
    assert_ne!(other_shop.name, shop.name);
    assert_eq!(other_shop.charge("order-1", 100).await.unwrap(), 100);
    assert_eq!(
        shop.runs(),
        4,
        "the receiver is not part of the fingerprint"
    );
}

/// A service whose completions wait for a permit, to drop a caller after its body
/// returned but before its outcome was stored.
struct GatedCompletion {
    inner: IdempotencyService,
    gate: tokio::sync::Semaphore,
    body_done: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Idempotency for GatedCompletion {
    async fn check_and_lock(
        &self,
        key: &Key,
        fingerprint: &idem::Fingerprint,
        options: &idem::CallOptions,
    ) -> Result<idem::CheckOutcome, idem::Error> {
        self.inner.check_and_lock(key, fingerprint, options).await
    }

    async fn complete(
        &self,
        lease: &idem::Lease,
        response: idem::Response,
    ) -> Result<(), idem::Error> {
        self.body_done.notify_one();
        let _permit = self.gate.acquire().await.expect("the gate stays open");
        self.inner.complete(lease, response).await
    }

    async fn complete_not_replayable(
        &self,
        lease: &idem::Lease,
        reason: String,
    ) -> Result<(), idem::Error> {
        self.inner.complete_not_replayable(lease, reason).await
    }

    async fn fail(&self, lease: &idem::Lease, error: idem::Response) -> Result<(), idem::Error> {
        self.inner.fail(lease, error).await
    }

    async fn release(&self, lease: &idem::Lease) -> Result<(), idem::Error> {
        self.inner.release(lease).await
    }

    async fn renew(&self, lease: &idem::Lease) -> Result<(), idem::Error> {
        self.inner.renew(lease).await
    }

    async fn get(&self, key: &Key) -> Result<Option<idem::Record>, idem::Error> {
        self.inner.get(key).await
    }

    async fn delete(&self, key: &Key, force: bool) -> Result<idem::DeleteReply, idem::Error> {
        self.inner.delete(key, force).await
    }
}

/// B32: once the body has returned, dropping the caller does not stop its outcome from
/// being stored; a retry replays it.
pub async fn the_outcome_is_stored_when_the_caller_is_dropped_after_the_body(
    backend: &dyn Backend,
) {
    let inner = backend.service(settings());
    let gated = Arc::new(GatedCompletion {
        inner: inner.clone(),
        gate: tokio::sync::Semaphore::new(0),
        body_done: tokio::sync::Notify::new(),
    });
    let shop = Shop::over(gated.clone());

    {
        let caller = shop.charge("dropped-after-body", 250);
        tokio::pin!(caller);
        tokio::select! {
            _ = &mut caller => panic!("the completion is gated"),
            () = gated.body_done.notified() => {}
        }
    }
    assert_eq!(shop.runs(), 1);
    gated.gate.add_permits(1);

    let key = Key::scoped(charge_scope::<Shop>(), "dropped-after-body");
    let done = Some(RecordStatus::Completed);
    assert_eq!(status_soon(&inner, &key, done).await, done);
    gated.gate.add_permits(1);
    assert_eq!(shop.charge("dropped-after-body", 250).await.unwrap(), 250);
    assert_eq!(shop.runs(), 1);
}
