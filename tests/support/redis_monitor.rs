//! Counting the requests clients send to a test server with `MONITOR`, which shows every
//! command a client sends and marks the commands a script runs inside the server with
//! `lua`; those are not requests, and are left out. (`INFO commandstats` counts both kinds
//! together.)

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use idem::store::redis::redis;

use super::redis_harness::RedisServer;

/// Records the requests clients send to one server, by command name, in order.
pub struct Requests {
    lines: std::pin::Pin<Box<dyn futures::Stream<Item = String> + Send>>,
    server_url: String,
}

impl Requests {
    pub async fn watch(server: &RedisServer) -> Requests {
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

    /// The command names of the requests seen since the last call, up to a marker sent
    /// now: every request answered before the marker went out was shown before it.
    pub async fn take(&mut self) -> Vec<String> {
        let requests = self.take_requests().await;
        requests
            .into_iter()
            .map(|mut words| words.remove(0))
            .collect()
    }

    /// As [`take`](Requests::take), with each request's command name (lowercase) followed
    /// by its first argument (the script digest of an `EVALSHA`, the key of a `SET`).
    pub async fn take_requests(&mut self) -> Vec<Vec<String>> {
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
                    seen.push(vec![command, first_argument(&line).unwrap_or_default()]);
                }
            }
            panic!("the MONITOR stream ended before the marker");
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the marker shows up on MONITOR");
        // The control connection's own handshake (e.g. `CLIENT SETINFO`) is not the call's.
        seen.retain(|c| c[0] != "client");
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
pub fn top_level_command(line: &str) -> Option<String> {
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

/// The first argument of a `MONITOR` line's command.
fn first_argument(line: &str) -> Option<String> {
    let rest = &line[line.find(']')? + 1..];
    let mut quoted = rest.split('"').skip(1).step_by(2);
    quoted.next()?;
    quoted.next().map(str::to_owned)
}

#[test]
fn monitor_lines_are_read_as_client_requests_or_script_commands() {
    let client = r#"1700000000.123456 [0 127.0.0.1:50000] "EVALSHA" "abc" "1" "k""#;
    let script = r#"1700000000.123460 [0 lua] "GET" "k""#;
    assert_eq!(top_level_command(client), Some("evalsha".to_owned()));
    assert_eq!(top_level_command(script), None);
    assert_eq!(first_argument(client), Some("abc".to_owned()));
}
