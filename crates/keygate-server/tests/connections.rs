//! Connections as a whole, over real sockets: HTTP/2 connections that never finish a request
//! or sit idle are closed (hyper's header timer guards HTTP/1 only), HTTP/2 settings and
//! keep-alive pings are sent, and each listener holds at most `max_connections`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Harness;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[server]
header_read_timeout = "30s"
h2_handshake_timeout = "500ms"
h2_idle_timeout = "1s"
h2_keepalive_interval = "200ms"
h2_max_concurrent_streams = 8
max_connections = 3

[upstreams.default]
url = "{upstream}"

[[routes]]
name = "echo"
path = "/{*rest}"
"#;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// The payload of the ping h2 sends with a graceful GOAWAY (`h2::frame::Ping::SHUTDOWN`).
const GOAWAY_PING: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];

/// Everything the server sends until it closes the connection (or `limit` passes), and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The HTTP/2 frames in `bytes`: (type, flags, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], bytes[4], bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_that_never_finish_a_request_are_closed() {
    let h = Harness::start(CONFIG).await;

    // The preface and nothing else: hyper would hold this forever.
    let mut s = TcpStream::connect(h.gateway.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&EMPTY_SETTINGS).await.unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "an h2 connection without a request was held open");
    // Well before the 30 s HTTP/1 header timeout.
    assert!(started.elapsed() < Duration::from_secs(15));
    let frames = frames(&got);
    let settings = &frames
        .iter()
        .find(|(kind, flags, _)| *kind == FRAME_SETTINGS && flags & 1 == 0)
        .expect("the server's SETTINGS")
        .2;
    let advertised = settings.chunks(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    });
    assert_eq!(advertised, Some(8), "{frames:?}");
    assert!(
        frames.iter().any(|(kind, ..)| *kind == FRAME_GOAWAY),
        "closed without a GOAWAY: {frames:?}"
    );
    // A keep-alive ping (every 200 ms), told from the ping of the GOAWAY by its payload.
    assert!(
        frames
            .iter()
            .any(|(kind, flags, payload)| *kind == FRAME_PING
                && flags & 1 == 0
                && payload.as_slice() != GOAWAY_PING),
        "no keep-alive ping: {frames:?}"
    );

    // HEADERS without END_HEADERS, its CONTINUATION never sent.
    let mut s = TcpStream::connect(h.gateway.addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&EMPTY_SETTINGS).await.unwrap();
    // Stream 1, END_STREAM only; the block is `:method: GET` (static index 2).
    s.write_all(&[0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82])
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed, "a half-sent header block held its connection open");
    assert_eq!(h.upstream.request_count(), 0);
}

/// An HTTP/2 connection to the gateway through hyper's client, and the task driving it
/// (which ends when the server closes the connection).
async fn h2_client(
    h: &Harness,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
    key: &str,
) -> (u16, String) {
    let req = Request::get(format!("http://gateway{path}"))
        .header("x-api-key", key)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connections_are_closed_and_busy_ones_are_not() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;

    let (mut send, driver) = h2_client(&h).await;
    assert_eq!(h2_get(&mut send, "/echo/x", &key).await.0, 200);
    // A stream in progress for longer than the idle timeout is not cut.
    let (status, body) = h2_get(&mut send, "/slow/2500", &key).await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    // Then, with nothing in progress, the server closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(20), driver).await;
    assert!(closed.is_ok(), "an idle h2 connection was held open");
    assert_eq!(h.upstream.request_count(), 2);
}

/// One HTTP/1.1 keep-alive connection through hyper's client.
async fn h1_client(h: &Harness) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn h1_status(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    key: &str,
) -> Option<u16> {
    let req = Request::get("/echo/x")
        .header("host", "gateway")
        .header("x-api-key", key)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;

    // Three connections, spread by the kernel over both workers: the cap is the listener's.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut send = h1_client(&h).await;
        assert_eq!(h1_status(&mut send, &key).await, Some(200));
        held.push(send);
    }
    // The fourth is closed without an answer, at once.
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.gateway.addr).await.unwrap();
        let started = Instant::now();
        let _ = s
            .write_all(
                format!("GET /echo/x HTTP/1.1\r\nHost: g\r\nX-API-Key: {key}\r\n\r\n").as_bytes(),
            )
            .await;
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(
            closed && got.is_empty(),
            "answered past the cap: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The admin listener has its own count.
    let health = h.http.get(h.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // The three held connections are still served.
    for send in &mut held {
        assert_eq!(h1_status(send, &key).await, Some(200));
    }
    assert_eq!(h.upstream.request_count(), 6);
    let metrics = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keygate_connections_refused_total{listener=\"public\"} 3"),
        "{metrics}"
    );

    // A connection closed frees its place.
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut send = h1_client(&h).await;
        if h1_status(&mut send, &key).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
