//! Webhooks end to end: two `keygate serve` nodes on one PostgreSQL database deliver the
//! outbox to real receivers that fail, hang and recover. Every event reaches a receiver that
//! answers 2xx exactly once, signed as documented; a receiver that never answers is dead-
//! lettered without holding the gateway up; dead and delivered deliveries are replayed with
//! `keygate webhooks replay`, locally and through the admin API. No body or log holds a key,
//! a webhook secret or an admin token.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keygate_test::{
    http_client, postgres_schema, wait_for_status, ReceiverMode, Serving, Upstream, WebhookReceiver,
};
use serde_json::Value;

const FLAKY_SECRET: &str = "whsec_flaky_0123456789abcdef";
const STRICT_SECRET: &str = "whsec_strict_0123456789abcdef";
const BLACKHOLE_SECRET: &str = "whsec_blackhole_0123456789ab";
/// Generous: the machine running the suite is busy.
const DEADLINE: Duration = Duration::from_secs(120);

fn keygate(db: &str, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(["--json", "--config", config.to_str().unwrap()])
        .args(args)
        .env("KEYGATE_DB", db)
        .env("KG_TEST_WEBHOOK_SECRET", FLAKY_SECRET);
    cmd
}

fn cli(db: &str, config: &Path, args: &[&str]) -> Value {
    keygate_test::json_output(&mut keygate(db, config, args))
}

/// The deliveries of `webhook` as the store lists them.
fn deliveries(db: &str, config: &Path, webhook: &str, state: Option<&str>) -> Vec<Value> {
    let mut args = vec!["webhooks", "list", "--webhook", webhook, "--limit", "1000"];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    cli(db, config, &args).as_array().unwrap().clone()
}

/// Waits up to [`DEADLINE`] for `done` to hold over `webhook`'s deliveries in `state`.
async fn wait_deliveries(
    db: &str,
    config: &Path,
    webhook: &str,
    state: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let rows = deliveries(db, config, webhook, Some(state));
        if done(&rows) || tokio::time::Instant::now() >= end {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn config_text(flaky: &str, blackhole: &str, strict: &str) -> String {
    format!(
        r#"
[guard]
threshold = 100000
prefix_threshold = 100000

[outbox]
poll = "100ms"

[[webhooks]]
name = "flaky"
url = "{flaky}"
secret_env = "KG_TEST_WEBHOOK_SECRET"
events = ["key.*", "client.disabled"]
timeout = "1s"
backoff = "300ms"
max_attempts = 40

[[webhooks]]
name = "blackhole"
url = "{blackhole}"
secret = "{BLACKHOLE_SECRET}"
events = ["key.revoked"]
timeout = "500ms"
backoff = "200ms"
max_attempts = 2

[[webhooks]]
name = "strict"
url = "{strict}"
secret = "{STRICT_SECRET}"
events = ["client.disabled"]
backoff = "200ms"
max_attempts = 2
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_event_once_through_failures_timeouts_and_recovery() {
    let Some(db) = postgres_schema("kg_webhooks").await else {
        return;
    };
    let upstream = Upstream::start().await;
    let flaky = WebhookReceiver::start(FLAKY_SECRET).await;
    let blackhole = WebhookReceiver::start(BLACKHOLE_SECRET).await;
    let strict = WebhookReceiver::start(STRICT_SECRET).await;
    flaky.set_mode(ReceiverMode::Fail(500));
    blackhole.set_mode(ReceiverMode::Hang);
    strict.set_mode(ReceiverMode::Fail(503));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        config_text(&flaky.url(), &blackhole.url(), &strict.url()),
    )
    .unwrap();
    cli(&db, &config, &["migrate"]);
    let token = cli(&db, &config, &["admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut nodes: Vec<Serving> = Vec::new();
    for i in 0..2 {
        let log_dir = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        let node = keygate_test::serve(
            env!("CARGO_BIN_EXE_keygate"),
            (&db, &config),
            &upstream.url(),
            &[
                ("RUST_LOG", "debug"),
                ("KG_TEST_WEBHOOK_SECRET", FLAKY_SECRET),
            ],
            &log_dir,
        );
        assert!(
            wait_for_status(node.admin.parse().unwrap(), "/ready", 200, DEADLINE).await,
            "node {i} not ready: {}",
            node.proc.stderr()
        );
        nodes.push(node);
    }

    // Writes made by the CLI on the shared database: each announces its event in its own
    // transaction, and the nodes deliver them.
    cli(&db, &config, &["client", "create", "Acme"]);
    let mut plaintexts = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let issued = cli(&db, &config, &["key", "create", "--client", "Acme"]);
        plaintexts.push(issued["key"].as_str().unwrap().to_owned());
        ids.push(issued["id"].as_str().unwrap().to_owned());
    }
    // A receiver that hangs holds no request of the gateway up: both nodes serve the key.
    let http = http_client();
    for node in &nodes {
        let end = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            let status = http
                .get(format!("http://{}/anything", node.listen))
                .header("X-API-Key", &plaintexts[2])
                .send()
                .await
                .unwrap()
                .status();
            // 401 until the change feed brings the new key to this node.
            if status != 401 || tokio::time::Instant::now() >= end {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, 200);
    }
    let rotated = cli(&db, &config, &["key", "rotate", &ids[0]]);
    plaintexts.push(rotated["key"].as_str().unwrap().to_owned());
    cli(&db, &config, &["key", "revoke", &ids[1]]);
    cli(&db, &config, &["client", "disable", "Acme"]);

    // The flaky receiver fails every event's first attempt, then hangs past the timeout,
    // then recovers.
    flaky
        .wait_for(DEADLINE, |r| {
            r.iter()
                .filter(|d| d.answered == Some(500))
                .map(|d| &d.event_id)
                .collect::<BTreeSet<_>>()
                .len()
                == 6
        })
        .await;
    flaky.set_mode(ReceiverMode::Hang);
    let hung = flaky
        .wait_for(DEADLINE, |r| r.iter().any(|d| d.answered.is_none()))
        .await;
    assert!(hung.iter().any(|d| d.answered.is_none()), "never hung");
    flaky.set_mode(ReceiverMode::Accept);

    let delivered =
        wait_deliveries(&db, &config, "flaky", "delivered", |rows| rows.len() == 6).await;
    assert_eq!(
        delivered.len(),
        6,
        "flaky: {:#?}",
        deliveries(&db, &config, "flaky", None)
    );
    let expected: BTreeMap<String, String> = delivered
        .iter()
        .map(|d| {
            (
                d["event_id"].as_str().unwrap().to_owned(),
                d["event_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut types: Vec<&str> = expected.values().map(String::as_str).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "client.disabled",
            "key.created",
            "key.created",
            "key.created",
            "key.revoked",
            "key.rotated"
        ]
    );
    // Settled in the store means answered 2xx: each event was accepted exactly once.
    let accepted = flaky.accepted();
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &accepted {
        *per_event.entry(d.event_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_event.len(), 6, "{per_event:?}");
    assert!(
        per_event.values().all(|&n| n == 1),
        "an event was accepted twice: {per_event:?}"
    );
    for d in flaky.received() {
        assert!(
            d.signature_valid,
            "bad signature on {}: {}",
            d.event_id, d.signature
        );
        let body = d.json();
        assert_eq!(body["id"], d.event_id.as_str());
        assert_eq!(body["type"], d.event_type.as_str());
        assert_eq!(expected[&d.event_id], d.event_type);
    }
    let revoked = accepted
        .iter()
        .find(|d| d.event_type == "key.revoked")
        .unwrap()
        .json();
    assert_eq!(revoked["data"]["key"]["id"], ids[1].as_str());
    assert_eq!(revoked["data"]["client"]["name"], "Acme");
    assert!(revoked["data"]["key"]["hint"].as_str().unwrap().len() > 4);

    // The receiver that never answers is dead-lettered after its two attempts.
    let dead = wait_deliveries(&db, &config, "blackhole", "dead", |rows| rows.len() == 1).await;
    assert_eq!(
        dead.len(),
        1,
        "{:#?}",
        deliveries(&db, &config, "blackhole", None)
    );
    assert_eq!(dead[0]["attempts"], 2);
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("no answer") || error.contains("timed out"),
        "{error}"
    );
    // At most its two attempts reached it (one may time out before the receiver reads it).
    let reached = blackhole.wait_for(DEADLINE, |r| r.len() == 2).await;
    assert!((1..=2).contains(&reached.len()), "{}", reached.len());

    // `strict` refuses twice and is dead; once it recovers, an operator replays through a
    // node's admin API.
    let dead = wait_deliveries(&db, &config, "strict", "dead", |rows| rows.len() == 1).await;
    assert_eq!(
        dead.len(),
        1,
        "{:#?}",
        deliveries(&db, &config, "strict", None)
    );
    assert_eq!(dead[0]["last_status"], 503);
    strict.set_mode(ReceiverMode::Accept);
    let id = dead[0]["id"].as_i64().unwrap().to_string();
    let replayed = keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args([
                "--json",
                "--admin-url",
                &format!("http://{}", nodes[1].admin),
            ])
            .args(["webhooks", "replay", &id])
            .env("KEYGATE_ADMIN_TOKEN", &token),
    );
    assert_eq!(replayed["state"], "pending");
    let accepted = strict
        .wait_for(DEADLINE, |r| r.iter().any(|d| d.answered == Some(204)))
        .await;
    let ok: Vec<_> = accepted
        .iter()
        .filter(|d| d.answered == Some(204))
        .collect();
    assert_eq!(ok.len(), 1);
    assert!(ok[0].signature_valid);
    assert_eq!(ok[0].event_type, "client.disabled");
    wait_deliveries(&db, &config, "strict", "delivered", |rows| rows.len() == 1).await;

    // A delivered one is replayed on request (the receiver deduplicates on the event id).
    let again = &delivered[0];
    let again_id = again["id"].as_i64().unwrap().to_string();
    let shown = cli(&db, &config, &["webhooks", "show", &again_id]);
    assert_eq!(shown["body"]["id"], again["event_id"]);
    cli(&db, &config, &["webhooks", "replay", &again_id]);
    let event_id = again["event_id"].as_str().unwrap().to_owned();
    let twice = flaky
        .wait_for(DEADLINE, |r| {
            r.iter()
                .filter(|d| d.event_id == event_id && d.answered == Some(204))
                .count()
                == 2
        })
        .await;
    assert_eq!(
        twice
            .iter()
            .filter(|d| d.event_id == event_id && d.answered == Some(204))
            .count(),
        2
    );

    // No body, and no log line of either node, holds a key, a webhook secret or the token.
    let bodies: Vec<String> = [&flaky, &blackhole, &strict]
        .iter()
        .flat_map(|r| r.received())
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect();
    let mut secrets: Vec<&str> = plaintexts.iter().map(String::as_str).collect();
    secrets.extend([
        FLAKY_SECRET,
        STRICT_SECRET,
        BLACKHOLE_SECRET,
        token.as_str(),
    ]);
    let logs: Vec<String> = nodes.iter().map(|n| n.proc.stderr()).collect();
    assert!(
        logs.iter().any(|l| l.contains("Webhook delivered")),
        "the nodes log their deliveries"
    );
    for log in &logs {
        for secret in &secrets {
            assert!(!log.contains(secret), "a secret in a node's log");
        }
    }
    for body in &bodies {
        for secret in &secrets {
            assert!(!body.contains(secret), "a secret in a webhook body: {body}");
        }
    }
}

#[test]
fn check_config_refuses_unknown_events_short_secrets_duplicate_names_and_credentials_in_urls() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        r#"
[[webhooks]]
url = "https://user:pw@hooks.example.com/k"
secret = "0123456789abcdef"
events = ["key.*"]

[[webhooks]]
url = "https://hooks.example.com/k?token=abc"
secret = "short"
events = ["key.revoke"]

[[webhooks]]
name = "twice"
url = "http://127.0.0.1:9/a"
secret = "0123456789abcdef"
events = ["*"]

[[webhooks]]
name = "twice"
url = "http://127.0.0.1:9/b"
secret = "0123456789abcdef"
events = ["quota.*"]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user:password@"), "{err}");
    assert!(err.contains("at least 16 bytes"), "{err}");
    assert!(err.contains("`key.revoke` names no event"), "{err}");
    assert!(err.contains("another webhook is named `twice`"), "{err}");
    assert!(
        !err.contains("token=abc"),
        "a URL's query is never shown: {err}"
    );
}
