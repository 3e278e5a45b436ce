//! Per-key restrictions (issue 22) against real `keygate serve` processes and a real upstream:
//! a narrowed key is refused `key_scope_missing` where its client's other key passes; a CIDR
//! allowlist refuses `ip_not_allowed` (REST, verify and a WebSocket open), believing
//! `X-Forwarded-For` only from a trusted proxy; a key never widens its client; hostile
//! metadata, external ids and CIDRs are refused; whoami and verify show what a key is; and a
//! change reaches a second node on PostgreSQL within a second.

mod operator;

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{http_client, postgres_schema, Serving};
use operator::{admin_token, cli, get, run, start, until_every_node};
use serde_json::{json, Value};

/// A sport namespace with templated scopes, a route without scopes, and a WebSocket stream
/// (its upstream appended per test). `127.0.0.50` is the trusted proxy.
const ROUTES: &str = r#"
[server]
feed_poll = "100ms"

[guard]
threshold = 100000
prefix_threshold = 100000
trusted_proxies = ["127.0.0.50"]

[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
sport_param = "sport"
scopes = ["{sport}:matches:list"]

[[routes]]
name = "data"
path = "/data/{*rest}"
"#;

/// A CLI call that must fail; its stderr.
fn cli_refused(db: &str, config: &Path, args: &[&str]) -> String {
    let out = run(db, config, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A client whose requests leave from `ip` (any 127/8 address is this host's).
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// One GET from `ip` with `key` and extra headers: its status and JSON body (null if none).
async fn get_from(
    ip: &str,
    listen: &str,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = from(ip)
        .get(format!("http://{listen}{path}"))
        .header("X-API-Key", key);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An admin API call with the token: status and JSON body.
async fn admin(
    node: &Serving,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http_client()
        .request(
            method.parse().unwrap(),
            format!("http://{}{path}", node.admin),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn key_of(issued: &Value) -> String {
    issued["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_scopes_cidrs_and_labels_on_a_real_gateway() {
    let upstream = keygate_test::Upstream::start().await;
    let ws = keygate_test::WsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "{ROUTES}\n[upstreams.live]\nurl = \"{}\"\n\n[[routes]]\nname = \"stream\"\npath = \"/stream/{{sport}}\"\nsport_param = \"sport\"\nupstream = \"live\"\nws = {{ mode = \"handshake\" }}\n",
            ws.url()
        ),
    )
    .unwrap();
    cli(db, &config, &["migrate"]);
    let scopes = "cs2:matches:list,dota2:matches:list";
    cli(
        db,
        &config,
        &[
            "client",
            "create",
            "Acme",
            "--scopes",
            scopes,
            "--sports",
            "cs2,dota2",
        ],
    );
    let full = key_of(&cli(db, &config, &["key", "create", "--client", "Acme"]));
    let narrow_doc = cli(
        db,
        &config,
        &[
            "key",
            "create",
            "--client",
            "Acme",
            "--scopes",
            "cs2:matches:list",
            "--metadata",
            "team=odds",
            "--metadata",
            "env=prod",
            "--external-id",
            "crm-42",
        ],
    );
    assert_eq!(
        narrow_doc["scopes"],
        json!(["cs2:matches:list"]),
        "{narrow_doc}"
    );
    assert_eq!(narrow_doc["external_id"], "crm-42");
    let narrow = key_of(&narrow_doc);
    let narrow_id = narrow_doc["id"].as_str().unwrap().to_owned();
    let elsewhere = key_of(&cli(
        db,
        &config,
        &["key", "create", "--client", "Acme", "--cidrs", "10.0.0.0/8"],
    ));
    let here_doc = cli(
        db,
        &config,
        &[
            "key",
            "create",
            "--client",
            "Acme",
            "--cidrs",
            "127.0.0.0/8,::1",
        ],
    );
    let here = key_of(&here_doc);
    let here_id = here_doc["id"].as_str().unwrap().to_owned();
    let behind_proxy = key_of(&cli(
        db,
        &config,
        &[
            "key",
            "create",
            "--client",
            "Acme",
            "--cidrs",
            "203.0.113.0/24",
        ],
    ));
    let token = admin_token(db, &config, "ops", false);

    // A key never widens its client: refused at issue and at update, nothing written.
    let said = cli_refused(
        db,
        &config,
        &["key", "create", "--client", "Acme", "--scopes", "cs2:admin"],
    );
    assert!(
        said.contains("cs2:admin") && said.contains("never widen"),
        "{said}"
    );
    let said = cli_refused(
        db,
        &config,
        &[
            "key",
            "restrict",
            &narrow_id,
            "--scopes",
            "cs2:matches:list,cs2:admin",
        ],
    );
    assert!(said.contains("cs2:admin"), "{said}");
    let said = cli_refused(
        db,
        &config,
        &["key", "create", "--client", "Acme", "--cidrs", "0.0.0.0/0"],
    );
    assert!(said.contains("every address"), "{said}");
    let said = cli_refused(
        db,
        &config,
        &[
            "key",
            "create",
            "--client",
            "Acme",
            "--cidrs",
            "10.0.0.0/33",
        ],
    );
    assert!(said.contains("not a CIDR"), "{said}");
    assert_eq!(
        cli(db, &config, &["key", "list", "--client", "Acme"])
            .as_array()
            .unwrap()
            .len(),
        5
    );

    let node = start(dir.path(), db, &config, &upstream.url(), "node").await;
    let listen = node.listen.clone();

    // Narrowed: the client's other scope is refused with the key's own reason, rendered by
    // the profile; the client's other key passes; the upstream sees only the kept scopes.
    let (s, body) = get(&listen, "/dota2/v1/matches", &narrow).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["code"], "key_scope_missing", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("dota2:matches:list"),
        "{body}"
    );
    assert_eq!(get(&listen, "/dota2/v1/matches", &full).await.0, 200);
    assert_eq!(get(&listen, "/cs2/v1/matches", &narrow).await.0, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("x-keygate-scopes"), Some("cs2:matches:list"));
    assert_eq!(get(&listen, "/cs2/v1/matches", &full).await.0, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        seen.header("x-keygate-scopes"),
        Some("cs2:matches:list dota2:matches:list")
    );

    // CIDRs: 127.0.0.1 is outside 10/8 and inside 127/8.
    let (s, body) = get(&listen, "/data/x", &elsewhere).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["code"], "ip_not_allowed", "{body}");
    assert!(
        !body.to_string().contains("10.0.0.0"),
        "the allowlist is not told: {body}"
    );
    assert_eq!(get(&listen, "/data/x", &here).await.0, 200);

    // Behind a proxy: X-Forwarded-For is believed only from the trusted 127.0.0.50. An
    // attacker at 127.0.0.1 spoofing an allowed address gets nowhere.
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let (s, body) = get_from(
        "127.0.0.1",
        &listen,
        "/data/x",
        &behind_proxy,
        &xff("203.0.113.9"),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("ip_not_allowed")),
        "{body}"
    );
    let (s, _) = get_from(
        "127.0.0.50",
        &listen,
        "/data/x",
        &behind_proxy,
        &xff("203.0.113.9"),
    )
    .await;
    assert_eq!(s, 200, "the trusted proxy's report is believed");
    let (s, _) = get_from(
        "127.0.0.50",
        &listen,
        "/data/x",
        &behind_proxy,
        &xff("198.51.100.1"),
    )
    .await;
    assert_eq!(s, 403);
    // The attacker prepends an allowed address: the walk stops at the first untrusted hop
    // from the right, which is the attacker's own.
    let (s, _) = get_from(
        "127.0.0.50",
        &listen,
        "/data/x",
        &behind_proxy,
        &xff("203.0.113.9, 198.51.100.1"),
    )
    .await;
    assert_eq!(s, 403);

    // A WebSocket open is refused before the upgrade, by the same guard.
    let url = |k: &str| (format!("ws://{listen}/stream/cs2"), k.to_owned());
    let (u, k) = url(&elsewhere);
    assert_eq!(keygate_test::ws_connect(&u, &k).await.err(), Some(403));
    let (u, k) = url(&here);
    let mut session = keygate_test::ws_connect(&u, &k)
        .await
        .expect("an allowed upgrade");

    // whoami: effective scopes, expiry, CIDRs, metadata, external id.
    let (s, who) = get(&listen, "/v1/whoami", &narrow).await;
    assert_eq!(s, 200, "{who}");
    let d = &who["data"];
    assert_eq!(d["scopes"], json!(["cs2:matches:list"]), "{who}");
    assert_eq!(
        d["metadata"],
        json!({"env": "prod", "team": "odds"}),
        "{who}"
    );
    assert_eq!(d["external_id"], "crm-42", "{who}");
    assert_eq!(d["allowed_cidrs"], json!([]), "{who}");
    assert_eq!(d["expires_at"], Value::Null, "{who}");
    let (_, who) = get(&listen, "/v1/whoami", &here).await;
    assert_eq!(
        who["data"]["allowed_cidrs"],
        json!(["127.0.0.0/8", "::1/128"]),
        "{who}"
    );
    assert_eq!(
        who["data"]["scopes"],
        json!(["cs2:matches:list", "dota2:matches:list"])
    );

    // verify: the same reasons; `ip` names the application's caller, and a malformed one is
    // a bad request, not a pass.
    let verify = |body: Value| {
        let listen = listen.clone();
        async move {
            let resp = http_client()
                .post(format!("http://{listen}/v1/keys/verify"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let v = verify(json!({ "key": narrow, "path": "/dota2/v1/matches" })).await;
    assert_eq!(
        (v["valid"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("key_scope_missing")),
        "{v}"
    );
    let v = verify(json!({ "key": narrow, "scopes": ["dota2:matches:list"] })).await;
    assert_eq!(v["reason"], "key_scope_missing", "{v}");
    let v = verify(json!({ "key": narrow, "path": "/cs2/v1/matches" })).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["scopes"], json!(["cs2:matches:list"]), "{v}");
    assert_eq!(v["external_id"], "crm-42", "{v}");
    assert_eq!(v["metadata"]["team"], "odds", "{v}");
    let v = verify(json!({ "key": elsewhere, "path": "/data/x", "ip": "10.1.2.3" })).await;
    assert_eq!(v["valid"], true, "{v}");
    let v = verify(json!({ "key": elsewhere, "path": "/data/x" })).await;
    assert_eq!(v["reason"], "ip_not_allowed", "{v}");
    let v = verify(json!({ "key": elsewhere, "path": "/data/x", "ip": "10.1.2.3/8" })).await;
    assert_eq!(v["reason"], "bad_request", "{v}");

    // The admin API: hostile bodies are refused with the field named and change nothing.
    let path = format!("/v1/keys/{narrow_id}");
    let entries = |n: usize| -> serde_json::Map<String, Value> {
        (0..n).map(|i| (format!("k{i}"), json!("v"))).collect()
    };
    // 10,000 entries do not fit the admin API's 64 KiB body: refused unread.
    let (s, _) = admin(
        &node,
        &token,
        "PATCH",
        &path,
        Some(json!({ "metadata": entries(10_000) })),
    )
    .await;
    assert_eq!(s, 413);
    let many = entries(4_000);
    for (body, field) in [
        (json!({ "metadata": many }), "metadata"),
        (
            json!({ "metadata": { "team": "x".repeat(257) } }),
            "metadata",
        ),
        (
            json!({ "metadata": { "team": "\u{1b}[31mred" } }),
            "metadata",
        ),
        (json!({ "metadata": { "a\nb": "c" } }), "metadata"),
        (json!({ "external_id": "x".repeat(129) }), "external_id"),
        (json!({ "external_id": "crm 42" }), "external_id"),
        (
            json!({ "allowed_cidrs": ["10.0.0.0/8; DROP TABLE keys"] }),
            "allowed_cidrs",
        ),
        (json!({ "allowed_cidrs": ["::/0"] }), "allowed_cidrs"),
        (
            json!({ "allowed_cidrs": (0..33).map(|i| format!("10.0.{i}.0/24")).collect::<Vec<_>>() }),
            "allowed_cidrs",
        ),
        (
            json!({ "scopes": ["dota2:matches:list", "cs2:admin"] }),
            "scopes",
        ),
    ] {
        let (s, problem) = admin(&node, &token, "PATCH", &path, Some(body)).await;
        assert_eq!(s, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(
            problem.to_string().len() < 2_000,
            "the echo is bounded: {problem}"
        );
    }
    let (s, _) = admin(
        &node,
        &token,
        "PATCH",
        &path,
        Some(json!({ "external_id": "x".repeat(100_000) })),
    )
    .await;
    assert_eq!(s, 413, "a body over 64 KiB is refused unread");
    let (_, shown) = admin(&node, &token, "GET", &path, None).await;
    assert_eq!(shown["scopes"], json!(["cs2:matches:list"]), "{shown}");
    assert_eq!(shown["external_id"], "crm-42", "{shown}");

    // Found by external id.
    let (_, page) = admin(&node, &token, "GET", "/v1/keys?external_id=crm-42", None).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [narrow_id.as_str()], "{page}");
    let found = cli(db, &config, &["key", "list", "--external-id", "crm-42"]);
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    // Unique per client: a second key cannot take it.
    let (s, problem) = admin(
        &node,
        &token,
        "POST",
        "/v1/keys",
        Some(json!({ "client": "Acme", "external_id": "crm-42" })),
    )
    .await;
    assert_eq!(s, 409, "{problem}");

    // Changed later (admin API): the node follows the change feed; widening the key back to
    // all of its client's scopes is `null`.
    let (s, changed) = admin(
        &node,
        &token,
        "PATCH",
        &path,
        Some(json!({ "scopes": null })),
    )
    .await;
    assert_eq!(s, 200, "{changed}");
    assert!(changed.get("scopes").is_none(), "{changed}");
    until_every_node(
        &[&node],
        "/dota2/v1/matches",
        &narrow,
        200,
        Duration::from_secs(5),
    )
    .await;
    // ... and through the CLI, on the same database.
    cli(
        db,
        &config,
        &["key", "restrict", &narrow_id, "--cidrs", "192.0.2.0/24"],
    );
    until_every_node(
        &[&node],
        "/cs2/v1/matches",
        &narrow,
        403,
        Duration::from_secs(5),
    )
    .await;
    cli(db, &config, &["key", "restrict", &narrow_id, "--cidrs", ""]);
    until_every_node(
        &[&node],
        "/cs2/v1/matches",
        &narrow,
        200,
        Duration::from_secs(5),
    )
    .await;
    // An open session of a key narrowed afterwards to addresses that exclude it is closed,
    // as a revoked key's is.
    cli(
        db,
        &config,
        &["key", "restrict", &here_id, "--cidrs", "10.0.0.0/8"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, session.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break None,
            Err(_) => panic!("the session of a key narrowed away from it is still open"),
        }
    };
    eprintln!("closed with {closed:?}");
    let audit = cli(db, &config, &["audit", "--action", "key.restrict"]);
    let rows = audit
        .as_array()
        .cloned()
        .or_else(|| audit["items"].as_array().cloned())
        .unwrap();
    assert_eq!(rows.len(), 4, "{audit}");
    assert!(rows.iter().any(|r| r["actor"] == "admin:ops"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restriction_reaches_a_second_node_on_postgres_within_a_second() {
    let Some(db) = postgres_schema("kg_restrict").await else {
        return;
    };
    let upstream = keygate_test::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, ROUTES).unwrap();
    cli(&db, &config, &["migrate"]);
    cli(
        &db,
        &config,
        &[
            "client",
            "create",
            "Acme",
            "--scopes",
            "cs2:matches:list,dota2:matches:list",
            "--sports",
            "cs2,dota2",
        ],
    );
    let issued = cli(&db, &config, &["key", "create", "--client", "Acme"]);
    let key = key_of(&issued);
    let id = issued["id"].as_str().unwrap().to_owned();
    let token = admin_token(&db, &config, "ops", false);
    let a = start(dir.path(), &db, &config, &upstream.url(), "a").await;
    let b = start(dir.path(), &db, &config, &upstream.url(), "b").await;
    let nodes = [&a, &b];
    let second = Duration::from_secs(1);
    until_every_node(&nodes, "/dota2/v1/matches", &key, 200, second).await;

    // Narrowed on node a: both nodes refuse the dropped scope within a second.
    let path = format!("/v1/keys/{id}");
    let (s, body) = admin(
        &a,
        &token,
        "PATCH",
        &path,
        Some(json!({ "scopes": ["cs2:matches:list"] })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let took = until_every_node(&nodes, "/dota2/v1/matches", &key, 403, second).await;
    eprintln!("a narrowed scope reached both nodes in {took:?}");
    until_every_node(&nodes, "/cs2/v1/matches", &key, 200, second).await;

    // A CIDR allowlist that excludes this host, then none again.
    admin(
        &a,
        &token,
        "PATCH",
        &path,
        Some(json!({ "allowed_cidrs": ["10.0.0.0/8"] })),
    )
    .await;
    let took = until_every_node(&nodes, "/cs2/v1/matches", &key, 403, second).await;
    eprintln!("a CIDR allowlist reached both nodes in {took:?}");
    let (_, body) = get(&b.listen, "/cs2/v1/matches", &key).await;
    assert_eq!(body["code"], "ip_not_allowed", "{body}");
    admin(
        &a,
        &token,
        "PATCH",
        &path,
        Some(json!({ "allowed_cidrs": [], "scopes": null })),
    )
    .await;
    until_every_node(&nodes, "/dota2/v1/matches", &key, 200, second).await;

    // The client loses a scope the key kept: the intersection simply drops it.
    admin(
        &a,
        &token,
        "PATCH",
        &path,
        Some(json!({ "scopes": ["cs2:matches:list", "dota2:matches:list"] })),
    )
    .await;
    cli(
        &db,
        &config,
        &["client", "update", "Acme", "--scopes", "dota2:matches:list"],
    );
    until_every_node(&nodes, "/cs2/v1/matches", &key, 403, second).await;
    let (_, body) = get(&a.listen, "/cs2/v1/matches", &key).await;
    assert_eq!(
        body["code"], "scope_missing",
        "the client's own refusal first: {body}"
    );
    let (_, who) = get(&b.listen, "/v1/whoami", &key).await;
    assert_eq!(
        who["data"]["scopes"],
        json!(["dota2:matches:list"]),
        "{who}"
    );
}
