//! The webhook example over real GitHub payloads: a delivery log built from every payload
//! under `shared/data/github-webhook-payloads/`, with concurrent and later redeliveries and
//! a few edited ones, is handled with no effect running twice and exact replay and
//! mismatch counts.
//!
//! The payloads live beside the checkout, not in it. On CI (`CI` set) they must be there
//! and the test fails without them; elsewhere a missing directory is reported on stderr
//! and the test returns.

#[path = "../examples/gen_deliveries.rs"]
#[allow(dead_code)]
mod gen_deliveries;
#[path = "../examples/webhooks.rs"]
#[allow(dead_code)]
mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use idem::IdempotencyService;

/// Every payload file, sorted by path, with its folder's name as the event type; `None`
/// outside CI when the payloads are not beside the checkout.
fn real_payloads() -> Option<Vec<(String, serde_json::Value)>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/github-webhook-payloads");
    let root = located(&root, std::env::var_os("CI").is_some())?;
    let mut files = Vec::new();
    collect_json(root, &mut files);
    files.sort();
    let payloads = files
        .into_iter()
        .map(|file| {
            let event = file
                .parent()
                .and_then(Path::file_name)
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file).expect("a readable payload");
            let payload = serde_json::from_str(&text).expect("a JSON payload");
            (event, payload)
        })
        .collect();
    Some(payloads)
}

/// `root` if it is a directory. Otherwise a failure on CI, where the data must be present,
/// and elsewhere a note on stderr and `None`, so that a checkout without the data still
/// runs the rest of the suite.
fn located(root: &Path, on_ci: bool) -> Option<&Path> {
    if root.is_dir() {
        return Some(root);
    }
    assert!(
        !on_ci,
        "the real payloads are expected at {} on CI (a copy of shared/ beside the checkout)",
        root.display()
    );
    eprintln!(
        "note: skipping the real-payload test: {} is absent (it is required when `CI` is set)",
        root.display()
    );
    None
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| {
        panic!(
            "the real payloads are expected at {} (a copy of shared/ beside the checkout): {error}",
            dir.display()
        )
    });
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_json(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_payload_redeliveries_run_each_effect_once() {
    let Some(payloads) = real_payloads() else {
        return;
    };
    assert_eq!(
        payloads.len(),
        273,
        "the shared payload set changed; update the counts below"
    );
    let lines = gen_deliveries::schedule(payloads);
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("deliveries.jsonl");
    gen_deliveries::write_log(&log, &lines).expect("writing the log");

    let deliveries = webhooks::read_log(&log).expect("reading the log back");
    let handler = webhooks::Handler::new(Arc::new(IdempotencyService::in_memory()));
    let summary = webhooks::process(&handler, &deliveries).await;

    // 273 originals; 69 are redelivered concurrently (every 4th), 55 after they finished
    // (every 5th), and 12 with an edited payload (every 23rd).
    assert_eq!(
        summary,
        webhooks::Summary {
            deliveries: 409,
            executed: 273,
            replays: 124,
            mismatches: 12,
            failures: 0,
            doubled: Vec::new(),
        }
    );
}

#[tokio::test]
async fn the_shipped_sample_is_what_the_generator_writes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let fresh = dir.path().join("deliveries.jsonl");
    gen_deliveries::write_log(
        &fresh,
        &gen_deliveries::schedule(gen_deliveries::synthetic(60)),
    )
    .expect("writing the log");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/deliveries.jsonl");
    assert_eq!(
        std::fs::read_to_string(&shipped).expect("the shipped sample"),
        std::fs::read_to_string(&fresh).expect("the fresh log"),
        "regenerate with `cargo run --example gen_deliveries`"
    );

    let handler = webhooks::Handler::new(Arc::new(IdempotencyService::in_memory()));
    let deliveries = webhooks::read_log(&shipped).expect("reading the sample");
    let summary = webhooks::process(&handler, &deliveries).await;
    assert_eq!(
        (summary.executed, summary.replays, summary.mismatches),
        (60, 27, 3)
    );
    assert!(summary.doubled.is_empty());
}

#[test]
fn missing_payloads_are_skipped_outside_ci() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let absent = dir.path().join("github-webhook-payloads");
    assert_eq!(located(&absent, false), None);
    assert_eq!(located(dir.path(), false), Some(dir.path()));
}

#[test]
#[should_panic(expected = "the real payloads are expected at")]
fn missing_payloads_fail_on_ci() {
    let dir = tempfile::tempdir().expect("a temp dir");
    located(&dir.path().join("github-webhook-payloads"), true);
}
