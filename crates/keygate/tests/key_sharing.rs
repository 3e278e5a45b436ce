//! Key-sharing detection against real `keygate serve` processes: two nodes on PostgreSQL and
//! Redis count a key's source networks together (one HyperLogLog per key and hour), a plan's
//! `[plans.NAME.sharing]` threshold records the key once (CLI, admin API, metric, audit) and
//! with `action = "disable"` both nodes refuse it; a caller that is not a trusted proxy
//! cannot make up networks with `X-Forwarded-For`. A real webhook receiver gets exactly one
//! signed `key.sharing_suspected` event per suspected key, with no key in its body.

mod operator;

use std::path::Path;
use std::time::{Duration, Instant};

use keygate_test::{http_client, postgres_schema, redis_url, Serving, WebhookReceiver};
use operator::{admin_token, cli, start};
use serde_json::Value;

const HOOK_SECRET: &str = "whsec_sharing_0123456789abcdef";

fn config(redis: &str, trusted: &str, hook: &str) -> String {
    format!(
        r#"
[server]
usage_flush = "200ms"

[outbox]
poll = "100ms"

[[webhooks]]
name = "sharing"
url = "{hook}"
secret = "{HOOK_SECRET}"
events = ["key.sharing_suspected"]

[limits]
backend = "redis"
redis_url = "{redis}"

[guard]
threshold = 100000
prefix_threshold = 100000
trusted_proxies = [{trusted}]

[plans.watched.sharing]
networks_per_hour = 3

[plans.strict.sharing]
networks_per_hour = 3
action = "disable"

[[routes]]
name = "rest"
path = "/v1/{{*rest}}"
"#
    )
}

/// One request from the client `from` (as a trusted proxy reports it): status and body.
async fn get_from(node: &Serving, key: &str, from: &str) -> (u16, Value) {
    let resp = http_client()
        .get(format!("http://{}/v1/things", node.listen))
        .header("X-API-Key", key)
        .header("X-Forwarded-For", from)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn suspected_ids(db: &str, config: &Path) -> Vec<String> {
    cli(db, config, &["key", "suspected"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (generously: the machine may be busy) until `key_id` is listed as suspected.
async fn until_suspected(db: &str, config: &Path, key_id: &str) {
    let started = Instant::now();
    while !suspected_ids(db, config).iter().any(|k| k == key_id) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{key_id} not suspected after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn suspected_total(node: &Serving) -> u64 {
    let text = http_client()
        .get(format!("http://{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("keygate_key_sharing_suspected_total "))
        .unwrap_or_else(|| panic!("no sharing metric in {text}"))
        .parse()
        .unwrap()
}

fn created(v: &Value) -> (String, String) {
    (
        v["key"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_and_redis_suspect_a_shared_key_once() {
    let (Some(redis), Some(db)) = (redis_url(), postgres_schema("kg_sharing").await) else {
        return;
    };
    let upstream = keygate_test::Upstream::start().await;
    let hook = WebhookReceiver::start(HOOK_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let trusting = dir.path().join("trusting.toml");
    std::fs::write(&trusting, config(&redis, "\"127.0.0.1/32\"", &hook.url())).unwrap();
    let untrusting = dir.path().join("untrusting.toml");
    std::fs::write(&untrusting, config(&redis, "", &hook.url())).unwrap();
    cli(&db, &trusting, &["migrate"]);
    for (name, plan) in [("Watched", "watched"), ("Strict", "strict")] {
        cli(&db, &trusting, &["client", "create", name, "--plan", plan]);
    }
    let key = |client: &str| created(&cli(&db, &trusting, &["key", "create", "--client", client]));
    let (two, two_id) = key("Watched");
    let (shared, shared_id) = key("Watched");
    let (spoofer, spoofer_id) = key("Watched");
    let (strict, strict_id) = key("Strict");
    let token = admin_token(&db, &trusting, "ops", false);
    let a = start(dir.path(), &db, &trusting, &upstream.url(), "a").await;
    let b = start(dir.path(), &db, &trusting, &upstream.url(), "b").await;
    let c = start(dir.path(), &db, &untrusting, &upstream.url(), "c").await;

    // Two networks (several addresses in each, over both nodes): not suspected.
    for (node, from) in [
        (&a, "198.51.100.7"),
        (&b, "198.51.100.200"),
        (&a, "203.0.113.1"),
        (&b, "203.0.113.99"),
    ] {
        assert_eq!(get_from(node, &two, from).await.0, 200);
    }
    // Three networks, seen by different nodes: counted together in Redis, suspected once.
    for (node, from) in [
        (&a, "192.0.2.1"),
        (&b, "198.51.100.1"),
        (&a, "2001:db8:1::1"),
    ] {
        assert_eq!(get_from(node, &shared, from).await.0, 200);
    }
    until_suspected(&db, &trusting, &shared_id).await;
    // More networks within the hour record nothing more.
    for (node, from) in [(&b, "192.0.3.1"), (&a, "192.0.4.1"), (&b, "192.0.5.1")] {
        assert_eq!(
            get_from(node, &shared, from).await.0,
            200,
            "flag keeps it working"
        );
    }

    // The attacker's view: a caller that is not a trusted proxy names five networks in
    // X-Forwarded-For; node c believes none of them (its peer, 127.0.0.1, is one network).
    for from in ["10.1.0.1", "10.2.0.1", "10.3.0.1", "10.4.0.1", "10.5.0.1"] {
        assert_eq!(get_from(&c, &spoofer, from).await.0, 200);
    }

    // `action = "disable"`: the key is refused as any disabled key, on both nodes.
    for (node, from) in [(&a, "192.0.2.9"), (&b, "198.51.100.9"), (&a, "203.0.113.9")] {
        assert_eq!(get_from(node, &strict, from).await.0, 200);
    }
    until_suspected(&db, &trusting, &strict_id).await;
    let started = Instant::now();
    for node in [&a, &b] {
        loop {
            let (status, body) = get_from(node, &strict, "192.0.2.9").await;
            if status == 401 {
                assert_eq!(body["code"], "key_disabled", "{body}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the strict key still answers {status} on {}",
                node.listen
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Let several flushes pass (every 200 ms), then the record holds exactly one per key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids = suspected_ids(&db, &trusting);
    ids.sort();
    let mut expected = vec![shared_id.clone(), strict_id.clone()];
    expected.sort();
    assert_eq!(
        ids, expected,
        "two networks and spoofed ones are not suspected"
    );
    assert!(!ids.contains(&two_id) && !ids.contains(&spoofer_id));
    // Counted by the node that recorded each: two over the deployment.
    assert_eq!(suspected_total(&a).await + suspected_total(&b).await, 2);
    assert_eq!(suspected_total(&c).await, 0);

    // The admin API and the CLI through it say the same, with the plan's action.
    let listed = http_client()
        .get(format!("http://{}/v1/keys/suspected", a.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let listed: Value = listed.json().await.unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    for item in items {
        let action = if item["key_id"] == strict_id.as_str() {
            "disable"
        } else {
            "flag"
        };
        assert_eq!(item["action"], action, "{item}");
        assert!(item["networks"].as_u64().unwrap() >= 3, "{item}");
        assert!(item["client_id"].as_str().unwrap().starts_with("cli_"));
    }
    let bad = http_client()
        .get(format!(
            "http://{}/v1/keys/suspected?since=yesterday",
            a.admin
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let anonymous = http_client()
        .get(format!("http://{}/v1/keys/suspected", a.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The audit: one entry per suspicion by the detector, and the disable it made.
    let audit = cli(
        &db,
        &trusting,
        &["audit", "--action", "key.sharing_suspected"],
    );
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    assert!(entries.iter().all(|e| e["actor"] == "sharing-detector"));
    let disables = cli(&db, &trusting, &["audit", "--action", "key.disable"]);
    assert_eq!(disables.as_array().unwrap().len(), 1, "{disables}");
    assert_eq!(disables[0]["target"], strict_id.as_str());

    // The webhook: exactly one signed `key.sharing_suspected` per suspected key, whichever
    // of the three nodes delivered it, and none for the others.
    hook.wait_for(Duration::from_secs(60), |r| {
        r.iter().filter(|d| d.answered == Some(204)).count() >= 2
    })
    .await;
    // Several outbox polls (every 100 ms) more: nothing is delivered twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = hook.received();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    let mut events: Vec<(String, String)> = Vec::new();
    for d in &delivered {
        assert!(d.signature_valid, "{d:?}");
        assert_eq!(d.event_type, "key.sharing_suspected", "{d:?}");
        let body = d.json();
        assert_eq!(body["type"], "key.sharing_suspected", "{body}");
        let text = body.to_string();
        let key_id = [&shared_id, &strict_id, &two_id, &spoofer_id]
            .into_iter()
            .find(|id| text.contains(id.as_str()))
            .unwrap_or_else(|| panic!("no key id in {body}"));
        events.push((key_id.clone(), d.event_id.clone()));
        for plain in [&two, &shared, &spoofer, &strict] {
            assert!(!text.contains(plain.as_str()), "a key in the webhook body");
        }
    }
    events.sort();
    let mut expected_keys = vec![shared_id.clone(), strict_id.clone()];
    expected_keys.sort();
    assert_eq!(
        events.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
        expected_keys
    );
    assert_ne!(events[0].1, events[1].1, "two events, two ids");

    // Never key material: not in the listing, the audit, or the logs.
    let everything = format!("{listed}{audit}");
    for plain in [&two, &shared, &spoofer, &strict] {
        assert!(!everything.contains(plain.as_str()));
        for node in [&a, &b, &c] {
            assert!(!node.proc.stderr().contains(plain.as_str()));
        }
    }
}
