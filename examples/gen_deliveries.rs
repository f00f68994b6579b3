//! Writes the sample webhook delivery log that `examples/webhooks.rs` reads by default.
//!
//! ```text
//! cargo run --example gen_deliveries            # rewrites examples/data/deliveries.jsonl
//! cargo run --example gen_deliveries -- out.jsonl
//! ```
//!
//! The payloads are synthetic, made by a seeded generator, so the file is the same on every
//! run. Deliveries are redelivered the way webhook providers do it: see [`schedule`].

use std::io::Write;

use serde::Serialize;
use serde_json::{json, Value};

/// One line of a delivery log.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Deliveries with the same tick arrive together; a tick starts when the previous one
    /// has been handled.
    pub tick: u32,
    /// The delivery id, repeated by redeliveries.
    pub id: String,
    /// The event type.
    pub event: String,
    /// The event's JSON payload.
    pub payload: Value,
}

/// How many new deliveries arrive per tick.
pub const PER_TICK: usize = 8;

/// Lays out `originals` (event type and payload) as a delivery log with redeliveries:
///
/// - original `i` arrives at tick `i / PER_TICK`, with id `delivery-<i>`;
/// - every 4th is redelivered in the same tick (a concurrent duplicate);
/// - every 5th is redelivered two ticks later (after the first has finished);
/// - every 23rd is redelivered three ticks later with an altered payload.
///
/// So a correct handler executes `originals.len()` bodies, replays one delivery for every
/// 4th and every 5th original, and refuses one mismatch for every 23rd.
pub fn schedule(originals: Vec<(String, Value)>) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, (event, payload)) in originals.into_iter().enumerate() {
        let tick = (i / PER_TICK) as u32;
        let line = Line {
            tick,
            id: format!("delivery-{i:04}"),
            event,
            payload,
        };
        if i.is_multiple_of(4) {
            lines.push(line.clone());
        }
        if i.is_multiple_of(5) {
            lines.push(Line {
                tick: tick + 2,
                ..line.clone()
            });
        }
        if i.is_multiple_of(23) {
            lines.push(Line {
                tick: tick + 3,
                payload: altered(&line.payload),
                ..line.clone()
            });
        }
        lines.push(line);
    }
    // A stable sort keeps each tick's arrivals in the order they were laid out.
    lines.sort_by_key(|line| line.tick);
    lines
}

/// The payload with one field added, as a provider that re-sent an edited event would.
fn altered(payload: &Value) -> Value {
    match payload {
        Value::Object(fields) => {
            let mut fields = fields.clone();
            fields.insert("redelivery_edited".into(), Value::Bool(true));
            Value::Object(fields)
        }
        other => json!({ "original": other, "redelivery_edited": true }),
    }
}

/// A small seeded generator (a 64-bit LCG), so the sample is the same everywhere.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit((self.next() % 16) as u32, 16).unwrap_or('0'))
            .collect()
    }
}

/// `count` synthetic payloads of a few common event types.
pub fn synthetic(count: usize) -> Vec<(String, Value)> {
    const REPOS: [&str; 4] = ["acme/api", "acme/web", "acme/billing", "example/tools"];
    const USERS: [&str; 5] = [
        "octo-dev",
        "build-bot",
        "alice-example",
        "bob-example",
        "ci",
    ];
    const EVENTS: [&str; 5] = ["push", "issues", "pull_request", "check_run", "star"];
    let mut rng = Seeded(0x1de0_5eed);
    (0..count)
        .map(|n| {
            let event = rng.pick(&EVENTS);
            let repository = json!({
                "id": 1000 + rng.next() % 9000,
                "full_name": rng.pick(&REPOS),
                "private": rng.next().is_multiple_of(3),
            });
            let sender = json!({ "login": rng.pick(&USERS), "id": rng.next() % 100_000 });
            let payload = match event {
                "push" => json!({
                    "ref": "refs/heads/main",
                    "before": rng.hex(40),
                    "after": rng.hex(40),
                    "commits": (0..1 + rng.next() % 3)
                        .map(|c| json!({ "id": rng.hex(40), "message": format!("change {n}.{c}") }))
                        .collect::<Vec<_>>(),
                    "repository": repository,
                    "sender": sender,
                }),
                "issues" | "pull_request" => json!({
                    "action": rng.pick(&["opened", "closed", "edited", "labeled"]),
                    "number": 1 + rng.next() % 500,
                    "title": format!("Synthetic item {n}"),
                    "labels": [],
                    "assignee": null,
                    "repository": repository,
                    "sender": sender,
                }),
                "check_run" => json!({
                    "action": "completed",
                    "check_run": {
                        "name": rng.pick(&["test", "lint", "build"]),
                        "conclusion": rng.pick(&["success", "failure", "neutral"]),
                        "head_sha": rng.hex(40),
                    },
                    "repository": repository,
                    "sender": sender,
                }),
                _ => json!({
                    "action": "created",
                    "starred_at": format!("2024-05-{:02}T10:00:00Z", 1 + n % 28),
                    "repository": repository,
                    "sender": sender,
                }),
            };
            (event.to_owned(), payload)
        })
        .collect()
}

/// Writes `lines` as JSON lines.
pub fn write_log(path: &std::path::Path, lines: &[Line]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/deliveries.jsonl"
        )
        .to_owned()
    });
    let lines = schedule(synthetic(60));
    write_log(path.as_ref(), &lines)?;
    println!("wrote {} deliveries to {path}", lines.len());
    Ok(())
}
