//! The direct upstream engine against hyper's client, on the same inputs: two gateways, one
//! with `upstream_engine = "hyper"` and one with `"direct"`, in front of one scripted raw-TCP
//! upstream, must answer their callers alike for every framing case (fixed length, chunked
//! with extensions and trailers, HEAD, 204, 304, 1xx before the answer, `Connection: close`,
//! read to close), refuse the same bad heads with the same 502, fail a body shorter than its
//! length, never read bytes past a response as the next one, and forward request bodies with
//! exact framing.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::Harness;
use keygate_test::reqwest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream answers to `/case/NAME`, and whether it closes afterwards.
fn script(case: &str, body: &[u8], chunked: bool) -> (Vec<u8>, bool) {
    let fixed = |extra: &str| -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: fixed{extra}\r\n\r\nhello").into()
    };
    match case {
        "fixed" => (fixed(""), false),
        // Kept alive, but the upstream closes the connection when the next request arrives on
        // it (`serve`): its idle timeout racing the gateway's reuse.
        "drop-next" => (fixed(""), false),
        "chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\nX-Case: chunked\r\n\r\n5;ext=1;q=\"a b\"\r\nhello\r\n6 \r\n world\r\n0\r\nx-t: v\r\n\r\n".to_vec(),
            false,
        ),
        // Both framings (a smuggling attempt, RFC 9112 §6.3): chunked wins and the length must
        // not reach the caller, whose client would frame the body by it.
        "chunked-and-length" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-Case: both\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            false,
        ),
        "head" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX-Case: head\r\n\r\n".to_vec(),
            false,
        ),
        "204" => (b"HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\n".to_vec(), false),
        "304" => (
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Case: 304\r\n\r\n".to_vec(),
            false,
        ),
        "interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Case: interim\r\n\r\nok".to_vec(),
            false,
        ),
        "close" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\nX-Case: close\r\n\r\nbye".to_vec(),
            true,
        ),
        "until-close" => (
            b"HTTP/1.1 200 OK\r\nX-Case: until-close\r\n\r\nread until the upstream closes".to_vec(),
            true,
        ),
        "reason" => (
            b"HTTP/1.1 201 Made It\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        ),
        "oversize" => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..60 {
                head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "b".repeat(8000)).as_bytes());
            }
            head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            (head, true)
        }
        "many" => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..101 {
                head.extend_from_slice(format!("X-H-{i}: 1\r\n").as_bytes());
            }
            head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            (head, true)
        }
        "malformed" => (
            b"HTTP/1.1 200 OK\r\nthis is no header\r\nContent-Length: 0\r\n\r\n".to_vec(),
            true,
        ),
        "bad-length" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            true,
        ),
        "short" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Case: short\r\n\r\nshort".to_vec(),
            true,
        ),
        "bad-chunk" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n".to_vec(),
            true,
        ),
        // A response followed by bytes that look like the next one: never to be served.
        "extra" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Case: extra\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: fixed\r\n\r\nevil!".to_vec(),
            false,
        ),
        "echo" => {
            let mut resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Chunked: {chunked}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            resp.extend_from_slice(body);
            (resp, false)
        }
        _ => (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        ),
    }
}

/// A raw-TCP upstream answering [`script`] per request, counting its connections.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        Scripted { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and body, by its framing) from `buf`/`stream`.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>, bool)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = lower.contains("transfer-encoding: chunked");
    let mut body = Vec::new();
    if let Some(n) = length {
        while buf.len() < n {
            let mut chunk = [0u8; 4096];
            let got = stream.read(&mut chunk).await.ok()?;
            if got == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..got]);
        }
        body = buf.drain(..n).collect();
    } else if chunked {
        loop {
            // Enough bytes for the whole chunked body: read until its last chunk's end.
            if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                let raw: Vec<u8> = buf.drain(..i + 5).collect();
                let mut rest = &raw[..];
                while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16)
                            .unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                    rest = &rest[eol + 2 + size + 2..];
                }
                break;
            }
            let mut chunk = [0u8; 4096];
            let got = stream.read(&mut chunk).await.ok()?;
            if got == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    Some((path, body, chunked))
}

async fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut drop_next = false;
    while let Some((path, body, chunked)) = read_request(&mut stream, &mut buf).await {
        if drop_next {
            return;
        }
        let case = path.trim_start_matches("/case/");
        drop_next = case == "drop-next";
        let (answer, close) = script(case, &body, chunked);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

const CONFIG: &str = r#"
[server]
upstream_engine = "ENGINE"

[upstreams.raw]
url = "http://RAW"
timeout = "5s"
breaker = { failures = 1000, window = "10s", open_for = "1s", half_open_probes = 1 }

[[routes]]
path = "/case/{name}"
upstream = "raw"
public = true
"#;

async fn gateway(engine: &str, raw: &Scripted) -> Harness {
    let text = CONFIG
        .replace("ENGINE", engine)
        .replace("RAW", &raw.addr.to_string());
    Harness::start(&text).await
}

/// What a caller sees: status, headers (but the date), and the body or that it failed.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: Result<Vec<u8>, ()>,
}

async fn see(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<reqwest::Body>,
) -> Seen {
    let mut req = http.request(method, url);
    if let Some(body) = body {
        req = req.body(body);
    }
    // A response cut mid-body may reach the caller as a head and a failed body, or (when
    // the head had not gone out yet) as a connection closed: status 0.
    let Ok(resp) = req.send().await else {
        return Seen {
            status: 0,
            headers: Vec::new(),
            body: Err(()),
        };
    };
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| *n != "date")
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let body = resp.bytes().await.map(|b| b.to_vec()).map_err(|_| ());
    Seen {
        status,
        headers,
        body,
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_direct_engine_answers_every_framing_case_as_hyper_does() {
    let raw = Scripted::start().await;
    let hyper = gateway("hyper", &raw).await;
    let direct = gateway("direct", &raw).await;
    let cases = [
        "fixed",
        "chunked",
        "chunked-and-length",
        "204",
        "304",
        "interim",
        "close",
        "until-close",
        "reason",
        "oversize",
        "many",
        "malformed",
        "bad-length",
        "short",
        "bad-chunk",
        "missing",
    ];
    let mut seen: HashMap<&str, Seen> = HashMap::new();
    for case in cases {
        // A fresh client per case: a failed body must not leave the next case a broken
        // connection to the gateway.
        let http = keygate_test::http_client();
        let by_hyper = see(
            &http,
            reqwest::Method::GET,
            hyper.url(&format!("/case/{case}")),
            None,
        )
        .await;
        let by_direct = see(
            &http,
            reqwest::Method::GET,
            direct.url(&format!("/case/{case}")),
            None,
        )
        .await;
        if ["short", "bad-chunk"].contains(&case) {
            // Cut mid-body: that the caller sees a failure is the fact; how far the head got
            // before the cut is timing.
            assert!(
                by_hyper.body.is_err() && by_direct.body.is_err(),
                "case {case}"
            );
            assert!(by_hyper.status == by_direct.status || by_hyper.status * by_direct.status == 0);
        } else if case == "oversize" {
            // A 480 KB head: past the direct engine's bound (hyper's nominal read buffer,
            // 418 KiB), which hyper's client itself lets through. Stricter, on purpose.
            assert_eq!(by_direct.status, 502);
        } else {
            assert_eq!(by_hyper, by_direct, "case {case}");
        }
        seen.insert(case, by_direct);
    }
    let head = see(
        &hyper.http,
        reqwest::Method::HEAD,
        hyper.url("/case/head"),
        None,
    )
    .await;
    let head_direct = see(
        &direct.http,
        reqwest::Method::HEAD,
        direct.url("/case/head"),
        None,
    )
    .await;
    assert_eq!(head, head_direct);
    assert_eq!(header(&head, "content-length"), Some("42"));
    assert_eq!(head.body, Ok(Vec::new()));

    // The answers themselves, so that "alike" is not "alike and wrong".
    assert_eq!(seen["fixed"].body, Ok(b"hello".to_vec()));
    assert_eq!(seen["chunked"].body, Ok(b"hello world".to_vec()));
    assert_eq!(
        header(&seen["chunked"], "x-t"),
        None,
        "trailers are not headers"
    );
    assert_eq!(seen["chunked-and-length"].body, Ok(b"hello".to_vec()));
    assert_ne!(
        header(&seen["chunked-and-length"], "content-length"),
        Some("3"),
        "the upstream's length beside its chunked framing is dropped"
    );
    assert_eq!(seen["204"].status, 204);
    assert_eq!(seen["304"].status, 304);
    assert_eq!(header(&seen["304"], "etag"), Some("\"v1\""));
    assert_eq!(
        (seen["interim"].status, &seen["interim"].body),
        (200, &Ok(b"ok".to_vec()))
    );
    assert_eq!(seen["close"].body, Ok(b"bye".to_vec()));
    assert_eq!(
        seen["until-close"].body,
        Ok(b"read until the upstream closes".to_vec())
    );
    assert_eq!(seen["reason"].status, 201);
    for refused in ["many", "malformed", "bad-length"] {
        assert_eq!(seen[refused].status, 502, "{refused}");
    }
    assert!(seen["short"].body.is_err(), "a short body is an error");
    assert!(seen["bad-chunk"].body.is_err());
}

#[tokio::test]
async fn bytes_past_a_response_are_never_the_next_response() {
    let raw = Scripted::start().await;
    for engine in ["hyper", "direct"] {
        let gw = gateway(engine, &raw).await;
        let http = keygate_test::http_client();
        for _ in 0..3 {
            let extra = see(&http, reqwest::Method::GET, gw.url("/case/extra"), None).await;
            assert_eq!(extra.body, Ok(b"ok".to_vec()), "{engine}");
            let next = see(&http, reqwest::Method::GET, gw.url("/case/fixed"), None).await;
            assert_eq!(next.body, Ok(b"hello".to_vec()), "{engine}");
        }
    }
}

#[tokio::test]
async fn kept_alive_connections_are_reused_and_closed_ones_are_not() {
    for engine in ["hyper", "direct"] {
        let raw = Scripted::start().await;
        let gw = gateway(engine, &raw).await;
        let http = keygate_test::http_client();
        for _ in 0..10 {
            let seen = see(&http, reqwest::Method::GET, gw.url("/case/fixed"), None).await;
            assert_eq!(seen.body, Ok(b"hello".to_vec()));
        }
        // One caller connection lands on one worker: its pool holds one upstream connection.
        assert!(
            raw.connections() <= 2,
            "{engine}: {} connections",
            raw.connections()
        );
        let before = raw.connections();
        for _ in 0..3 {
            let seen = see(&http, reqwest::Method::GET, gw.url("/case/close"), None).await;
            assert_eq!(seen.body, Ok(b"bye".to_vec()));
        }
        assert!(
            raw.connections() >= before + 2,
            "{engine}: closed connections were reused"
        );
    }
}

/// The direct engine sends an idempotent request without a body once more, on a new
/// connection, when a reused connection closes before any answer; a request with a body is
/// never sent twice.
#[tokio::test]
async fn a_reused_connection_closed_under_a_get_is_retried_once_and_a_post_is_not() {
    let raw = Scripted::start().await;
    let gw = gateway("direct", &raw).await;
    let http = keygate_test::http_client();
    for round in 0..3 {
        let kept = see(&http, reqwest::Method::GET, gw.url("/case/drop-next"), None).await;
        assert_eq!(kept.body, Ok(b"hello".to_vec()), "round {round}");
        let before = raw.connections();
        let retried = see(&http, reqwest::Method::GET, gw.url("/case/fixed"), None).await;
        assert_eq!(retried.status, 200, "round {round}: {retried:?}");
        assert_eq!(retried.body, Ok(b"hello".to_vec()));
        assert_eq!(raw.connections(), before + 1, "one new connection");
    }
    let kept = see(&http, reqwest::Method::GET, gw.url("/case/drop-next"), None).await;
    assert_eq!(kept.status, 200);
    let before = raw.connections();
    let posted = see(
        &http,
        reqwest::Method::POST,
        gw.url("/case/echo"),
        Some(reqwest::Body::from(b"once".to_vec())),
    )
    .await;
    assert_eq!(posted.status, 502, "a POST is not sent twice: {posted:?}");
    assert_eq!(
        raw.connections(),
        before,
        "no second connection for the POST"
    );
}

#[tokio::test]
async fn request_bodies_go_upstream_with_exact_framing() {
    let raw = Scripted::start().await;
    let hyper = gateway("hyper", &raw).await;
    let direct = gateway("direct", &raw).await;
    let sized = b"a sized body".to_vec();
    let streamed = || {
        let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(b"streamed ".to_vec()),
            Ok(b"in ".to_vec()),
            Ok(b"parts".to_vec()),
        ];
        reqwest::Body::wrap_stream(futures_util::stream::iter(parts))
    };
    for gw in [&hyper, &direct] {
        let seen = see(
            &gw.http,
            reqwest::Method::POST,
            gw.url("/case/echo"),
            Some(sized.clone().into()),
        )
        .await;
        assert_eq!(seen.body, Ok(sized.clone()));
        assert_eq!(header(&seen, "x-chunked"), Some("false"));
        let seen = see(
            &gw.http,
            reqwest::Method::POST,
            gw.url("/case/echo"),
            Some(streamed()),
        )
        .await;
        assert_eq!(seen.body, Ok(b"streamed in parts".to_vec()));
        assert_eq!(header(&seen, "x-chunked"), Some("true"));
        let big = vec![b'x'; 300_000];
        let seen = see(
            &gw.http,
            reqwest::Method::PUT,
            gw.url("/case/echo"),
            Some(big.clone().into()),
        )
        .await;
        assert_eq!(seen.body, Ok(big));
        let empty = see(&gw.http, reqwest::Method::GET, gw.url("/case/echo"), None).await;
        assert_eq!(empty.body, Ok(Vec::new()));
    }
}
