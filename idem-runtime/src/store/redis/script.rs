//! The Lua scripts, one per transition, and how they are invoked.
//!
//! Every script starts with the shared helpers of `record.lua` (the record format, the
//! server's clock), prepended at build time. Every call goes out as `EVALSHA`. A `NOSCRIPT` reply (the server restarted, failed over,
//! or someone ran `SCRIPT FLUSH`) is answered with `EVAL` of the source, which also caches
//! the script again, on the node that owns the key. Nothing is loaded at start-up: each
//! Redis Cluster node has its own script cache, and a start-up load would reach one node.

use redis::{Cmd, ErrorKind, ServerErrorKind, Value};

use super::connection::Connection;

/// A Lua script and its SHA-1 digest.
pub(crate) struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    fn new(source: &'static str) -> Script {
        Script {
            source,
            sha1: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    /// Runs the script on the node that owns `key`, with `args` as `ARGV`.
    pub async fn run(
        &self,
        connection: &Connection,
        key: &str,
        args: &[&[u8]],
    ) -> redis::RedisResult<Value> {
        match connection.query(self.command("EVALSHA", key, args)).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                connection.query(self.command("EVAL", key, args)).await
            }
            result => result,
        }
    }

    fn command(&self, name: &str, key: &str, args: &[&[u8]]) -> Cmd {
        let script: &str = match name {
            "EVAL" => self.source,
            _ => &self.sha1,
        };
        // Sized up front, so that adding the arguments does not grow the buffers.
        let size =
            name.len() + script.len() + 1 + key.len() + args.iter().map(|a| a.len()).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(4 + args.len(), size);
        cmd.arg(name).arg(script).arg(1).arg(key);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }
}

/// The scripts of the store.
pub(crate) struct Scripts {
    pub claim: Script,
    pub complete: Script,
    pub renew: Script,
    pub release: Script,
    pub delete: Script,
    pub insert: Script,
    pub watch: Script,
}

/// `record.lua` followed by the script in `file`.
macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("record.lua"), include_str!($file)))
    };
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            claim: script!("claim.lua"),
            complete: Script::new(concat!(
                include_str!("complete_untouched.lua"),
                include_str!("record.lua"),
                include_str!("complete.lua")
            )),
            renew: script!("renew.lua"),
            release: script!("release.lua"),
            delete: script!("delete.lua"),
            insert: Script::new(include_str!("insert.lua")),
            watch: script!("watch.lua"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evalsha_and_eval_pass_the_key_through_keys() {
        let script = Script::new("return 1");
        let args: [&[u8]; 2] = [b"a", b"b"];
        let evalsha = script.command("EVALSHA", "p:{0::k}", &args);
        let eval = script.command("EVAL", "p:{0::k}", &args);
        let expected_sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
        assert_eq!(
            evalsha.args_iter().count(),
            6,
            "EVALSHA sha 1 key a b: {evalsha:?}"
        );
        assert_eq!(script.sha1, expected_sha);
        let packed = String::from_utf8_lossy(&eval.get_packed_command()).into_owned();
        assert_eq!(
            packed,
            "*6\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$8\r\np:{0::k}\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
    }
}
