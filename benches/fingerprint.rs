//! Fingerprinting cost: a small argument struct, and a large nested JSON document.
//!
//! The large payload is built here, deterministically, so the figure does not depend on
//! any file on the machine: about 100 KB of JSON text, objects nested three deep with
//! strings, integers, floats, booleans and arrays.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use idem::fingerprint::{fingerprint, Fingerprinter};
use serde::Serialize;
use serde_json::{json, Value};

/// A typical argument list of a payment-like call.
#[derive(Serialize)]
struct Charge {
    tenant: String,
    order: u64,
    amount_cents: i64,
    currency: &'static str,
    capture: bool,
}

fn small_args() -> Charge {
    Charge {
        tenant: "acme-eu".to_owned(),
        order: 4_200_042,
        amount_cents: 129_900,
        currency: "EUR",
        capture: true,
    }
}

/// A nested document of about `target` bytes of JSON text.
fn large_document(target: usize) -> Value {
    let mut customers = Vec::new();
    let mut size = 0;
    let mut i: u64 = 0;
    while size < target {
        let customer = json!({
            "id": format!("cus_{i:08}"),
            "name": format!("Customer number {i}"),
            "active": !i.is_multiple_of(3),
            "balance": (i as f64) * 12.25,
            "tags": ["retail", "priority", format!("region-{}", i % 7)],
            "address": {
                "line1": format!("{} Harbour Street", i * 7 % 997),
                "city": "Rotterdam",
                "geo": { "lat": 51.9225 + i as f64 / 1e4, "lon": 4.47917 },
            },
            "orders": (0..3).map(|n| json!({ "n": i * 10 + n, "total": n * 1999 })).collect::<Vec<_>>(),
        });
        size += customer.to_string().len() + 1;
        customers.push(customer);
        i += 1;
    }
    json!({ "batch": "import-2024-11", "customers": customers })
}

fn bench_fingerprint(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let small = small_args();
    group.bench_function("small_struct_5_fields", |b| {
        b.iter(|| fingerprint(black_box(&small)).expect("finite"))
    });
    group.bench_function("small_args_one_by_one", |b| {
        b.iter(|| {
            let small = black_box(&small);
            let mut args = Fingerprinter::new();
            args.arg("tenant", &small.tenant)
                .and_then(|a| a.arg("order", &small.order))
                .and_then(|a| a.arg("amount_cents", &small.amount_cents))
                .and_then(|a| a.arg("currency", small.currency))
                .and_then(|a| a.arg("capture", &small.capture))
                .expect("finite");
            args.finish()
        })
    });

    let large = large_document(100 * 1024);
    let bytes = large.to_string().len() as u64;
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("large_json_100kb", |b| {
        b.iter(|| fingerprint(black_box(&large)).expect("finite"))
    });
    // The same document serialized by serde_json, for scale: a fingerprint should cost
    // about what writing the arguments out once costs.
    group.bench_function("large_json_100kb_serde_json_to_vec", |b| {
        b.iter(|| serde_json::to_vec(black_box(&large)).expect("serializable"))
    });
    group.finish();
}

criterion_group!(benches, bench_fingerprint);
criterion_main!(benches);
