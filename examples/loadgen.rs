//! Load generator for idem over Redis, measured against a raw-client floor in the same run.
//!
//! ```text
//! redis-server --port 7777 --save '' --appendonly no &
//! cargo run --release --example loadgen -- --url redis://127.0.0.1:7777/ --out loadgen.json
//! ```
//!
//! It refuses to run without a URL (`--url` or `REDIS_URL`), and refuses port 6379 on a
//! loopback address: start a server of your own for it, since it writes many keys (all under
//! a per-run prefix, all with an expiry).
//!
//! # Scenarios
//!
//! - **fresh**: every call uses a new key: claim, run an empty body, complete. The floor
//!   does the least any lock-then-store scheme can: one script that claims the key
//!   (`SET NX PX` inside Lua, sent as `EVALSHA`) and one `SET` of the result.
//! - **replay**: every call hits a completed key. The floor is one `GET`.
//! - **contended**: 50 callers per key, split over several service instances (each with
//!   its own Redis connection, as separate processes would be); the body sleeps 20 ms.
//!   Reports how many times each body ran, and the time from the owner's completion (the
//!   moment its `complete` returned) to each other caller's return, for callers in the
//!   owner's instance (in-process joiners) and in the other instances (cross-process).
//! - **joiners**: one instance, 50 callers per key: counts the Redis requests per key, which
//!   is 2 (the owner's claim and completion) when in-process joiners send nothing.
//!
//! Each of fresh and replay runs at every `--concurrency` (callers in flight; default
//! `1,64`); contended runs that many keys at once. Every phase stops at `--calls` calls or
//! `--seconds` seconds, whichever comes first. The floor and idem phases of fresh and replay
//! each run `--rounds` times (default 3), alternating which goes first, and each row sums
//! them, so a slow spell of a noisy machine falls on both (`ratio_per_round` lists each
//! round's ratio).
//!
//! Every fresh phase starts on the same key space. Before the first, the run fills the
//! server until its key table has doubled with room for twice `--calls` more keys, and
//! waits while Redis moves the keys over; after each, it removes the keys the phase wrote,
//! and after the last, the fill. Otherwise the phase during which the table doubles pays
//! for rehashing every key: with the key space growing over the rounds, single rounds of
//! the same build measured from 0.3 to 1.0 of the floor, depending on which phase the
//! doubling landed on. The fill keys, like every key of a run, are under the run's prefix
//! and expire.
//!
//! # Figures
//!
//! - `calls_per_sec`, `p50_ms`, `p99_ms`: throughput and latency of whole calls.
//! - `ratio_to_floor`: idem's calls/s over the floor's at the same concurrency.
//! - `requests_per_call`: top-level requests the clients sent to Redis, counted with
//!   `MONITOR` over a short extra run of the same scenario at concurrency 1 (commands that
//!   scripts run inside Redis are not requests, and `MONITOR` marks them as `lua`). The
//!   throughput runs are not monitored, since `MONITOR` slows the server.
//! - `script_calls_per_call`, `commands_per_call`: from `INFO commandstats` deltas over the
//!   throughput run: `EVALSHA` + `EVAL` calls, and every command including those run inside
//!   scripts.
//! - `server_command_us_per_call`: microseconds the server spent executing the run's
//!   commands (`INFO commandstats` usec), per call; `server_cpu_us_per_call`: the server
//!   process's CPU time (`INFO cpu`, networking included) per call.
//! - `client_cpu_us_per_call`: this process's CPU time per call (Linux only), which the
//!   floor and idem share one runtime to measure. On a machine with few cores the client
//!   and the server compete for them, so both costs bound the throughput.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use idem::store::redis::redis::{self, aio::ConnectionManager, AsyncCommands};
use idem::store::redis::RedisStore;
use idem::{Body, CallOptions, CheckOutcome, IdempotencyService, Key, Response};
use serde_json::{json, Value};

/// Callers per key in the contended scenarios.
const CALLERS_PER_KEY: usize = 50;

/// How long a contended body runs.
const BODY: Duration = Duration::from_millis(20);

/// Calls in each `MONITOR`-counted run.
const COUNTED_CALLS: u64 = 200;

/// Keys in each `MONITOR`-counted contended run.
const COUNTED_KEYS: u64 = 4;

/// Completed keys the replay scenario cycles through.
const REPLAY_KEYS: u64 = 1000;

/// How long the records of a run live in Redis.
const RECORD_TTL: Duration = Duration::from_secs(600);

/// What the user asked for.
struct Args {
    url: String,
    calls: u64,
    seconds: f64,
    concurrency: Vec<usize>,
    instances: usize,
    rounds: usize,
    scenarios: Vec<String>,
    out: Option<String>,
}

const USAGE: &str = "usage: loadgen --url redis://127.0.0.1:PORT/ [--calls N] [--seconds S] \
[--concurrency 1,64] [--instances 2] [--rounds 3] [--scenarios fresh,replay,contended,joiners] [--out FILE.json]
The URL may also come from REDIS_URL. Start a server of your own, e.g.
    redis-server --port 7777 --save '' --appendonly no";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("REDIS_URL").unwrap_or_default(),
        calls: 20_000,
        seconds: 10.0,
        concurrency: vec![1, 64],
        instances: 2,
        rounds: 3,
        scenarios: ["fresh", "replay", "contended", "joiners"]
            .map(String::from)
            .to_vec(),
        out: None,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = iter
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag} {value:?}: expected {what}\n{USAGE}");
        match flag.as_str() {
            "--url" => args.url = value,
            "--calls" => args.calls = value.parse().map_err(|_| bad("a count"))?,
            "--seconds" => args.seconds = value.parse().map_err(|_| bad("seconds"))?,
            "--instances" => args.instances = value.parse().map_err(|_| bad("a count"))?,
            "--rounds" => args.rounds = value.parse().map_err(|_| bad("a count"))?,
            "--out" => args.out = Some(value),
            "--concurrency" => {
                args.concurrency = value
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad("a list like 1,64"))?
            }
            "--scenarios" => args.scenarios = value.split(',').map(String::from).collect(),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if args.url.is_empty() {
        return Err(format!(
            "no Redis URL: pass --url or set REDIS_URL\n{USAGE}"
        ));
    }
    if args.calls == 0 || args.seconds <= 0.0 || args.instances < 2 || args.rounds == 0 {
        return Err(format!(
            "--calls, --seconds and --rounds must be positive, --instances at least 2\n{USAGE}"
        ));
    }
    if args.concurrency.contains(&0) {
        return Err(format!("a concurrency of 0 runs nothing\n{USAGE}"));
    }
    Ok(args)
}

/// Refuses the conventional local server: it is someone else's, and a load run fills it.
fn check_target(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url:?}: {e}"))?;
    let (host, port) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => return Ok(()),
    };
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && port == 6379 {
        return Err(format!(
            "refusing {host}:6379: the default local Redis usually serves something else, and \
             this run writes thousands of keys to it. Start a server of your own:\n    \
             redis-server --port 7777 --save '' --appendonly no\nand pass --url redis://127.0.0.1:7777/"
        ));
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = check_target(&args.url) {
        eprintln!("{message}");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(errors) if errors > 0 => {
            eprintln!("{errors} calls failed; see the messages above");
            std::process::exit(1);
        }
        Ok(_) => {}
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(1);
        }
    }
}

/// Connections and services shared by the phases of one run.
struct Bench {
    args: Args,
    client: redis::Client,
    control: ConnectionManager,
    floor: ConnectionManager,
    /// One service per instance, each over its own store and connection.
    services: Vec<IdempotencyService>,
    run_id: String,
    claim_script: redis::Script,
}

/// The floor's claim: take the key if it is free, as `SET NX PX` would, but as a script,
/// since a real claim must also decide in the same step what to answer when it is taken.
const FLOOR_CLAIM: &str =
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end return 0";

/// The body every fresh and replay call stores.
const RESULT: &[u8] = br#"{"receipt":"r-000042","amount_cents":129900,"currency":"EUR"}"#;

async fn run(args: Args) -> Result<u64, String> {
    let client = redis::Client::open(args.url.as_str()).map_err(|e| e.to_string())?;
    let control = ConnectionManager::new(client.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.url))?;
    let floor = ConnectionManager::new(client.clone())
        .await
        .map_err(|e| e.to_string())?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run_id = format!("{:x}", nanos ^ u128::from(std::process::id()));
    let mut services = Vec::new();
    for _ in 0..args.instances {
        let store = RedisStore::connect(&args.url)
            .await
            .map_err(|e| format!("cannot open the store: {e}"))?;
        let service = IdempotencyService::builder(store)
            .key_prefix(format!("loadgen:{run_id}:"))
            .ttl(RECORD_TTL)
            .build()
            .map_err(|e| e.to_string())?;
        services.push(service);
    }
    let bench = Arc::new(Bench {
        args,
        client,
        control,
        floor,
        services,
        run_id,
        claim_script: redis::Script::new(FLOOR_CLAIM),
    });

    let mut rows = Vec::new();
    let wants = |name: &str| bench.args.scenarios.iter().any(|s| s == name);
    if wants("fresh") || wants("replay") {
        prepare_replay_keys(&bench).await?;
    }
    if wants("fresh") {
        prefill(&bench).await?;
    }
    for &concurrency in &bench.args.concurrency {
        if wants("fresh") {
            rows.extend(compared(&bench, Call::FloorFresh, Call::IdemFresh, concurrency).await?);
        }
        if wants("replay") {
            rows.extend(compared(&bench, Call::FloorReplay, Call::IdemReplay, concurrency).await?);
        }
        if wants("contended") {
            rows.push(contended(&bench, concurrency, bench.args.instances).await?);
        }
    }
    if wants("fresh") || wants("replay") {
        for call in [
            Call::FloorFresh,
            Call::IdemFresh,
            Call::FloorReplay,
            Call::IdemReplay,
        ] {
            let name = if matches!(call, Call::FloorFresh | Call::IdemFresh) {
                "fresh"
            } else {
                "replay"
            };
            if wants(name) {
                let counts = counted(&bench, |b| {
                    throughput_bounded(b, call, next_batch(), 1, COUNTED_CALLS)
                })
                .await?;
                attach_counts(&mut rows, call.label(), call.implementation(), counts);
            }
        }
    }
    if wants("fresh") {
        unlink(&bench, &fill_keys(&bench)).await?;
    }
    if wants("contended") {
        let instances = bench.args.instances;
        let counts = counted(&bench, |b| contended_bounded(b, 1, instances, COUNTED_KEYS)).await?;
        attach_counts(&mut rows, "contended", "idem", counts);
    }
    if wants("joiners") {
        let counts = counted(&bench, |b| contended_bounded(b, 1, 1, COUNTED_KEYS)).await?;
        rows.push(joiners_row(counts));
    }

    print_table(&rows);
    let errors = rows.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum();
    let report = json!({
        "redis_url": redact(&bench.args.url),
        "run_id": bench.run_id,
        "callers_per_key": CALLERS_PER_KEY,
        "body_ms": BODY.as_millis() as u64,
        "instances": bench.args.instances,
        "calls_limit": bench.args.calls,
        "seconds_limit": bench.args.seconds,
        "rows": rows,
    });
    if let Some(path) = &bench.args.out {
        let text = serde_json::to_string_pretty(&report).expect("a JSON value");
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
        println!("wrote {path}");
    }
    Ok(errors)
}

/// One kind of call in the throughput scenarios.
#[derive(Clone, Copy, Debug)]
enum Call {
    FloorFresh,
    IdemFresh,
    FloorReplay,
    IdemReplay,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::FloorFresh | Call::IdemFresh => "fresh",
            Call::FloorReplay | Call::IdemReplay => "replay",
        }
    }

    fn implementation(self) -> &'static str {
        match self {
            Call::FloorFresh | Call::FloorReplay => "floor",
            Call::IdemFresh | Call::IdemReplay => "idem",
        }
    }
}

fn replay_key(n: u64) -> Key {
    Key::scoped("loadgen", format!("replay-{}", n % REPLAY_KEYS))
}

fn fresh_key(phase: u64, n: u64) -> Key {
    Key::scoped("loadgen", format!("fresh-{phase}-{n}"))
}

fn floor_key(bench: &Bench, what: &str, n: u64) -> String {
    format!("loadgen:{}:floor:{what}-{n}", bench.run_id)
}

fn arguments(key: &Key) -> idem::Fingerprint {
    idem::fingerprint(&(key.id(), 129_900_u64, "EUR")).expect("finite arguments")
}

async fn prepare_replay_keys(bench: &Bench) -> Result<(), String> {
    let mut floor = bench.floor.clone();
    for n in 0..REPLAY_KEYS {
        let key = floor_key(bench, "replay", n);
        let () = floor
            .set_ex(&key, RESULT, RECORD_TTL.as_secs())
            .await
            .map_err(|e| format!("preparing {key}: {e}"))?;
        let key = replay_key(n);
        match bench.services[0]
            .check_and_lock(&key, &arguments(&key), &CallOptions::new())
            .await
        {
            Ok(CheckOutcome::Acquired(lease)) => bench.services[0]
                .complete(&lease, Response::ok(Body::Json(RESULT.into())))
                .await
                .map_err(|e| format!("preparing {key:?}: {e}"))?,
            Ok(CheckOutcome::Completed(_)) => {}
            other => return Err(format!("preparing {key:?}: unexpected {other:?}")),
        }
    }
    Ok(())
}

/// One call of `call`, numbered `n` within the phase numbered `phase`.
async fn one_call(bench: &Bench, call: Call, phase: u64, n: u64) -> Result<(), String> {
    match call {
        Call::FloorFresh => {
            let key = floor_key(bench, &format!("fresh-{phase}"), n);
            let mut conn = bench.floor.clone();
            let claimed: i64 = bench
                .claim_script
                .key(&key)
                .arg("owner-token-0123456789abcdef")
                .arg(30_000)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if claimed != 1 {
                return Err(format!("floor claim of a new key {key} answered {claimed}"));
            }
            conn.set_ex(&key, RESULT, RECORD_TTL.as_secs())
                .await
                .map_err(|e| e.to_string())
        }
        Call::IdemFresh => {
            let service = &bench.services[0];
            let key = fresh_key(phase, n);
            match service
                .check_and_lock(&key, &arguments(&key), &CallOptions::new())
                .await
            {
                Ok(CheckOutcome::Acquired(lease)) => {
                    let body = service
                        .keep_alive(&lease, async { Body::Json(RESULT.into()) })
                        .await;
                    service
                        .complete(&lease, Response::ok(body))
                        .await
                        .map_err(|e| e.to_string())
                }
                other => Err(format!("a new key answered {other:?}")),
            }
        }
        Call::FloorReplay => {
            let mut conn = bench.floor.clone();
            let body: Option<Vec<u8>> = conn
                .get(floor_key(bench, "replay", n % REPLAY_KEYS))
                .await
                .map_err(|e| e.to_string())?;
            match body {
                Some(_) => Ok(()),
                None => Err("a prepared floor key is missing".to_owned()),
            }
        }
        Call::IdemReplay => {
            let key = replay_key(n);
            match bench.services[0]
                .check_and_lock(&key, &arguments(&key), &CallOptions::new())
                .await
            {
                Ok(CheckOutcome::Completed(_)) => Ok(()),
                other => Err(format!("a completed key answered {other:?}")),
            }
        }
    }
}

/// The floor's and idem's rows for one scenario at `concurrency`: `--rounds` runs of each,
/// alternating, so that a slow spell of a noisy machine falls on both.
async fn compared(
    bench: &Arc<Bench>,
    floor: Call,
    idem: Call,
    concurrency: usize,
) -> Result<[Value; 2], String> {
    let (mut floors, mut idems) = (Vec::new(), Vec::new());
    // Each goes first every other round, so that a drift of the machine favours neither.
    for round in 0..bench.args.rounds {
        if round % 2 == 1 {
            idems.push(throughput(bench, idem, concurrency).await?);
        }
        floors.push(throughput(bench, floor, concurrency).await?);
        if round % 2 == 0 {
            idems.push(throughput(bench, idem, concurrency).await?);
        }
    }
    let per_round: Vec<f64> = floors
        .iter()
        .zip(&idems)
        .filter_map(|(f, i)| Some(i["calls_per_sec"].as_f64()? / f["calls_per_sec"].as_f64()?))
        .collect();
    let floor = merged(floors);
    let mut idem = with_ratio(merged(idems), &floor);
    idem["ratio_per_round"] = json!(per_round);
    Ok([idem, floor])
}

/// Rounds of one phase as one row: calls and time summed, per-call costs weighted by
/// calls, latency percentiles the median round's.
fn merged(rounds: Vec<Value>) -> Value {
    let number = |row: &Value, field: &str| row[field].as_f64().unwrap_or(0.0);
    let calls: f64 = rounds.iter().map(|r| number(r, "calls")).sum();
    let count = |field: &str| rounds.iter().filter_map(|r| r[field].as_u64()).sum::<u64>();
    let seconds: f64 = rounds.iter().map(|r| number(r, "seconds")).sum();
    let mut row = rounds.first().cloned().unwrap_or_default();
    row["rounds"] = json!(rounds.len());
    if rounds.len() < 2 {
        return row;
    }
    row["calls"] = json!(count("calls"));
    row["errors"] = json!(count("errors"));
    row["seconds"] = json!(seconds);
    row["calls_per_sec"] = json!(calls / seconds.max(f64::MIN_POSITIVE));
    for field in [
        "script_calls_per_call",
        "commands_per_call",
        "server_command_us_per_call",
        "server_cpu_us_per_call",
        "client_cpu_us_per_call",
    ] {
        let total: f64 = rounds
            .iter()
            .map(|r| number(r, field) * number(r, "calls"))
            .sum();
        row[field] = json!(total / calls.max(1.0));
    }
    for field in ["p50_ms", "p99_ms"] {
        let mut values: Vec<f64> = rounds.iter().map(|r| number(r, field)).collect();
        values.sort_by(f64::total_cmp);
        row[field] = json!(values[values.len() / 2]);
    }
    row
}

/// Runs `call` at `concurrency` until the call count or the time limit is reached.
async fn throughput(bench: &Arc<Bench>, call: Call, concurrency: usize) -> Result<Value, String> {
    let phase = next_batch();
    let calls = bench.args.calls;
    let row = measured(
        bench,
        throughput_bounded(bench, call, phase, concurrency, calls),
    )
    .await?;
    // A fresh phase's keys go, so that every phase starts on the same key space.
    let started = row["calls"].as_u64().unwrap_or(calls) + concurrency as u64;
    let keys: Vec<String> = match call {
        Call::FloorFresh => (0..started)
            .map(|n| floor_key(bench, &format!("fresh-{phase}"), n))
            .collect(),
        Call::IdemFresh => {
            let prefix = &bench.services[0].settings().key_prefix;
            (0..started)
                .map(|n| fresh_key(phase, n).store_key(prefix))
                .collect()
        }
        Call::FloorReplay | Call::IdemReplay => Vec::new(),
    };
    unlink(bench, &keys).await?;
    Ok(row)
}

/// Removes `keys`, a thousand at a time.
async fn unlink(bench: &Bench, keys: &[String]) -> Result<(), String> {
    let mut control = bench.control.clone();
    for chunk in keys.chunks(1000) {
        let () = control
            .unlink(chunk)
            .await
            .map_err(|e| format!("removing a run's keys: {e}"))?;
    }
    Ok(())
}

/// Fills the server with keys until its key table has doubled past what one phase adds, so
/// that no phase pays for the table's growth (rehashing every key, which Redis spreads over
/// the commands that follow): Redis doubles a table when it holds as many keys as slots,
/// and this leaves room for twice `--calls` more.
async fn prefill(bench: &Bench) -> Result<(), String> {
    let mut control = bench.control.clone();
    let ttl = RECORD_TTL.as_millis() as u64;
    for chunk in fill_keys(bench).chunks(1000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("SET").arg(key).arg(1).arg("PX").arg(ttl).ignore();
        }
        let () = pipe
            .query_async(&mut control)
            .await
            .map_err(|e| format!("filling the server: {e}"))?;
    }
    // The last key doubled the table; Redis moves the keys over in the background, a few
    // milliseconds in every hundred, which this leaves it time to finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// The keys [`prefill`] writes.
fn fill_keys(bench: &Bench) -> Vec<String> {
    let fill = (4 * bench.args.calls.max(1)).next_power_of_two() / 2 + 1;
    (0..fill)
        .map(|n| format!("loadgen:{}:fill:{n}", bench.run_id))
        .collect()
}

async fn throughput_bounded(
    bench: &Arc<Bench>,
    call: Call,
    phase: u64,
    concurrency: usize,
    calls: u64,
) -> Result<Value, String> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(bench.args.seconds);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (bench, next, errors) = (Arc::clone(bench), Arc::clone(&next), Arc::clone(&errors));
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls || Instant::now() >= deadline {
                    return latencies;
                }
                let start = Instant::now();
                if let Err(message) = one_call(&bench, call, phase, n).await {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!(
                            "{} {} call failed: {message}",
                            call.implementation(),
                            call.label()
                        );
                    }
                }
                latencies.push(start.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    let done = latencies.len() as u64;
    Ok(json!({
        "scenario": call.label(),
        "implementation": call.implementation(),
        "concurrency": concurrency,
        "calls": done,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "calls_per_sec": done as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile_ms(&mut latencies, 50.0),
        "p99_ms": percentile_ms(&mut latencies, 99.0),
    }))
}

/// What the callers of one contended key saw.
#[derive(Default)]
struct KeyRun {
    runs: AtomicU32,
    /// When the owner's `complete` returned, and in which instance it ran.
    completed: OnceLock<(Instant, usize)>,
    /// Each other caller's instance and the moment it returned.
    returns: Mutex<Vec<(usize, Instant)>>,
}

async fn contended(
    bench: &Arc<Bench>,
    concurrency: usize,
    instances: usize,
) -> Result<Value, String> {
    let keys = (bench.args.calls / CALLERS_PER_KEY as u64).clamp(1, 4 * concurrency as u64 + 16);
    let mut row = measured(
        bench,
        contended_bounded(bench, concurrency, instances, keys),
    )
    .await?;
    if let Some(keys) = row["keys"].as_u64().filter(|k| *k > 0) {
        row["script_calls_per_key"] =
            json!(row["script_calls_per_call"]
                .as_f64()
                .map(|c| c * row["calls"].as_f64().unwrap_or(0.0) / keys as f64));
    }
    Ok(row)
}

/// Runs `keys` contended keys, `concurrency` at a time, each with [`CALLERS_PER_KEY`]
/// callers spread over the first `instances` services.
async fn contended_bounded(
    bench: &Arc<Bench>,
    concurrency: usize,
    instances: usize,
    keys: u64,
) -> Result<Value, String> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(bench.args.seconds);
    let started = Instant::now();
    let batch = format!("{instances}-{concurrency}-{}", next_batch());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (bench, next, errors) = (Arc::clone(bench), Arc::clone(&next), Arc::clone(&errors));
        let batch = batch.clone();
        workers.spawn(async move {
            let mut runs = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys || Instant::now() >= deadline {
                    return runs;
                }
                let key = Key::scoped("loadgen", format!("contended-{batch}-{n}"));
                runs.push(one_key(&bench, key, instances, &errors).await);
            }
        });
    }
    let mut runs = Vec::new();
    while let Some(done) = workers.join_next().await {
        runs.extend(done.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();

    let mut same = Vec::new();
    let mut other = Vec::new();
    let mut latencies = Vec::new();
    let (mut min_runs, mut max_runs) = (u32::MAX, 0);
    for (run, callers) in &runs {
        let count = run.runs.load(Ordering::Relaxed);
        min_runs = min_runs.min(count);
        max_runs = max_runs.max(count);
        latencies.extend(callers.iter().copied());
        let Some(&(completed, owner)) = run.completed.get() else {
            continue;
        };
        for &(instance, returned) in run.returns.lock().expect("not poisoned").iter() {
            // In-process joiners are woken inside `complete`, before it returns to the owner.
            let wake = returned.saturating_duration_since(completed);
            if instance == owner {
                same.push(wake);
            } else {
                other.push(wake);
            }
        }
    }
    let calls = latencies.len() as u64;
    Ok(json!({
        "scenario": if instances == 1 { "joiners" } else { "contended" },
        "implementation": "idem",
        "concurrency": concurrency,
        "instances": instances,
        "keys": runs.len(),
        "calls": calls,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "calls_per_sec": calls as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile_ms(&mut latencies, 50.0),
        "p99_ms": percentile_ms(&mut latencies, 99.0),
        "body_runs_per_key_min": if runs.is_empty() { 0 } else { min_runs },
        "body_runs_per_key_max": max_runs,
        "wake_same_instance_p50_ms": percentile_ms(&mut same, 50.0),
        "wake_same_instance_p99_ms": percentile_ms(&mut same, 99.0),
        "wake_other_instance_p50_ms": percentile_ms(&mut other, 50.0),
        "wake_other_instance_p99_ms": percentile_ms(&mut other, 99.0),
        "waiters_same_instance": same.len(),
        "waiters_other_instance": other.len(),
    }))
}

fn next_batch() -> u64 {
    static BATCH: AtomicU64 = AtomicU64::new(0);
    BATCH.fetch_add(1, Ordering::Relaxed)
}

/// Starts [`CALLERS_PER_KEY`] callers on `key` at once, and waits for all of them.
async fn one_key(
    bench: &Arc<Bench>,
    key: Key,
    instances: usize,
    errors: &Arc<AtomicU64>,
) -> (Arc<KeyRun>, Vec<Duration>) {
    let run = Arc::new(KeyRun::default());
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS_PER_KEY {
        let instance = caller % instances;
        let service = bench.services[instance].clone();
        let (key, run, errors) = (key.clone(), Arc::clone(&run), Arc::clone(errors));
        callers.spawn(async move {
            let start = Instant::now();
            if let Err(message) = contended_call(&service, &key, &run, instance).await {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("contended call failed: {message}");
                }
            }
            start.elapsed()
        });
    }
    let mut latencies = Vec::with_capacity(CALLERS_PER_KEY);
    while let Some(done) = callers.join_next().await {
        if let Ok(latency) = done {
            latencies.push(latency);
        }
    }
    (run, latencies)
}

async fn contended_call(
    service: &IdempotencyService,
    key: &Key,
    run: &KeyRun,
    instance: usize,
) -> Result<(), String> {
    let outcome = service
        .check_and_lock(key, &arguments(key), &CallOptions::new())
        .await;
    match outcome {
        Ok(CheckOutcome::Acquired(lease)) => {
            service
                .keep_alive(&lease, async {
                    run.runs.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(BODY).await;
                })
                .await;
            let result = service
                .complete(&lease, Response::ok(Body::Json(RESULT.into())))
                .await;
            let _ = run.completed.set((Instant::now(), instance));
            result.map_err(|e| e.to_string())
        }
        Ok(CheckOutcome::Completed(_)) => {
            let returned = Instant::now();
            run.returns
                .lock()
                .expect("not poisoned")
                .push((instance, returned));
            Ok(())
        }
        Ok(other) => Err(format!("{key:?} answered {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// Top-level requests counted by `MONITOR` while `phase` ran.
struct Counts {
    row: Value,
    requests: BTreeMap<String, u64>,
}

/// Runs `phase` with a `MONITOR` connection open and counts the requests clients sent,
/// by command name; commands that scripts run inside Redis are left out.
async fn counted<'a, F, Fut>(bench: &'a Arc<Bench>, phase: F) -> Result<Counts, String>
where
    F: FnOnce(&'a Arc<Bench>) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let monitor = bench
        .client
        .get_async_monitor()
        .await
        .map_err(|e| format!("MONITOR: {e}"))?;
    let mut lines = monitor.into_on_message::<String>();
    let row = phase(bench).await?;

    // The marker goes out after every request of the phase has been answered, so once the
    // monitor shows it, it has shown all of them.
    let marker = format!("loadgen-end-{}-{}", bench.run_id, next_batch());
    let mut control = bench.control.clone();
    let _: String = redis::cmd("ECHO")
        .arg(&marker)
        .query_async(&mut control)
        .await
        .map_err(|e| e.to_string())?;
    let mut requests = BTreeMap::new();
    let read = async {
        while let Some(line) = lines.next().await {
            if line.contains(&marker) {
                return true;
            }
            if let Some(command) = top_level_command(&line) {
                *requests.entry(command).or_insert(0) += 1;
            }
        }
        false
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(true) => Ok(Counts { row, requests }),
        _ => Err("the MONITOR stream ended before the phase's last request".to_owned()),
    }
}

/// The command name of a `MONITOR` line sent by a client, `None` for one run by a script.
///
/// Lines look like `1700000000.123456 [0 127.0.0.1:50000] "evalsha" "…" …`; a command run
/// by a script shows `lua` in place of the client's address.
fn top_level_command(line: &str) -> Option<String> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let source = line[open + 1..close].split_whitespace().nth(1)?;
    if source == "lua" {
        return None;
    }
    let rest = &line[close + 1..];
    let start = rest.find('"')? + 1;
    let end = start + rest[start..].find('"')?;
    Some(rest[start..end].to_ascii_lowercase())
}

fn attach_counts(rows: &mut [Value], scenario: &str, implementation: &str, counts: Counts) {
    let calls = counts.row["calls"].as_f64().unwrap_or(0.0);
    let keys = counts.row["keys"].as_f64();
    let total: u64 = counts.requests.values().sum();
    for row in rows
        .iter_mut()
        .filter(|r| r["scenario"] == scenario && r["implementation"] == implementation)
    {
        row["requests_per_call"] = json!(total as f64 / calls.max(1.0));
        if let Some(keys) = keys {
            row["requests_per_key"] = json!(total as f64 / keys.max(1.0));
        }
        row["requests_by_command"] = json!(counts.requests);
        row["requests_counted_over_calls"] = json!(calls);
    }
}

fn joiners_row(counts: Counts) -> Value {
    let mut row = counts.row;
    let keys = row["keys"].as_f64().unwrap_or(0.0);
    let calls = row["calls"].as_f64().unwrap_or(0.0);
    let total: u64 = counts.requests.values().sum();
    row["requests_per_key"] = json!(total as f64 / keys.max(1.0));
    row["requests_per_call"] = json!(total as f64 / calls.max(1.0));
    row["requests_by_command"] = json!(counts.requests);
    // Two requests per key are the owner's claim and completion; the rest were joiners'.
    row["joiner_requests"] = json!(total.saturating_sub(2 * keys as u64));
    row
}

/// What the server reported at one moment: per command, its calls and the microseconds
/// spent in it; and the CPU time the server process used.
#[derive(Default)]
struct ServerStats {
    commands: BTreeMap<String, (u64, u64)>,
    cpu_seconds: f64,
}

async fn server_stats(bench: &Bench) -> Result<ServerStats, String> {
    let mut control = bench.control.clone();
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query_async(&mut control)
        .await
        .map_err(|e| format!("INFO commandstats cpu: {e}"))?;
    Ok(parse_server_stats(&text))
}

/// `cmdstat_evalsha:calls=12,usec=340,…` lines as a map from command name to calls and
/// microseconds, and `used_cpu_sys:` plus `used_cpu_user:` as the server's CPU seconds.
fn parse_server_stats(text: &str) -> ServerStats {
    let mut stats = ServerStats::default();
    for line in text.lines() {
        if let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        {
            let field = |want: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(want)?.parse::<u64>().ok())
            };
            if let (Some(calls), Some(usec)) = (field("calls="), field("usec=")) {
                stats.commands.insert(name.to_owned(), (calls, usec));
            }
        } else if let Some(value) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            stats.cpu_seconds += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    stats
}

/// Runs `phase` and adds to its row what it cost the server and this process per call.
async fn measured(
    bench: &Bench,
    phase: impl std::future::Future<Output = Result<Value, String>>,
) -> Result<Value, String> {
    let before = server_stats(bench).await?;
    let client_before = process_cpu_seconds();
    let mut row = phase.await?;
    let client_after = process_cpu_seconds();
    let after = server_stats(bench).await?;
    attach_server_stats(&mut row, &before, &after);
    if let (Some(before), Some(after)) = (client_before, client_after) {
        let calls = row["calls"].as_f64().unwrap_or(0.0).max(1.0);
        row["client_cpu_us_per_call"] = json!((after - before) * 1e6 / calls);
    }
    Ok(row)
}

fn attach_server_stats(row: &mut Value, before: &ServerStats, after: &ServerStats) {
    let delta = |name: &str| {
        let (c1, u1) = after.commands.get(name).copied().unwrap_or_default();
        let (c0, u0) = before.commands.get(name).copied().unwrap_or_default();
        (c1 - c0, u1 - u0)
    };
    // The control connection's own INFO is not the scenario's.
    let scenario = after.commands.keys().filter(|n| *n != "info");
    let (all, usec) = scenario
        .map(|n| delta(n))
        .fold((0, 0), |(c, u), (dc, du)| (c + dc, u + du));
    let scripts = delta("evalsha").0 + delta("eval").0;
    let calls = row["calls"].as_f64().unwrap_or(0.0).max(1.0);
    row["script_calls_per_call"] = json!(scripts as f64 / calls);
    row["commands_per_call"] = json!(all as f64 / calls);
    row["server_command_us_per_call"] = json!(usec as f64 / calls);
    row["server_cpu_us_per_call"] = json!((after.cpu_seconds - before.cpu_seconds) * 1e6 / calls);
}

/// CPU seconds this process has used (all threads), from `/proc/self/stat` on Linux;
/// `None` elsewhere. The kernel counts in ticks of 1/100 s, fine over phases of seconds.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / 100.0)
}

fn with_ratio(mut idem: Value, floor: &Value) -> Value {
    if let (Some(ours), Some(base)) = (
        idem["calls_per_sec"].as_f64(),
        floor["calls_per_sec"].as_f64(),
    ) {
        idem["ratio_to_floor"] = json!(ours / base);
    }
    idem
}

fn percentile_ms(samples: &mut [Duration], pct: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((pct / 100.0) * samples.len() as f64).ceil() as usize;
    let index = rank.clamp(1, samples.len()) - 1;
    Some(samples[index].as_secs_f64() * 1000.0)
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_and_secret, host)) => {
            let scheme = scheme_and_secret.split("://").next().unwrap_or("redis");
            format!("{scheme}://…@{host}")
        }
        None => url.to_owned(),
    }
}

fn print_table(rows: &[Value]) {
    let number = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".to_owned(),
    };
    println!(
        "{:<10} {:<6} {:>5} {:>7} {:>4} {:>10} {:>6} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>5}",
        "scenario",
        "impl",
        "conc",
        "calls",
        "err",
        "calls/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "srv us",
        "cli us",
        "req/call",
        "req/key",
        "wake p50",
        "wake p99",
        "runs"
    );
    for row in rows {
        let wake = |which: &str| {
            let other = number(&row[format!("wake_other_instance_{which}_ms")], 2);
            let same = number(&row[format!("wake_same_instance_{which}_ms")], 2);
            match row["scenario"].as_str() {
                Some("contended") => other,
                Some("joiners") => same,
                _ => "-".to_owned(),
            }
        };
        let runs = match (
            row["body_runs_per_key_min"].as_u64(),
            row["body_runs_per_key_max"].as_u64(),
        ) {
            (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
            (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<10} {:<6} {:>5} {:>7} {:>4} {:>10} {:>6} {:>8} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>5}",
            row["scenario"].as_str().unwrap_or("?"),
            row["implementation"].as_str().unwrap_or("?"),
            row["concurrency"],
            row["calls"],
            row["errors"],
            number(&row["calls_per_sec"], 0),
            number(&row["ratio_to_floor"], 2),
            number(&row["p50_ms"], 3),
            number(&row["p99_ms"], 3),
            number(&row["server_cpu_us_per_call"], 1),
            number(&row["client_cpu_us_per_call"], 1),
            number(&row["requests_per_call"], 2),
            number(&row["requests_per_key"], 1),
            wake("p50"),
            wake("p99"),
            runs,
        );
    }
    println!(
        "wake: contended rows show callers in other instances (cross-process); joiners rows \
         show callers in the owner's instance. req/call is counted with MONITOR over {COUNTED_CALLS} \
         calls ({COUNTED_KEYS} keys for contended and joiners) at concurrency 1. srv us and \
         cli us: CPU microseconds per call of the server and of this process."
    );
}
