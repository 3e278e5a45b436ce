//! What the feed tests share: a real `keygate serve` node with `[amqp]` on the machine's
//! RabbitMQ, its admin API and CLI, and a real AMQP client (lapin).

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_test::RabbitMq;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

pub async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connecting answers within 10 s")
}

pub fn tag() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running node with `[amqp]` whose management API is `management_url`, and an admin token.
pub struct Node {
    _dir: tempfile::TempDir,
    /// The store: a SQLite file in `dir`, or a PostgreSQL schema shared by several nodes.
    pub db: String,
    pub config: std::path::PathBuf,
    /// This node's user prefix: its own, so its drift check never sees another test's users
    /// on the shared broker.
    pub user_prefix: String,
    pub mq: RabbitMq,
    pub admin: String,
    pub base: String,
    pub token: String,
    pub viewer: String,
    pub proc: keygate_test::Proc,
    _upstream: keygate_test::Upstream,
}

impl Node {
    pub async fn start(management_url: Option<&str>) -> Option<Node> {
        let mq = keygate_test::rabbitmq().await?;
        Some(Node::start_on(mq, management_url, None, None).await)
    }

    /// A node on `db` (default: a fresh SQLite file), with `peer`'s configuration and tokens
    /// when it joins another node's store.
    pub async fn start_on(
        mq: RabbitMq,
        management_url: Option<&str>,
        db: Option<String>,
        peer: Option<&Node>,
    ) -> Node {
        Node::start_with(mq, management_url, db, peer, "").await
    }

    /// [`Node::start_on`] with `extra` appended to its configuration (e.g. a `[portal]`).
    pub async fn start_with(
        mq: RabbitMq,
        management_url: Option<&str>,
        db: Option<String>,
        peer: Option<&Node>,
        extra: &str,
    ) -> Node {
        let upstream = keygate_test::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let t = tag();
        let user_prefix = peer.map_or(format!("op-n{t}-"), |p| p.user_prefix.clone());
        let config = format!(
            "[amqp]\nmanagement_url = \"{}\"\npublic_address = \"{}\"\ntimeout = \"2s\"\ncheck_interval = \"1s\"\nuser_prefix = \"{user_prefix}\"\nvhost_prefix = \"n{t}-\"\n{extra}",
            management_url.unwrap_or(&mq.management_url),
            mq.amqp_address
        );
        let config_path = match peer {
            Some(p) => p.config.clone(),
            None => {
                std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
                dir.path().join("keygate.toml")
            }
        };
        let db = db.unwrap_or_else(|| dir.path().join("keygate.db").to_str().unwrap().to_owned());
        let cli = |args: &[&str]| {
            keygate_test::json_output(
                Command::new(env!("CARGO_BIN_EXE_keygate"))
                    .arg("--db")
                    .arg(&db)
                    .args(args),
            )
        };
        let (token, viewer) = match peer {
            Some(p) => (p.token.clone(), p.viewer.clone()),
            None => (
                cli(&["--json", "admin-token", "create", "--name", "ops"])["token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                cli(&[
                    "--json",
                    "admin-token",
                    "create",
                    "--name",
                    "viewer",
                    "--read-only",
                ])["token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
        };
        let keygate_test::Serving {
            proc,
            listen,
            admin: admin_listen,
        } = keygate_test::serve(
            env!("CARGO_BIN_EXE_keygate"),
            (&db, &config_path),
            &upstream.url(),
            &[
                ("KEYGATE_AMQP_USER", mq.user.as_str()),
                ("KEYGATE_AMQP_PASSWORD", mq.password.as_str()),
            ],
            dir.path(),
        );
        let ready = keygate_test::wait_for_status(
            admin_listen.parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(20),
        )
        .await;
        assert!(ready, "the node did not become ready: {}", proc.stderr());
        Node {
            _dir: dir,
            db,
            config: config_path,
            user_prefix,
            mq,
            admin: format!("http://{admin_listen}"),
            base: format!("http://{listen}"),
            token,
            viewer,
            proc,
            _upstream: upstream,
        }
    }

    /// The CLI on the node's database (`remote = false`) or through its admin API.
    pub fn cli(&self, remote: bool, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("--json").arg("--config").arg(&self.config);
        if remote {
            cmd.args(["--admin-url", &self.admin])
                .env("KEYGATE_ADMIN_TOKEN", &self.token);
        } else {
            cmd.arg("--db").arg(&self.db);
        }
        cmd.args(args)
            .env_remove("KEYGATE_DB")
            .env_remove("KEYGATE_AMQP_USER")
            .env_remove("KEYGATE_AMQP_PASSWORD")
            .output()
            .unwrap()
    }

    pub fn json(&self, remote: bool, args: &[&str]) -> Value {
        let out = self.cli(remote, args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let http = keygate_test::http_client();
        let mut req = http
            .request(method.parse().unwrap(), format!("{}{path}", self.admin))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self) -> Value {
        keygate_test::http_client()
            .get(format!("{}/status", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub async fn closed_within_a_second(conn: &Connection, what: &str) {
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the feed connection is still open a second after {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("closed {:?} after {what}", start.elapsed());
}

/// Polls the gateway with `key` until it answers `want` (a key reaches or leaves a node's
/// replica through the change feed), within `limit`.
pub async fn key_answers(
    node: &Node,
    key: &str,
    want: impl Fn(u16) -> bool,
    limit: Duration,
) -> u16 {
    let start = Instant::now();
    loop {
        let status = keygate_test::http_client()
            .get(format!("{}/anything", node.base))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if want(status) {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the key still answers {status} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Audit rows of `action` about the client with id `client_id`.
pub fn audit_rows(node: &Node, action: &str, client_id: &str) -> usize {
    let doc = node.json(false, &["audit", "--limit", "1000"]);
    let items = doc
        .as_array()
        .cloned()
        .or_else(|| doc["items"].as_array().cloned())
        .unwrap_or_default();
    items
        .iter()
        .filter(|e| e["action"] == action && e["target"] == client_id)
        .count()
}
