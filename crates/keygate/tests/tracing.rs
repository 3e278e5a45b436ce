//! `[tracing]` against the real binary: spans exported over OTLP/HTTP (JSON) to a collector
//! the test runs, the caller's W3C `traceparent` continued to the upstream, hostile
//! `traceparent`s ignored and never echoed, no key material in an exported body, a collector
//! that does not answer costing requests nothing, and tracing off leaving the headers alone.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate_test::{http_client, Serving, Upstream};
use serde_json::Value;

/// OTLP/HTTP bodies received at `POST /v1/traces`, raw.
#[derive(Clone, Default)]
struct Collector {
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        Collector::answering(200).await
    }

    /// A collector that keeps what it receives and answers `status` to every export.
    async fn answering(status: u16) -> (Collector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let bodies = Arc::clone(&collector.bodies);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let bodies = Arc::clone(&bodies);
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let bodies = Arc::clone(&bodies);
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.uri().path() == "/v1/traces";
                            let body = req.into_body().collect().await?.to_bytes();
                            if ok {
                                bodies.lock().unwrap().push(body.to_vec());
                            }
                            let status = if ok { status } else { 404 };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"{}"),
                            ));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (collector, addr)
    }

    fn raw(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    /// Every span received so far, flattened.
    fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for body in self.raw() {
            let v: Value = serde_json::from_slice(&body).unwrap();
            for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let mut s = s.clone();
                        s["resource"] = rs["resource"].clone();
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    /// Waits (generously: a busy machine) for the span whose trace id is `trace_id`.
    async fn span_of(&self, trace_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self
                .spans()
                .into_iter()
                .find(|s| s["traceId"].as_str() == Some(trace_id))
            {
                return s;
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An attribute's value as text (OTLP/JSON writes 64-bit integers as strings or numbers).
fn attr(span: &Value, key: &str) -> Option<String> {
    let a = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let v = &a["value"];
    ["stringValue", "intValue", "doubleValue", "boolValue"]
        .iter()
        .find_map(|k| v.get(*k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

fn cli(db: &str, config: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--json", "--config", config.to_str().unwrap(), "--db", db])
        .args(args)
        .env_remove("KEYGATE_DB")
        .env_remove("KEYGATE_ADMIN_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const ROUTES: &str = r#"
[profile]
credentials = ["header:x-api-key", "query:apiKey"]

[guard]
threshold = 100000
prefix_threshold = 100000

[[routes]]
name = "api"
path = "/v1/{*rest}"
"#;

/// A node with `tracing` (a `[tracing]` table or nothing), a client and its key.
async fn start(dir: &Path, upstream: &Upstream, tracing: &str) -> (Serving, String, String) {
    let db = dir.join("keygate.db").to_str().unwrap().to_owned();
    let config = dir.join("keygate.toml");
    std::fs::write(&config, format!("{ROUTES}\n{tracing}")).unwrap();
    cli(&db, &config, &["migrate"]);
    let client = cli(&db, &config, &["client", "create", "Acme"]);
    let client_id = client["id"].as_str().unwrap_or_default().to_owned();
    let key = cli(&db, &config, &["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let node = keygate_test::serve_ready(
        env!("CARGO_BIN_EXE_keygate"),
        (&db, &config),
        &upstream.url(),
        &[("RUST_LOG", "warn")],
        dir,
    )
    .await;
    (node, key, client_id)
}

async fn get(node: &Serving, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = http_client().get(format!("http://{}{path}", node.listen));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// `key` with its last character changed (to one it is not: a key may end in `x`).
fn spoiled(key: &str) -> String {
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    format!("{}{last}", &key[..key.len() - 1])
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_the_upstream_is_told_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (collector, at) = Collector::start().await;
    let tracing =
        format!("[tracing]\notlp_endpoint = \"http://{at}\"\nservice_name = \"gw-test\"\n");
    let (node, key, client_id) = start(dir.path(), &upstream, &tracing).await;

    // A caller's trace is continued: the gateway's span is a child of the caller's, and the
    // upstream's parent is the gateway's span.
    let traceparent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let status = get(
        &node,
        "/v1/matches?page=2",
        &[
            ("x-api-key", &key),
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.last_request().unwrap();
    let sent = seen.header("traceparent").unwrap().to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", PARENT_TRACE, "01"));
    assert_ne!(parts[2], PARENT_SPAN);
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"));
    let span = collector.span_of(PARENT_TRACE).await;
    assert_eq!(span["spanId"].as_str(), Some(parts[2]), "{span}");
    assert_eq!(span["parentSpanId"].as_str(), Some(PARENT_SPAN), "{span}");
    assert_eq!(span["name"], "GET api");
    assert_eq!(attr(&span, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(&span, "http.route").as_deref(), Some("api"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&span, "keygate.decision").as_deref(),
        Some("forwarded")
    );
    assert_eq!(attr(&span, "keygate.reason"), None);
    if !client_id.is_empty() {
        assert_eq!(attr(&span, "keygate.client_id"), Some(client_id.clone()));
    }
    let key_id = attr(&span, "keygate.key_id").expect("the key's id");
    assert!(!key_id.is_empty() && key_id != key, "{key_id}");
    let upstream_ms: f64 = attr(&span, "keygate.upstream.duration_ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(upstream_ms >= 0.0);
    let service = span["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(Value::from("gw-test")));

    // No traceparent: a new trace, sampled (ratio 1.0), named to the upstream.
    assert_eq!(get(&node, "/v1/matches", &[("x-api-key", &key)]).await, 200);
    let sent = upstream
        .last_request()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_ne!(parts[1], PARENT_TRACE);
    let span = collector.span_of(parts[1]).await;
    assert_eq!(span["spanId"].as_str(), Some(parts[2]));
    assert!(
        span["parentSpanId"].as_str().unwrap_or("").is_empty(),
        "{span}"
    );

    // An attacker's traceparents: ignored (a new trace), never echoed, their tracestate
    // dropped with them.
    let hostile = [
        "garbage".to_owned(),
        "x".repeat(4000),
        format!("01-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        format!("ff-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        format!("00-{}-{PARENT_SPAN}-01", "0".repeat(32)),
        format!("00-{PARENT_TRACE}-{}-01", "0".repeat(16)),
        format!("00-{}-{PARENT_SPAN}-01", PARENT_TRACE.to_uppercase()),
        format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01-extra"),
    ];
    for bad in &hostile {
        upstream.clear();
        let status = get(
            &node,
            "/v1/matches",
            &[
                ("x-api-key", &key),
                ("traceparent", bad),
                ("tracestate", "evil=1"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{bad}");
        let seen = upstream.last_request().unwrap();
        let sent = seen.header_all("traceparent");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_ne!(sent[0], bad.as_str());
        let parts: Vec<&str> = sent[0].split('-').collect();
        assert_eq!(parts.len(), 4, "{sent:?}");
        assert_ne!(parts[1], PARENT_TRACE, "{bad}");
        assert_eq!(seen.header("tracestate"), None, "{bad}");
        collector.span_of(parts[1]).await;
    }

    // A refused request: its reason in the span; no key material in anything exported.
    let bad_key = spoiled(&key);
    let status = get(
        &node,
        &format!("/v1/matches?apiKey={bad_key}"),
        &[(
            "traceparent",
            &format!("00-{}-{PARENT_SPAN}-01", "ab".repeat(16)),
        )],
    )
    .await;
    assert_eq!(status, 401);
    let span = collector.span_of(&"ab".repeat(16)).await;
    let reason = attr(&span, "keygate.reason").expect("a reason code");
    assert!(!reason.is_empty());
    assert_eq!(attr(&span, "keygate.decision"), Some(reason));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("401")
    );
    for body in collector.raw() {
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(&key), "the key was exported");
        assert!(!text.contains(&bad_key), "the refused key was exported");
        assert!(!text.contains("apiKey"), "the query string was exported");
        assert!(!text.contains("page=2"), "the query string was exported");
        assert!(!text.contains("vendor=abc"), "a header was exported");
    }
    drop(node);
}

/// The upstream connection's `traceparent`, split: trace id, span id, flags.
fn told(conn: &keygate_test::ws_upstream::Conn) -> (String, String, String) {
    let tp = conn.header("traceparent").expect("a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A WebSocket session is one span from its upgrade to its close, continuing the caller's
/// trace and telling the upstream's handshake of it; refusals (over HTTP or on the socket)
/// are spans with their reason; no key in anything exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_are_spans_from_upgrade_to_close() {
    use futures_util::{SinkExt, StreamExt};
    use keygate_test::tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let live = keygate_test::WsUpstream::start().await;
    let (collector, at) = Collector::start().await;
    let extra = format!(
        r#"[tracing]
otlp_endpoint = "http://{at}"

[upstreams.live]
url = "{ws}"

[[routes]]
name = "stream"
path = "/ws/stream"
upstream = "live"
ws = {{ mode = "handshake" }}

[[routes]]
name = "game"
path = "/ws/game"
upstream = "live"
ws = {{ mode = "close_code", credentials = ["bearer"] }}
"#,
        ws = live.url()
    );
    let (node, key, client_id) = start(dir.path(), &upstream, &extra).await;
    let wait = Duration::from_secs(20);

    // Handshake mode, the caller's trace continued: two messages each way, closed by the
    // client.
    let traceparent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let url = format!("ws://{}/ws/stream?page=secret-query", node.listen);
    let mut session =
        keygate_test::ws_connect_with(&url, &[("x-api-key", &key), ("traceparent", &traceparent)])
            .await
            .expect("the upgrade is accepted");
    let conns = live.wait_connections(1, wait).await;
    assert_eq!(conns.len(), 1);
    let (trace, gateway_span, flags) = told(&conns[0]);
    assert_eq!((trace.as_str(), flags.as_str()), (PARENT_TRACE, "01"));
    assert_ne!(gateway_span, PARENT_SPAN);
    for m in ["one", "two"] {
        session.send(Message::text(m)).await.unwrap();
    }
    let mut echoed = 0;
    while echoed < 2 {
        match tokio::time::timeout(wait, session.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => echoed += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("the session ended early: {other:?}"),
        }
    }
    session.close(None).await.unwrap();
    let span = collector.span_of(PARENT_TRACE).await;
    assert_eq!(
        span["spanId"].as_str(),
        Some(gateway_span.as_str()),
        "{span}"
    );
    assert_eq!(span["parentSpanId"].as_str(), Some(PARENT_SPAN), "{span}");
    assert_eq!(span["name"], "GET stream");
    assert_eq!(attr(&span, "http.route").as_deref(), Some("stream"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("101")
    );
    assert_eq!(
        attr(&span, "keygate.decision").as_deref(),
        Some("forwarded")
    );
    if !client_id.is_empty() {
        assert_eq!(attr(&span, "keygate.client_id"), Some(client_id.clone()));
    }
    let key_id = attr(&span, "keygate.key_id").expect("the key's id");
    assert!(!key_id.is_empty() && !key.contains(&key_id), "{key_id}");
    assert_eq!(
        attr(&span, "keygate.ws.messages_from_client").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&span, "keygate.ws.messages_to_client").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(&span, "keygate.ws.end").as_deref(),
        Some("client_closed")
    );
    let connect_ms: f64 = attr(&span, "keygate.upstream.duration_ms")
        .expect("the upstream connect's time")
        .parse()
        .unwrap();
    let session_ms: f64 = attr(&span, "keygate.ws.session_ms")
        .expect("the session's length")
        .parse()
        .unwrap();
    assert!(connect_ms >= 0.0 && session_ms >= 0.0);
    // The span lasts from the upgrade to the close: longer than the session's relay.
    let nanos = |k: &str| -> u128 {
        match &span[k] {
            Value::String(s) => s.parse().unwrap(),
            v => u128::from(v.as_u64().unwrap()),
        }
    };
    let span_ms = (nanos("endTimeUnixNano") - nanos("startTimeUnixNano")) as f64 / 1e6;
    assert!(span_ms >= session_ms, "{span_ms} < {session_ms}");

    // Close-code mode (decided on the socket), no traceparent: a new trace, told to the
    // upstream; the session ends when the upstream goes.
    let url = format!("ws://{}/ws/game", node.listen);
    let bearer = format!("Bearer {key}");
    let mut game = keygate_test::ws_connect_with(&url, &[("authorization", &bearer)])
        .await
        .expect("close-code mode upgrades first");
    let conns = live.wait_connections(2, wait).await;
    assert_eq!(conns.len(), 2);
    let (trace, gateway_span, _) = told(&conns[1]);
    assert_ne!(trace, PARENT_TRACE);
    game.send(Message::text("three")).await.unwrap();
    conns[1].wait_received(1, wait).await;
    game.close(None).await.unwrap();
    let span = collector.span_of(&trace).await;
    assert_eq!(span["spanId"].as_str(), Some(gateway_span.as_str()));
    assert_eq!(span["name"], "GET game");
    assert_eq!(
        attr(&span, "keygate.ws.messages_from_client").as_deref(),
        Some("1")
    );
    assert!(attr(&span, "keygate.upstream.duration_ms").is_some());

    // Refused over HTTP (handshake mode) and on the socket (close-code mode): a span each
    // with the reason, no upstream connection, no session facts.
    let bad_key = spoiled(&key);
    let refused_trace = "cd".repeat(16);
    let tp = format!("00-{refused_trace}-{PARENT_SPAN}-01");
    let url = format!("ws://{}/ws/stream", node.listen);
    assert_eq!(
        keygate_test::ws_connect_with(&url, &[("x-api-key", &bad_key), ("traceparent", &tp)])
            .await
            .err(),
        Some(401)
    );
    let span = collector.span_of(&refused_trace).await;
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("401")
    );
    assert!(attr(&span, "keygate.reason").is_some(), "{span}");
    assert_eq!(attr(&span, "keygate.ws.end"), None);

    let refused_trace = "ef".repeat(16);
    let tp = format!("00-{refused_trace}-{PARENT_SPAN}-01");
    let url = format!("ws://{}/ws/game", node.listen);
    let bearer = format!("Bearer {bad_key}");
    let mut refused =
        keygate_test::ws_connect_with(&url, &[("authorization", &bearer), ("traceparent", &tp)])
            .await
            .expect("close-code mode upgrades first");
    // The refusal arrives as a close frame.
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(_)) = refused.next().await {}
    })
    .await;
    let span = collector.span_of(&refused_trace).await;
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("101")
    );
    let reason = attr(&span, "keygate.reason").expect("a reason code");
    assert_eq!(attr(&span, "keygate.decision"), Some(reason));
    assert_eq!(
        live.connections().len(),
        2,
        "a refused session reached the upstream"
    );

    for body in collector.raw() {
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(&key), "the key was exported");
        assert!(!text.contains(&bad_key), "the refused key was exported");
        assert!(
            !text.contains("secret-query"),
            "the query string was exported"
        );
        assert!(!text.contains("Bearer"), "a header was exported");
    }
    drop(node);
}

/// `keygate_trace_spans_dropped_total` from the node's `/metrics`.
async fn dropped_spans(node: &Serving) -> u64 {
    let text = http_client()
        .get(format!("http://{}/metrics", node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("keygate_trace_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-span metric in {text}"))
        .parse()
        .unwrap()
}

/// A collector that accepts connections and never answers: requests are served as usual,
/// and the spans the full queue could not take are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_answer_costs_requests_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = silent.local_addr().unwrap();
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://{at}\"\nexport_timeout = \"60s\"\nmax_queue = 16\n"
    );
    let (node, key, _) = start(dir.path(), &upstream, &tracing).await;
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(get(&node, "/v1/matches", &[("x-api-key", &key)]).await, 200);
    }
    // Far below the export timeout: no request waited on the exporter.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    // At most 16 queued and one batch of 16 in the stalled export: the rest are counted.
    let dropped = dropped_spans(&node).await;
    assert!((168..=400).contains(&dropped), "{dropped}");
    drop(silent);
}

/// A collector that refuses every export: the spans of each failed export are counted, and
/// requests are served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_refuses_are_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (collector, at) = Collector::answering(400).await;
    let tracing = format!("[tracing]\notlp_endpoint = \"http://{at}\"\nexport_timeout = \"2s\"\n");
    let (node, key, _) = start(dir.path(), &upstream, &tracing).await;
    for _ in 0..20 {
        assert_eq!(get(&node, "/v1/matches", &[("x-api-key", &key)]).await, 200);
    }
    // Every span the collector received was refused: once they are all in, the count is
    // at least the requests'.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = collector.spans().len() as u64;
        let dropped = dropped_spans(&node).await;
        if received >= 20 && dropped >= received {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "received {received}, dropped {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tracing off: `traceparent` and `tracestate` reach the upstream exactly as sent, valid or
/// not, and nothing is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_off_forwards_trace_headers_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let (node, key, _) = start(dir.path(), &upstream, "").await;
    for tp in [
        format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        "garbage".to_owned(),
    ] {
        let status = get(
            &node,
            "/v1/matches",
            &[
                ("x-api-key", &key),
                ("traceparent", &tp),
                ("tracestate", "vendor=abc"),
            ],
        )
        .await;
        assert_eq!(status, 200);
        let seen = upstream.last_request().unwrap();
        assert_eq!(seen.header_all("traceparent"), vec![tp.as_str()]);
        assert_eq!(seen.header("tracestate"), Some("vendor=abc"));
    }
}

/// check-config refuses a bad `[tracing]` with the line of the table.
#[test]
fn check_config_refuses_a_bad_tracing_table() {
    let dir = tempfile::tempdir().unwrap();
    for (table, says) in [
        ("otlp_endpoint = \"ftp://x\"", "tracing.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://u:p@x:4318\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"http://x:4318\"\nsample_ratio = 1.5",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://x:4318\"\nmax_queue = 0",
            "tracing.max_queue",
        ),
        (
            "otlp_endpoint = \"http://x:4318\"\nexport_timeout = \"0s\"",
            "tracing.export_timeout",
        ),
        ("otlp_endpoint = \"http://x:4318\"\nheaders = 1", "headers"),
    ] {
        let config = dir.path().join("k.toml");
        std::fs::write(&config, format!("[tracing]\n{table}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{table}: {err}");
        assert!(err.contains(says), "{table}: {err}");
        // Spanned: the file and line of the table or key.
        assert!(err.contains("k.toml:"), "{table}: {err}");
        // A refused URL's password is not repeated.
        assert!(!err.contains("u:p@"), "{table}: {err}");
    }
}
