//! The request body forwarded upstream, counted as it streams so that a body without a
//! `Content-Length` (chunked, or HTTP/2 data frames) stops at `[server] max_body_bytes` too.
//!
//! A declared length over the bound is refused before anything is sent
//! (`crate::request::bounds::body_too_large`); this covers the bodies that declare nothing. Once the
//! count passes the bound the body fails with [`TooLarge`], hyper abandons the upstream
//! request (the upstream never sees a complete oversized body) and the proxy answers 413. A
//! plain struct rather than a boxed body: no allocation per request on the hot path.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The body grew past the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is larger than {max} bytes")]
pub(crate) struct TooLarge {
    pub max: u64,
}

/// Why the forwarded body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The client's body failed (reset, malformed chunking, ...).
    #[error(transparent)]
    Client(#[from] hyper::Error),
}

/// A client's request body with a byte budget.
#[derive(Debug)]
pub(crate) struct BoundedBody {
    inner: Incoming,
    max: u64,
    seen: u64,
    /// Set while the body waits for the caller's next bytes ([`CallerWait`]).
    waiting: Option<Arc<AtomicBool>>,
}

/// Tells whether a forwarded body is waiting for its caller: an upstream request that times
/// out then is the caller's slowness (a body that never comes), not the upstream's.
#[derive(Debug, Default)]
pub(crate) struct CallerWait(Option<Arc<AtomicBool>>);

impl CallerWait {
    /// True while the body's last read found nothing from the caller yet.
    pub(crate) fn is_waiting(&self) -> bool {
        self.0.as_ref().is_some_and(|w| w.load(Ordering::Acquire))
    }
}

impl BoundedBody {
    /// The body and its [`CallerWait`]. A request without a body allocates nothing.
    pub(crate) fn new(inner: Incoming, max: u64) -> (Self, CallerWait) {
        let waiting = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let wait = CallerWait(waiting.clone());
        let body = BoundedBody {
            inner,
            max,
            seen: 0,
            waiting,
        };
        (body, wait)
    }

    fn set_waiting(&self, waiting: bool) {
        if let Some(w) = &self.waiting {
            w.store(waiting, Ordering::Release);
        }
    }
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.set_waiting(polled.is_pending());
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.max {
                return Poll::Ready(Some(Err(TooLarge { max: self.max }.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `e` and its causes, outermost first.
fn causes<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| c.source())
}

/// True when `e` (an upstream request's failure) was caused by a body past the bound.
pub(crate) fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<TooLarge>().is_some()
            || matches!(c.downcast_ref::<BodyError>(), Some(BodyError::TooLarge(_)))
    })
}

/// True when `e` (an upstream request's failure) was caused by the caller's body stream:
/// the caller closed or reset its connection mid-body, or sent malformed chunking. That is
/// the caller's failure, not the upstream's: no circuit breaker may count it.
pub(crate) fn is_client_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| matches!(c.downcast_ref::<BodyError>(), Some(BodyError::Client(_))))
}
