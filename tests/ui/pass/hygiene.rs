//! Arguments named like the generated code's locals, and a `String` key the body uses
//! after the key was taken from it.
use idem::{idempotent, IdempotencyService};

#[idempotent(key = key, service = service, skip(service))]
#[allow(clippy::too_many_arguments)]
pub async fn f(
    key: String,
    result: u32,
    service: &IdempotencyService,
    fp: u8,
    token: String,
    guard: bool,
    ttl: u64,
    call: i32,
) -> Result<String, idem::Error> {
    let _ = service;
    Ok(format!("{key}{result}{fp}{token}{guard}{ttl}{call}"))
}

#[idempotent(key = id)]
pub async fn key_used_afterwards(id: String) -> Result<String, idem::Error> {
    let moved: String = id;
    Ok(moved)
}

fn main() {}
