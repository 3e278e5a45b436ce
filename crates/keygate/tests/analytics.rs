//! Analytics (issue 23) against a real `keygate serve`, a real HTTP upstream and a real
//! WebSocket upstream: requests of two keys on two routes answered 200, 404 and 429 show in
//! `GET /v1/analytics` (JSON and CSV) and in `keygate usage --by route --csv` with exactly the
//! counts the callers saw, once flushed; the latency histogram counts every forwarded request;
//! a WebSocket session's messages and bytes are counted; and an attacker's view of the API:
//! no token, bad dates, reversed and huge ranges, SQL-ish filters, unknown groupings, a route
//! name made to be a spreadsheet formula, and never a key in an answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{http_client, Serving, Upstream, WsUpstream};
use serde_json::Value;

/// A route name a spreadsheet would run as a formula.
const FORMULA: &str = "=HYPERLINK(\"http://evil.example\",\"x\")";

fn cli(db: &str, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config", config.to_str().unwrap(), "--db", db])
        .args(args)
        .env_remove("KEYGATE_DB")
        .env_remove("KEYGATE_ADMIN_URL")
        .output()
        .unwrap()
}

fn cli_json(db: &str, config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = cli(db, config, &all);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `GET` on the admin API: status, content type and body text.
async fn admin_get(
    node: &Serving,
    token: Option<&str>,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut req = http_client().get(format!("http://{}{path}", node.admin));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// `GET` on the admin API, answered 200: the JSON body and the `Link` header.
async fn admin_get_link(node: &Serving, token: &str, path: &str) -> (Value, Option<String>) {
    let resp = http_client()
        .get(format!("http://{}{path}", node.admin))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    let link = resp
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.json().await.unwrap(), link)
}

/// The last hour of an answer whose `to` is `to` (the end of that hour), as `to=` takes it.
fn last_hour(to: &str) -> String {
    let end = keygate_core::Timestamp::parse_rfc3339(to).unwrap();
    keygate_core::Timestamp::from_millis(end.as_millis() - 3_600_000).to_rfc3339()
}

async fn admin_json(node: &Serving, token: &str, path: &str) -> Value {
    let (status, _, body) = admin_get(node, Some(token), path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Sends `n` requests to `path` with `key`; the statuses the caller saw, counted.
async fn send(listen: &str, path: &str, key: &str, n: usize) -> BTreeMap<u16, u64> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = http_client()
            .get(format!("http://{listen}{path}"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        *seen.entry(resp.status().as_u16()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_latency_and_websocket_are_counted_and_queried_as_an_attacker_cannot_abuse() {
    let up = Upstream::start().await;
    let ws = WsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
usage_flush = "200ms"

[guard]
threshold = 100000
prefix_threshold = 100000

[upstreams.live]
url = "{ws}"

[plans.free]

[plans.tiny]
limits = {{ per_minute = 2, by = "key" }}

[[routes]]
name = "odds"
path = "/status/{{code}}"

[[routes]]
name = '{FORMULA}'
path = "/slow/{{ms}}"

[[routes]]
name = "stream"
path = "/flood/{{n}}/{{bytes}}"
upstream = "live"
ws = {{ mode = "handshake" }}
"#,
            ws = ws.url()
        ),
    )
    .unwrap();
    cli_json(db, &config, &["client", "create", "Acme", "--plan", "free"]);
    cli_json(db, &config, &["client", "create", "Beta", "--plan", "tiny"]);
    let a = cli_json(db, &config, &["key", "create", "--client", "Acme"]);
    let b = cli_json(db, &config, &["key", "create", "--client", "Beta"]);
    let (key_a, id_a) = (a["key"].as_str().unwrap(), a["id"].as_str().unwrap());
    let (key_b, id_b) = (b["key"].as_str().unwrap(), b["id"].as_str().unwrap());
    let token = cli_json(db, &config, &["admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let log_dir = dir.path().join("node");
    std::fs::create_dir_all(&log_dir).unwrap();
    let node = keygate_test::serve_ready(
        env!("CARGO_BIN_EXE_keygate"),
        (db, &config),
        &up.url(),
        &[("RUST_LOG", "info")],
        &log_dir,
    )
    .await;

    // What the callers see is what analytics must show.
    let a_200 = send(&node.listen, "/status/200", key_a, 3).await;
    let a_404 = send(&node.listen, "/status/404", key_a, 1).await;
    let a_slow = send(&node.listen, "/slow/1", key_a, 2).await;
    let b_odds = send(&node.listen, "/status/200", key_b, 5).await;
    assert_eq!(a_200, BTreeMap::from([(200, 3)]));
    assert_eq!(a_404, BTreeMap::from([(404, 1)]));
    assert_eq!(a_slow, BTreeMap::from([(200, 2)]));
    assert!(
        b_odds.get(&429).copied().unwrap_or(0) > 0 && b_odds.get(&200).copied().unwrap_or(0) > 0,
        "the tiny plan lets some through and refuses the rest: {b_odds:?}"
    );

    // A WebSocket session: the upstream sends 3 messages of 10 bytes, then echoes one of 5.
    let mut session = keygate_test::ws_connect(&format!("ws://{}/flood/3/10", node.listen), key_a)
        .await
        .unwrap();
    session.send(Message::text("hello")).await.unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, session.next()).await {
            Ok(Some(Ok(Message::Binary(_) | Message::Text(_)))) => got += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("the session ended early: {other:?}"),
        }
    }
    session.close(None).await.unwrap();

    let mut expected: Vec<(String, String, u64, u64)> = vec![
        (id_a.into(), "odds".into(), 200, 3),
        (id_a.into(), "odds".into(), 404, 1),
        (id_a.into(), FORMULA.into(), 200, 2),
        (id_a.into(), "stream".into(), 101, 1),
    ];
    for (status, n) in &b_odds {
        expected.push((id_b.into(), "odds".into(), u64::from(*status), *n));
    }
    expected.sort();
    let total: u64 = expected.iter().map(|e| e.3).sum();

    // Wait (with a deadline) until the flushes have brought every count to the store.
    let path = "/v1/analytics?group_by=key,route,status";
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = admin_json(&node, &token, path).await;
        if answer["requests"] == total {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "analytics still show {} of {total} requests: {answer}",
            answer["requests"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut rows: Vec<(String, String, u64, u64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["route"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(rows, expected);
    assert_eq!(
        answer["group_by"],
        serde_json::json!(["key", "route", "status"])
    );

    // Filters: one key, one status.
    let only_b_429 = admin_json(
        &node,
        &token,
        &format!("/v1/analytics?key={id_b}&status=429"),
    )
    .await;
    assert_eq!(only_b_429["requests"], b_odds[&429]);
    let acme = admin_json(&node, &token, "/v1/analytics?client=Acme&group_by=client").await;
    assert_eq!(acme["rows"][0]["requests"], 7);

    // CSV by route, from the API (Accept and format=csv) and from the CLI on the database.
    let by_route: BTreeMap<&str, u64> = expected.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.1.as_str()).or_default() += e.3;
        m
    });
    let (status, ct, csv) = admin_get(
        &node,
        Some(&token),
        "/v1/analytics?group_by=route",
        Some("text/csv"),
    )
    .await;
    assert_eq!(status, 200, "{csv}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let formula_cell = format!("\"'{}\"", FORMULA.replace('"', "\"\""));
    let expected_csv = format!(
        "route,requests\r\n{formula_cell},{}\r\nodds,{}\r\nstream,{}\r\n",
        by_route[FORMULA], by_route["odds"], by_route["stream"]
    );
    assert_eq!(csv, expected_csv, "the formula is quoted and neutralised");
    let (_, _, csv_param) = admin_get(
        &node,
        Some(&token),
        "/v1/analytics?group_by=route&format=csv",
        None,
    )
    .await;
    assert_eq!(csv_param, expected_csv);
    let out = cli(db, &config, &["usage", "--by", "route", "--csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected_csv);
    // And through the node's admin API, as a remote operator.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--admin-url", &format!("http://{}", node.admin)])
        .args(["usage", "--by", "route", "--csv"])
        .env("KEYGATE_ADMIN_TOKEN", &token)
        .env_remove("KEYGATE_DB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected_csv);
    let json = cli_json(
        db,
        &config,
        &["usage", "--by", "status", "--client", "Beta"],
    );
    assert_eq!(json["requests"], b_odds.values().sum::<u64>());

    // Latency: every forwarded HTTP request on `odds` (the 429s never left the gateway).
    let forwarded_odds = 3 + 1 + b_odds[&200];
    let lat = admin_json(&node, &token, "/v1/analytics/latency?route=odds").await;
    let h = &lat["histograms"][0];
    assert_eq!(lat["histograms"].as_array().unwrap().len(), 1, "{lat}");
    assert_eq!(h["upstream"], "default");
    assert_eq!(h["count"], forwarded_odds);
    let buckets = h["buckets"].as_array().unwrap();
    assert_eq!(buckets.last().unwrap()["le_ms"], "+Inf");
    assert_eq!(buckets.last().unwrap()["count"], forwarded_odds);
    assert!(h["p50_ms"].as_f64().unwrap() > 0.0, "{h}");
    assert!(h["p99_ms"].as_f64().unwrap() >= h["p50_ms"].as_f64().unwrap());

    // WebSocket: one session, four messages of 35 bytes in all, delivered to the client.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = admin_json(&node, &token, "/v1/analytics/websocket?client=Acme").await;
        let c = &w["clients"][0];
        if c["messages"] == 4 {
            assert_eq!(c["sessions"], 1, "{w}");
            assert_eq!(c["bytes"], 35, "{w}");
            assert!(c["client"].as_str().unwrap().starts_with("cli_"), "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "WebSocket counts: {w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The attacker's view.
    let (status, _, _) = admin_get(&node, None, "/v1/analytics", None).await;
    assert_eq!(status, 401, "no admin token");
    let (status, _, _) = admin_get(&node, Some("kgadm_not_a_token"), "/v1/analytics", None).await;
    assert_eq!(status, 401, "a wrong admin token");
    for (query, status, code) in [
        ("from=2026-13-01", 422, "invalid_value"),
        ("from=yesterday", 422, "invalid_value"),
        ("to=2026-12-01T10:30:00Z", 422, "invalid_value"),
        ("from=2026-12-02&to=2026-12-01", 422, "invalid_value"),
        ("from=2000-01-01&to=2026-01-01", 422, "invalid_value"),
        ("key=key_'%20OR%201=1%20--", 422, "invalid_value"),
        ("status=200%20OR%201=1", 422, "invalid_value"),
        ("group_by=route;DROP%20TABLE%20usage", 422, "invalid_value"),
        ("group_by=minute", 422, "invalid_value"),
        ("format=xml", 422, "invalid_value"),
        ("route=", 422, "invalid_value"),
        ("route=%00", 422, "invalid_value"),
        ("client=nobody'%20OR%20'1'='1", 404, "client_not_found"),
        ("where=1", 400, "invalid_query"),
    ] {
        let (got, _, body) =
            admin_get(&node, Some(&token), &format!("/v1/analytics?{query}"), None).await;
        assert_eq!(got, status, "{query}: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], code, "{query}: {body}");
    }
    // A SQL-ish route is a value: it matches nothing, and the data is still there.
    let sqlish = admin_json(
        &node,
        &token,
        "/v1/analytics?route=odds'%20OR%20'1'='1&group_by=route",
    )
    .await;
    assert_eq!(sqlish["rows"], serde_json::json!([]));
    assert_eq!(
        admin_json(&node, &token, "/v1/analytics").await["requests"],
        total
    );
    for query in ["route=x&client=Acme", "from=2026-13-01", "where=1"] {
        let (got, _, _) = admin_get(
            &node,
            Some(&token),
            &format!("/v1/analytics/latency?{query}"),
            None,
        )
        .await;
        assert!(got == 400 || got == 422, "latency {query}: {got}");
    }
    // Bad filters from the CLI are refused with the parameter named.
    let out = cli(db, &config, &["usage", "--by", "minute"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("group_by"));

    // Paging: pages of 2 rows, followed by `next` and by the `Link` header alike, hold the
    // whole answer once, in order; the last page says there is no more.
    let whole = admin_json(&node, &token, "/v1/analytics?group_by=key,route,status").await;
    assert_eq!(whole["next"], Value::Null);
    let (from, to) = (
        whole["from"].as_str().unwrap().to_owned(),
        last_hour(whole["to"].as_str().unwrap()),
    );
    let first = format!("/v1/analytics?group_by=key,route,status&limit=2&from={from}&to={to}");
    let mut by_next = Vec::new();
    let mut path = first.clone();
    loop {
        let page = admin_json(&node, &token, &path).await;
        let rows = page["rows"].as_array().unwrap();
        assert!(rows.len() <= 2, "{page}");
        by_next.extend(rows.iter().cloned());
        match page["next"].as_str() {
            Some(c) => path = format!("{first}&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(Value::from(by_next.clone()), whole["rows"]);
    let mut by_link = Vec::new();
    let mut path = "/v1/analytics?group_by=key,route,status&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (page, link) = admin_get_link(&node, &token, &path).await;
        pages += 1;
        by_link.extend(page["rows"].as_array().unwrap().iter().cloned());
        let Some(link) = link else {
            assert_eq!(page["next"], Value::Null);
            break;
        };
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        path = link
            .strip_prefix('<')
            .and_then(|l| l.split('>').next())
            .unwrap()
            .to_owned();
        assert!(path.starts_with("/v1/analytics?"), "{link}");
    }
    assert_eq!(pages, whole["rows"].as_array().unwrap().len().div_ceil(2));
    assert_eq!(by_link, by_next);
    // The CLI pages the same query with the same cursors, on the database and remotely.
    let page1 = cli_json(
        db,
        &config,
        &[
            "usage",
            "--by",
            "key,route,status",
            "--limit",
            "2",
            "--from",
            &from,
            "--to",
            &to,
        ],
    );
    let cursor = page1["next"].as_str().expect("a next page").to_owned();
    let args = [
        "usage",
        "--by",
        "key,route,status",
        "--limit",
        "2",
        "--from",
        &from,
        "--to",
        &to,
        "--cursor",
        &cursor,
    ];
    let page2 = cli_json(db, &config, &args);
    assert_eq!(page2["rows"], Value::from(by_next[2..4].to_vec()));
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--json", "--admin-url", &format!("http://{}", node.admin)])
        .args(args)
        .env("KEYGATE_ADMIN_TOKEN", &token)
        .env_remove("KEYGATE_DB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(remote["rows"], page2["rows"]);
    // The table says how to ask for the next page.
    let out = cli(db, &config, &args[..9]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains(&format!("--cursor {cursor}")), "{table}");

    // CSV of the latency and WebSocket views; their pages too.
    let (status, ct, lat_csv) = admin_get(
        &node,
        Some(&token),
        "/v1/analytics/latency?route=odds&format=csv",
        None,
    )
    .await;
    assert_eq!(status, 200, "{lat_csv}");
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut lines = lat_csv.split("\r\n");
    assert_eq!(
        lines.next(),
        Some("route,upstream,count,sum_ms,mean_ms,p50_ms,p90_ms,p99_ms")
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with(&format!("odds,default,{forwarded_odds},")),
        "{lat_csv}"
    );
    let (status, _, ws_csv) = admin_get(
        &node,
        Some(&token),
        "/v1/analytics/websocket?client=Acme&limit=1",
        Some("text/csv"),
    )
    .await;
    assert_eq!(status, 200, "{ws_csv}");
    let acme_id = acme["rows"][0]["client"].as_str().unwrap();
    assert_eq!(
        ws_csv,
        format!("client,sessions,messages,bytes\r\n{acme_id},1,4,35\r\n")
    );
    let lat_pages = admin_json(&node, &token, "/v1/analytics/latency?limit=1").await;
    assert_eq!(lat_pages["histograms"].as_array().unwrap().len(), 1);
    let lat_next = lat_pages["next"].as_str().expect("two routes have latency");

    // The attacker's paging: limits out of bounds, garbled, forged and foreign cursors, and
    // a cursor carrying SQL: each refused with the parameter named and the cursor not echoed.
    let forged = {
        use base64::Engine as _;
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&cursor)
            .unwrap();
        raw[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let long = "A".repeat(10_000);
    for (path, field) in [
        ("/v1/analytics?limit=0".to_owned(), "limit"),
        ("/v1/analytics?limit=10001".to_owned(), "limit"),
        (
            "/v1/analytics?limit=99999999999999999999999".to_owned(),
            "limit",
        ),
        ("/v1/analytics?limit=-1".to_owned(), "limit"),
        ("/v1/analytics?limit=1%20OR%201=1".to_owned(), "limit"),
        ("/v1/analytics/latency?limit=100000".to_owned(), "limit"),
        ("/v1/analytics/websocket?limit=0".to_owned(), "limit"),
        ("/v1/analytics?cursor=garbage".to_owned(), "cursor"),
        (format!("/v1/analytics?cursor={long}"), "cursor"),
        (
            "/v1/analytics?cursor=%27%20OR%201%3D1%20--".to_owned(),
            "cursor",
        ),
        // Forged: this query's fingerprint, an offset far past the bound.
        (
            format!("/v1/analytics?group_by=key,route,status&from={from}&to={to}&cursor={forged}"),
            "cursor",
        ),
        // Another query's cursor: other groups, another range, another view.
        (
            format!("/v1/analytics?group_by=route&from={from}&to={to}&cursor={cursor}"),
            "cursor",
        ),
        (
            format!("/v1/analytics?group_by=key,route,status&cursor={cursor}&from=2026-01-01"),
            "cursor",
        ),
        (format!("/v1/analytics/latency?cursor={cursor}"), "cursor"),
        (format!("/v1/analytics?cursor={lat_next}"), "cursor"),
        (
            format!("/v1/analytics/websocket?cursor={lat_next}"),
            "cursor",
        ),
    ] {
        let (got, _, body) = admin_get(&node, Some(&token), &path, None).await;
        assert_eq!(got, 422, "{path}: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "invalid_value", "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
        for secret in [cursor.as_str(), forged.as_str(), lat_next, long.as_str()] {
            assert!(
                !body.contains(secret),
                "{path}: the cursor was echoed: {body}"
            );
        }
    }
    let out = cli(db, &config, &["usage", "--cursor", "garbage"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cursor"));

    // No key (plaintext or digest) in any answer or in the log.
    let (_, _, every) = admin_get(
        &node,
        Some(&token),
        "/v1/analytics?group_by=hour,client,key,route,status",
        Some("text/csv"),
    )
    .await;
    let log = node.proc.stderr() + &node.proc.stdout();
    for text in [every.as_str(), &answer.to_string(), &lat.to_string(), &log] {
        assert!(!text.contains(key_a) && !text.contains(key_b));
    }
}
