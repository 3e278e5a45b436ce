//! The direct upstream engine (`[server] upstream_engine = "direct"`): one HTTP/1.1 exchange
//! with a plain-`http://` upstream inside the request's own task.
//!
//! hyper's client runs each connection in a task of its own and hands it every request and
//! response through a channel and a oneshot (BENCHMARKS.md: about 8% of the gate path's user
//! time). Here the request's task writes the request head straight into the connection's
//! buffer, parses the response head with `httparse` (hyper's own parser), and the response
//! body ([`DirectBody`]) reads the connection itself with exact framing, putting the
//! connection back in its pool only when the response ended exactly and neither side said
//! close. Hand-written because this exchange is the product's hot path; hyper stays the
//! reference (`tests/engines.rs` answers the same inputs through both) and serves `https://`
//! upstreams, HTTP/2 and upgrades.
//!
//! The framing rules are hyper 1.x's (`proto/h1/role.rs` and `decode.rs`), bound for bound:
//! [`MAX_HEAD_BYTES`], [`MAX_HEADERS`], 16 KiB of chunk extensions and of trailers.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::io::Write as _;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::policy::upstream::UpstreamSpec;
use crate::request::bounded_body::{BodyError, BoundedBody};
use crate::state::locks::lock;
use crate::tls::client::ConnectError;

/// Largest response head: hyper's client read buffer bound (`8192 + 4096 * 100`), past which
/// it fails a head as too large.
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Most response headers (hyper's `DEFAULT_MAX_HEADERS`), and most trailer lines.
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes of chunk extensions one body may carry (hyper's `CHUNKED_EXTENSIONS_LIMIT`).
const MAX_CHUNK_EXTENSIONS: u64 = 16 * 1024;
/// Bytes of trailers one body may carry (hyper's `TRAILER_LIMIT`); they are read and dropped,
/// as `Trailer` is hop-by-hop here and hyper's server sends only declared trailers.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Idle connections kept per upstream and worker, as on the hyper path.
const MAX_IDLE: usize = 256;
/// Room reserved before each read of the upstream.
const READ_CHUNK: usize = 16 * 1024;

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the response status is out of range")]
    Status,
    #[error("a response header value is invalid")]
    Header,
    #[error("the response's Content-Length is invalid")]
    ContentLength,
    #[error("an HTTP/1.0 response carries Transfer-Encoding")]
    TransferEncoding,
    #[error("the upstream switched protocols unasked")]
    Upgrade,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size overflows")]
    Overflow,
    #[error("chunk extensions past {MAX_CHUNK_EXTENSIONS} bytes")]
    Extensions,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailers past {MAX_TRAILER_BYTES} bytes or {MAX_HEADERS} lines")]
    Trailers,
    #[error("invalid trailer line end")]
    TrailerEnd,
}

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("the upstream closed the connection before the message ended")]
    Closed,
    /// Not transparent: `bounded_body::is_client_failure` finds the [`BodyError`] as a source.
    #[error("the caller's request body failed")]
    Body(#[source] BodyError),
    #[error("the request body does not match its declared length")]
    RequestLength,
}

/// A kept-alive connection and its buffers (their allocations outlive each exchange).
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request head (and small body chunks) being written.
    write: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
        }
    }

    /// Whether an idle connection is still usable: the upstream neither closed it nor sent
    /// anything unasked (bytes past a response are never read as the next one).
    fn is_idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

/// One worker's idle connections to one upstream; the most recently used is reused first
/// (LIFO: its buffers and the upstream's side are the warmest).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Boxed: a connection moves between the pool and each response body as one pointer
    /// (inline, it made every response, and the request path's futures, larger).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
}

impl Pool {
    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = lock(&self.idle);
        while let Some(conn) = idle.pop() {
            if conn.is_idle_and_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, mut conn: Box<Conn>) {
        conn.read.clear();
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

async fn connect(spec: &UpstreamSpec) -> Result<Box<Conn>, ConnectError> {
    let addr = spec.connect_addr();
    let open = async {
        let tcp = TcpStream::connect(addr.as_str())
            .await
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(Conn::new(tcp)))
    };
    tokio::time::timeout(spec.connect_timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout)?
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes; the connection is not reused.
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    /// HTTP/1.1 or HTTP/1.0, as hyper's response carries it.
    pub version: Version,
    pub headers: HeaderMap,
    /// A reason phrase other than the status's canonical one, passed on as hyper does.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub framing: Framing,
    /// Neither `Connection: close` nor HTTP/1.0 without `keep-alive`.
    pub keep_alive: bool,
}

/// `value` lists `token` (case-insensitive), as hyper's `connection_has`.
fn lists(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Every `Content-Length` value agrees and is digits only (hyper's `content_length_parse_all`).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let line = value.to_str().map_err(|_| HeadError::ContentLength)?;
        for v in line.split(',') {
            let v = v.trim();
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::ContentLength);
            }
            let n: u64 = v.parse().map_err(|_| HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The last transfer coding is `chunked` (hyper's `transfer_encoding_is_chunked`).
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.rsplit(',').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

/// Parses the response head at the front of `buf`, consuming it; interim (1xx) responses
/// before it are consumed and skipped. `Ok(None)`: more bytes are needed.
///
/// # Errors
/// [`HeadError`] for a head hyper's client would refuse (the same rules and bounds).
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, HeadError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut slots);
        let len = match res.parse(buf)? {
            httparse::Status::Complete(len) if len > MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            httparse::Status::Partial => return Ok(None),
        };
        let code = res.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status)?;
        match code {
            101 => return Err(HeadError::Upgrade),
            100..=199 => {
                buf.advance(len);
                continue;
            }
            _ => {}
        }
        let http11 = res.version == Some(1);
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        // Where each name and value sits, so the values can share the head's bytes.
        let base = buf.as_ptr() as usize;
        let mut spans: smallvec::SmallVec<[(HeaderName, usize, usize); 24]> =
            smallvec::SmallVec::with_capacity(res.headers.len());
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Header)?;
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
        let bytes = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut keep_alive = http11;
        let mut saw_close = false;
        for (name, start, end) in spans {
            let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
                .map_err(|_| HeadError::Header)?;
            if name == header::CONNECTION {
                if saw_close || lists(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = lists(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let framing = if head_request || code == 204 || code == 304 {
            Framing::Empty
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            if !http11 {
                return Err(HeadError::TransferEncoding);
            }
            if is_chunked(&headers) {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match content_length(&headers)? {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        return Ok(Some(Head {
            status,
            version: if http11 {
                Version::HTTP_11
            } else {
                Version::HTTP_10
            },
            headers,
            reason,
            framing,
            keep_alive: keep_alive && framing != Framing::Close,
        }));
    }
}

/// Where a chunked body's decoding stands (hyper's `ChunkedState`, byte for byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

/// Decodes a chunked body from a buffer the caller keeps filling.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    extensions: u64,
    trailer_bytes: usize,
    trailer_lines: usize,
}

/// What [`Chunked::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Data(Bytes),
    /// The last chunk and its trailers were read; nothing after them belongs to the body.
    End,
    /// `buf` holds no more of the body: read more.
    NeedMore,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Start,
            size: 0,
            extensions: 0,
            trailer_bytes: 0,
            trailer_lines: 0,
        }
    }
}

impl Chunked {
    /// Consumes from `buf` up to the next piece of data or the body's end.
    ///
    /// # Errors
    /// [`ChunkError`] for framing hyper's decoder refuses.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, ChunkError> {
        use ChunkState as S;
        loop {
            if self.state == S::End {
                return Ok(Chunk::End);
            }
            if self.state == S::Body {
                if buf.is_empty() {
                    return Ok(Chunk::NeedMore);
                }
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = S::BodyCr;
                }
                return Ok(Chunk::Data(buf.split_to(n).freeze()));
            }
            let Some(&byte) = buf.first() else {
                return Ok(Chunk::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, byte) {
                (S::Start, _) => {
                    self.size = 0;
                    self.digit(byte)?;
                    S::Size
                }
                (S::Size, b'\t' | b' ') | (S::SizeLws, b'\t' | b' ') => S::SizeLws,
                (S::Size | S::SizeLws, b';') => S::Extension,
                (S::Size | S::SizeLws, b'\r') => S::SizeLf,
                (S::Size, _) => {
                    self.digit(byte)?;
                    S::Size
                }
                (S::SizeLws, _) => return Err(ChunkError::Size),
                (S::Extension, b'\r') => S::SizeLf,
                (S::Extension, b'\n') => return Err(ChunkError::Size),
                (S::Extension, _) => {
                    self.extensions += 1;
                    if self.extensions >= MAX_CHUNK_EXTENSIONS {
                        return Err(ChunkError::Extensions);
                    }
                    S::Extension
                }
                (S::SizeLf, b'\n') if self.size == 0 => S::EndCr,
                (S::SizeLf, b'\n') => S::Body,
                (S::SizeLf, _) => return Err(ChunkError::Size),
                (S::BodyCr, b'\r') => S::BodyLf,
                (S::BodyLf, b'\n') => S::Start,
                (S::BodyCr | S::BodyLf, _) => return Err(ChunkError::DataEnd),
                (S::EndCr, b'\r') => S::EndLf,
                (S::EndLf, b'\n') => S::End,
                (S::EndLf, _) => return Err(ChunkError::TrailerEnd),
                (S::EndCr | S::Trailer, b) => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(ChunkError::Trailers);
                    }
                    if b == b'\r' {
                        S::TrailerLf
                    } else {
                        S::Trailer
                    }
                }
                (S::TrailerLf, b'\n') => {
                    self.trailer_lines += 1;
                    if self.trailer_lines > MAX_HEADERS {
                        return Err(ChunkError::Trailers);
                    }
                    S::EndCr
                }
                (S::TrailerLf, _) => return Err(ChunkError::TrailerEnd),
                (S::Body | S::End, _) => unreachable!("handled above"),
            };
        }
    }

    fn digit(&mut self, byte: u8) -> Result<(), ChunkError> {
        let d = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            _ => return Err(ChunkError::Size),
        };
        self.size = self
            .size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ChunkError::Overflow)?;
        Ok(())
    }
}

/// How the request body goes upstream (hyper's client `set_length`, for HTTP/1.1).
enum Sending {
    None,
    Length(u64),
    Chunked,
}

/// Writes `req`'s head into `out`, choosing the body's framing as hyper's client does: a
/// declared `Content-Length` is kept, a known size is declared, an unknown one is chunked
/// (but `GET`, `HEAD` and `CONNECT` send none). `Transfer-Encoding` is hop-by-hop and
/// already gone ([`crate::request::proxy::prepare`]).
fn write_head(out: &mut Vec<u8>, req: &Request<BoundedBody>) -> Sending {
    let body = req.body();
    let mut sending = Sending::None;
    let mut add_length = None;
    let mut skip_length = false;
    if !body.is_end_stream() {
        let declared = content_length(req.headers()).ok().flatten();
        sending = match (declared, body.size_hint().exact()) {
            (Some(n), _) => Sending::Length(n),
            (None, Some(n)) => {
                add_length = Some(n);
                Sending::Length(n)
            }
            (None, None) => match *req.method() {
                Method::GET | Method::HEAD | Method::CONNECT => Sending::Length(0),
                _ => {
                    skip_length = true;
                    Sending::Chunked
                }
            },
        };
    }
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if *name == header::TRANSFER_ENCODING || (skip_length && *name == header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    if matches!(sending, Sending::Chunked) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    sending
}

/// Streams the request body with exact framing; `Ok(())` once it is all written.
async fn write_body(
    w: &mut tokio::net::tcp::WriteHalf<'_>,
    out: &mut Vec<u8>,
    body: &mut BoundedBody,
    sending: &Sending,
) -> Result<(), DirectError> {
    let mut left = match sending {
        Sending::None => return Ok(()),
        Sending::Length(n) => Some(*n),
        Sending::Chunked => None,
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(DirectError::Body)?;
        let Ok(data) = frame.into_data() else {
            // Trailers: hyper writes only those a `Trailer` header declares, and that header
            // is hop-by-hop here.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(n) => {
                *n = n
                    .checked_sub(data.len() as u64)
                    .ok_or(DirectError::RequestLength)?;
                w.write_all(&data).await?;
            }
            None => {
                out.clear();
                let _ = write!(out, "{:x}\r\n", data.len());
                w.write_all(out).await?;
                w.write_all(&data).await?;
                w.write_all(b"\r\n").await?;
            }
        }
    }
    match left {
        Some(0) => Ok(()),
        Some(_) => Err(DirectError::RequestLength),
        None => Ok(w.write_all(b"0\r\n\r\n").await?),
    }
}

/// Writes the request head held in `conn.write` (a request without a body) and reads the
/// response head.
async fn send_head(conn: &mut Conn, head_request: bool) -> Result<Head, DirectError> {
    let Conn {
        stream,
        read,
        write,
    } = conn;
    let (mut r, mut w) = stream.split();
    w.write_all(&write[..]).await?;
    read_head(&mut r, read, head_request).await
}

/// The upstream closed or reset the connection and no byte of a response is waiting.
fn closed_unanswered(e: &DirectError, conn: &Conn) -> bool {
    use std::io::ErrorKind as K;
    conn.read.is_empty()
        && match e {
            DirectError::Closed => true,
            DirectError::Io(io) => matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ),
            _ => false,
        }
}

/// Reads until a final response head is complete.
async fn read_head(
    r: &mut tokio::net::tcp::ReadHalf<'_>,
    read: &mut BytesMut,
    head_request: bool,
) -> Result<Head, DirectError> {
    loop {
        if !read.is_empty() {
            if let Some(head) = parse_head(read, head_request)? {
                return Ok(head);
            }
        }
        if read.capacity() - read.len() < READ_CHUNK / 4 {
            read.reserve(READ_CHUNK);
        }
        let n = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, &mut *read)
        })
        .await?;
        if n == 0 {
            return Err(DirectError::Closed);
        }
    }
}

/// Sends `req` to `spec` on a kept-alive connection from `pool` or a new one and returns the
/// response once its head arrived; the body streams from the connection.
///
/// A reused connection is checked before it is used, but the upstream may close it while the
/// request is on its way (its idle timeout racing ours). Then, and only then, the request goes
/// once more on a new connection: the connection was reused, it closed or reset before a byte
/// of the response came back, the request has no body, and its method is idempotent (RFC 9110
/// §9.2.2; nginx's `proxy_next_upstream` retries no other). Anything else fails as sent.
///
/// # Errors
/// [`DirectError`]; the caller's body failures are [`DirectError::Body`].
pub(crate) async fn exchange(
    pool: &Arc<Pool>,
    spec: &UpstreamSpec,
    req: Request<BoundedBody>,
) -> Result<Response<DirectBody>, DirectError> {
    let (mut conn, reused) = match pool.take() {
        Some(conn) => (conn, true),
        // Boxed: a new connection is the rare case.
        None => (Box::pin(connect(spec)).await?, false),
    };
    let head_request = req.method() == Method::HEAD;
    let idempotent = req.method().is_idempotent();
    let sending = write_head(&mut conn.write, &req);
    let mut body = req.into_body();
    let mut body_done = matches!(sending, Sending::None);
    let head = if body_done {
        match send_head(&mut conn, head_request).await {
            Ok(head) => head,
            Err(e) if reused && idempotent && closed_unanswered(&e, &conn) => {
                let mut fresh = Box::pin(connect(spec)).await?;
                std::mem::swap(&mut fresh.write, &mut conn.write);
                conn = fresh;
                send_head(&mut conn, head_request).await?
            }
            Err(e) => return Err(e),
        }
    } else {
        let Conn {
            stream,
            read,
            write,
        } = &mut *conn;
        let (mut r, mut w) = stream.split();
        w.write_all(&write[..]).await?;
        // The body and the response head concurrently: an upstream may answer (and close)
        // before it read the whole body. The connection is reused only when the body went
        // whole.
        let writing = write_body(&mut w, write, &mut body, &sending);
        let reading = read_head(&mut r, read, head_request);
        tokio::pin!(writing, reading);
        let mut writing_failed = false;
        loop {
            tokio::select! {
                written = &mut writing, if !body_done && !writing_failed => match written {
                    Ok(()) => body_done = true,
                    Err(DirectError::Io(_)) => writing_failed = true,
                    Err(e) => return Err(e),
                },
                head = &mut reading => break head?,
            }
        }
    };
    let Head {
        status,
        version,
        headers,
        reason,
        framing,
        keep_alive,
    } = head;
    let reusable = keep_alive && body_done;
    let decode = match framing {
        Framing::Empty => Decode::Done,
        Framing::Length(n) => Decode::Length(n),
        Framing::Chunked => Decode::Chunked(Chunked::default()),
        Framing::Close => Decode::Close,
    };
    let mut resp = Response::new(DirectBody {
        conn: None,
        pool: None,
        decode,
    });
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    if let Some(reason) = reason {
        resp.extensions_mut().insert(reason);
    }
    let body = resp.body_mut();
    if matches!(body.decode, Decode::Done) {
        if reusable && conn.read.is_empty() {
            pool.put(conn);
        }
    } else {
        body.conn = Some(conn);
        body.pool = reusable.then(|| Arc::clone(pool));
    }
    Ok(resp)
}

#[derive(Debug)]
enum Decode {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// An upstream response body read straight from its connection, which goes back to its pool
/// at the exact end of a reusable response.
#[derive(Debug)]
pub(crate) struct DirectBody {
    conn: Option<Box<Conn>>,
    /// Where the connection goes at the end; `None` when it is not to be reused.
    pool: Option<Arc<Pool>>,
    decode: Decode,
}

impl DirectBody {
    /// The body is complete: the connection goes back when nothing but this response came.
    fn finish(&mut self) {
        self.decode = Decode::Done;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if conn.read.is_empty() {
                pool.put(conn);
            }
        }
    }
}

impl HttpBody for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.decode {
                Decode::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decode::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.read.len());
                        let data = conn.read.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decode::Chunked(chunked) => match chunked.decode(&mut conn.read) {
                    Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Chunk::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Chunk::NeedMore) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Decode::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.decode, Decode::Close) => {
                    this.conn = None;
                    this.decode = Decode::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(DirectError::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, HeadError> {
        parse_head(&mut BytesMut::from(text), head_request)
    }

    #[test]
    fn framings() {
        let f = |t: &str| head(t, false).unwrap().unwrap().framing;
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Framing::Close
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n"), Framing::Empty);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true);
        assert_eq!(h.unwrap().unwrap().framing, Framing::Empty);
    }

    #[test]
    fn refused_heads() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTQ/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
        let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&big, false).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn interim_responses_are_skipped_and_keep_alive_follows_the_head() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 Fine\r\nconnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nhi",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(!h.keep_alive);
        assert_eq!(h.reason.as_ref().map(|r| r.as_bytes()), Some(&b"Fine"[..]));
        assert_eq!(&buf[..], b"hi");
        let h = head(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        assert!(h.unwrap().unwrap().keep_alive);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false);
        assert!(!h.unwrap().unwrap().keep_alive);
        assert!(head("HTTP/1.1 200 OK\r\ncontent-len", false)
            .unwrap()
            .is_none());
    }

    fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Chunk::Data(d) => out.extend_from_slice(&d),
                Chunk::End => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&input[fed..]);
                    return Ok((out, rest));
                }
                Chunk::NeedMore if fed == input.len() => return Err(ChunkError::DataEnd),
                Chunk::NeedMore => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_alike_however_they_arrive() {
        let body = b"5;name=value\r\nhello\r\n1 ; x\r\n!\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, rest) = dechunk(body, step).unwrap();
            assert_eq!(data, b"hello!");
            assert_eq!(rest, b"NEXT");
        }
        for bad in [
            &b"5\r\nhello!\r\n0\r\n\r\n"[..],
            b"g\r\n",
            b"5 5\r\nhello\r\n",
            b"1;a\nb\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx\rx",
        ] {
            assert!(
                dechunk(bad, 3).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ext = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_EXTENSIONS as usize));
        assert_eq!(dechunk(ext.as_bytes(), 4096), Err(ChunkError::Extensions));
        let trailers = format!("0\r\n{}\r\n", "t: v\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(
            dechunk(trailers.as_bytes(), 4096),
            Err(ChunkError::Trailers)
        );
    }
}
