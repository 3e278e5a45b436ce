//! A real WebSocket upstream for tests.
//!
//! [`WsUpstream::start`] binds `127.0.0.1:0` and accepts WebSocket upgrades on any path,
//! recording each connection's request (URI and headers) and every frame it receives. By
//! default a connection echoes text and binary messages back as they came (pings are answered
//! by the protocol). A test can push messages to one or all connections and wait for what
//! arrived without sleeping.
//!
//! Paths with a behaviour:
//!
//! | path | behaviour |
//! | --- | --- |
//! | `/flood/{n}/{bytes}` | first sends `n` binary messages of `bytes` bytes, counting in [`Conn::sent`], then echoes |
//! | `/close/{code}` | closes at once with `code` and reason `upstream closed` |
//! | `/reject` | refuses the upgrade with HTTP 403 |
//!
//! Dropping the [`WsUpstream`] aborts the accept loop and every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// One frame an upstream connection received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code and reason, if it had them.
    Close(Option<(u16, String)>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes waiters whenever anything is recorded.
#[derive(Debug, Default)]
struct Signal(Notify);

impl Signal {
    fn changed(&self) {
        self.0.notify_waiters();
    }

    /// Evaluates `f` now and after every change until it returns `Some` or `timeout` passes.
    async fn until<T>(&self, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.0.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f() {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return f();
            }
        }
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The request target as received (path and query).
    pub uri: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    received: Mutex<Vec<Received>>,
    sent: AtomicU64,
    closed: AtomicBool,
    push: mpsc::UnboundedSender<Message>,
    signal: Arc<Signal>,
}

impl Conn {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every frame received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }

    /// The text messages received so far.
    pub fn texts(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|r| match r {
                Received::Text(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Messages sent by the `/flood` behaviour so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends a message to the client side of this connection.
    pub fn push(&self, msg: Message) {
        let _ = self.push.send(msg);
    }

    /// Waits until `n` frames were received (or `timeout`); returns what arrived.
    pub async fn wait_received(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.signal
            .until(timeout, || {
                let r = self.received();
                (r.len() >= n).then_some(r)
            })
            .await
            .unwrap_or_else(|| self.received())
    }

    /// Waits until the connection ends; the close frame it received, if any.
    pub async fn wait_closed(&self, timeout: Duration) -> Option<Option<(u16, String)>> {
        self.signal
            .until(timeout, || {
                self.is_closed().then(|| {
                    self.received().into_iter().rev().find_map(|r| match r {
                        Received::Close(c) => Some(c),
                        _ => None,
                    })
                })
            })
            .await
            .map(Option::flatten)
    }

    fn record(&self, r: Received) {
        lock(&self.received).push(r);
        self.signal.changed();
    }
}

#[derive(Debug, Default)]
struct State {
    conns: Mutex<Vec<Arc<Conn>>>,
    signal: Arc<Signal>,
}

/// A running WebSocket upstream; stopped when dropped.
#[derive(Debug)]
pub struct WsUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl WsUpstream {
    /// Binds `127.0.0.1:0` and starts accepting on the current tokio runtime.
    ///
    /// Panics if the listener cannot be bound, which fails the calling test.
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind WebSocket upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("read the upstream's address");
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        WsUpstream {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as an upstream URL in a gateway configuration.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection accepted so far, in order.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        lock(&self.state.conns).clone()
    }

    /// Connections not yet ended.
    pub fn open_count(&self) -> usize {
        lock(&self.state.conns)
            .iter()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// Waits until `n` connections were accepted (or `timeout`); returns them.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> Vec<Arc<Conn>> {
        self.state
            .signal
            .until(timeout, || {
                let c = self.connections();
                (c.len() >= n).then_some(c)
            })
            .await
            .unwrap_or_else(|| self.connections())
    }

    /// Waits until exactly `n` connections are open (or `timeout`); whether that happened.
    pub async fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .signal
            .until(timeout, || (self.open_count() == n).then_some(()))
            .await
            .is_some()
    }

    /// Sends a text message to every open connection.
    pub fn push_all(&self, text: &str) {
        for c in self.connections() {
            if !c.is_closed() {
                c.push(Message::Text(text.into()));
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        conns.spawn(serve(stream, state));
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<State>) {
    let mut seen: Option<(String, Vec<(String, String)>)> = None;
    // The signature is tungstenite's callback type; its error is its response type.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let uri = req.uri().to_string();
        let reject = req.uri().path() == "/reject";
        seen = Some((uri, headers));
        if reject {
            let mut refused = ErrorResponse::new(Some("refused".into()));
            *refused.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
            return Err(refused);
        }
        let mut resp = resp;
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            let first = p
                .to_str()
                .unwrap_or("")
                .split(',')
                .next()
                .unwrap_or("")
                .trim();
            if let Ok(v) = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(first) {
                resp.headers_mut().insert("sec-websocket-protocol", v);
            }
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await;
    let Some((uri, headers)) = seen else { return };
    let Ok(ws) = ws else { return };
    let (push, mut pushed) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        uri: uri.clone(),
        headers,
        received: Mutex::default(),
        sent: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        push,
        signal: Arc::clone(&state.signal),
    });
    lock(&state.conns).push(Arc::clone(&conn));
    state.signal.changed();
    let (mut tx, mut rx) = ws.split();

    let parts: Vec<&str> = uri.split('?').next().unwrap_or("").split('/').collect();
    match parts.as_slice() {
        ["", "flood", n, bytes] => {
            let n: u64 = n.parse().unwrap_or(0);
            let payload = vec![b'x'; bytes.parse().unwrap_or(1)];
            for _ in 0..n {
                if tx
                    .send(Message::Binary(payload.clone().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                conn.sent.fetch_add(1, Ordering::AcqRel);
            }
            state.signal.changed();
        }
        ["", "close", code] => {
            let code: u16 = code.parse().unwrap_or(1000);
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: "upstream closed".into(),
                })))
                .await;
        }
        _ => {}
    }

    loop {
        tokio::select! {
            msg = rx.next() => {
                let reply = match msg {
                    Some(Ok(Message::Text(t))) => {
                        conn.record(Received::Text(t.as_str().to_owned()));
                        Some(Message::Text(t))
                    }
                    Some(Ok(Message::Binary(b))) => {
                        conn.record(Received::Binary(b.to_vec()));
                        Some(Message::Binary(b))
                    }
                    Some(Ok(Message::Ping(p))) => {
                        conn.record(Received::Ping(p.to_vec()));
                        None
                    }
                    Some(Ok(Message::Pong(p))) => {
                        conn.record(Received::Pong(p.to_vec()));
                        None
                    }
                    Some(Ok(Message::Close(frame))) => {
                        conn.record(Received::Close(
                            frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                        ));
                        let _ = tx.flush().await;
                        break;
                    }
                    Some(Ok(Message::Frame(_))) => None,
                    Some(Err(_)) | None => break,
                };
                if let Some(reply) = reply {
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
            }
            Some(msg) = pushed.recv() => {
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Release);
    state.signal.changed();
}
