//! Processes a log of webhook deliveries exactly once per delivery id.
//!
//! ```text
//! cargo run --example webhooks                       # the shipped sample, in memory
//! cargo run --example webhooks -- path/to/log.jsonl  # your own log
//! REDIS_URL=redis://127.0.0.1:7000/ cargo run --example webhooks   # records in Redis
//! ```
//!
//! Each line of the log is one delivery: `{"tick", "id", "event", "payload"}`. Providers
//! redeliver: the same id comes again, sometimes while the first delivery is still being
//! handled (same tick), sometimes after it finished (a later tick), and now and then with
//! an edited payload. The handler is `#[idempotent]`, keyed by delivery id, so its effect
//! (an entry in a ledger) happens once per id; redeliveries replay the first outcome and
//! edited ones are refused as mismatches.
//!
//! Prints a summary and exits with status 1 if any effect ran twice or a delivery failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{idempotent, Idempotency, IdempotencyService};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One delivery from the log.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    /// Deliveries of one tick arrive together.
    pub tick: u32,
    /// The delivery id.
    pub id: String,
    /// The event type.
    pub event: String,
    /// The payload.
    pub payload: Value,
}

/// What handling a delivery did, as stored and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The ledger entry's sequence number.
    pub entry: u64,
    /// A one-line description of the effect.
    pub effect: String,
}

/// Why a delivery was not handled.
#[derive(Debug)]
pub enum WebhookError {
    /// idem refused or failed the call.
    Idem(idem::Error),
}

impl From<idem::Error> for WebhookError {
    fn from(error: idem::Error) -> Self {
        WebhookError::Idem(error)
    }
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookError::Idem(error) => error.fmt(f),
        }
    }
}

/// The side effect: entries appended per delivery id.
#[derive(Default)]
pub struct Ledger {
    next: AtomicU64,
    entries: Mutex<HashMap<String, Vec<u64>>>,
}

impl Ledger {
    fn append(&self, delivery: &str) -> u64 {
        let entry = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(delivery.to_owned()).or_default().push(entry);
        entry
    }

    /// How many entries there are in all.
    pub fn entry_count(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().map(Vec::len).sum()
    }

    /// Delivery ids whose effect happened more than once.
    pub fn doubled(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut doubled: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.len() > 1)
            .map(|(id, _)| id.clone())
            .collect();
        doubled.sort();
        doubled
    }
}

/// The webhook handler.
pub struct Handler {
    service: Arc<dyn Idempotency>,
    /// Where effects are recorded.
    pub ledger: Ledger,
}

impl Handler {
    /// A handler whose records live in `service`.
    pub fn new(service: Arc<dyn Idempotency>) -> Handler {
        Handler {
            service,
            ledger: Ledger::default(),
        }
    }

    /// Applies one delivery. Runs once per delivery id; redeliveries get the first
    /// outcome back, and a redelivery with another event or payload is refused.
    #[idempotent(key = delivery_id, service = self.service, scope = "webhooks::handle")]
    pub async fn handle(
        &self,
        delivery_id: &str,
        event: &str,
        payload: &Value,
    ) -> Result<Applied, WebhookError> {
        let entry = self.ledger.append(delivery_id);
        // Real handlers talk to other systems; the pause lets concurrent redeliveries of
        // the same id overlap with this one.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(Applied {
            entry,
            effect: describe(event, payload),
        })
    }
}

fn describe(event: &str, payload: &Value) -> String {
    let repo = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .unwrap_or("an unnamed repository");
    match payload.get("action").and_then(Value::as_str) {
        Some(action) => format!("{event} {action} on {repo}"),
        None => format!("{event} on {repo}"),
    }
}

/// What processing a log did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines in the log.
    pub deliveries: usize,
    /// Handler bodies that ran (ledger entries).
    pub executed: usize,
    /// Deliveries answered with a stored outcome.
    pub replays: usize,
    /// Redeliveries refused because their payload differs from the first.
    pub mismatches: usize,
    /// Deliveries that failed for another reason.
    pub failures: usize,
    /// Delivery ids whose effect ran more than once.
    pub doubled: Vec<String>,
}

/// Reads a delivery log.
pub fn read_log(path: &Path) -> Result<Vec<Delivery>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|error| format!("{}:{}: {error}", path.display(), n + 1))
        })
        .collect()
}

/// Handles `deliveries` tick by tick, the deliveries of one tick concurrently.
pub async fn process(handler: &Handler, deliveries: &[Delivery]) -> Summary {
    let mut summary = Summary {
        deliveries: deliveries.len(),
        ..Summary::default()
    };
    let mut ok = 0;
    for tick in deliveries.chunk_by(|a, b| a.tick == b.tick) {
        let calls = tick
            .iter()
            .map(|d| handler.handle(&d.id, &d.event, &d.payload));
        for (delivery, outcome) in tick.iter().zip(futures::future::join_all(calls).await) {
            match outcome {
                Ok(_) => ok += 1,
                Err(WebhookError::Idem(idem::Error::FingerprintMismatch { .. })) => {
                    summary.mismatches += 1
                }
                Err(error) => {
                    eprintln!("delivery {} failed: {error}", delivery.id);
                    summary.failures += 1;
                }
            }
        }
    }
    summary.executed = handler.ledger.entry_count();
    summary.replays = ok - summary.executed.min(ok);
    summary.doubled = handler.ledger.doubled();
    summary
}

async fn service() -> Result<Arc<dyn Idempotency>, String> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        return Ok(Arc::new(IdempotencyService::in_memory()));
    };
    let store = idem::store::redis::RedisStore::connect(&url)
        .await
        .map_err(|error| format!("cannot connect to REDIS_URL: {error}"))?;
    // Records outlive the run in Redis: a prefix of its own keeps this run from replaying
    // the outcomes of the previous one.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let service = IdempotencyService::builder(store)
        .key_prefix(format!("idem-example:webhooks:{run}:"))
        .build()
        .map_err(|error| error.to_string())?;
    Ok(Arc::new(service))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let path = std::env::args().nth(1).map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/data/deliveries.jsonl"
            ))
        },
        PathBuf::from,
    );
    let deliveries = match read_log(&path) {
        Ok(deliveries) => deliveries,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(2);
        }
    };
    let service = match service().await {
        Ok(service) => service,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(2);
        }
    };
    let store = if std::env::var_os("REDIS_URL").is_some() {
        "redis"
    } else {
        "in-memory"
    };

    let handler = Handler::new(service);
    let summary = process(&handler, &deliveries).await;

    println!("log:             {}", path.display());
    println!("store:           {store}");
    println!("deliveries:      {}", summary.deliveries);
    println!("bodies executed: {}", summary.executed);
    println!("replays:         {}", summary.replays);
    println!("mismatches:      {}", summary.mismatches);
    println!("failures:        {}", summary.failures);
    println!("double effects:  {}", summary.doubled.len());
    if !summary.doubled.is_empty() {
        eprintln!(
            "effects ran more than once for: {}",
            summary.doubled.join(", ")
        );
    }
    if summary.doubled.is_empty() && summary.failures == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
