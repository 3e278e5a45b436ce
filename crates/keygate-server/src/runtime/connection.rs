//! One accepted connection, from its first bytes to its close.
//!
//! HTTP/1 is bounded by hyper (`header_read_timeout` covers a head in progress and an idle
//! keep-alive connection). HTTP/2 has no such timer in hyper: a client that sends the preface,
//! or HEADERS without END_HEADERS, would hold its connection forever. So an HTTP/2 connection
//! counts its streams ([`Streams`]) and is closed (GOAWAY, then the socket) when it has not
//! completed a first request's headers within `h2_handshake_timeout` of its first bytes, or
//! has had no stream in progress for `h2_idle_timeout`. hyper sends the keep-alive pings and
//! enforces the concurrent-stream cap (`bounds::connection_builder`).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::HttpLimits;
use crate::state::changes::Changes;

/// The first bytes of every HTTP/2 connection without TLS (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest wait, after a GOAWAY for a timeout, for a connection with no stream in progress
/// to close by itself (a peer that never answers the GOAWAY's ping would otherwise hold it).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The protocol a connection's first bytes announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// The bytes so far are (a prefix of) the HTTP/2 preface. hyper decides on the whole
    /// preface; a request line cut after its first `P` is bounded as HTTP/2, which only
    /// adds the HTTP/2 deadlines to it.
    Http2,
}

/// Waits until a new connection has something to read, up to `timeout`, and tells which
/// protocol it speaks; `None` when it stays silent (it is then closed). hyper's header timer
/// starts only once it knows the protocol, so a client that connects and sends nothing would
/// otherwise hold its connection forever.
pub(crate) async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    // `peek` waits for real bytes; readiness alone can be reported before any arrive.
    let mut first = [0u8; 24];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Some(if H2_PREFACE.starts_with(&first[..n]) {
            Protocol::Http2
        } else {
            Protocol::Http1
        }),
        _ => None,
    }
}

/// The HTTP/2 deadlines of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct H2Deadlines {
    pub(crate) handshake: Duration,
    pub(crate) idle: Duration,
}

impl From<&HttpLimits> for H2Deadlines {
    fn from(limits: &HttpLimits) -> Self {
        H2Deadlines {
            handshake: limits.h2_handshake_timeout,
            idle: limits.h2_idle_timeout,
        }
    }
}

/// The streams of one HTTP/2 connection: how many are in progress and when the last ended.
/// A stream is in progress from the moment hyper hands its request to the service until its
/// response body is finished or dropped ([`StreamGuard`]).
#[derive(Debug)]
pub(crate) struct Streams {
    started: Instant,
    open: AtomicUsize,
    seen: AtomicBool,
    /// Milliseconds from `started` to the end of the last stream.
    last_end_ms: AtomicU64,
}

/// What the deadline check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again at this instant.
    CheckAt(Instant),
    /// Close the connection, for this reason (logged).
    Close(&'static str),
}

impl Streams {
    pub(crate) fn new() -> Arc<Streams> {
        Arc::new(Streams {
            started: Instant::now(),
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        })
    }

    /// Marks a stream in progress until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.seen.store(true, Ordering::Release);
        StreamGuard(Arc::clone(self))
    }

    fn in_progress(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn check(&self, now: Instant, deadlines: H2Deadlines) -> Verdict {
        if !self.seen.load(Ordering::Acquire) {
            let at = self.started + deadlines.handshake;
            return if now >= at {
                Verdict::Close("No request within h2_handshake_timeout; closing the connection.")
            } else {
                Verdict::CheckAt(at)
            };
        }
        if self.in_progress() > 0 {
            return Verdict::CheckAt(now + deadlines.idle);
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        let at = self.started + last_end + deadlines.idle;
        if now >= at {
            Verdict::Close("No stream for h2_idle_timeout; closing the connection.")
        } else {
            Verdict::CheckAt(at)
        }
    }
}

/// One stream in progress; its end is recorded on drop.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        let ms = u64::try_from(streams.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        streams.last_end_ms.fetch_max(ms, Ordering::AcqRel);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream in progress until it is finished or dropped.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _stream: StreamGuard,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, stream: StreamGuard) -> Tracked<B> {
        Tracked {
            inner,
            _stream: stream,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What woke a connection's driver.
enum Event<E> {
    Ended(Result<(), E>),
    Stop,
    Check,
}

/// Drives a hyper connection to its end: closes it gracefully when the gateway stops (the
/// worker bounds that by `shutdown_grace`) and, for HTTP/2 (`streams`), at its deadlines.
/// `shutdown` is the connection's `graceful_shutdown`.
///
/// Written by hand rather than with `select!`: the connection is woken a few times per
/// request, and `select!` polled the stop signal's `changed()` on every wake (a mutex in
/// tokio's `Notify`) and drew a random branch order (callgrind: about 550 instructions per
/// request, BENCHMARKS.md). The signal is read through [`Changes`]: one atomic load per wake.
pub(crate) async fn drive<C, E>(
    conn: C,
    shutdown: impl Fn(Pin<&mut C>),
    streams: Option<(Arc<Streams>, H2Deadlines)>,
    stop: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = pin!(conn);
    let mut stopping = Changes::new(stop);
    let first_check = streams
        .as_ref()
        .map(|(s, d)| tokio::time::sleep_until(s.started + d.handshake.min(d.idle)));
    let mut check = pin!(first_check);
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(ended));
            }
            if stopping.poll_changed(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            match check.as_mut().as_pin_mut().map(|sleep| sleep.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Event::Check),
                _ => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Ended(ended) => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "Connection ended with an error.");
                }
                return;
            }
            Event::Stop => {
                shutdown(conn.as_mut());
                // The worker waits `shutdown_grace` for in-flight requests, then drops us.
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "Connection ended with an error.");
                }
                return;
            }
            Event::Check => {
                let (Some((streams, deadlines)), Some(sleep)) =
                    (&streams, check.as_mut().as_pin_mut())
                else {
                    return;
                };
                match streams.check(Instant::now(), *deadlines) {
                    Verdict::CheckAt(at) => sleep.reset(at),
                    Verdict::Close(why) => {
                        tracing::debug!("{why}");
                        shutdown(conn.as_mut());
                        close_idle(conn.as_mut(), streams).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Lets a connection told to close finish by itself; past [`CLOSE_GRACE`] it is dropped,
/// unless a stream that crossed the GOAWAY is still in progress.
async fn close_idle<C, E>(mut conn: Pin<&mut C>, streams: &Streams)
where
    C: Future<Output = Result<(), E>>,
{
    loop {
        match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
            Ok(_) => return,
            Err(_) if streams.in_progress() == 0 => return,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: H2Deadlines = H2Deadlines {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_streams() {
        let s = Streams::new();
        let t0 = s.started;
        assert_eq!(
            s.check(t0, D),
            Verdict::CheckAt(t0 + Duration::from_secs(10))
        );
        assert!(matches!(
            s.check(t0 + Duration::from_secs(10), D),
            Verdict::Close(_)
        ));

        let stream = s.begin();
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        // In progress: never idle, however long.
        assert_eq!(s.check(now, D), Verdict::CheckAt(now + D.idle));
        drop(stream);
        assert_eq!(s.check(now, D), Verdict::CheckAt(now + D.idle));
        assert!(matches!(s.check(now + D.idle, D), Verdict::Close(_)));
    }
}
