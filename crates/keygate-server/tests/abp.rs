//! Conformance of `profiles/abp.toml` to seed 000, the ABP authentication page. Every quoted
//! line is from that document; the gateway runs the profile file as shipped, with only the
//! upstream URLs (and, for the login-deadline test, the deadline) substituted.

mod common;

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use common::{actor, status_json, Harness};
use futures_util::{SinkExt, StreamExt};
use keygate_core::{Clock, KeyState, Timestamp};
use keygate_store::{ClientUpdate, LimitPatch};
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use keygate_test::{Relay, Upstream, WsUpstream};
use serde_json::{json, Value};

const PROFILE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../profiles/abp.toml");
/// The WebSocket upstream's URL as the profile ships it, replaced by each test.
const STREAM_URL: &str = r#"url = "http://127.0.0.1:9001""#;
const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn profile() -> String {
    std::fs::read_to_string(PROFILE_PATH).expect("profiles/abp.toml is readable")
}

/// The profile with the WebSocket upstream at `stream` (and `edit` applied to the text).
async fn start(stream: &str, edit: impl Fn(String) -> String) -> Harness {
    let text = profile();
    assert!(
        text.contains(STREAM_URL),
        "the profile's stream upstream moved"
    );
    let text = edit(text.replace(STREAM_URL, &format!(r#"url = "{stream}""#)));
    Harness::start(&text).await
}

async fn get(h: &Harness, path: &str, key: Option<&str>) -> keygate_test::reqwest::Response {
    let mut req = h.http.get(h.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

/// Status, content type and the exact body bytes.
async fn answer(resp: keygate_test::reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (status, ct, resp.text().await.unwrap())
}

/// Asserts a body is the document's, field for field and byte for byte (keygate writes compact
/// JSON in the document's key order, as FastAPI does).
fn assert_body(body: &str, documented: &str) {
    let want: Value = serde_json::from_str(documented).unwrap();
    assert_eq!(serde_json::from_str::<Value>(body).unwrap(), want, "{body}");
    assert_eq!(body, want.to_string());
}

#[tokio::test]
async fn api_key_metadata_and_error_responses() {
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| t).await;

    // "Pass your API key in the x-api-key request header:
    //  curl -H "x-api-key: your-api-key" https://v2.55-tech.com/accounts"
    h.client("Acme Bets", &[], &[], &[], "default").await;
    let (key, acme_key) = h.key("Acme Bets", None).await;
    let resp = h
        .http
        .get(h.url("/accounts"))
        .header("x-api-key", &key)
        .header("X-Client-Name", "Someone Else")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // "clientName: Your client identifier — all accounts, orders, and bets are filtered by it"
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/accounts");
    assert_eq!(seen.header_all("x-client-name"), vec!["Acme Bets"]);
    // "bookmakers: Allowed bookmaker slugs (empty = all bookmakers)": every one, said as `*`.
    assert_eq!(seen.header_all("x-client-bookmakers"), vec!["*"]);
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key stops at the gateway"
    );
    for path in [
        "/orders",
        "/bets",
        "/accounts/acc_1",
        "/orders/o_1",
        "/bets/b_1",
    ] {
        assert_eq!(get(&h, path, Some(&key)).await.status(), 200, "{path}");
        assert_eq!(
            h.upstream.last_request().unwrap().header("x-client-name"),
            Some("Acme Bets")
        );
    }

    // "bookmakers: Allowed bookmaker slugs (empty = all bookmakers)"
    for bm in ["pinnacle", "bet365", "betfair"] {
        let path = format!("/bets?bookmaker={bm}");
        assert_eq!(get(&h, &path, Some(&key)).await.status(), 200, "{bm}");
    }
    h.client("Pinnacle Only", &[], &[], &["pinnacle"], "default")
        .await;
    let (narrow, _) = h.key("Pinnacle Only", None).await;
    assert_eq!(
        get(&h, "/orders?bookmaker=pinnacle", Some(&narrow))
            .await
            .status(),
        200
    );
    // | Key valid but not allowed for the endpoint / sport / bookmaker | 403 |
    // {"error": "Access denied to endpoint"} |
    let before = h.upstream.request_count();
    for path in [
        "/orders?bookmaker=bet365",
        "/bets?bookmaker=betfair",
        "/accounts?bookmaker=bet365",
    ] {
        let (status, ct, body) = answer(get(&h, path, Some(&narrow)).await).await;
        assert_eq!((status, ct.as_str()), (403, "application/json"), "{path}");
        assert_body(&body, r#"{"error": "Access denied to endpoint"}"#);
    }
    assert_eq!(
        h.upstream.request_count(),
        before,
        "refusals never reach the upstream"
    );

    // | Header missing | 403 | {"detail": "Missing API key header: x-api-key"} |
    for path in ["/accounts", "/orders", "/bets"] {
        let (status, ct, body) = answer(get(&h, path, None).await).await;
        assert_eq!((status, ct.as_str()), (403, "application/json"));
        assert_body(&body, r#"{"detail": "Missing API key header: x-api-key"}"#);
    }

    // | Key invalid / inactive / expired | 401 | {"error": "Invalid or inactive API key"} |
    let invalid = r#"{"error": "Invalid or inactive API key"}"#;
    let (never_issued, _) = h.issuer.issue();
    for bad in ["your-api-key", never_issued.expose()] {
        let (status, _, body) = answer(get(&h, "/accounts", Some(bad)).await).await;
        assert_eq!(status, 401);
        assert_body(&body, invalid);
    }
    // "active: Whether this key is active" — a disabled key, then a disabled client.
    h.set_state(&acme_key, KeyState::Disabled).await;
    let (status, _, body) = answer(get(&h, "/accounts", Some(&key)).await).await;
    assert_eq!(status, 401);
    assert_body(&body, invalid);
    h.set_state(&acme_key, KeyState::Active).await;
    assert_eq!(get(&h, "/accounts", Some(&key)).await.status(), 200);
    h.store
        .set_client_active(&actor(), "Acme Bets", false)
        .await
        .unwrap();
    h.sync().await;
    let (status, _, body) = answer(get(&h, "/accounts", Some(&key)).await).await;
    assert_eq!(status, 401);
    assert_body(&body, invalid);
    // Expired.
    let soon = Timestamp::from_millis(h.clock.now().as_millis() + 60_000);
    let (expiring, _) = h.key("Pinnacle Only", Some(soon)).await;
    assert_eq!(get(&h, "/bets", Some(&expiring)).await.status(), 200);
    h.clock.advance(Duration::from_secs(61));
    let (status, _, body) = answer(get(&h, "/bets", Some(&expiring)).await).await;
    assert_eq!(status, 401);
    assert_body(&body, invalid);

    // Application-level errors "use the FastAPI-standard detail key".
    let (status, _, body) = answer(get(&h, "/nowhere", Some(&narrow)).await).await;
    assert_eq!(status, 404);
    assert_body(&body, r#"{"detail": "Not Found"}"#);

    // "except the unauthenticated infrastructure endpoints (/health, /ready, /status, /metrics)"
    for path in ["/health", "/ready", "/status", "/metrics"] {
        assert_eq!(get(&h, path, None).await.status(), 200, "{path}");
    }
    let (_, _, status_doc) = status_json(get(&h, "/status", None).await).await;
    assert_eq!(status_doc["profile"], "abp");
    assert_eq!(status_doc["upstreams"]["default"]["breaker"], "closed");
    assert_eq!(status_doc["upstreams"]["stream"]["breaker"], "closed");
}

#[tokio::test]
async fn rate_limit_is_100_rps_per_client_by_default_and_overridable() {
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| t).await;
    // "Requests are rate-limited per client — by default 100 requests per second". The clock
    // is the test's and stands still, so the second's allowance is exact.
    h.client("Default Rate", &[], &[], &[], "default").await;
    let (k1, _) = h.key("Default Rate", None).await;
    let (k2, _) = h.key("Default Rate", None).await;
    for i in 0..100 {
        let key = if i % 2 == 0 { &k1 } else { &k2 };
        assert_eq!(
            get(&h, "/bets", Some(key)).await.status(),
            200,
            "request {i}"
        );
    }
    // | Rate limit exceeded | 429 | {"detail": "Rate limit exceeded", "limit": "100", "retry_after": 1} |
    for key in [&k1, &k2] {
        let resp = get(&h, "/bets", Some(key)).await;
        assert_eq!(
            resp.headers().get("retry-after").unwrap().to_str().unwrap(),
            "1"
        );
        let (status, ct, body) = answer(resp).await;
        assert_eq!((status, ct.as_str()), (429, "application/json"));
        assert_body(
            &body,
            r#"{"detail": "Rate limit exceeded", "limit": "100", "retry_after": 1}"#,
        );
    }
    // Per client: another client is not affected.
    h.client("Other", &[], &[], &[], "default").await;
    let (other, _) = h.key("Other", None).await;
    assert_eq!(get(&h, "/bets", Some(&other)).await.status(), 200);

    // "rps: Requests per second allowed for this client" — a per-client value replaces 100.
    h.client("Small", &[], &[], &[], "default").await;
    let (small, _) = h.key("Small", None).await;
    h.store
        .update_client(
            &actor(),
            "Small",
            ClientUpdate {
                limits: LimitPatch {
                    rps: Some(NonZeroU64::new(3)),
                    ..LimitPatch::default()
                },
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    h.sync().await;
    for _ in 0..3 {
        assert_eq!(get(&h, "/orders", Some(&small)).await.status(), 200);
    }
    let (status, _, body) = answer(get(&h, "/orders", Some(&small)).await).await;
    assert_eq!(status, 429);
    assert_body(
        &body,
        r#"{"detail": "Rate limit exceeded", "limit": "3", "retry_after": 1}"#,
    );
    // A second later the allowance is back.
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(get(&h, "/bets", Some(&k1)).await.status(), 200);
}

async fn ws_connect(h: &Harness) -> Ws {
    // "the /ws endpoint itself does not require the x-api-key header"
    connect_async(format!("ws://{}/ws", h.gateway.addr))
        .await
        .expect("the upgrade needs no key")
        .0
}

async fn next_json(c: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn closed(c: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(Message::Close(None)))) => return 1005,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn login(key: &str) -> Message {
    // { "type": "login", "apiKey": "your-api-key", "channels": [] }
    Message::Text(
        json!({ "type": "login", "apiKey": key, "channels": [] })
            .to_string()
            .into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_login_and_five_connections_per_key() {
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| t).await;
    h.client("Acme Bets", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme Bets", None).await;

    // "authenticate via the login message after connecting"
    let mut c = ws_connect(&h).await;
    c.send(login(&key)).await.unwrap();
    let ok = next_json(&mut c).await;
    assert_eq!(ok["type"], "login_ok", "{ok}");
    let up = ws.wait_connections(1, WAIT).await.pop().unwrap();
    assert_eq!(up.header("x-client-name"), Some("Acme Bets"));
    up.push(Message::Text(r#"{"type":"order","id":1}"#.into()));
    assert_eq!(next_json(&mut c).await["id"], 1);
    // A bad key in the login: refused and closed.
    let mut bad = ws_connect(&h).await;
    bad.send(login("your-api-key")).await.unwrap();
    assert_eq!(next_json(&mut bad).await["type"], "error");
    assert_eq!(closed(&mut bad).await, 4001);

    // "a maximum of 5 concurrent WebSocket connections per API key"
    let mut open = vec![c];
    for _ in 0..4 {
        let mut c = ws_connect(&h).await;
        c.send(login(&key)).await.unwrap();
        assert_eq!(next_json(&mut c).await["type"], "login_ok");
        open.push(c);
    }
    let mut sixth = ws_connect(&h).await;
    sixth.send(login(&key)).await.unwrap();
    assert_eq!(next_json(&mut sixth).await["code"], "too_many_connections");
    assert_eq!(closed(&mut sixth).await, 4029);
    assert!(ws.wait_open(5, WAIT).await);
    // Per key: another key of the same client still connects.
    let (second_key, _) = h.key("Acme Bets", None).await;
    let mut c = ws_connect(&h).await;
    c.send(login(&second_key)).await.unwrap();
    assert_eq!(next_json(&mut c).await["type"], "login_ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_login_deadline_closes_the_connection() {
    // "You must send the login message within 30 seconds of connecting, or the connection is
    // closed." The profile says 30s; this test shortens it to 300ms in the text (and only
    // that), so it runs in a second.
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| {
        assert!(t.contains(r#"login_deadline = "30s""#));
        t.replace(r#"login_deadline = "30s""#, r#"login_deadline = "300ms""#)
    })
    .await;
    h.client("Acme Bets", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme Bets", None).await;
    // Within the deadline: logged in.
    let mut c = ws_connect(&h).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(login(&key)).await.unwrap();
    assert_eq!(next_json(&mut c).await["type"], "login_ok");
    // Past it: closed, and the upstream never saw the connection.
    let started = Instant::now();
    let mut late = ws_connect(&h).await;
    assert_eq!(next_json(&mut late).await["code"], "login_timeout");
    assert_eq!(closed(&mut late).await, 4008);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(ws.connections().len(), 1);
}

#[tokio::test]
async fn emergency_mode_refuses_everything_but_infra() {
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| t).await;
    h.client("Acme Bets", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme Bets", None).await;
    let message = "Trading is paused for maintenance until 14:00 UTC.";
    h.store
        .set_emergency(&actor(), true, Some(message))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while !h.gateway.gateway().emergency.is_on() {
        assert!(
            Instant::now() < deadline,
            "emergency mode took over a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = h.upstream.request_count();
    for (path, key) in [
        ("/accounts", Some(key.as_str())),
        ("/bets?bookmaker=pinnacle", Some(key.as_str())),
        ("/orders", None),
        ("/nowhere", Some(key.as_str())),
    ] {
        let (status, ct, body) = answer(get(&h, path, key).await).await;
        assert_eq!((status, ct.as_str()), (503, "application/json"), "{path}");
        assert_eq!(body, json!({ "detail": message }).to_string());
    }
    assert_eq!(h.upstream.request_count(), before);
    for path in ["/health", "/ready", "/status", "/metrics"] {
        assert_eq!(get(&h, path, None).await.status(), 200, "{path}");
    }
    h.store.set_emergency(&actor(), false, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while h.gateway.gateway().emergency.is_on() {
        assert!(Instant::now() < deadline, "emergency mode lingered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&h, "/accounts", Some(&key)).await.status(), 200);
}

#[tokio::test]
async fn circuit_breakers_open_on_a_dead_upstream() {
    // "Limits & Reliability: Per-client rate limits, circuit breakers, and emergency mode."
    let ws = WsUpstream::start().await;
    let relay = Relay::start(ws.addr()).await;
    let mut h = start(&format!("http://{}", relay.addr()), |t| t).await;
    h.client("Acme Bets", &[], &[], &[], "default").await;
    let (key, _) = h.key("Acme Bets", None).await;
    assert_eq!(get(&h, "/accounts", Some(&key)).await.status(), 200);

    // The REST upstream dies: its port closes. Five failures (the profile's breaker), then the
    // gateway answers 503 at once, with Retry-After, without trying the upstream.
    drop(std::mem::replace(&mut h.upstream, Upstream::start().await));
    for _ in 0..5 {
        let (status, _, body) = answer(get(&h, "/accounts", Some(&key)).await).await;
        assert_eq!(status, 502);
        assert_body(&body, r#"{"detail": "Service temporarily unavailable"}"#);
    }
    let resp = get(&h, "/accounts", Some(&key)).await;
    assert_eq!(resp.headers()["retry-after"], "5");
    let (status, _, body) = answer(resp).await;
    assert_eq!(status, 503);
    assert_body(&body, r#"{"detail": "Service temporarily unavailable"}"#);
    let (_, _, s) = status_json(get(&h, "/status", None).await).await;
    assert_eq!(s["upstreams"]["default"]["breaker"], "open", "{s}");
    assert_eq!(s["upstreams"]["stream"]["breaker"], "closed");

    // WebSocket connects count for the stream upstream's breaker too.
    relay.cut();
    for _ in 0..5 {
        let mut c = ws_connect(&h).await;
        c.send(login(&key)).await.unwrap();
        assert_eq!(next_json(&mut c).await["code"], "upstream_unavailable");
    }
    relay.restore().await;
    let mut c = ws_connect(&h).await;
    c.send(login(&key)).await.unwrap();
    assert_eq!(next_json(&mut c).await["code"], "upstream_unavailable");
    assert_eq!(
        ws.connections().len(),
        0,
        "an open breaker connected upstream"
    );
    let m = get(&h, "/metrics", None).await.text().await.unwrap();
    assert!(
        m.contains("keygate_upstream_breaker_state{upstream=\"stream\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_upstream_breaker_trips_total{upstream=\"default\"} 1"),
        "{m}"
    );
    // After open_for a probe goes through; the stream upstream is back, so it closes.
    h.clock.advance(Duration::from_secs(5));
    let mut c = ws_connect(&h).await;
    c.send(login(&key)).await.unwrap();
    assert_eq!(next_json(&mut c).await["type"], "login_ok");
    let (_, _, s) = status_json(get(&h, "/status", None).await).await;
    assert_eq!(s["upstreams"]["stream"]["breaker"], "closed", "{s}");
}

/// Issue 17 (16). The error table shows JSON bodies only (FastAPI answers JSON whatever
/// `Accept` says): `formats = ["json"]`, so an XML `Accept` still gets the document's JSON.
#[tokio::test]
async fn error_bodies_are_json_whatever_accept_asks() {
    let ws = WsUpstream::start().await;
    let h = start(&ws.url(), |t| t).await;
    for accept in ["application/xml", "text/xml", "text/html"] {
        let resp = h
            .http
            .get(h.url("/accounts"))
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        let (status, ct, body) = answer(resp).await;
        // | Header missing | 403 | {"detail": "Missing API key header: x-api-key"} |
        assert_eq!(status, 403, "{accept}");
        assert!(ct.contains("json"), "{accept}: {ct}");
        assert_body(&body, r#"{"detail": "Missing API key header: x-api-key"}"#);
    }
}
