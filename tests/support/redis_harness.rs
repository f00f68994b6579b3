//! Redis servers that a test starts and stops itself: one standalone `redis-server`, or a
//! three-primary Redis Cluster, each on free loopback ports with its own temporary
//! directory. Nothing here ever touches a server the harness did not start (and never
//! port 6379).
//!
//! The binaries come from the OS package (`redis-server`, `redis-tools`); `scripts/test.sh`
//! installs them when missing.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use idem::store::redis::redis;

/// How long a server may take to answer `PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a loopback port of its own.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        require_binaries();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_error = String::new();
        // Another process may take the port between the probe and the server's bind.
        for _ in 0..5 {
            let port = free_port(|_| true);
            let mut server = RedisServer {
                port,
                dir: temp_dir("standalone"),
                extra: extra.clone(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.display().to_string(),
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        self.wait_until_ready()
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    return Err(format!(
                        "redis-server on port {} exited with {status}: {log}",
                        self.port
                    ));
                }
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING",
                    self.port
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        self.connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (empty unless it persists).
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)),
                Err(error) => panic!("could not restart redis-server: {error}"),
            }
        }
    }

    /// Freezes (`true`, SIGSTOP) or thaws (`false`, SIGCONT) the server: a frozen server
    /// keeps its connections open and answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("the server runs");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Empties the server's script cache.
    pub fn script_flush(&self) {
        let reply: String = self.cmd(&["SCRIPT", "FLUSH"]);
        assert_eq!(reply, "OK");
    }

    /// Runs one command on this server and converts the reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self
            .connection()
            .unwrap_or_else(|| panic!("no connection to the harness server on {}", self.port));
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("{args:?} on port {} failed: {e}", self.port))
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }

    /// One field of the header line of the idem record under `key` (`redis-cli GET` shows
    /// `idem2 st=completed fp=… tok=…` first), or `None` when there is no record or no
    /// such field.
    pub fn record_field(&self, key: &str, name: &str) -> Option<String> {
        let value: Option<Vec<u8>> = self.cmd(&["GET", key]);
        let value = value?;
        let line = value.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let prefix = format!("{name}=");
        line.split(' ')
            .skip(1)
            .find_map(|word| word.strip_prefix(&prefix).map(str::to_owned))
    }

    /// Every key on this server.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, batch): (String, Vec<String>) =
                self.cmd(&["SCAN", &cursor, "COUNT", "1000"]);
            keys.extend(batch);
            if next == "0" {
                return keys;
            }
            cursor = next;
        }
    }

    /// Panics naming every key on this server that has no expiry (`PTTL` -1).
    pub fn assert_every_key_expires(&self) {
        let eternal: Vec<String> = self
            .keys()
            .into_iter()
            .filter(|k| self.cmd::<i64>(&["PTTL", k]) == -1)
            .collect();
        assert!(
            eternal.is_empty(),
            "keys without a TTL on port {}: {eternal:?}",
            self.port
        );
    }

    /// Zeroes `INFO commandstats`.
    pub fn reset_stats(&self) {
        let _: String = self.cmd(&["CONFIG", "RESETSTAT"]);
    }

    /// Calls per command since the last reset, from `INFO commandstats`
    /// (`evalsha` → 3). Commands run inside scripts are counted too.
    pub fn command_calls(&self) -> HashMap<String, u64> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        parse_commandstats(&info)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `cmdstat_<name>:calls=<n>,...` lines.
pub fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// A Redis Cluster of primaries only, each a [`RedisServer`] of the harness.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` cluster nodes, joins them with `redis-cli --cluster create` and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start(primaries: usize) -> RedisCluster {
        require_binaries();
        let mut nodes: Vec<RedisServer> = Vec::new();
        while nodes.len() < primaries {
            // The cluster bus listens on the port plus 10000, which must be free too.
            let port =
                free_port(|p| p <= 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok());
            let mut node = RedisServer {
                port,
                dir: temp_dir("cluster"),
                extra: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                child: None,
            };
            if node.spawn().is_ok() {
                nodes.push(node);
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// One cluster for every test of this test binary, started on first use. Statics are
    /// never dropped, so a watchdog process stops its servers and removes their directories
    /// once this process has exited, however it exits.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = RedisCluster::start(3);
            cluster.stop_when_process_exits();
            cluster
        })
    }

    fn stop_when_process_exits(&self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let dirs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.dir.display()))
            .collect();
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill -9 {pids} 2>/dev/null; rm -rf {dirs}",
            parent = std::process::id(),
            pids = pids.join(" "),
            dirs = dirs.join(" "),
        );
        // Never waited on by design: the watchdog must outlive this process.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cluster's watchdog");
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let expected_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ready = self.nodes.iter().all(|node| {
                let info: String = node.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&expected_nodes)
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Empties the script cache of every node.
    pub fn script_flush(&self) {
        self.nodes.iter().for_each(RedisServer::script_flush);
    }

    /// The slot of `key`, as the cluster computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key])
    }

    /// The port of the node that serves `slot`, from `CLUSTER SLOTS`.
    pub fn port_for_slot(&self, slot: u16) -> u16 {
        let ranges: Vec<(u16, u16, (String, u16))> = self.nodes[0]
            .cmd::<Vec<redis::Value>>(&["CLUSTER", "SLOTS"])
            .into_iter()
            .map(|range| {
                let redis::Value::Array(items) = range else {
                    panic!("CLUSTER SLOTS entry {range:?}");
                };
                let num = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n as u16,
                    other => panic!("CLUSTER SLOTS number {other:?}"),
                };
                let redis::Value::Array(node) = &items[2] else {
                    panic!("CLUSTER SLOTS node {:?}", items[2]);
                };
                (
                    num(&items[0]),
                    num(&items[1]),
                    (String::new(), num(&node[1])),
                )
            })
            .collect();
        ranges
            .into_iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, (_, port))| port)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// Panics naming every key without a TTL on any node.
    pub fn assert_every_key_expires(&self) {
        self.nodes
            .iter()
            .for_each(RedisServer::assert_every_key_expires);
    }

    /// Keys per node port.
    pub fn keys_per_node(&self) -> HashMap<u16, usize> {
        self.nodes
            .iter()
            .map(|n| (n.port, n.keys().len()))
            .collect()
    }
}

fn require_binaries() {
    for binary in ["redis-server", "redis-cli"] {
        let found = Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{binary}` is not installed; the Redis tests start their own servers from the OS \
             package: run scripts/test.sh, which installs redis-server and redis-tools"
        );
    }
}

/// A loopback port nobody listens on now (never 6379) that passes `also`.
fn free_port(also: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().expect("local address").port();
        drop(listener);
        if port != 6379 && also(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "idem-redis-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the server's temporary directory");
    dir
}
