//! Bounds on hostile clients, over raw TCP: oversized heads and too many headers (431), slow
//! or silent clients (closed after the header timeout), oversized bodies, declared or chunked
//! (413, never forwarded whole).

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[server]
max_header_bytes = 8192
max_headers = 20
header_read_timeout = "400ms"
max_body_bytes = 1000

[upstreams.default]
url = "{upstream}"

[[routes]]
name = "echo"
path = "/echo/{*rest}"
"#;

async fn setup() -> (Harness, String) {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    (h, key)
}

/// Sends `head` (and `body`), then reads until the server closes or 5 s pass; returns what
/// was read and how long the server took to close.
async fn exchange(h: &Harness, head: &str, body: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(h.gateway.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the body is all written.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_too_many_headers_get_431() {
    let (h, key) = setup().await;
    let big = "b".repeat(9000);
    let (r, _) = exchange(
        &h,
        &format!("GET /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nX-Big: {big}\r\n\r\n"),
        b"",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (r, _) = exchange(
        &h,
        &format!("GET /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{many}\r\n"),
        b"",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    // Within the bounds, the same request passes.
    let few: String = (0..10).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (r, _) = exchange(
        &h,
        &format!(
            "GET /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{few}Connection: close\r\n\r\n"
        ),
        b"",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(h.upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_after_the_header_timeout() {
    let (h, _) = setup().await;
    // Slowloris: a head that never ends.
    let (r, took) = exchange(&h, "GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"").await;
    assert!(
        took < Duration::from_secs(3),
        "held for {took:?}, answered {r:?}"
    );
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 408"), "{r}");
    // A client that connects and sends nothing.
    let (r, took) = exchange(&h, "", b"").await;
    assert!(
        took < Duration::from_secs(3),
        "held for {took:?}, answered {r:?}"
    );
    // Trickling one byte at a time does not extend the deadline.
    let mut s = TcpStream::connect(h.gateway.addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the server closes a trickling client")
            .unwrap_or(0);
        closed = n == 0 || buf.starts_with(b"HTTP/1.1 408");
    }
    assert!(closed && started.elapsed() < Duration::from_secs(4));
    assert_eq!(h.upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_are_never_forwarded() {
    let (h, key) = setup().await;
    let body = vec![b'x'; 1001];
    let (r, _) = exchange(
        &h,
        &format!(
            "POST /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
        &body,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("payload_too_large"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert_eq!(h.upstream.request_count(), 0);

    // At the bound, forwarded whole.
    let body = vec![b'y'; 1000];
    let (r, _) = exchange(
        &h,
        &format!(
            "POST /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        &body,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(h.upstream.last_request().unwrap().body.len(), 1000);

    // A chunked body declares no length: it is counted as it streams and cut past the bound.
    let chunk = |n: usize, b: u8| format!("{n:x}\r\n{}\r\n", String::from(b as char).repeat(n));
    let chunked = |body: &str| {
        format!(
            "POST /echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        )
    };
    let over = format!(
        "{}{}{}0\r\n\r\n",
        chunk(600, b'a'),
        chunk(600, b'b'),
        chunk(600, b'c')
    );
    let (r, _) = exchange(&h, &chunked(&over), b"").await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("payload_too_large"), "{r}");
    // The upstream saw the request start, then its body break off: it never read a whole one.
    if h.upstream.request_count() == 2 {
        assert!(
            h.upstream.last_request().unwrap().body.is_empty(),
            "the upstream read a complete oversized body"
        );
    }
    let within = format!("{}{}0\r\n\r\n", chunk(400, b'a'), chunk(400, b'b'));
    let (r, _) = exchange(&h, &chunked(&within), b"").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(h.upstream.last_request().unwrap().body.len(), 800);
}
