//! What a call costs in requests to Redis: a first call two (claim, complete), a replay
//! one, and callers that join an in-flight call in the same process none at all.
//!
//! Requests are counted with `MONITOR`, which shows every command a client sends and marks
//! the commands a script runs inside the server with `lua`; those are not requests, and
//! are left out. (`INFO commandstats` counts both kinds together.)

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use idem::store::redis::redis;
use idem::{CallOptions, Key};
use redis_calls::{call, fp, service, store, Call};
use redis_harness::RedisServer;

/// Records the requests clients send to one server, by command name, in order.
struct Requests {
    lines: std::pin::Pin<Box<dyn futures::Stream<Item = String> + Send>>,
    server_url: String,
}

impl Requests {
    async fn watch(server: &RedisServer) -> Requests {
        let client = redis::Client::open(server.url()).expect("the harness URL parses");
        let monitor = client
            .get_async_monitor()
            .await
            .expect("MONITOR on the harness server");
        Requests {
            lines: Box::pin(monitor.into_on_message::<String>()),
            server_url: server.url(),
        }
    }

    /// The requests seen since the last call, up to a marker sent now: every request
    /// answered before the marker went out was shown before it.
    async fn take(&mut self) -> Vec<String> {
        let marker = format!("round-trips-marker-{}", rand_suffix());
        let client = redis::Client::open(self.server_url.as_str()).expect("the URL parses");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("a control connection");
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .expect("ECHO");
        let mut seen = Vec::new();
        let read = async {
            while let Some(line) = self.lines.next().await {
                if line.contains(&marker) {
                    return;
                }
                if let Some(command) = top_level_command(&line) {
                    seen.push(command);
                }
            }
            panic!("the MONITOR stream ended before the marker");
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the marker shows up on MONITOR");
        // The control connection's own handshake (e.g. `CLIENT SETINFO`) is not the call's.
        seen.retain(|c| c != "client");
        seen
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The command of a `MONITOR` line a client sent (`1700000000.123456 [0 127.0.0.1:50000]
/// "evalsha" …`), or `None` for one a script ran (`[0 lua]`).
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

async fn warmed_up_service(server: &RedisServer) -> idem::IdempotencyService {
    let service = service(store(&server.url()).await, Duration::from_secs(5));
    // The first use of each script on a fresh server costs one more request (`NOSCRIPT`,
    // then `EVAL`); the counts below are for a server that has the scripts cached.
    let warm = Key::scoped("round-trips", "warm-up");
    call(&service, &warm, &fp(9), &CallOptions::new(), async {
        "warm".to_owned()
    })
    .await
    .expect("warm-up call");
    service
}

#[test]
fn monitor_lines_are_read_as_client_requests_or_script_commands() {
    let client = r#"1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" "abc" "1" "k""#;
    let script = r#"1700000000.123460 [0 lua] "HGETALL" "k""#;
    assert_eq!(top_level_command(client), Some("evalsha".to_owned()));
    assert_eq!(top_level_command(script), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_sends_exactly_two_requests_claim_and_complete() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let mut requests = Requests::watch(&server).await;

    let key = Key::scoped("round-trips", "order-1");
    let outcome = call(&service, &key, &fp(1), &CallOptions::new(), async {
        "receipt-1".to_owned()
    })
    .await
    .expect("first call");

    assert_eq!(outcome, Call::Ran("receipt-1".to_owned()));
    assert_eq!(requests.take().await, ["evalsha", "evalsha"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_exactly_one_request() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let key = Key::scoped("round-trips", "order-2");
    call(&service, &key, &fp(2), &CallOptions::new(), async {
        "receipt-2".to_owned()
    })
    .await
    .expect("first call");
    let mut requests = Requests::watch(&server).await;

    let outcome = call(&service, &key, &fp(2), &CallOptions::new(), async {
        unreachable!("a completed key is replayed, not run")
    })
    .await
    .expect("replay");

    assert_eq!(outcome, Call::Replayed("receipt-2".to_owned()));
    assert_eq!(requests.take().await, ["evalsha"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_joiners_send_no_request_while_they_wait() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let key = Key::scoped("round-trips", "order-3");
    let runs = Arc::new(AtomicU32::new(0));
    server.reset_stats();
    let mut requests = Requests::watch(&server).await;

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (service, key, runs) = (service.clone(), key.clone(), Arc::clone(&runs));
        callers.spawn(async move {
            call(&service, &key, &fp(3), &CallOptions::new(), async {
                runs.fetch_add(1, Ordering::SeqCst);
                // Long enough for every caller to have joined the flight before it ends.
                tokio::time::sleep(Duration::from_millis(500)).await;
                "receipt-3".to_owned()
            })
            .await
            .expect("call")
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = callers.join_next().await {
        outcomes.push(outcome.expect("caller task"));
    }

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let ran = outcomes
        .iter()
        .filter(|o| matches!(o, Call::Ran(_)))
        .count();
    assert_eq!(ran, 1);
    assert!(outcomes.iter().all(|o| o.value() == "receipt-3"));
    assert_eq!(requests.take().await, ["evalsha", "evalsha"]);
    let stats = server.command_calls();
    assert_eq!(stats.get("evalsha"), Some(&2), "commandstats: {stats:?}");
    assert_eq!(stats.get("eval"), None, "commandstats: {stats:?}");
}
