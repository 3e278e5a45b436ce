//! `redis-server` processes of a test's own, in its temporary directory and killed on drop:
//! one server with extra arguments ([`RedisServer`], e.g. TLS-only), or a primary, its replica
//! and a sentinel monitoring them ([`SentinelSet`]), over TLS or not, for failover tests.
//!
//! Each waits until its port accepts connections; under `CI=true` a missing `redis-server`
//! fails the test (see [`crate::program`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCa;

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
    /// The CA (PEM) its certificate chains to, when `port` speaks TLS.
    tls_roots: Option<String>,
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
            tls_roots: None,
        };
        server.wait_listening().await;
        Some(server)
    }

    /// A server on a free port, with `args` added: plain, or with `tls` (a certificate `tls`
    /// issues for 127.0.0.1) TLS only, replicating over TLS too.
    pub async fn on_free_port(
        dir: &Path,
        name: &str,
        tls: Option<&TestCa>,
        args: &[&str],
    ) -> Option<RedisServer> {
        let port = crate::free_port();
        let mut all: Vec<OsString> = match tls {
            None => vec!["--port".into(), port.to_string().into()],
            Some(ca) => {
                let mut tls_args = vec!["--port".into(), "0".into()];
                let settings = tls_settings(ca, dir, name).into_iter();
                tls_args.extend(settings.flat_map(|(k, v)| [format!("--{k}").into(), v]));
                tls_args.extend(["--tls-port".into(), port.to_string().into()]);
                tls_args
            }
        };
        all.extend(args.iter().map(OsString::from));
        let mut server = RedisServer::spawn(dir, name, port, all).await?;
        server.tls_roots = tls.map(|ca| ca.pem.clone());
        Some(server)
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

    /// `redis://127.0.0.1:{port}`, or `rediss://` over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls_roots.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `cmd` sent on a connection of its own (TLS when the server speaks it); `None` when it
    /// fails or takes more than two seconds (the server is down, for one).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let exchange = async {
            let client = match &self.tls_roots {
                None => redis::Client::open(self.url()),
                Some(pem) => redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.as_bytes().to_vec()),
                    },
                ),
            }
            .ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            cmd.query_async::<T>(&mut conn).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()
            .flatten()
    }

    /// `INFO section`.
    pub async fn info(&self, section: &str) -> Option<String> {
        self.query(redis::cmd("INFO").arg(section)).await
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
    /// knows it as a candidate for promotion; with `tls`, every one of them speaks TLS only
    /// (to clients and to each other) with a certificate `tls` issues for 127.0.0.1. `None`
    /// when redis-server is not installed, outside CI.
    ///
    /// Panics (failing the test) when that does not happen within a minute.
    pub async fn start(dir: &Path, tls: Option<&TestCa>) -> Option<SentinelSet> {
        let primary = RedisServer::on_free_port(dir, "primary", tls, &[]).await?;
        let replicaof = format!("127.0.0.1 {}", primary.port);
        let replica =
            RedisServer::on_free_port(dir, "replica", tls, &["--replicaof", &replicaof]).await?;
        let port = crate::free_port();
        let conf = dir.join("sentinel.conf");
        let m = SentinelSet::MASTER;
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(ca) => {
                let settings: String = tls_settings(ca, dir, "sentinel")
                    .into_iter()
                    .map(|(k, v)| format!("{k} \"{}\"\n", v.to_string_lossy()))
                    .collect();
                format!("port 0\ntls-port {port}\n{settings}")
            }
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}\
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
        let mut sentinel = RedisServer::spawn(
            dir,
            "sentinel",
            port,
            [conf.as_os_str(), "--sentinel".as_ref()],
        )
        .await?;
        sentinel.tls_roots = tls.map(|ca| ca.pem.clone());
        let set = SentinelSet {
            primary,
            replica,
            sentinel,
        };
        set.wait_ready().await;
        Some(set)
    }

    /// `redis+sentinel://127.0.0.1:{sentinel}/m`, or `rediss+sentinel://` over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.sentinel.tls_roots.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!(
            "{scheme}://127.0.0.1:{}/{}",
            self.sentinel.port,
            SentinelSet::MASTER
        )
    }

    /// Whether the sentinel knows the replica as a healthy replica of [`SentinelSet::MASTER`].
    async fn knows_replica(&self) -> bool {
        let replicas: Option<Vec<HashMap<String, String>>> = self
            .sentinel
            .query(
                redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(SentinelSet::MASTER),
            )
            .await;
        let name = format!("127.0.0.1:{}", self.replica.port);
        replicas.unwrap_or_default().iter().any(|r| {
            r.get("name") == Some(&name) && r.get("flags").map(String::as_str) == Some("slave")
        })
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let synced = self
                .replica
                .info("replication")
                .await
                .is_some_and(|i| i.contains("master_link_status:up"));
            let known = self.knows_replica().await;
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

/// The TLS settings of a server (or sentinel) named `name`: a certificate `ca` issues for
/// 127.0.0.1 (written to `dir`), clients not asked for one, replication (and a sentinel's
/// connections to the servers) over TLS too.
fn tls_settings(ca: &TestCa, dir: &Path, name: &str) -> Vec<(&'static str, OsString)> {
    let (cert, key) = ca.issue(&["127.0.0.1"]).write(dir, name);
    let ca_path = dir.join("redis-ca.pem");
    std::fs::write(&ca_path, &ca.pem).expect("write the CA");
    vec![
        ("tls-cert-file", cert.into()),
        ("tls-key-file", key.into()),
        ("tls-ca-cert-file", ca_path.into()),
        ("tls-auth-clients", "no".into()),
        ("tls-replication", "yes".into()),
    ]
}
