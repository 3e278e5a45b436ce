//! `redis-server` processes of a test's own, in its temporary directory and killed on drop:
//! one server with extra arguments ([`RedisServer`], e.g. TLS-only), or a primary, its replica
//! and a sentinel monitoring them ([`SentinelSet`]) for failover tests.
//!
//! Each waits until its port accepts connections; under `CI=true` a missing `redis-server`
//! fails the test (see [`crate::program`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The client the helpers use, for tests of crates that do not depend on it.
pub use redis;

/// How long a started server has to listen: generous, for a busy two-core machine.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// A `redis-server` started by a test; killed and reaped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The port [`RedisServer::spawn`] waited on (the plain or the TLS one).
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// Starts `redis-server` with `args` and the test defaults (loopback only, nothing
    /// saved, files and log in `dir` under `name`), and waits until `port` accepts
    /// connections. `None` when redis-server is not installed, outside CI.
    ///
    /// Panics (failing the test) when it does not start or listen in time.
    pub async fn spawn<I, S>(dir: &Path, name: &str, port: u16, args: I) -> Option<RedisServer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = crate::program("redis-server", &[Path::new("/usr/bin")])?;
        let log = dir.join(format!("{name}.log"));
        // `args` first: a configuration file has to be the first argument.
        let child = Command::new(program)
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dbfilename", &format!("{name}.rdb")])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer {
            child: Some(child),
            port,
            log,
        };
        server.wait_listening().await;
        Some(server)
    }

    /// A plain server on a free port, with `args` added.
    pub async fn plain(dir: &Path, name: &str, args: &[&str]) -> Option<RedisServer> {
        let port = crate::free_port();
        let port_arg = port.to_string();
        let all = ["--port", port_arg.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        RedisServer::spawn(dir, name, port, all).await
    }

    async fn wait_listening(&self) {
        let deadline = Instant::now() + LISTEN_WITHIN;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within {LISTEN_WITHIN:?}; its log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL), as a crashed primary would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A primary, a replica of it and one sentinel monitoring them as master [`SentinelSet::MASTER`]
/// (quorum 1, a primary judged down after one second), ready to fail over.
#[derive(Debug)]
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel: RedisServer,
}

impl SentinelSet {
    /// The monitored master's name.
    pub const MASTER: &'static str = "m";

    /// Starts the three in `dir` and waits until the replica is in sync and the sentinel
    /// knows it as a candidate for promotion. `None` when redis-server is not installed,
    /// outside CI.
    ///
    /// Panics (failing the test) when that does not happen within a minute.
    pub async fn start(dir: &Path) -> Option<SentinelSet> {
        let primary = RedisServer::plain(dir, "primary", &[]).await?;
        let replicaof = format!("127.0.0.1 {}", primary.port);
        let replica = RedisServer::plain(dir, "replica", &["--replicaof", &replicaof]).await?;
        let port = crate::free_port();
        let conf = dir.join("sentinel.conf");
        let m = SentinelSet::MASTER;
        std::fs::write(
            &conf,
            format!(
                "port {port}\n\
                 sentinel monitor {m} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {m} 1000\n\
                 sentinel failover-timeout {m} 10000\n\
                 sentinel parallel-syncs {m} 1\n\
                 sentinel known-replica {m} 127.0.0.1 {replica}\n",
                primary = primary.port,
                replica = replica.port,
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = RedisServer::spawn(
            dir,
            "sentinel",
            port,
            [conf.as_os_str(), "--sentinel".as_ref()],
        )
        .await?;
        let set = SentinelSet {
            primary,
            replica,
            sentinel,
        };
        set.wait_ready().await;
        Some(set)
    }

    /// `redis+sentinel://127.0.0.1:{sentinel}/m`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}",
            self.sentinel.port,
            SentinelSet::MASTER
        )
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let synced = info(self.replica.port, "replication")
                .await
                .is_some_and(|i| i.contains("master_link_status:up"));
            let known = knows_replica(self.sentinel.port, self.replica.port).await;
            if synced && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not sync or the sentinel did not know it (synced {synced}, known {known}); sentinel log:\n{}",
                std::fs::read_to_string(&self.sentinel.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `cmd` sent to the server (or sentinel) on `127.0.0.1:port` on a connection of its own;
/// `None` when it fails or takes more than two seconds.
pub async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let exchange = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async::<T>(&mut conn).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// `INFO section` of the server on `port`.
pub async fn info(port: u16, section: &str) -> Option<String> {
    query(port, redis::cmd("INFO").arg(section)).await
}

/// Whether the sentinel on `port` knows `127.0.0.1:replica` as a healthy replica of
/// [`SentinelSet::MASTER`].
async fn knows_replica(port: u16, replica: u16) -> bool {
    let replicas: Option<Vec<HashMap<String, String>>> = query(
        port,
        redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(SentinelSet::MASTER),
    )
    .await;
    let name = format!("127.0.0.1:{replica}");
    replicas.unwrap_or_default().iter().any(|r| {
        r.get("name") == Some(&name) && r.get("flags").map(String::as_str) == Some("slave")
    })
}
