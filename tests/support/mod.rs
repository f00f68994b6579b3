//! Test doubles shared by the service tests: a store that misbehaves on demand, and a
//! tracing layer that keeps every event.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod capture;
pub mod faulty_store;

/// A 200 response whose body is `value` as JSON.
pub fn text(value: &str) -> idem::Response {
    idem::Response::ok(idem::Body::json(value).expect("a string is JSON"))
}

/// The lease the service tests run with.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// The fingerprint of the service tests' calls.
pub const FP: idem::Fingerprint = idem::Fingerprint::from_bytes([1; 32]);

/// A service over `store` with the [`LEASE`].
pub fn service<S: idem::Store + Clone>(store: &S) -> idem::IdempotencyService {
    idem::IdempotencyService::builder(store.clone())
        .lock_timeout(LEASE)
        .build()
        .expect("valid settings")
}

/// The response of a replay; panics on any other outcome.
pub fn replayed(outcome: Result<idem::CheckOutcome, idem::Error>) -> idem::Response {
    match outcome {
        Ok(idem::CheckOutcome::Completed(record)) => match record.state {
            idem::RecordState::Completed { response, .. } => response,
            other => panic!("expected completed, got {other:?}"),
        },
        other => panic!("expected a replay, got {other:?}"),
    }
}
