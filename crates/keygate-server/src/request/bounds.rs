//! Bounds on what one client can make the gateway hold: the size and number of request
//! headers (431), the time to send a request head (slowloris: the connection is closed), the
//! streams and keep-alive pings of an HTTP/2 connection, and the size of a body forwarded
//! upstream (413).
//!
//! The head bounds are enforced by hyper while parsing, before keygate sees the request; the
//! body bound is checked against `Content-Length` before anything is forwarded.

use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::HttpLimits;

/// The connection builder of the public listener, with the configured head bounds.
pub(crate) fn connection_builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    // hyper answers 431 when a head does not fit its read buffer; the buffer's bound is the
    // head bound (and at least hyper's floor, which config validation enforces).
    http1
        .max_buf_size(limits.max_header_bytes.max(HttpLimits::MIN_HEADER_BYTES))
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // One flat buffer per write: answers are a head and a small body, and the queue of
        // vectored buffers cost more than copying them (callgrind and wrk, BENCHMARKS.md).
        .writev(false);
    if limits.max_headers != HttpLimits::DEFAULT_MAX_HEADERS {
        // A non-default count moves hyper's header array to the heap; only pay when asked.
        http1.max_headers(limits.max_headers);
    }
    // The handshake and idle deadlines are `crate::runtime::connection`'s; hyper has none for HTTP/2.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(HttpLimits::H2_KEEPALIVE_TIMEOUT);
    builder
}

/// True when the request declares a body larger than `max` bytes (an unparsable or
/// conflicting `Content-Length` never reaches here: hyper refuses it with 400).
pub(crate) fn body_too_large(headers: &HeaderMap, max: u64) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_bodies_over_the_bound() {
        let mut h = HeaderMap::new();
        assert!(!body_too_large(&h, 10));
        h.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert!(!body_too_large(&h, 10));
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert!(body_too_large(&h, 10));
    }
}
