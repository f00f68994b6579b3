//! Without an installed service, fns use an in-memory one and warn once that it does not
//! dedupe across processes; installing afterwards is refused. One test per binary: the
//! service is process-wide.

#[path = "support/capture.rs"]
#[allow(dead_code)]
mod capture;

use std::sync::atomic::{AtomicUsize, Ordering};

use idem::global::{self, InstallError};
use idem::{idempotent, IdempotencyService};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = order)]
async fn charge(order: &str, amount: u64) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(amount)
}

#[tokio::test(flavor = "current_thread")]
async fn without_an_installed_service_calls_dedupe_in_memory_and_warn_once() {
    let capture = capture::Capture::default();
    let _guard = capture.install();

    assert_eq!(charge("order-1", 30).await.unwrap(), 30);
    assert_eq!(charge("order-1", 30).await.unwrap(), 30);
    assert_eq!(charge("order-2", 40).await.unwrap(), 40);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);

    let warnings = capture.with_message("no idempotency service installed");
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].level, tracing::Level::WARN);

    assert_eq!(
        global::install(IdempotencyService::in_memory()),
        Err(InstallError::DefaultInUse)
    );
}
