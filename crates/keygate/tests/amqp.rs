//! `keygate amqp …` end to end: the real binary, a SQLite file, the machine's RabbitMQ, and a
//! real AMQP client (lapin) using the URL the command printed. Seed 001: "AMQP — Provisioned
//! per tenant on request … `amqp://op-<slug>:<password>@mq.ticktock.bet:5672/<slug>`".

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_test::RabbitMq;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
    mq: RabbitMq,
}

impl Cli {
    async fn new() -> Option<Cli> {
        let mq = keygate_test::rabbitmq().await?;
        let cli = Cli {
            dir: tempfile::tempdir().unwrap(),
            mq,
        };
        cli.write_config(&cli.mq.management_url.clone());
        Some(cli)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    fn write_config(&self, management_url: &str) {
        let text = format!(
            "[amqp]\nmanagement_url = \"{management_url}\"\npublic_address = \"{}\"\ntimeout = \"3s\"\n",
            self.mq.amqp_address
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--config"])
            .arg(self.config())
            .args(args)
            .env("KEYGATE_DB", self.dir.path().join("keygate.db"))
            .env("KEYGATE_AMQP_USER", &self.mq.user)
            .env("KEYGATE_AMQP_PASSWORD", &self.mq.password)
            .env("USER", "ops-alice")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Expects failure; returns the JSON error's code and message.
    fn error(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let doc: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (
            doc["error"]["code"].as_str().unwrap().to_owned(),
            doc["error"]["message"].as_str().unwrap().to_owned(),
        )
    }
}

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connecting answers within 10 s")
}

fn tag() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn amqp_provision_show_rotate_revoke_through_the_cli() {
    let Some(cli) = Cli::new().await else { return };
    let name = format!("Acme Sportsbook {}", tag());
    cli.json(&["client", "create", &name]);

    let issued = cli.json(&["amqp", "provision", &name]);
    let slug = issued["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("acme-sportsbook-"), "{issued}");
    let url = issued["url"].as_str().unwrap().to_owned();
    let prefix = format!("amqp://op-{slug}:");
    assert!(url.starts_with(&prefix), "{url}");
    assert!(
        url.ends_with(&format!("@{}/{slug}", cli.mq.amqp_address)),
        "{url}"
    );
    let password = url[prefix.len()..url.rfind('@').unwrap()].to_owned();

    // Drift of this client only (other tests' users on the shared broker are not its own):
    // none; then its user deleted by hand is found, and reconcile restores it with the stored
    // hash, so the URL printed before still works.
    let check = cli.json(&["amqp", "reconcile", &name, "--check"]);
    assert_eq!(check["items"], serde_json::json!([]), "{check}");
    keygate_test::http_client()
        .delete(format!("{}/api/users/op-{slug}", cli.mq.management_url))
        .basic_auth(&cli.mq.user, Some(&cli.mq.password))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let check = cli.json(&["amqp", "reconcile", &name, "--check"]);
    assert_eq!(check["items"][0]["kind"], "missing_user", "{check}");
    let repaired = cli.json(&["amqp", "reconcile", &name]);
    assert_eq!(repaired["repaired"], 1, "{repaired}");
    assert_eq!(repaired["remaining"], serde_json::json!([]), "{repaired}");

    let conn = connect(&url).await.expect("the printed URL connects");
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            "cli".into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the tenant declares a queue in its vhost");

    // `show` never prints the password; the audit log names each step without it.
    let shown = cli.json(&["amqp", "show", &name]);
    assert_eq!(shown["state"], "active");
    assert_eq!(shown["user"], format!("op-{slug}"));
    assert!(!shown.to_string().contains(&password));
    let audit = cli.run(&["audit"]);
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(audit.contains("amqp.provision"), "{audit}");
    assert!(!audit.contains(&password));

    // Rotate: the old password and its connection stop; the new one works.
    let rotated = cli.json(&["amqp", "rotate", &name]);
    let new_url = rotated["url"].as_str().unwrap().to_owned();
    assert_ne!(new_url, url);
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "old connection still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connect(&url).await.is_err(), "the old password still works");
    let conn = connect(&new_url).await.expect("the rotated URL connects");

    // Revoke: closed within a second, refused afterwards; `show` says revoked.
    let revoked = cli.json(&["amqp", "revoke", &name]);
    assert_eq!(revoked["state"], "revoked");
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "connection open after revoke"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connect(&new_url).await.is_err());
    assert_eq!(cli.json(&["amqp", "show", &name])["state"], "revoked");
}

#[tokio::test]
async fn amqp_errors_have_codes_and_a_broker_outage_changes_nothing() {
    let Some(cli) = Cli::new().await else { return };
    let name = format!("Outage {}", tag());
    cli.json(&["client", "create", &name]);
    assert_eq!(
        cli.error(&["amqp", "show", &name]).0,
        "feed_not_provisioned"
    );
    assert_eq!(
        cli.error(&["amqp", "show", "no such client"]).0,
        "client_not_found"
    );
    let (code, message) = cli.error(&["amqp", "provision", &name, "--slug", "../x"]);
    assert_eq!(code, "invalid_slug", "{message}");

    // The broker's management API is down: a precise 503-class error, nothing stored.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    cli.write_config(&dead_url);
    let (code, message) = cli.error(&["amqp", "provision", &name]);
    assert_eq!(code, "broker_unavailable", "{message}");
    assert!(message.contains(&dead_url), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    cli.write_config(&cli.mq.management_url.clone());
    assert_eq!(
        cli.error(&["amqp", "show", &name]).0,
        "feed_not_provisioned"
    );

    // Without the operator's credentials the command says which variable is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config"])
        .arg(cli.config())
        .args(["amqp", "show", &name])
        .env("KEYGATE_DB", cli.dir.path().join("keygate.db"))
        .env_remove("KEYGATE_AMQP_USER")
        .env_remove("KEYGATE_AMQP_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KEYGATE_AMQP_USER"), "{err}");

    // Without [amqp] at all.
    std::fs::write(cli.config(), "").unwrap();
    assert_eq!(cli.error(&["amqp", "show", &name]).0, "amqp_not_configured");
}

/// A running node with `[amqp]` whose management API is `management_url`, and an admin token.
struct Node {
    _dir: tempfile::TempDir,
    /// The store: a SQLite file in `dir`, or a PostgreSQL schema shared by several nodes.
    db: String,
    config: std::path::PathBuf,
    /// This node's user prefix: its own, so its drift check never sees another test's users
    /// on the shared broker.
    user_prefix: String,
    mq: RabbitMq,
    admin: String,
    base: String,
    token: String,
    viewer: String,
    proc: keygate_test::Proc,
    _upstream: keygate_test::Upstream,
}

impl Node {
    async fn start(management_url: Option<&str>) -> Option<Node> {
        let mq = keygate_test::rabbitmq().await?;
        Some(Node::start_on(mq, management_url, None, None).await)
    }

    /// A node on `db` (default: a fresh SQLite file), with `peer`'s configuration and tokens
    /// when it joins another node's store.
    async fn start_on(
        mq: RabbitMq,
        management_url: Option<&str>,
        db: Option<String>,
        peer: Option<&Node>,
    ) -> Node {
        let upstream = keygate_test::Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let t = tag();
        let user_prefix = peer.map_or(format!("op-n{t}-"), |p| p.user_prefix.clone());
        let config = format!(
            "[amqp]\nmanagement_url = \"{}\"\npublic_address = \"{}\"\ntimeout = \"2s\"\ncheck_interval = \"1s\"\nuser_prefix = \"{user_prefix}\"\nvhost_prefix = \"n{t}-\"\n",
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
        let listen = format!("127.0.0.1:{}", keygate_test::free_port());
        let admin_listen = format!("127.0.0.1:{}", keygate_test::free_port());
        let proc = keygate_test::Proc::spawn(
            env!("CARGO_BIN_EXE_keygate"),
            &[
                "--db",
                &db,
                "--config",
                config_path.to_str().unwrap(),
                "serve",
                "--upstream",
                &upstream.url(),
                "--listen",
                &listen,
                "--admin-listen",
                &admin_listen,
            ],
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
    fn cli(&self, remote: bool, args: &[&str]) -> Output {
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

    fn json(&self, remote: bool, args: &[&str]) -> Value {
        let out = self.cli(remote, args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn call(
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

    async fn status(&self) -> Value {
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

async fn closed_within_a_second(conn: &Connection, what: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_closes_a_disabled_clients_feed_within_a_second_and_serves_the_admin_api() {
    let Some(node) = Node::start(None).await else {
        return;
    };
    let name = format!("Acme Sportsbook {}", tag());
    node.json(false, &["client", "create", &name]);

    // Provisioned through the admin API (the CLI's --admin-url); the node holds the operator's
    // credentials, the CLI does not.
    let issued = node.json(true, &["amqp", "provision", &name]);
    let url = issued["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!(
        "amqp://{}{}:",
        node.user_prefix,
        issued["slug"].as_str().unwrap()
    )));
    let conn = connect(&url)
        .await
        .expect("the URL from the admin API connects");
    let shown = node.json(true, &["amqp", "show", &name]);
    assert_eq!(shown["state"], "active");
    assert!(!shown.to_string().contains(&url));

    // Disabling the client on the database (another process): the node follows the change
    // feed and closes the feed within a second; new connections are refused. (First the node
    // has seen the feed, so its audit row says `suspend`.)
    let start = Instant::now();
    while node.status().await["amqp"]["feeds"] != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the node never saw the feed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.json(false, &["client", "disable", &name]);
    closed_within_a_second(&conn, "the client was disabled").await;
    assert!(
        connect(&url).await.is_err(),
        "a disabled client's feed connected"
    );
    node.json(false, &["client", "enable", &name]);
    let start = Instant::now();
    let conn = loop {
        if let Ok(c) = connect(&url).await {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the feed did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // /status and /metrics report the broker and the drift.
    let start = Instant::now();
    loop {
        let status = node.status().await;
        if status["amqp"]["drift"] == 0 && status["amqp"]["broker"] == "reachable" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = keygate_test::http_client()
        .get(format!("{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keygate_amqp_broker_up 1"), "{metrics}");
    assert!(metrics.contains("keygate_amqp_drift_items 0"), "{metrics}");

    // Hostile input on the admin API: names and slugs never address another resource.
    let (status, body) = node
        .call(
            "POST",
            "/v1/clients/..%2F..%2Fvhosts/amqp",
            &node.token,
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let path = format!("/v1/clients/{}/amqp", name.replace(' ', "%20"));
    for slug in ["../x", "a/b", "%2f", "ü", "A"] {
        let other = format!("Other {}", tag());
        node.json(false, &["client", "create", &other]);
        let p = format!("/v1/clients/{}/amqp", other.replace(' ', "%20"));
        let (status, body) = node
            .call(
                "POST",
                &p,
                &node.token,
                Some(serde_json::json!({ "slug": slug })),
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("invalid_slug")),
            "{slug}: {body}"
        );
    }
    let (status, body) = node
        .call(
            "POST",
            &path,
            &node.token,
            Some(serde_json::json!({ "slug": "x", "admin": true })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // Another client cannot take this client's slug; a read-only token cannot provision.
    let thief = format!("Thief {}", tag());
    node.json(false, &["client", "create", &thief]);
    let p = format!("/v1/clients/{}/amqp", thief.replace(' ', "%20"));
    let (status, body) = node
        .call(
            "POST",
            &p,
            &node.token,
            Some(serde_json::json!({ "slug": issued["slug"] })),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("slug_taken")),
        "{body}"
    );
    let (status, _) = node.call("POST", &p, &node.viewer, None).await;
    assert_eq!(status, 403);
    let (status, body) = node.call("GET", "/openapi.json", "", None).await;
    assert_eq!(status, 200);
    assert!(body["paths"]["/v1/clients/{client}/amqp/revoke"]["post"].is_object());

    // Revoke through the admin API: closed within a second, and the audit log has each step.
    let revoked = node.json(true, &["amqp", "revoke", &name]);
    assert_eq!(revoked["state"], "revoked");
    closed_within_a_second(&conn, "the feed was revoked").await;
    assert!(connect(&url).await.is_err());
    // Each audit row follows its broker step, so poll briefly for the last one.
    let start = Instant::now();
    let text = loop {
        let text = node.json(false, &["audit", "--limit", "100"]).to_string();
        let missing: Vec<&str> = [
            "amqp.provision",
            "amqp.suspend",
            "amqp.resume",
            "amqp.revoke",
        ]
        .into_iter()
        .filter(|action| !text.contains(action))
        .collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{missing:?} missing from the audit log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!text.contains(&url));
    assert!(!node.proc.stderr().contains(&node.mq.password) || node.mq.password == "guest");
    let _ = &node.base;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_leaves_the_gateway_serving_and_feed_operations_answer_503() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let Some(node) = Node::start(Some(&dead_url)).await else {
        return;
    };
    let name = format!("Outage {}", tag());
    node.json(false, &["client", "create", &name]);
    let key = node.json(false, &["key", "create", "--client", &name])["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/v1/clients/{}/amqp", name.replace(' ', "%20"));
    let (status, body) = node.call("POST", &path, &node.token, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "broker_unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains(&dead_url),
        "{body}"
    );
    let (status, body) = node.call("GET", &path, &node.token, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("feed_not_provisioned"))
    );

    // HTTP keeps being served (the key reaches the node's replica through the change feed).
    let start = Instant::now();
    loop {
        let resp = keygate_test::http_client()
            .get(format!("{}/anything", node.base))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    loop {
        let status = node.status().await;
        if status["amqp"]["broker"] == "unreachable" && !status["amqp"]["last_check"].is_null() {
            assert!(status["amqp"]["last_error"]
                .as_str()
                .unwrap()
                .contains(&dead_url));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = &node.mq;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_postgres_cluster_a_disable_or_revoke_on_one_node_closes_the_feed_within_a_second() {
    let Some(mq) = keygate_test::rabbitmq().await else {
        return;
    };
    let Some(pg) = keygate_test::postgres_schema("kg_amqp").await else {
        return;
    };
    let migrate = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--db", &pg, "migrate"])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let a = Node::start_on(mq.clone(), None, Some(pg.clone()), None).await;
    let b = Node::start_on(mq, None, Some(pg), Some(&a)).await;
    let name = format!("Cluster {}", tag());
    a.json(false, &["client", "create", &name]);
    let path = format!("/v1/clients/{}", name.replace(' ', "%20"));

    // Provisioned on node A; node B disables the client; the feed closes within a second.
    let (status, issued) = a
        .call("POST", &format!("{path}/amqp"), &a.token, None)
        .await;
    assert_eq!(status, 201, "{issued}");
    let url = issued["url"].as_str().unwrap().to_owned();
    let conn = connect(&url).await.expect("the URL from node A connects");
    let (status, body) = b
        .call("POST", &format!("{path}/disable"), &b.token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    closed_within_a_second(&conn, "node B disabled the client").await;
    assert!(connect(&url).await.is_err());
    let (status, _) = b
        .call("POST", &format!("{path}/enable"), &b.token, None)
        .await;
    assert_eq!(status, 200);
    let start = Instant::now();
    let conn = loop {
        if let Ok(c) = connect(&url).await {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the feed did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Revoked through node B, seen by node A's `show`.
    let (status, body) = b
        .call("POST", &format!("{path}/amqp/revoke"), &b.token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    closed_within_a_second(&conn, "node B revoked the feed").await;
    let (_, shown) = a.call("GET", &format!("{path}/amqp"), &a.token, None).await;
    assert_eq!(shown["state"], "revoked", "{shown}");
    // A node still granting from the enable may re-make the vhost after the revoke; its next
    // poll sees the revocation and removes it again. Both nodes agree within a few seconds.
    let vhost = format!(
        "{}/api/vhosts/{}",
        a.mq.management_url,
        shown["vhost"].as_str().unwrap()
    );
    let start = Instant::now();
    loop {
        let r = keygate_test::http_client()
            .get(&vhost)
            .basic_auth(&a.mq.user, Some(&a.mq.password))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the revoked vhost stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
