//! Opening the upstream WebSocket: the caller's request (its credentials already stripped) with
//! the headers every upstream gets (`crate::request::proxy::rewrite_headers`), less its handshake
//! headers, over a fresh TCP connection (TLS for an `https://` upstream: `wss://`).

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use keygate_core::decision::Reason;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::policy::guard::Guard;
use crate::policy::profile::Profile;
use crate::policy::upstream::UpstreamSpec;
use crate::request::proxy::{rewrite_headers, Toward};
use crate::state::gateway::Admitted;
use crate::tls::client::{ConnectError, UpstreamStream};

/// The upstream side of a session.
pub(crate) type UpstreamSocket = WebSocketStream<UpstreamStream>;

/// Largest message accepted from an upstream (trusted, but not without bound).
const UPSTREAM_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Bytes a socket reads at a time (also the most one read takes), allocated for every open
/// socket: two per session in the gateway. 1 KiB saved 2.7 KiB per idle session but reads a
/// larger message in 1 KiB steps (BENCHMARKS.md, the WebSocket relay beside nginx).
pub(crate) const READ_BUFFER: usize = 4096;

/// Bytes of frames a socket queues before writing them (`super::relay` writes sooner, once
/// neither side has a frame ready). The buffer is allocated on the first write, so an idle
/// session pays nothing for it.
pub(crate) const WRITE_BUFFER: usize = 8 * 1024;

/// Socket settings for one side: small buffers, so an idle session costs little, and a
/// bounded write buffer, so a slow reader cannot make it grow.
pub(crate) fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_message.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// What the upstream request carries.
pub(crate) struct Target<'a> {
    pub spec: &'a UpstreamSpec,
    /// Path and query as the upstream should see them (credentials removed).
    pub path_and_query: String,
    /// The client's upgrade request headers, credentials removed (`crate::request::credential::strip`).
    pub headers: &'a HeaderMap,
    pub who: &'a Admitted,
    pub remote: SocketAddr,
    /// Whose client-address headers are believed (`crate::request::proxy::Toward::guard`).
    pub guard: &'a Guard,
}

/// Headers a WebSocket handshake sets itself; never copied from the client.
const HANDSHAKE: [HeaderName; 5] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::HOST,
];

fn upstream_headers(profile: &Profile, t: &Target<'_>) -> HeaderMap {
    let mut headers = t.headers.clone();
    let toward = Toward {
        identity: &profile.identity,
        who: Some(t.who),
        remote: t.remote,
        guard: t.guard,
        // An upgrade is a GET: no override may make it anything else.
        restricts_methods: true,
    };
    rewrite_headers(&mut headers, &toward);
    for name in &HANDSHAKE {
        headers.remove(name);
    }
    headers
}

/// Connects and completes the handshake; returns the socket and the subprotocol it chose.
///
/// # Errors
/// `UpstreamTimeout` when the upstream is too slow, `UpstreamUnavailable` otherwise.
pub(crate) async fn connect(
    profile: &Profile,
    t: Target<'_>,
) -> Result<(UpstreamSocket, Option<HeaderValue>), Reason> {
    let spec = t.spec;
    let authority = spec.authority.as_str();
    let addr = spec.connect_addr();
    let uri = format!("ws://{authority}{}{}", spec.base_path, t.path_and_query);
    let mut req = Request::get(uri).body(()).map_err(|_| Reason::BadRequest)?;
    let headers = req.headers_mut();
    *headers = upstream_headers(profile, &t);
    headers.insert(
        header::HOST,
        HeaderValue::from_str(authority).map_err(|_| Reason::BadRequest)?,
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&generate_key()).expect("base64 is a valid header value"),
    );

    // `wss://` is TLS underneath; the request line above stays `ws://`, which is only its target.
    let stream = match crate::tls::client::connect(&addr, spec.tls.as_ref(), spec.connect_timeout)
        .await
    {
        Err(ConnectError::Timeout) => return Err(Reason::UpstreamTimeout),
        Err(e) => {
            tracing::warn!(upstream = %spec.name, error = %e, "Upstream WebSocket connect failed.");
            return Err(Reason::UpstreamUnavailable);
        }
        Ok(s) => s,
    };
    let config = socket_config(UPSTREAM_MAX_MESSAGE);
    let handshake = tokio_tungstenite::client_async_with_config(req, stream, Some(config));
    match tokio::time::timeout(spec.timeout, handshake).await {
        Err(_) => Err(Reason::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %spec.name, error = %e, "Upstream WebSocket handshake failed.");
            Err(Reason::UpstreamUnavailable)
        }
        Ok(Ok((socket, resp))) => {
            let protocol = resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
            Ok((socket, protocol))
        }
    }
}
