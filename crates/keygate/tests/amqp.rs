//! `keygate amqp …` end to end: the real binary, a SQLite file, the machine's RabbitMQ, and a
//! real AMQP client (lapin) using the URL the command printed. Seed 001: "AMQP — Provisioned
//! per tenant on request … `amqp://op-<slug>:<password>@mq.ticktock.bet:5672/<slug>`".

mod feeds;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use feeds::{audit_rows, closed_within_a_second, connect, key_answers, tag, Node};
use keygate_test::RabbitMq;
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

/// Two nodes on one fresh PostgreSQL schema and the machine's RabbitMQ, the second started after
/// the first; `None` outside CI where either service is missing.
async fn postgres_pair(schema: &str) -> Option<(Node, Node)> {
    let mq = keygate_test::rabbitmq().await?;
    let pg = keygate_test::postgres_schema(schema).await?;
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
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_postgres_cluster_a_disable_or_revoke_on_one_node_closes_the_feed_within_a_second() {
    let Some((a, b)) = postgres_pair("kg_amqp").await else {
        return;
    };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_client_refuses_its_keys_and_closes_its_feed_within_a_second() {
    let Some(node) = Node::start(None).await else {
        return;
    };
    let name = format!("Gone Sportsbook {}", tag());
    let client = node.json(false, &["client", "create", &name]);
    let id = client["id"].as_str().unwrap().to_owned();
    let key = node.json(false, &["key", "create", "--client", &name])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    key_answers(&node, &key, |s| s == 200, Duration::from_secs(5)).await;
    let url = node.json(true, &["amqp", "provision", &name])["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let conn = connect(&url).await.expect("the feed URL connects");
    let path = format!("/v1/clients/{}", name.replace(' ', "%20"));

    // A read-only token may not delete.
    let (status, body) = node.call("DELETE", &path, &node.viewer, None).await;
    assert_eq!(status, 403, "{body}");
    key_answers(&node, &key, |s| s == 200, Duration::from_secs(1)).await;

    let (status, deleted) = node.call("DELETE", &path, &node.token, None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["id"], id.as_str());
    assert_eq!(deleted["keys_revoked"], 1, "{deleted}");
    assert_eq!(deleted["feed"], "revoked", "{deleted}");
    closed_within_a_second(&conn, "the client was deleted").await;
    assert!(
        connect(&url).await.is_err(),
        "a deleted client's feed connected"
    );
    let refused = key_answers(&node, &key, |s| s != 200, Duration::from_secs(1)).await;
    assert!(matches!(refused, 401 | 403), "{refused}");

    // Gone from every lookup and listing; deleting twice is 404; the history stays and the
    // name stays taken.
    let (status, body) = node.call("GET", &path, &node.token, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("client_not_found"))
    );
    let (status, body) = node.call("DELETE", &path, &node.token, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("client_not_found"))
    );
    let listed = node.json(false, &["client", "list"]).to_string();
    assert!(!listed.contains(&id), "{listed}");
    assert_eq!(audit_rows(&node, "client.delete", &id), 1);
    assert_eq!(audit_rows(&node, "client.create", &id), 1);
    let again = node.cli(false, &["client", "create", &name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("duplicate_client"));
    let vhost = format!(
        "{}/api/vhosts/{}",
        node.mq.management_url,
        &url[url.rfind('/').unwrap() + 1..]
    );
    let r = keygate_test::http_client()
        .get(&vhost)
        .basic_auth(&node.mq.user, Some(&node.mq.password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the deleted client's vhost stays");

    // `keygate client delete`, through the admin API and on the database.
    for remote in [true, false] {
        let other = format!("Other {}", tag());
        node.json(false, &["client", "create", &other]);
        let doc = node.json(remote, &["client", "delete", &other]);
        assert_eq!(doc["name"], other.as_str(), "{doc}");
        assert_eq!(doc["feed"], "none", "{doc}");
        let out = node.cli(remote, &["client", "delete", &other]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("client_not_found"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_feed_provision_or_rotate_returns_the_first_url() {
    let Some(node) = Node::start(None).await else {
        return;
    };
    let name = format!("Retry {}", tag());
    let id = node.json(false, &["client", "create", &name])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/clients/{}/amqp", name.replace(' ', "%20"));
    let post = |path: String, key: &'static str, body: Option<Value>| {
        let node = &node;
        async move {
            let mut req = keygate_test::http_client()
                .post(format!("{}{path}", node.admin))
                .bearer_auth(&node.token)
                .header("Idempotency-Key", key);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            (
                resp.status().as_u16(),
                replayed,
                resp.json::<Value>().await.unwrap(),
            )
        }
    };

    let (status, replayed, first) = post(path.clone(), "prov-1", None).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let (status, replayed, again) = post(path.clone(), "prov-1", None).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["url"], first["url"]);
    let url = first["url"].as_str().unwrap().to_owned();
    connect(&url).await.expect("the replayed URL connects");
    let other = Some(serde_json::json!({ "slug": format!("other-{}", tag()) }));
    let (status, _, body) = post(path.clone(), "prov-1", other).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    // Without the key, a second provision is the usual 409.
    let (status, body) = node.call("POST", &path, &node.token, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("feed_already_provisioned"))
    );

    let rotate = format!("{path}/rotate");
    // A malformed key is refused before anything happens; a provision's key is not a rotate's.
    let long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    let (status, _, body) = post(rotate.clone(), long, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_idempotency_key")),
        "{body}"
    );
    let (status, _, body) = post(rotate.clone(), "prov-1", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    assert_eq!(
        audit_rows(&node, "amqp.rotate", &id),
        0,
        "a refused retry rotated"
    );
    let (status, replayed, rotated) = post(rotate.clone(), "rot-1", None).await;
    assert_eq!((status, replayed), (200, false), "{rotated}");
    let (status, replayed, again) = post(rotate.clone(), "rot-1", None).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again["url"], rotated["url"]);
    assert_ne!(rotated["url"], first["url"]);
    connect(rotated["url"].as_str().unwrap())
        .await
        .expect("the retried rotate did not rotate twice: its URL connects");
    assert!(
        connect(&url).await.is_err(),
        "the first password still works"
    );
    assert_eq!(audit_rows(&node, "amqp.rotate", &id), 1);
    assert_eq!(audit_rows(&node, "amqp.provision", &id), 1);
    // The sealed answers never hold the password in plaintext, nor does the store elsewhere.
    let password = {
        let u = rotated["url"].as_str().unwrap();
        u[u.find(':').unwrap() + 3..u.rfind('@').unwrap()]
            .split_once(':')
            .unwrap()
            .1
            .to_owned()
    };
    for file in [node.db.clone(), format!("{}-wal", node.db)] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password is in {file}"
        );
    }
    node.json(true, &["amqp", "revoke", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_postgres_cluster_one_node_acts_on_the_broker_and_another_takes_over() {
    let Some((a, b)) = postgres_pair("kg_amqp_lease").await else {
        return;
    };

    // Both nodes name the same acting node, which says it acts.
    let acting = |deadline: Duration| {
        let (a, b) = (&a, &b);
        async move {
            let start = Instant::now();
            loop {
                let (sa, sb) = (a.status().await, b.status().await);
                let (na, nb) = (&sa["amqp"]["acting_node"], &sb["amqp"]["acting_node"]);
                let flags = (sa["amqp"]["acting"] == true, sb["amqp"]["acting"] == true);
                if na.is_string() && na == nb && flags.0 != flags.1 {
                    return if flags.0 { 'a' } else { 'b' };
                }
                assert!(
                    start.elapsed() < deadline,
                    "no single acting node: {sa} {sb}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let first = acting(Duration::from_secs(10)).await;
    let mut nodes = [a, b];
    let (i, o) = if first == 'a' { (0, 1) } else { (1, 0) };
    let other = &nodes[o];

    let name = format!("Lease {}", tag());
    let id = nodes[0].json(false, &["client", "create", &name])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/clients/{}", name.replace(' ', "%20"));
    let (status, issued) = other
        .call("POST", &format!("{path}/amqp"), &other.token, None)
        .await;
    assert_eq!(status, 201, "{issued}");
    let url = issued["url"].as_str().unwrap().to_owned();
    let conn = connect(&url).await.expect("the URL connects");
    for n in &nodes {
        let start = Instant::now();
        while n.status().await["amqp"]["feeds"] != 1 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a node never saw the feed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A disable on the database: closed within a second, one audit row.
    other.json(false, &["client", "disable", &name]);
    closed_within_a_second(&conn, "the client was disabled").await;
    let start = Instant::now();
    while audit_rows(other, "amqp.suspend", &id) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no amqp.suspend audit row"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both nodes have seen the disable by the time the audit row exists; a second node acting
    // would write its row within its next polls, so a few of them are watched.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(audit_rows(other, "amqp.suspend", &id), 1, "two nodes acted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.json(false, &["client", "enable", &name]);
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
    // The acting node writes its audit row after the broker change the connection saw, so the
    // row may trail the reconnect (0 rows once, on a CI machine under load).
    let start = Instant::now();
    while audit_rows(other, "amqp.resume", &id) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no amqp.resume audit row"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(audit_rows(other, "amqp.resume", &id), 1, "two nodes acted");

    // The acting node dies without giving the lease up: the other takes over within a few
    // seconds, and a disable still closes the feed within a second.
    nodes[i].proc.kill();
    let survivor = &nodes[o];
    let start = Instant::now();
    loop {
        let s = survivor.status().await;
        if s["amqp"]["acting"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nobody took over: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("took over after {:?}", start.elapsed());
    survivor.json(false, &["client", "disable", &name]);
    closed_within_a_second(&conn, "the client was disabled after the take-over").await;
    assert!(connect(&url).await.is_err());

    // Deleted on the database by a CLI without the broker's credentials: the feed is left
    // `pending` to the acting node, which closes it within a second all the same.
    survivor.json(false, &["client", "enable", &name]);
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
    let deleted = survivor.json(false, &["client", "delete", &name]);
    assert_eq!(deleted["feed"], "pending", "{deleted}");
    closed_within_a_second(&conn, "the client was deleted on the database").await;
    assert!(connect(&url).await.is_err());
}
