//! The server side of the RFC 6455 opening handshake: is this an upgrade request, is it a
//! valid one, and the `101 Switching Protocols` answer.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use keygate_core::decision::{Denial, Reason};

use crate::request::body::Body;

/// Whether a request asks for a WebSocket (`Upgrade: websocket`). Validity is checked later.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A valid opening handshake.
#[derive(Clone, Debug)]
pub(crate) struct Opening {
    /// `Sec-WebSocket-Accept` for the answer.
    pub accept: HeaderValue,
}

/// Why an upgrade request is not a valid opening handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("a WebSocket upgrade must be a GET")]
    Method,
    #[error("the Connection header does not name `upgrade`")]
    Connection,
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    #[error("Sec-WebSocket-Key is missing or is not 16 bytes in base64")]
    Key,
}

impl HandshakeError {
    /// The refusal: `upgrade_required` (426, with the version this server speaks) for a
    /// version it does not, `bad_request` otherwise; rendered through the profile like any.
    pub(crate) fn denial(self) -> Denial {
        let reason = if self == HandshakeError::Version {
            Reason::UpgradeRequired
        } else {
            Reason::BadRequest
        };
        Denial::about(reason, &self.to_string())
    }
}

/// Checks an upgrade request (RFC 6455 §4.2.1).
///
/// # Errors
/// [`HandshakeError`] naming the first problem.
pub(crate) fn validate<B>(req: &Request<B>) -> Result<Opening, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::Method);
    }
    let headers = req.headers();
    if !header_has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|k| is_nonce(k))
        .ok_or(HandshakeError::Key)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    Ok(Opening {
        accept: HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    })
}

/// A base64 encoding of 16 bytes: 22 characters and `==`.
fn is_nonce(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// The `101 Switching Protocols` answer, with the subprotocol the upstream chose, if any.
pub(crate) fn switching(opening: &Opening, protocol: Option<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, opening.accept.clone());
    if let Some(p) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/ws");
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rfc_6455_sample() {
        let r = req(&GOOD);
        assert!(is_upgrade(&r));
        let o = validate(&r).unwrap();
        // RFC 6455 §1.3's example.
        assert_eq!(o.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = switching(&o, None);
        assert_eq!(resp.status(), 101);
    }

    #[test]
    fn invalid_handshakes() {
        let mut bad = GOOD;
        bad[1] = ("connection", "keep-alive");
        assert_eq!(
            validate(&req(&bad)).unwrap_err(),
            HandshakeError::Connection
        );
        let mut bad = GOOD;
        bad[2] = ("sec-websocket-version", "8");
        assert_eq!(validate(&req(&bad)).unwrap_err(), HandshakeError::Version);
        assert_eq!(
            HandshakeError::Version.denial().reason,
            Reason::UpgradeRequired
        );
        for key in [
            "",
            "short",
            "dGhlIHNhbXBsZSBub25jZQ=!",
            "dGhlIHNhbXBsZSBub25jZQ==x",
        ] {
            let mut bad = GOOD;
            bad[3] = ("sec-websocket-key", key);
            assert_eq!(
                validate(&req(&bad)).unwrap_err(),
                HandshakeError::Key,
                "{key}"
            );
        }
        let post = Request::post("/ws").body(()).unwrap();
        assert_eq!(validate(&post).unwrap_err(), HandshakeError::Method);
        assert!(!is_upgrade(&post));
    }
}
