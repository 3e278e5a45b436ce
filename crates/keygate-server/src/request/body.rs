//! The response body type: either bytes keygate produced or an upstream's body streamed through.
//!
//! An enum instead of a boxed trait object: no allocation per response, and the upstream's
//! frames pass through one by one (server-sent events are never buffered).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::request::direct::{DirectBody, DirectError};

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Full<Bytes>),
    Upstream(Incoming),
    /// An upstream's body read by the direct engine (`crate::request::direct`).
    Direct(DirectBody),
}

/// Why an upstream's body failed mid-stream (the caller's connection is then cut).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamBodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Direct(#[from] DirectError),
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body::Full(Full::new(Bytes::new()))
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Full(Full::new(b))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::Full(Full::new(Bytes::from(s)))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::Full(Full::new(Bytes::from_static(s.as_bytes())))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            Body::Upstream(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(UpstreamBodyError::from))),
            Body::Direct(direct) => Pin::new(direct)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(UpstreamBodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Upstream(incoming) => incoming.is_end_stream(),
            Body::Direct(direct) => direct.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Upstream(incoming) => incoming.size_hint(),
            Body::Direct(direct) => direct.size_hint(),
        }
    }
}
