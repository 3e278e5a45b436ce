//! One attempt: a signed POST of the event's body on a fresh connection, bounded as a whole by
//! the webhook's timeout (connect, TLS, request and the answer's head). Redirects are not
//! followed; the answer's body is not read.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use keygate_store::DueDelivery;

use super::{sign, WebhookSpec};
use crate::tls::client::{connect, ConnectError};

/// Why an attempt got no answer. Never holds the URL (its query may carry the receiver's
/// token) nor the secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
}

/// POSTs `delivery`'s body to `hook`, signed at `t` (Unix seconds); the answer's status.
pub(crate) async fn post(
    hook: &WebhookSpec,
    delivery: &DueDelivery,
    t: i64,
) -> Result<u16, AttemptError> {
    let attempt = async {
        let target = &hook.target;
        let stream = connect(&target.addr, target.tls.as_ref(), hook.timeout).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
        let path = target
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = target.url.authority().map_or("", |a| a.as_str());
        let body = Bytes::from(delivery.body.clone());
        let request = Request::post(path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("Keygate-Event", delivery.event_type.as_str())
            .header("Keygate-Event-Id", delivery.event_id.as_str())
            .header(
                sign::SIGNATURE_HEADER,
                sign::signature_header(hook.secret.as_bytes(), t, &body),
            )
            .body(Full::new(body))?;
        // The connection is driven beside the request, inside this future: a timeout drops
        // both, so a receiver that never answers holds no socket past it.
        tokio::pin!(conn);
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = tokio::select! {
            r = &mut send => r?,
            r = &mut conn => {
                r?;
                send.await?
            }
        };
        Ok(response.status().as_u16())
    };
    tokio::time::timeout(hook.timeout, attempt)
        .await
        .map_err(|_| AttemptError::Timeout(hook.timeout))?
}
