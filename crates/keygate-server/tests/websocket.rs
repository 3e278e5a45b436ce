//! WebSocket end to end: a real WebSocket upstream, the gateway on a random port, real
//! tokio-tungstenite clients. Each auth mode of the seeds, channel scopes, every limit, relay
//! in both directions, bad input, tokens and live revocation.

mod common;

use std::time::{Duration, Instant};

use common::{actor, status_json, Harness};
use futures_util::{SinkExt, StreamExt};
use keygate_core::{Clock, KeyState, Scope, Timestamp};
use keygate_store::ClientUpdate;
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use keygate_test::tokio_tungstenite::tungstenite::protocol::CloseFrame;
use keygate_test::tokio_tungstenite::tungstenite::{Error as WsError, Message};
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use keygate_test::{Received, WsUpstream};
use tokio::net::TcpStream;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

/// Seeds as configuration: 004/001 (handshake, header or query), 000 (login message, 5
/// connections per key), 002 (close code 4001, Bearer, 20 messages per second), 003 (plan
/// WebSocket feature, 30 connections per day on Free, WS tokens). `{ws}` is the WebSocket
/// upstream; `{extra}` adds lines to `[profile.ws]`.
const CONFIG: &str = r#"
[upstreams.live]
url = "{ws}"

[upstreams.dead]
url = "http://127.0.0.1:9"
connect_timeout = "300ms"

[plans.pro]
features = ["websocket"]

[plans.free]
features = ["websocket"]
ws = { connections_per_day = 30 }

[plans.rest_only]
features = []

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
scopes = ["live_scores_statistics"]
features = ["websocket"]
ws = { mode = "handshake", credentials = ["header:X-API-Key", "query:key", "query:api_key"] }

[[routes]]
name = "login"
path = "/ws"
upstream = "live"
ws = { mode = "login_message" }

[[routes]]
name = "game"
path = "/game"
upstream = "live"
ws = { mode = "close_code", credentials = ["bearer"] }

[[routes]]
name = "flood"
path = "/flood/{n}/{bytes}"
upstream = "live"
ws = { mode = "handshake" }

[[routes]]
name = "close"
path = "/close/{code}"
upstream = "live"
ws = { mode = "handshake" }

[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"
ws = { mode = "handshake" }

[[routes]]
name = "dead-login"
path = "/dead-login"
upstream = "dead"
ws = { mode = "login_message" }

[[routes]]
name = "rest"
path = "/{*rest}"

[profile]
credentials = ["header:X-API-Key", "bearer"]

[profile.errors.missing_key]
status = 401
body = { detail = "Missing API key" }

[profile.errors.unknown_key]
status = 401
body = { detail = "Invalid API key" }

[profile.errors.scope_missing]
status = 403
body = { detail = "Missing required scope: {subject}" }

[profile.errors.feature_not_on_plan]
status = 403
body = { code = "websocket_not_on_plan", detail = "Your plan does not include WebSocket." }

[profile.errors.rate_limited]
status = 429
body = { detail = "Too many connections", limit = { var = "limit" } }

[profile.ws]
login_deadline = "400ms"
max_message_bytes = 4096
max_login_bytes = 1024
message_types = ["ping", "bet"]
{extra}

[profile.ws.limits]
connections_per_key = 5
messages_per_second = 20

[profile.ws.channels]
"matches" = "cs2:stream:matches"
"markets" = "cs2:stream:markets"

[profile.ws.close.unauthorized]
code = 4001
reason = "Invalid or missing API key"

[profile.ws.close.revoked]
code = 4001
reason = "API key revoked"

[profile.ws.messages]
login_ok = { type = "login", status = "ok", channels = { var = "granted" }, refused = { var = "refused" } }
"#;

struct Ws {
    h: Harness,
    up: WsUpstream,
}

async fn start(extra: &str) -> Ws {
    let up = WsUpstream::start().await;
    let text = CONFIG.replace("{ws}", &up.url()).replace("{extra}", extra);
    let h = Harness::start(&text).await;
    Ws { h, up }
}

impl Ws {
    /// A client with `scopes` on `plan`, and one key.
    async fn key(&self, name: &str, scopes: &[&str], plan: &str) -> String {
        self.h.client(name, scopes, &[], &[], plan).await;
        self.h.key(name, None).await.0
    }

    async fn connect(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, (u16, serde_json::Value)> {
        connect(self.h.gateway.addr, path, headers).await
    }
}

async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, (u16, serde_json::Value)> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            });
            Err((status, json))
        }
        Err(e) => panic!("connect {path}: {e}"),
    }
}

/// The next data message (pings and pongs skipped).
async fn next(c: &mut Client) -> Message {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn next_json(c: &mut Client) -> serde_json::Value {
    match next(c).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap_or_else(|_| t.as_str().into()),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Reads until the close frame; its code and reason.
async fn closed(c: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.as_str().to_owned())
            }
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn text(s: &str) -> Message {
    Message::Text(s.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_mode_refuses_before_the_upgrade_and_relays_after_it() {
    // Seed 004: "The connection is rejected with HTTP 401 during the handshake if the key is
    // invalid or lacks the required scope"; header `X-API-Key` or query parameter `key`.
    let t = start("").await;
    let good = t.key("Sportrix", &["live_scores_statistics"], "pro").await;
    let narrow = t.key("Narrow", &["fixtures"], "pro").await;
    let no_ws = t
        .key("RestOnly", &["live_scores_statistics"], "rest_only")
        .await;

    let (status, body) = t.connect("/v1/stream", &[]).await.unwrap_err();
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("Missing API key"))
    );
    let (other, _) = t.h.issuer.issue();
    let (status, body) = t
        .connect("/v1/stream", &[("X-API-Key", other.expose())])
        .await
        .unwrap_err();
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("Invalid API key"))
    );
    let (status, body) = t
        .connect("/v1/stream", &[("X-API-Key", &narrow)])
        .await
        .unwrap_err();
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("Missing required scope: live_scores_statistics"))
    );
    // Seed 003: "403 websocket_not_on_plan".
    let (status, body) = t
        .connect("/v1/stream", &[("X-API-Key", &no_ws)])
        .await
        .unwrap_err();
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("websocket_not_on_plan"))
    );
    assert_eq!(
        t.up.connections().len(),
        0,
        "no refused caller reached the upstream"
    );

    // Header.
    let mut c = t
        .connect("/v1/stream", &[("X-API-Key", &good)])
        .await
        .unwrap();
    c.send(text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut c).await, serde_json::json!({"type":"ping"}));
    let conns = t.up.wait_connections(1, WAIT).await;
    let up = &conns[0];
    assert_eq!(up.header("x-api-key"), None, "the key stops at the gateway");
    assert_eq!(up.header("x-keygate-client-name"), Some("Sportrix"));
    assert_eq!(
        up.header("x-keygate-scopes"),
        Some("live_scores_statistics")
    );
    assert!(up
        .header("x-keygate-key-id")
        .is_some_and(|k| k.starts_with("key_")));

    // Query parameter `key` (004) and `api_key` (001), stripped before the upstream.
    for param in ["key", "api_key"] {
        let mut c = t
            .connect(&format!("/v1/stream?{param}={good}&lang=en"), &[])
            .await
            .unwrap();
        c.send(text(r#"{"type":"ping"}"#)).await.unwrap();
        next(&mut c).await;
        let conn = t.up.connections().pop().unwrap();
        assert_eq!(conn.uri, "/v1/stream?lang=en", "{param}");
        assert!(!conn.uri.contains(&good));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_carries_text_binary_ping_pong_and_close_both_ways() {
    let t = start("").await;
    let key = t.key("Acme", &["live_scores_statistics"], "pro").await;
    let mut c = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();

    // Client → upstream → (echo) → client.
    c.send(text(r#"{"type":"bet","id":1}"#)).await.unwrap();
    assert_eq!(next_json(&mut c).await["id"], 1);
    c.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    // Upstream pushes.
    up.push(Message::Text(r#"{"type":"odds","v":1.5}"#.into()));
    assert_eq!(next_json(&mut c).await["v"], 1.5);
    up.push(Message::Binary(vec![0, 1, 2, 255].into()));
    assert_eq!(
        next(&mut c).await,
        Message::Binary(vec![0, 1, 2, 255].into())
    );
    up.push(Message::Ping(b"up".to_vec().into()));
    let pong = loop {
        match tokio::time::timeout(WAIT, c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(p) => break p,
            _ => continue,
        }
    };
    assert_eq!(&pong[..], b"up");
    let got = up.wait_received(2, WAIT).await;
    assert_eq!(got[0], Received::Text(r#"{"type":"bet","id":1}"#.into()));
    assert_eq!(got[1], Received::Ping(b"p1".to_vec()));

    // The client's close frame reaches the upstream with its code and reason.
    c.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(up.wait_closed(WAIT).await, Some(Some((4000, "bye".into()))));

    // The upstream's close frame reaches the client.
    let mut c = t
        .connect("/close/4002", &[("X-API-Key", &key)])
        .await
        .unwrap();
    assert_eq!(closed(&mut c).await, (4002, "upstream closed".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_message_mode_seed_000() {
    // Seed 000: "authenticate via the login message after connecting (the /ws endpoint itself
    // does not require the x-api-key header): {"type": "login", "apiKey": "your-api-key",
    // "channels": []}. You must send the login message within 30 seconds of connecting, or the
    // connection is closed." (The deadline here is 400 ms.)
    let t = start("").await;
    let key = t.key("ABP", &["cs2:stream:matches"], "pro").await;

    let mut c = t.connect("/ws", &[]).await.unwrap();
    let login = format!(r#"{{"type":"login","apiKey":"{key}","channels":["matches","markets"]}}"#);
    c.send(text(&login)).await.unwrap();
    let reply = next_json(&mut c).await;
    assert_eq!(
        reply,
        serde_json::json!({"type":"login","status":"ok","channels":["matches"],"refused":["markets"]})
    );
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();
    // The upstream never sees the key; it gets the granted channels as a subscribe.
    up.wait_received(1, WAIT).await;
    let subscribe: serde_json::Value = serde_json::from_str(&up.texts()[0]).unwrap();
    assert_eq!(
        subscribe,
        serde_json::json!({"type":"subscribe","channels":["matches"]})
    );
    assert_eq!(up.header("x-keygate-client-name"), Some("ABP"));
    // (The test upstream echoes it.)
    assert_eq!(next_json(&mut c).await["type"], "subscribe");
    // A second login is refused without closing the session, and not forwarded.
    c.send(text(&login)).await.unwrap();
    assert_eq!(next_json(&mut c).await["code"], "already_logged_in");
    c.send(text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut c).await["type"], "ping");
    assert_eq!(up.texts().len(), 2, "{:?}", up.texts());
    assert!(up.texts().iter().all(|m| !m.contains(&key)));

    // No login within the deadline: closed.
    let started = Instant::now();
    let mut late = t.connect("/ws", &[]).await.unwrap();
    assert_eq!(next_json(&mut late).await["code"], "login_timeout");
    assert_eq!(closed(&mut late).await, (4008, "Login timeout".into()));
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Bad keys and bad first messages.
    let (other, _) = t.h.issuer.issue();
    for (first, code, close) in [
        (
            Message::Text(format!(r#"{{"type":"login","apiKey":"{}"}}"#, other.expose()).into()),
            "unknown_key",
            4001,
        ),
        (text(r#"{"type":"login"}"#), "missing_key", 4001),
        (text("not json"), "invalid_message", 1008),
        (
            text(r#"{"type":"subscribe","channels":["matches"]}"#),
            "login_required",
            1008,
        ),
        (
            Message::Binary(login.clone().into_bytes().into()),
            "binary_not_allowed",
            1008,
        ),
        (
            text(&format!(
                r#"{{"type":"login","apiKey":"{key}","pad":"{}"}}"#,
                "x".repeat(2000)
            )),
            "message_too_big",
            1009,
        ),
    ] {
        let mut c = t.connect("/ws", &[]).await.unwrap();
        c.send(first).await.unwrap();
        assert_eq!(next_json(&mut c).await["code"], code);
        assert_eq!(closed(&mut c).await.0, close, "{code}");
    }
    assert_eq!(
        t.up.connections().len(),
        1,
        "only the good login reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_code_mode_seed_002_and_message_rate() {
    // Seed 002: "WebSocket 4001 close code — Invalid or missing key on connection";
    // "WebSocket messages | 20/second per connection".
    let t = start("").await;
    let key = t.key("Bot", &[], "pro").await;

    let mut c = t.connect("/game", &[]).await.unwrap();
    assert_eq!(
        closed(&mut c).await,
        (4001, "Invalid or missing API key".into())
    );
    let (other, _) = t.h.issuer.issue();
    let bearer = format!("Bearer {}", other.expose());
    let mut c = t
        .connect("/game", &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(closed(&mut c).await.0, 4001);
    assert_eq!(t.up.connections().len(), 0);

    let bearer = format!("Bearer {key}");
    let mut c = t
        .connect("/game", &[("Authorization", &bearer)])
        .await
        .unwrap();
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();
    assert_eq!(up.header("authorization"), None);
    // The gateway's clock stands still: 20 messages pass, the 21st is over the rate.
    for i in 0..20 {
        c.send(text(&format!(r#"{{"type":"bet","n":{i}}}"#)))
            .await
            .unwrap();
        assert_eq!(next_json(&mut c).await["n"], i);
    }
    c.send(text(r#"{"type":"bet","n":20}"#)).await.unwrap();
    let refused = next_json(&mut c).await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(up.wait_received(20, WAIT).await.len(), 20);
    // A second later the connection may send again.
    t.h.clock.advance(Duration::from_secs(1));
    c.send(text(r#"{"type":"bet","n":21}"#)).await.unwrap();
    assert_eq!(next_json(&mut c).await["n"], 21);
    assert!(
        up.texts().iter().all(|m| !m.contains("\"n\":20")),
        "the refused message was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_can_close_the_connection() {
    let t = start("on_message_limit = \"close\"\n[profile.ws.close.rate_limited]\ncode = 4029\nreason = \"Slow down\"").await;
    let key = t.key("Bot", &[], "pro").await;
    let bearer = format!("Bearer {key}");
    let mut c = t
        .connect("/game", &[("Authorization", &bearer)])
        .await
        .unwrap();
    for i in 0..21 {
        c.send(text(&format!(r#"{{"type":"bet","n":{i}}}"#)))
            .await
            .unwrap();
    }
    assert_eq!(closed(&mut c).await, (4029, "Slow down".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_subscriptions_are_refused_by_scope_without_closing() {
    // Seed 001: stream scopes `cs2:stream:matches`, `cs2:stream:markets`.
    let t = start("").await;
    let key = t
        .key(
            "Acme",
            &["live_scores_statistics", "cs2:stream:matches"],
            "pro",
        )
        .await;
    let mut c = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();

    c.send(text(r#"{"type":"subscribe","channels":["markets"]}"#))
        .await
        .unwrap();
    let refused = next_json(&mut c).await;
    assert_eq!(refused["code"], "scope_missing");
    assert_eq!(refused["channels"], serde_json::json!(["markets"]));
    assert!(refused["detail"]
        .as_str()
        .unwrap()
        .contains("cs2:stream:markets"));
    // Mixed: the upstream sees only the granted channel.
    c.send(text(
        r#"{"type":"subscribe","id":9,"channels":["matches","markets"]}"#,
    ))
    .await
    .unwrap();
    let refused = next_json(&mut c).await;
    assert_eq!(refused["channels"], serde_json::json!(["markets"]));
    let echoed = next_json(&mut c).await;
    assert_eq!(
        echoed,
        serde_json::json!({"type":"subscribe","id":9,"channels":["matches"]})
    );
    // Unknown channels and unknown types are refused; the session goes on.
    c.send(text(r#"{"type":"subscribe","channels":["secret"]}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut c).await["channels"],
        serde_json::json!(["secret"])
    );
    c.send(text(r#"{"type":"admin"}"#)).await.unwrap();
    assert_eq!(next_json(&mut c).await["code"], "unknown_type");
    c.send(text("{not json")).await.unwrap();
    assert_eq!(next_json(&mut c).await["code"], "invalid_message");
    c.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next_json(&mut c).await["code"], "binary_not_allowed");
    c.send(text(r#"{"type":"subscribe","channels":["matches"]}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut c).await["channels"],
        serde_json::json!(["matches"])
    );
    let texts = up.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts
        .iter()
        .all(|m| !m.contains("markets") && !m.contains("secret")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_key_are_leased_and_released_on_close() {
    // Seed 000: "a maximum of 5 concurrent WebSocket connections per API key".
    let t = start("").await;
    let key = t.key("ABP", &["live_scores_statistics"], "pro").await;
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(
            t.connect("/v1/stream", &[("X-API-Key", &key)])
                .await
                .unwrap(),
        );
    }
    let (status, body) = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap_err();
    assert_eq!(
        (status, body["detail"].as_str()),
        (429, Some("Too many connections"))
    );
    assert_eq!(body["limit"], 5);
    // In login mode the refusal is a message and a close code.
    let mut c = t.connect("/ws", &[]).await.unwrap();
    c.send(text(&format!(r#"{{"type":"login","apiKey":"{key}"}}"#)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut c).await["code"], "too_many_connections");
    assert_eq!(closed(&mut c).await, (4029, "Too many connections".into()));

    // Closing one gives its place back.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    assert!(t.up.wait_open(4, WAIT).await);
    let mut again = None;
    for _ in 0..100 {
        match t.connect("/v1/stream", &[("X-API-Key", &key)]).await {
            Ok(c) => {
                again = Some(c);
                break;
            }
            // The release runs just after the close handshake.
            Err((429, _)) => tokio::task::yield_now().await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        again.is_some(),
        "the closed connection's lease was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_day_by_plan_seed_003() {
    // Seed 003: "Free | 200 req/day | 30 connections/day".
    let t = start("").await;
    let key = t.key("Free", &["live_scores_statistics"], "free").await;
    for i in 0..30 {
        let mut c = t
            .connect("/v1/stream", &[("X-API-Key", &key)])
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e:?}"));
        c.close(None).await.unwrap();
        while let Some(Ok(_)) = c.next().await {}
    }
    let (status, _) = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap_err();
    assert_eq!(status, 429);
    // The next UTC day opens 30 more.
    let now = t.h.clock.now();
    t.h.clock
        .set(Timestamp::from_millis(now.as_millis() + 86_400_000));
    assert!(t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_open_sessions_within_a_second() {
    // Seed 001: "the change takes effect within a second across all running services".
    let t = start("").await;
    t.h.client(
        "Acme",
        &["live_scores_statistics", "cs2:stream:matches"],
        &[],
        &[],
        "pro",
    )
    .await;
    let (key, stored) = t.h.key("Acme", None).await;
    let (other_key, _) = t.h.key("Acme", None).await;
    let mut a = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let mut b = t
        .connect("/game", &[("Authorization", &format!("Bearer {key}"))])
        .await
        .unwrap();
    let mut other = t
        .connect("/v1/stream", &[("X-API-Key", &other_key)])
        .await
        .unwrap();
    assert!(t.up.wait_open(3, WAIT).await);

    let started = Instant::now();
    t.h.store
        .set_key_state(&actor(), &stored.id, KeyState::Revoked)
        .await
        .unwrap();
    assert_eq!(closed(&mut a).await, (4001, "API key revoked".into()));
    let elapsed = started.elapsed();
    assert_eq!(closed(&mut b).await.0, 4001);
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
    // The upstream side is closed too; the other key's session goes on.
    assert!(t.up.wait_open(1, WAIT).await);
    other.send(text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut other).await["type"], "ping");

    // Losing a held channel's scope closes the session.
    other
        .send(text(r#"{"type":"subscribe","channels":["matches"]}"#))
        .await
        .unwrap();
    next(&mut other).await;
    let started = Instant::now();
    t.h.store
        .update_client(
            &actor(),
            "Acme",
            ClientUpdate {
                scopes: Some(vec![Scope::new("live_scores_statistics").unwrap()]),
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(closed(&mut other).await.0, 4001);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_disable_expiry_and_client_deactivation_close_sessions() {
    let t = start("").await;
    t.h.client("Acme", &["live_scores_statistics"], &[], &[], "pro")
        .await;
    // Seed 003: "Rotate — Generates a new key immediately. The old key stops working instantly."
    let (rotated, rotated_key) = t.h.key("Acme", None).await;
    let mut r = t
        .connect("/v1/stream", &[("X-API-Key", &rotated)])
        .await
        .unwrap();
    let (_, material) = t.h.issuer.issue();
    t.h.store
        .rotate_key(&actor(), &rotated_key.id, material, None)
        .await
        .unwrap();
    assert_eq!(closed(&mut r).await, (4001, "API key revoked".into()));
    let soon = t.h.clock.now().plus(Duration::from_secs(3600));
    let (expiring, _) = t.h.key("Acme", Some(soon)).await;
    let (disabled, disabled_key) = t.h.key("Acme", None).await;
    t.h.client("Beta", &["live_scores_statistics"], &[], &[], "pro")
        .await;
    let (beta, _) = t.h.key("Beta", None).await;

    let mut e = t
        .connect("/v1/stream", &[("X-API-Key", &expiring)])
        .await
        .unwrap();
    let mut d = t
        .connect("/v1/stream", &[("X-API-Key", &disabled)])
        .await
        .unwrap();
    let mut b = t
        .connect("/v1/stream", &[("X-API-Key", &beta)])
        .await
        .unwrap();

    t.h.set_state(&disabled_key, KeyState::Disabled).await;
    assert_eq!(closed(&mut d).await.0, 4001);
    // Expiry is a matter of time: the sweep sees it within its interval.
    let started = Instant::now();
    t.h.clock.advance(Duration::from_secs(3601));
    assert_eq!(closed(&mut e).await.0, 4001);
    assert!(started.elapsed() < Duration::from_secs(1));
    t.h.store
        .set_client_active(&actor(), "Beta", false)
        .await
        .unwrap();
    assert_eq!(closed(&mut b).await.0, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_tokens_are_single_use_and_need_the_plan_feature() {
    // Seed 003: "403 websocket_not_on_plan — Requested WS token without a plan that includes
    // WebSocket".
    let t = start("token = { features = [\"websocket\"], ttl = \"30s\" }").await;
    let key = t.key("Pro", &["live_scores_statistics"], "pro").await;
    let rest = t
        .key("Rest", &["live_scores_statistics"], "rest_only")
        .await;

    let resp =
        t.h.http
            .post(t.h.url("/v1/ws-token"))
            .header("X-API-Key", &rest)
            .send()
            .await
            .unwrap();
    let (status, _, body) = status_json(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("websocket_not_on_plan"))
    );
    let resp = t.h.http.post(t.h.url("/v1/ws-token")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let resp =
        t.h.http
            .post(t.h.url("/v1/ws-token"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, _, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 30);
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("wst_") && !token.contains(&key));

    let mut c = t
        .connect(&format!("/v1/stream?token={token}&x=1"), &[])
        .await
        .unwrap();
    c.send(text(r#"{"type":"ping"}"#)).await.unwrap();
    next(&mut c).await;
    let conn = t.up.connections().pop().unwrap();
    assert_eq!(conn.uri, "/v1/stream?x=1", "the token stops at the gateway");
    assert_eq!(conn.header("x-keygate-client-name"), Some("Pro"));
    // Single use.
    let (status, _) = t
        .connect(&format!("/v1/stream?token={token}"), &[])
        .await
        .unwrap_err();
    assert_eq!(status, 401);
    // Expired, and tampered.
    let resp =
        t.h.http
            .post(t.h.url("/v1/ws-token"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
    let (_, _, body) = status_json(resp).await;
    let token = body["token"].as_str().unwrap().to_owned();
    let mut tampered = token.clone().into_bytes();
    tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        t.connect(&format!("/v1/stream?token={tampered}"), &[])
            .await
            .unwrap_err()
            .0,
        401
    );
    t.h.clock.advance(Duration::from_secs(31));
    assert_eq!(
        t.connect(&format!("/v1/stream?token={token}"), &[])
            .await
            .unwrap_err()
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offender() {
    let t = start("").await;
    let key = t.key("Acme", &["live_scores_statistics"], "pro").await;
    let mut bystander = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();

    // A frame over the size limit (4096): close 1009.
    let mut c = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let _ = c.send(text(&"x".repeat(10_000))).await;
    assert_eq!(closed(&mut c).await.0, 1009);
    // Invalid UTF-8 in a text frame and an unmasked frame, written by hand after a real
    // handshake: closed, never a panic.
    for frame in [
        vec![0x81u8, 0x82, 0, 0, 0, 0, 0xff, 0xfe], // masked text, bytes FF FE
        vec![0x81u8, 0x02, b'h', b'i'],             // unmasked text
    ] {
        let mut raw = raw_upgrade(t.h.gateway.addr, &key).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(&frame).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n >= 4 && buf[0] == 0x88, "a close frame: {:?}", &buf[..n]);
    }
    // Hostile handshakes.
    for (name, value, status) in [
        ("sec-websocket-version", "8", 426),
        ("sec-websocket-key", "short", 400),
    ] {
        let resp = common::raw_request(
            t.h.gateway.addr,
            &format!(
                "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-API-Key: {key}\r\n{}\r\n\r\n",
                match name {
                    "sec-websocket-version" => "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8".to_owned(),
                    _ => format!("Sec-WebSocket-Key: {value}\r\nSec-WebSocket-Version: 13"),
                }
            ),
        )
        .await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
    }
    bystander.send(text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut bystander).await["type"], "ping");
}

async fn raw_upgrade(addr: std::net::SocketAddr, key: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-API-Key: {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The egress stored for `client` today, once it reaches `messages` (or the wait ends).
async fn egress_reaches(t: &Ws, client: &keygate_core::Client, messages: u64) -> (u64, u64) {
    let today = t.h.clock.now().utc_day();
    let deadline = Instant::now() + WAIT;
    loop {
        let rows =
            t.h.store
                .usage_ws(&client.id, &today, &today)
                .await
                .unwrap();
        let got = rows.first().map_or((0, 0), |r| (r.messages, r.bytes));
        if got.0 >= messages || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_counted_exactly_while_a_session_is_open_and_at_its_close() {
    // The relay adds egress to usage once per burst of frames (when the session goes quiet, or
    // after 64 frames), not per message: nothing may be lost or counted twice, and a session
    // that stays open must not keep its counts until it closes.
    let t = start("\n[server]\nusage_flush = \"100ms\"\n").await;
    let client =
        t.h.client("Acme", &["live_scores_statistics"], &[], &[], "pro")
            .await;
    let key = t.h.key("Acme", None).await.0;
    let mut c = t
        .connect("/flood/300/100", &[("X-API-Key", &key)])
        .await
        .unwrap();
    for _ in 0..300 {
        match next(&mut c).await {
            Message::Binary(b) => assert_eq!(b.len(), 100),
            other => panic!("{other:?}"),
        }
    }
    // Open and quiet: the flood is counted, exactly.
    assert_eq!(egress_reaches(&t, &client, 300).await, (300, 30_000));

    // Then 5 pushes of 7 bytes, one at a time, and the close right after the last.
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();
    for i in 0..5u8 {
        up.push(Message::Binary(vec![i; 7].into()));
        assert_eq!(next(&mut c).await, Message::Binary(vec![i; 7].into()));
    }
    c.close(None).await.unwrap();
    assert_eq!(egress_reaches(&t, &client, 305).await, (305, 30_035));
    // And nothing more shows up later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(egress_reaches(&t, &client, 0).await, (305, 30_035));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_holds_the_upstream_back() {
    // 20,000 messages of 1 KiB: 20 MB if buffered. A client that reads nothing must stop the
    // upstream after what the sockets hold, and then receive everything in order.
    let t = start("").await;
    let key = t.key("Acme", &["live_scores_statistics"], "pro").await;
    let mut c = t
        .connect("/flood/20000/1024", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let up = t.up.wait_connections(1, WAIT).await.pop().unwrap();
    // Wait until the upstream's sending stalls (no progress for 200 ms).
    let mut last = up.sent();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = up.sent();
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < 20_000,
        "the upstream sent everything ({last}) to a client that read nothing"
    );
    let mut n = 0;
    while n < 20_000 {
        match next(&mut c).await {
            Message::Binary(b) => assert_eq!(b.len(), 1024),
            other => panic!("{other:?}"),
        }
        n += 1;
    }
    assert_eq!(up.sent(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_and_dead_upstreams() {
    let t = start("idle_timeout = \"300ms\"").await;
    let key = t.key("Acme", &["live_scores_statistics"], "pro").await;
    let mut c = t
        .connect("/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(closed(&mut c).await, (1001, "Idle timeout".into()));
    assert!(started.elapsed() >= Duration::from_millis(250));

    // An unreachable upstream in handshake mode: 502 before the upgrade.
    let (status, _) = t
        .connect("/dead", &[("X-API-Key", &key)])
        .await
        .unwrap_err();
    assert_eq!(status, 502);
    // In login mode: the profile's error message, then the upstream_unavailable close.
    let mut c = t.connect("/dead-login", &[]).await.unwrap();
    c.send(text(&format!(r#"{{"type":"login","apiKey":"{key}"}}"#)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut c).await["code"], "upstream_unavailable");
    assert_eq!(closed(&mut c).await, (1011, "Upstream unavailable".into()));
    assert!(t.up.wait_open(0, WAIT).await);
}

/// Issue 17: the WebSocket upstream got its own header set; it now gets the one rewrite every
/// upstream gets (`proxy::rewrite_headers`): client-address headers from a peer that is no
/// trusted proxy, method and path overrides and forged identity never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_upstream_gets_the_same_header_rewrite() {
    let t = start("").await;
    let key = t.key("Sportrix", &["live_scores_statistics"], "pro").await;
    let socket = t
        .connect(
            "/v1/stream",
            &[
                ("X-API-Key", &key),
                ("X-Real-IP", "203.0.113.7"),
                ("Forwarded", "for=203.0.113.7"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Original-URL", "/admin"),
                ("X-Keygate-Scopes", "admin:everything"),
                ("X-Forwarded-For", "203.0.113.7"),
            ],
        )
        .await
        .unwrap();
    let conns = t.up.wait_connections(1, WAIT).await;
    let c = &conns[0];
    for name in [
        "x-real-ip",
        "forwarded",
        "x-http-method-override",
        "x-original-url",
        "x-api-key",
    ] {
        assert_eq!(c.header(name), None, "{name}: {:?}", c.headers);
    }
    assert_eq!(c.header("x-keygate-scopes"), Some("live_scores_statistics"));
    assert_eq!(c.header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.1"));
    drop(socket);
}
