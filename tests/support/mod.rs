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
