//! A real HTTP/1.1 upstream server for proxy tests.
//!
//! [`Upstream::start`] binds `127.0.0.1:0`, spawns its accept loop on the
//! caller's tokio runtime and records every request it receives (method, URI,
//! headers and the full body) before answering. Dropping the [`Upstream`]
//! aborts the accept loop and every open connection, so the port stops
//! answering.
//!
//! Routes (matched on the path only; anything else, including a route whose
//! parameter does not parse, gets the echo behaviour):
//!
//! | path | response |
//! | --- | --- |
//! | `/status/{code}` | status `code`, body `status {code}` |
//! | `/slow/{ms}` | waits `ms` milliseconds, then 200 `slow` |
//! | `/sse` | `text/event-stream`, 5 events `data: n\n\n` (n in 0..5), 100 ms apart |
//! | `/stream-bytes/{n}` | 200, chunked body of `n` bytes in 16 KiB chunks (`a..z` repeated) |
//! | `/echo-body` | 200, the request body as is, with the request's `content-type` |
//! | anything else | 200 JSON `{"method", "uri", "headers", "body"}` (see [`echo_json`]) |
//!
//! Every response carries `x-upstream: test`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;

/// Number of events the `/sse` route sends.
pub const SSE_EVENTS: usize = 5;
/// Delay between two `/sse` events.
pub const SSE_INTERVAL: Duration = Duration::from_millis(100);
/// Chunk size of the `/stream-bytes/{n}` route.
pub const STREAM_CHUNK: usize = 16 * 1024;

type Body = BoxBody<Bytes, Infallible>;
type Records = Arc<Mutex<Vec<Recorded>>>;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method, e.g. `GET`.
    pub method: String,
    /// The request target as received: path and query for the usual
    /// origin-form (`/a/b?c=d`), the full URI if a client sent absolute-form.
    pub uri: String,
    /// Header names (lowercase) and values, duplicates kept. Order follows
    /// hyper's header map: names in order of first appearance, with all the
    /// values of one name together in the order they were received.
    pub headers: Vec<(String, String)>,
    /// The full request body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as UTF-8, with invalid sequences replaced.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running upstream server; stopped when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    records: Records,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    ///
    /// Panics if the listener cannot be bound, which fails the calling test.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test upstream on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("read test upstream's local address");
        let records = Records::default();
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&records)));
        Upstream {
            addr,
            records,
            accept,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in the order they were received.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.records).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.records).len()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.records).last().cloned()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        lock(&self.records).clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // The accept task owns the listener and a JoinSet of connection tasks:
        // aborting it closes the port and aborts every open connection.
        self.accept.abort();
    }
}

/// Locks the records, ignoring poisoning (a panicking test thread must not
/// hide the requests from the rest of the test).
fn lock(records: &Records) -> MutexGuard<'_, Vec<Recorded>> {
    records.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, records: Records) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Transient accept errors (e.g. too many open files): back off.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let records = Arc::clone(&records);
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&records)));
            // Connection errors (client went away, bad request) end only that
            // connection; a test observes them from the client side.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, records: Records) -> Result<Response<Body>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let (body, body_ok) = match incoming.collect().await {
        Ok(collected) => (collected.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    lock(&records).push(recorded.clone());

    let mut response = if body_ok {
        route(
            &recorded,
            parts.uri.path(),
            parts.headers.get(CONTENT_TYPE),
            body,
        )
        .await
    } else {
        text(StatusCode::BAD_REQUEST, "could not read request body")
    };
    response
        .headers_mut()
        .insert("x-upstream", HeaderValue::from_static("test"));
    Ok(response)
}

async fn route(
    recorded: &Recorded,
    path: &str,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Response<Body> {
    if let Some(code) = param(path, "/status/") {
        if let Some(status) = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            return text(status, format!("status {}", status.as_u16()));
        }
    }
    if let Some(ms) = param(path, "/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return text(StatusCode::OK, "slow");
    }
    if path == "/sse" {
        return sse();
    }
    if let Some(n) = param(path, "/stream-bytes/").and_then(|n| n.parse::<usize>().ok()) {
        return stream_bytes(n);
    }
    if path == "/echo-body" {
        let mut response = Response::new(Full::new(body).boxed());
        if let Some(ct) = content_type {
            response.headers_mut().insert(CONTENT_TYPE, ct.clone());
        }
        return response;
    }
    let mut response =
        Response::new(Full::new(Bytes::from(echo_json(recorded).to_string())).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The single path segment after `prefix`, if `path` is `prefix{segment}`.
fn param<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The JSON the echo route answers with: `{"method", "uri", "headers",
/// "body"}`, where `headers` maps each lowercase name to its value, or to an
/// array of values when the header was repeated, and `body` is the request
/// body as lossy UTF-8.
pub fn echo_json(recorded: &Recorded) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &recorded.headers {
        let value = serde_json::Value::String(value.clone());
        match headers.get_mut(name) {
            None => {
                headers.insert(name.clone(), value);
            }
            Some(serde_json::Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                headers.insert(name.clone(), serde_json::Value::Array(vec![first, value]));
            }
        }
    }
    serde_json::json!({
        "method": recorded.method,
        "uri": recorded.uri,
        "headers": headers,
        "body": recorded.body_text(),
    })
}

/// A streaming body fed by a spawned producer task; the task ends when the
/// producer finishes or the body is dropped (client gone, upstream dropped).
fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ReceiverStream::new(rx)).boxed())
}

fn sse() -> Response<Body> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for n in 0..SSE_EVENTS {
            if n > 0 {
                tokio::time::sleep(SSE_INTERVAL).await;
            }
            let event = Bytes::from(format!("data: {n}\n\n"));
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

fn stream_bytes(n: usize) -> Response<Body> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < n {
            let len = STREAM_CHUNK.min(n - sent);
            let chunk: Vec<u8> = (sent..sent + len).map(|i| b'a' + (i % 26) as u8).collect();
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
            sent += len;
        }
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}
