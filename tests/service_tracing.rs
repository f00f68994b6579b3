//! Tracing events at the decisions: they name the key and never carry the payload.

mod support;

use std::time::Duration;

use idem::{
    Body, CallOptions, CheckOutcome, Error, ErrorPolicy, Fingerprint, IdempotencyService, Key,
    Response,
};
use support::capture::{Capture, Event};
use support::faulty_store::{Fault, FaultyStore, Op};
use tracing::Level;

const LEASE: Duration = Duration::from_secs(1);
const FP: Fingerprint = Fingerprint::from_bytes([1; 32]);
const PAYLOAD: &str = "PAYLOAD-5f1c-card-4242";

fn payload() -> Response {
    Response::ok(Body::json(PAYLOAD).expect("json")).with_header("x-secret", PAYLOAD)
}

fn only(capture: &Capture, message: &str) -> Event {
    let found = capture.with_message(message);
    assert_eq!(
        found.len(),
        1,
        "events {message:?}: {:#?}",
        capture.events()
    );
    found.into_iter().next().expect("one event")
}

#[tokio::test(start_paused = true)]
async fn decision_events_name_the_key_and_never_the_payload() {
    let store = FaultyStore::new();
    let build = |policy| {
        IdempotencyService::builder(store.clone())
            .lock_timeout(LEASE)
            .error_policy(policy)
            .build()
            .expect("valid settings")
    };
    let (first, second) = (
        build(ErrorPolicy::FailClosed),
        build(ErrorPolicy::FailClosed),
    );
    let key = Key::scoped("payments", "order-9");
    let capture = Capture::default();
    let _guard = capture.install();

    // Acquired, then lost to a takeover.
    let CheckOutcome::Acquired(stale) = first
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };
    tokio::time::sleep(LEASE * 2 - Duration::from_millis(1)).await;
    let CheckOutcome::Acquired(owner) = second
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to take over");
    };
    let lost = first.complete(&stale, payload()).await;
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
    second.complete(&owner, payload()).await.expect("complete");
    // Replayed.
    let replay = first.check_and_lock(&key, &FP, &CallOptions::new()).await;
    assert!(
        matches!(replay, Ok(CheckOutcome::Completed(_))),
        "{replay:?}"
    );
    // A store error.
    store.inject(Op::Claim, Fault::Refuse, 3);
    let other_key = Key::scoped("payments", "order-10");
    let failed = first
        .check_and_lock(&other_key, &FP, &CallOptions::new())
        .await;
    assert!(matches!(failed, Err(Error::Store { .. })), "{failed:?}");

    let acquired = only(&capture, "lock acquired");
    let takeover = only(&capture, "took over a lapsed lease");
    let lease_lost = only(&capture, "lease lost");
    let replayed = only(&capture, "replay");
    let store_error = only(&capture, "store error");
    assert_eq!(acquired.level, Level::DEBUG);
    assert_eq!(takeover.level, Level::INFO);
    assert_eq!(lease_lost.level, Level::WARN);
    assert_eq!(replayed.level, Level::DEBUG);
    assert_eq!(store_error.level, Level::WARN);
    for event in [&acquired, &takeover, &lease_lost, &replayed] {
        assert_eq!(event.field("key"), Some("payments/order-9"), "{event:?}");
    }
    assert_eq!(store_error.field("key"), Some("payments/order-10"));
    assert_eq!(
        takeover.field("fence"),
        Some(owner.fence().to_string().as_str())
    );
    for event in capture.events() {
        assert!(!event.text().contains(PAYLOAD), "payload leaked: {event:?}");
        assert!(
            event.field("key").is_some(),
            "event without a key: {event:?}"
        );
    }
}
