//! Fns that name no `service` use the one the application installed at start-up. One test
//! per binary: the installed service is process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use idem::global::{self, InstallError};
use idem::{idempotent, Idempotency, IdempotencyService, Key};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = order, scope = "global::charge")]
async fn charge(order: &str, amount: u64) -> Result<u64, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(amount)
}

#[tokio::test]
async fn fns_without_a_service_use_the_installed_one() {
    let service = IdempotencyService::in_memory();
    global::install_shared(Arc::new(service.clone())).expect("the first install");
    assert_eq!(
        global::install(IdempotencyService::in_memory()),
        Err(InstallError::AlreadyInstalled)
    );

    assert_eq!(charge("order-1", 30).await.unwrap(), 30);
    assert_eq!(charge("order-1", 30).await.unwrap(), 30);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);

    let record = service
        .get(&Key::scoped("global::charge", "order-1"))
        .await
        .unwrap();
    assert!(
        record.is_some(),
        "the record is in the installed service's store"
    );
}
