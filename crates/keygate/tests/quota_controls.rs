//! Weighted routes, quota top-ups and resets, and quota webhook events, against real
//! `keygate serve` processes: two nodes on PostgreSQL sharing Redis limits spend a route's
//! `cost` of the client's daily quota, see an operator's top-up and reset within the feed
//! interval, and announce `quota.80` / `quota.100` once per window, signed and without a key;
//! the CLI (on the database and through a node) and the audit log; and the attacker's inputs
//! (to the admin API, the CLI and the configuration) refused.

mod operator;

use std::process::Command;
use std::time::{Duration, Instant};

use keygate_test::{http_client, postgres_schema, redis_url, Serving, Upstream, WebhookReceiver};
use operator::{admin_token, cli, remote, run, start_logging};
use serde_json::{json, Value};

const SECRET: &str = "whsec_quota_0123456789abcdef";
/// Generous: the machine running the suite is busy.
const DEADLINE: Duration = Duration::from_secs(30);

fn config_text(limits: &str, hook: &str) -> String {
    format!(
        r#"{limits}
[guard]
threshold = 100000
prefix_threshold = 100000

[outbox]
poll = "100ms"

[plans.metered]
limits = {{ per_day = 10 }}

[[webhooks]]
name = "billing"
url = "{hook}"
secret = "{SECRET}"
events = ["quota.*"]
backoff = "200ms"

[[routes]]
name = "heavy"
path = "/v1/heavy"
cost = 5

[[routes]]
name = "rest"
path = "/v1/{{*rest}}"
"#
    )
}

/// One request: its status and `X-RateLimit-Remaining`.
async fn get(node: &Serving, path: &str, key: &str) -> (u16, Option<u64>) {
    let resp = http_client()
        .get(format!("http://{}{path}", node.listen))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (resp.status().as_u16(), remaining)
}

/// Sends `path` to `node` until it answers `status` (each try may spend quota when it is
/// admitted: callers wait for the first 200 after a change).
async fn until(node: &Serving, path: &str, key: &str, status: u16) -> (u16, Option<u64>) {
    let started = Instant::now();
    loop {
        let answer = get(node, path, key).await;
        if answer.0 == status {
            return answer;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{path} on {} still answers {}, not {status}",
            node.listen,
            answer.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn day_window(report: &Value) -> Value {
    report["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == "day")
        .cloned()
        .unwrap_or_else(|| panic!("no day window in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_spend_route_costs_apply_top_ups_and_resets_and_announce_thresholds_once() {
    let (Some(redis), Some(db)) = (redis_url(), postgres_schema("kg_quota").await) else {
        return;
    };
    let upstream = Upstream::start().await;
    let hook = WebhookReceiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    let limits =
        format!("[limits]\nbackend = \"redis\"\nredis_url = \"{redis}\"\ntimeout = \"5s\"\n");
    std::fs::write(&config, config_text(&limits, &hook.url())).unwrap();
    cli(&db, &config, &["migrate"]);
    cli(
        &db,
        &config,
        &["client", "create", "Acme", "--plan", "metered"],
    );
    let key = cli(&db, &config, &["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = admin_token(&db, &config, "ops", false);
    let a = start_logging(dir.path(), &db, &config, &upstream.url(), "a", "info").await;
    let b = start_logging(dir.path(), &db, &config, &upstream.url(), "b", "info").await;

    // cost = 5 on a 10/day quota: two requests (one per node, one shared count) spend it all;
    // the third, and a cost-1 request after it, get the profile's quota refusal.
    assert_eq!(get(&a, "/v1/heavy", &key).await, (200, Some(5)));
    assert_eq!(get(&b, "/v1/heavy", &key).await, (200, Some(0)));
    let refused = http_client()
        .get(format!("http://{}/v1/heavy", a.listen))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["status"], 429, "{problem}");
    assert_eq!(get(&b, "/v1/cheap", &key).await.0, 429);

    // The node's view: 10 of 10 used, nothing topped up.
    let shown = remote(&a.admin, &token, &config, &["client", "quota", "Acme"]);
    let day = day_window(&shown);
    assert_eq!(
        (&day["plan"], &day["allowance"], &day["used"], &day["topup"]),
        (&json!(10), &json!(10), &json!(10), &json!(0)),
        "{shown}"
    );

    // A top-up of 2 (the CLI on the database): both nodes admit exactly 2 more, one each.
    let topped = cli(&db, &config, &["client", "quota", "Acme", "--add", "2"]);
    let day = day_window(&topped);
    assert_eq!((&day["topup"], &day["allowance"]), (&json!(2), &json!(12)));
    assert_eq!(
        day["used"],
        Value::Null,
        "the CLI on a database has no limiter"
    );
    assert_eq!(until(&a, "/v1/cheap", &key, 200).await, (200, Some(1)));
    assert_eq!(until(&b, "/v1/cheap", &key, 200).await, (200, Some(0)));
    assert_eq!(get(&a, "/v1/cheap", &key).await.0, 429);
    assert_eq!(get(&b, "/v1/cheap", &key).await.0, 429);

    // A reset of the day (through a node's admin API): both nodes count from zero, the
    // top-up stays (12), and the heavy route spends it again.
    let reset = remote(
        &b.admin,
        &token,
        &config,
        &["client", "quota", "Acme", "--reset", "--window", "day"],
    );
    assert_eq!(day_window(&reset)["resets"], 1, "{reset}");
    let (_, left) = until(&a, "/v1/heavy", &key, 200).await;
    assert_eq!(left, Some(7));
    // b may not have applied the reset yet when a did: it answers 200 once it has.
    let (_, left) = until(&b, "/v1/heavy", &key, 200).await;
    assert_eq!(left, Some(2));
    assert_eq!(get(&a, "/v1/heavy", &key).await.0, 429);
    assert_eq!(get(&b, "/v1/cheap", &key).await, (200, Some(1)));
    let shown = remote(&b.admin, &token, &config, &["client", "quota", "Acme"]);
    let day = day_window(&shown);
    assert_eq!(
        (
            &day["allowance"],
            &day["used"],
            &day["remaining"],
            &day["resets"]
        ),
        (&json!(12), &json!(11), &json!(1), &json!(1)),
        "{shown}"
    );

    // Audited, with who did it.
    let audit = cli(
        &db,
        &config,
        &["audit", "--action", "client.", "--limit", "100"],
    );
    let rows = audit["entries"].as_array().or(audit.as_array()).unwrap();
    let actions: Vec<&str> = rows.iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"client.quota_topup"), "{audit}");
    assert!(actions.contains(&"client.quota_reset"), "{audit}");
    let topup = rows
        .iter()
        .find(|r| r["action"] == "client.quota_topup")
        .unwrap();
    assert_eq!(topup["detail"]["add"], 2, "{topup}");
    let by_token = rows
        .iter()
        .find(|r| r["action"] == "client.quota_reset")
        .unwrap();
    assert!(
        by_token["actor"].as_str().unwrap().contains("ops"),
        "{by_token}"
    );

    // One quota.80 and one quota.100 for the window, although the window crossed both twice
    // (before and after the reset), once on each node: signed, and no key in the body.
    let got = hook
        .wait_for(DEADLINE, |d| {
            d.iter()
                .filter(|x| x.event_type.starts_with("quota."))
                .count()
                >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = {
        let later = hook.received();
        assert!(later.len() >= got.len());
        later
    };
    let mut types: Vec<&str> = got.iter().map(|d| d.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["quota.100", "quota.80"], "exactly one of each");
    for d in &got {
        assert!(d.signature_valid, "{} is signed", d.event_type);
        let body = String::from_utf8_lossy(&d.body);
        assert!(!body.contains(&key), "no key in {body}");
        let data = &d.json()["data"];
        assert_eq!(data["window"], "day", "{body}");
        assert_eq!(data["allowance"], 10, "{body}");
        assert_eq!(
            data["used"], 10,
            "the request that crossed both spent 5 to 10: {body}"
        );
        assert!(data["client"]["id"].as_str().unwrap().starts_with("cli_"));
    }
    for node in [&a, &b] {
        let logs = node.proc.stderr();
        assert!(!logs.contains(&key), "a node logged the key");
    }
}

async fn post(admin: &str, token: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = http_client()
        .post(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_quota_changes_and_costs_are_refused() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, config_text("", "http://127.0.0.1:9/hook")).unwrap();
    cli(
        db,
        &config,
        &["client", "create", "Acme", "--plan", "metered"],
    );
    let token = admin_token(db, &config, "ops", false);
    let reader = admin_token(db, &config, "viewer", true);
    let node = start_logging(dir.path(), db, &config, &upstream.url(), "n", "info").await;
    let path = "/v1/clients/Acme/quota";
    for (body, status, code) in [
        (r#"{"add": 0}"#, 422, "invalid_value"),
        (r#"{"add": -1}"#, 422, "invalid_body"),
        (r#"{"add": 1000000001}"#, 422, "invalid_value"),
        (r#"{"add": 18446744073709551616}"#, 422, "invalid_body"),
        (r#"{"add": 1e3}"#, 422, "invalid_body"),
        (r#"{"add": "5"}"#, 422, "invalid_body"),
        (r#"{"add": 5, "reset": true}"#, 422, "invalid_value"),
        (r#"{}"#, 422, "invalid_value"),
        (r#"{"reset": false}"#, 422, "invalid_value"),
        (r#"{"add": 5, "window": "week"}"#, 422, "invalid_value"),
        (r#"{"add": 5, "window": "DAY"}"#, 422, "invalid_value"),
        (r#"{"add": 5, "extra": 1}"#, 422, "invalid_body"),
        (r#"{"add": 5"#, 400, "malformed_json"),
    ] {
        let (got, problem) = post(&node.admin, &token, path, body).await;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{body}: {problem}");
    }
    // A window's top-ups add up to at most 10^12: the 1001st billion is refused, whole.
    for _ in 0..1000 {
        let (s, p) = post(&node.admin, &token, path, r#"{"add": 1000000000}"#).await;
        assert_eq!(s, 200, "{p}");
    }
    let (s, p) = post(&node.admin, &token, path, r#"{"add": 1000000000}"#).await;
    assert_eq!((s, &p["code"]), (422, &json!("invalid_value")), "{p}");
    let shown = cli(db, &config, &["client", "quota", "Acme"]);
    assert_eq!(day_window(&shown)["topup"], 1_000_000_000_000u64);

    let (s, p) = post(
        &node.admin,
        &token,
        "/v1/clients/Nobody/quota",
        r#"{"add": 1}"#,
    )
    .await;
    assert_eq!((s, &p["code"]), (404, &json!("client_not_found")), "{p}");
    let (s, _) = post(&node.admin, &reader, path, r#"{"reset": true}"#).await;
    assert_eq!(s, 403, "a read-only token cannot change a quota");
    let shown = http_client()
        .get(format!("http://{}{path}", node.admin))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status().as_u16(), 200);

    // The CLI refuses the same before asking anyone.
    for args in [
        &["client", "quota", "Acme", "--add", "0"][..],
        &["client", "quota", "Acme", "--add", "-5"],
        &[
            "client",
            "quota",
            "Acme",
            "--add",
            "99999999999999999999999",
        ],
        &["client", "quota", "Acme", "--add", "5", "--window", "week"],
        &["client", "quota", "Acme", "--add", "5", "--reset"],
        &["client", "quota", "Nobody", "--add", "5"],
    ] {
        let out = run(db, &config, args);
        assert!(!out.status.success(), "{args:?} was accepted");
    }

    // A cost out of 1..=1000, or not a number, is a configuration error with its line.
    for (cost, why) in [
        ("0", "out of range"),
        ("-3", "out of range"),
        ("1001", "out of range"),
        ("99999999999", "out of range"),
        ("\"5\"", "invalid type"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            format!("[upstreams.default]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"r\"\npath = \"/x\"\ncost = {cost}\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["check-config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "cost = {cost} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "cost = {cost}: {err}");
        assert!(err.contains("bad.toml:7"), "cost = {cost}: {err}");
    }
}
