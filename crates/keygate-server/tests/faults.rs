//! Upstream and store faults with real servers: an upstream that refuses connections (a relay
//! the test cuts), one that accepts and never answers, one that answers 5xx; the circuit
//! breaker opening, probing and closing; and a SQLite file that cannot grow.

mod common;

use std::time::{Duration, Instant};

use common::{status_json, Harness};
use keygate_store::OpenOptions;
use keygate_test::{Relay, Upstream};
use serde_json::Value;

/// A TCP server that accepts connections and never answers on them.
async fn hanging_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

async fn status(h: &Harness) -> Value {
    let (code, _, body) =
        status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    body
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn get(h: &Harness, path: &str, key: &str) -> (u16, Option<String>, Value) {
    let resp = h
        .http
        .get(h.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (code, _, body) = status_json(resp).await;
    (code, retry_after, body)
}

#[tokio::test]
async fn refused_connections_trip_the_breaker_which_probes_and_closes() {
    let backend = Upstream::start().await;
    let relay = Relay::start(backend.addr()).await;
    let config = format!(
        r#"
[upstreams.default]
url = "{{upstream}}"

[upstreams.flaky]
url = "http://{}"
connect_timeout = "300ms"
breaker = {{ failures = 3, window = "10s", open_for = "5s", half_open_probes = 1 }}

[[routes]]
path = "/flaky/{{*rest}}"
upstream = "flaky"

[[routes]]
path = "/{{*rest}}"
"#,
        relay.addr()
    );
    let h = Harness::start(&config).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;

    assert_eq!(get(&h, "/flaky/a", &key).await.0, 200);
    assert_eq!(backend.request_count(), 1);
    assert_eq!(status(&h).await["upstreams"]["flaky"]["breaker"], "closed");

    // Refused connections: 502 upstream_unavailable, three times, then the breaker is open.
    relay.cut();
    for _ in 0..3 {
        let (code, _, body) = get(&h, "/flaky/a", &key).await;
        assert_eq!(
            (code, body["code"].as_str()),
            (502, Some("upstream_unavailable"))
        );
    }
    let s = status(&h).await;
    assert_eq!(s["upstreams"]["flaky"]["breaker"], "open", "{s}");
    assert_eq!(s["upstreams"]["flaky"]["trips"], 1);
    assert_eq!(s["upstreams"]["default"]["breaker"], "closed");
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_upstream_breaker_state{upstream=\"flaky\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_upstream_breaker_trips_total{upstream=\"flaky\"} 1"),
        "{m}"
    );

    // Open: answered at once with 503 and Retry-After, even though the upstream is back.
    relay.restore().await;
    let started = Instant::now();
    let (code, retry_after, body) = get(&h, "/flaky/a", &key).await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(
        (code, body["code"].as_str()),
        (503, Some("upstream_unavailable"))
    );
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(
        backend.request_count(),
        1,
        "an open breaker sent a request upstream"
    );
    // Other upstreams are untouched.
    assert_eq!(get(&h, "/other", &key).await.0, 200);

    // After open_for, one probe goes through; its success closes the breaker.
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(
        status(&h).await["upstreams"]["flaky"]["breaker"],
        "half_open"
    );
    assert_eq!(get(&h, "/flaky/probe", &key).await.0, 200);
    assert_eq!(backend.request_count(), 2);
    assert_eq!(status(&h).await["upstreams"]["flaky"]["breaker"], "closed");
    assert_eq!(get(&h, "/flaky/b", &key).await.0, 200);
    assert_eq!(backend.request_count(), 3);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_upstream_breaker_state{upstream=\"flaky\"} 0"),
        "{m}"
    );
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_within_its_timeout() {
    let hang = hanging_server().await;
    let config = format!(
        r#"
[upstreams.default]
url = "{{upstream}}"

[upstreams.hang]
url = "http://{hang}"
timeout = "500ms"

[[routes]]
path = "/hang"
upstream = "hang"
"#
    );
    let h = Harness::start(&config).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    for _ in 0..2 {
        let started = Instant::now();
        let (code, _, body) = get(&h, "/hang", &key).await;
        let took = started.elapsed();
        assert_eq!(
            (code, body["code"].as_str()),
            (504, Some("upstream_timeout"))
        );
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
    // Timeouts count towards the (default: 5 in 10 s) breaker, but two do not trip it.
    assert_eq!(status(&h).await["upstreams"]["hang"]["breaker"], "closed");
}

#[tokio::test]
async fn upstream_5xx_trip_a_breaker_that_counts_them_and_the_upstream_is_spared() {
    let config = r#"
[upstreams.default]
url = "{upstream}"
breaker = { failures = 3, open_for = "2s", count_5xx = true }
"#;
    let h = Harness::start(config).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    for _ in 0..3 {
        assert_eq!(get(&h, "/status/500", &key).await.0, 500);
    }
    assert_eq!(h.upstream.request_count(), 3);
    for _ in 0..5 {
        let (code, retry_after, body) = get(&h, "/status/200", &key).await;
        assert_eq!(
            (code, body["code"].as_str()),
            (503, Some("upstream_unavailable"))
        );
        assert_eq!(retry_after.as_deref(), Some("2"));
    }
    assert_eq!(
        h.upstream.request_count(),
        3,
        "requests reached an open breaker's upstream"
    );
    // A failed probe opens it again for another open_for.
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(get(&h, "/status/503", &key).await.0, 503);
    assert_eq!(h.upstream.request_count(), 4);
    assert_eq!(status(&h).await["upstreams"]["default"]["trips"], 2);
    assert_eq!(get(&h, "/status/200", &key).await.0, 503);
    assert_eq!(h.upstream.request_count(), 4);
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(get(&h, "/status/200", &key).await.0, 200);
    assert_eq!(get(&h, "/status/200", &key).await.0, 200);
    assert_eq!(h.upstream.request_count(), 6);
}

#[tokio::test]
async fn a_full_store_fails_admin_writes_clearly_while_keys_keep_working() {
    // The gateway's connections cap the SQLite file at its size when they open
    // (PRAGMA max_page_count): the file cannot grow, as on a full disk.
    let full = OpenOptions {
        max_pages: Some(1),
        ..OpenOptions::default()
    };
    let h = Harness::start_with("", None, Some(full)).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    let token = {
        let format = keygate_core::key_format::KeyFormat::admin_token();
        let secret = format.generate();
        let material = keygate_core::KeyMaterial {
            digest: keygate_core::Digester::plain().digest(secret.expose()),
            hint: format.hint(&secret),
        };
        h.store
            .create_admin_token(&common::actor(), "ops", false, material)
            .await
            .unwrap();
        secret.expose().to_owned()
    };
    let mut refused = None;
    for i in 0..500 {
        let resp = h
            .http
            .post(h.admin_url("/v1/clients"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "name": format!("Filler {i}"), "plan": "free" }))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => continue,
            _ => {
                refused = Some(status_json(resp).await);
                break;
            }
        }
    }
    let (code, content_type, body) =
        refused.expect("500 clients fitted in a file that cannot grow");
    assert_eq!(code, 503, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["code"], "store_full");
    assert_eq!(body["detail"], keygate_server::admin::STORE_FULL_DETAIL);
    // The data plane keeps serving from the replica.
    for _ in 0..3 {
        assert_eq!(get(&h, "/anything", &key).await.0, 200);
    }
    assert_eq!(get(&h, "/anything", "sk_wrong").await.0, 401);
    // Reads still work: /status and the replica stay current.
    assert_eq!(status(&h).await["store"]["state"], "up");
}

/// Polls `/metrics` until `line` is in it, for up to ten seconds.
async fn wait_for_metric(h: &Harness, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(h).await;
        if m.lines().any(|l| l == line) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 17: callers that abort their own uploads (socket closed mid-body) or never finish
/// them opened the upstream's breaker for everyone, on a public route without any key. A
/// caller's broken body is its own failure: answered (or dropped), counted apart, never fed
/// to the breaker.
#[tokio::test]
async fn callers_aborting_or_stalling_their_bodies_never_open_the_breaker() {
    use tokio::io::AsyncWriteExt;
    let config = r#"
[upstreams.default]
url = "{upstream}"
timeout = "500ms"
breaker = { failures = 3, window = "60s", open_for = "60s" }

[[routes]]
path = "/pub/{*rest}"
public = true
"#;
    let h = Harness::start(config).await;
    let head = "POST /pub/upload HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n";
    let partial = "x".repeat(100);

    // Six uploads that close the socket mid-body.
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        // Let the gateway start forwarding before the caller goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
    }
    let m = wait_for_metric(&h, "keygate_client_body_errors_total 6").await;
    assert!(
        m.lines().any(|l| l == "keygate_client_body_errors_total 6"),
        "{m}"
    );
    assert_eq!(
        status(&h).await["upstreams"]["default"]["breaker"],
        "closed"
    );

    // Six uploads that stop sending, past the upstream timeout: the caller is told, the
    // upstream is not blamed.
    for _ in 0..6 {
        let answer = common::raw_request(h.gateway.addr, &format!("{head}{partial}")).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("request_body_failed"), "{answer}");
    }
    let m = wait_for_metric(&h, "keygate_client_body_errors_total 12").await;
    assert!(
        m.lines()
            .any(|l| l == "keygate_client_body_errors_total 12"),
        "{m}"
    );
    let s = status(&h).await;
    assert_eq!(s["upstreams"]["default"]["breaker"], "closed", "{s}");
    assert_eq!(s["upstreams"]["default"]["trips"], 0, "{s}");

    // Every other caller is still served.
    let resp = h.http.get(h.url("/pub/after")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = h
        .http
        .post(h.url("/pub/complete"))
        .body("a whole body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        h.upstream.last_request().unwrap().body_text(),
        "a whole body"
    );
}
