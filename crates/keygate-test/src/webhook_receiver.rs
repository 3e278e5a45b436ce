//! A real HTTP receiver of keygate's webhooks that a test can make fail, hang and recover.
//!
//! [`WebhookReceiver::start`] binds `127.0.0.1:0` and records every POST it receives, with
//! its signature checked by this module's own HMAC-SHA256 (written from the documented
//! scheme, not keygate's code): `Keygate-Signature: t=<unix>,v1=<hex of HMAC(secret,
//! "<t>.<body>")>`. What it answers is its [`Mode`], which the test changes at any time.
//! Dropping it aborts its accept loop and every open connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 204.
    Accept,
    /// This status (a 500, say).
    Fail(u16),
    /// Nothing, ever: the request is read and the connection held open.
    Hang,
}

/// One POST as received.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// `Keygate-Event-Id`.
    pub event_id: String,
    /// `Keygate-Event`.
    pub event_type: String,
    pub body: Vec<u8>,
    /// The `Keygate-Signature` header as sent.
    pub signature: String,
    /// Whether the signature verified with the receiver's secret and its timestamp is within
    /// five minutes of now.
    pub signature_valid: bool,
    /// What the receiver answered (`None`: it hung).
    pub answered: Option<u16>,
}

impl Delivered {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

struct State {
    mode: Mode,
    received: Vec<Delivered>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A receiver on loopback.
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks `header` against `body` as the documented scheme says; `true` when it verifies and
/// its timestamp is within `tolerance` of `now` (Unix seconds).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > tolerance {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    v1.iter().any(|sig| *sig == expected)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl WebhookReceiver {
    /// Starts a receiver that verifies with `secret`, answering [`Mode::Accept`].
    pub async fn start(secret: &str) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Accept,
            received: Vec::new(),
        }));
        let secret: Arc<[u8]> = secret.as_bytes().into();
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, secret) = (Arc::clone(&shared), Arc::clone(&secret));
                connections.spawn(async move {
                    let service =
                        service_fn(move |req| handle(Arc::clone(&state), Arc::clone(&secret), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        WebhookReceiver { addr, state, task }
    }

    /// The URL to configure (`http://127.0.0.1:PORT/hooks/keygate`).
    pub fn url(&self) -> String {
        format!("http://{}/hooks/keygate", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// Every POST received so far.
    pub fn received(&self) -> Vec<Delivered> {
        lock(&self.state).received.clone()
    }

    /// The POSTs answered 2xx.
    pub fn accepted(&self) -> Vec<Delivered> {
        lock(&self.state)
            .received
            .iter()
            .filter(|d| d.answered.is_some_and(|s| (200..300).contains(&s)))
            .cloned()
            .collect()
    }

    /// Waits up to `deadline` for `done` to hold over the POSTs received; the last list.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        done: impl Fn(&[Delivered]) -> bool,
    ) -> Vec<Delivered> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let received = self.received();
            if done(&received) || tokio::time::Instant::now() >= end {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    secret: Arc<[u8]>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (event_id, event_type, signature) = (
        header("keygate-event-id"),
        header("keygate-event"),
        header("keygate-signature"),
    );
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let signature_valid = verify_signature(&secret, &signature, &body, unix_now(), 300);
    let mode = lock(&state).mode;
    let answered = match mode {
        Mode::Accept => Some(204),
        Mode::Fail(status) => Some(status),
        Mode::Hang => None,
    };
    lock(&state).received.push(Delivered {
        event_id,
        event_type,
        body,
        signature,
        signature_valid,
        answered,
    });
    let Some(status) = answered else {
        return std::future::pending().await;
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_documented_scheme() {
        // `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test`
        let header =
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789";
        let body = br#"{"a":1}"#;
        assert!(verify_signature(
            b"whsec_test",
            header,
            body,
            1_700_000_100,
            300
        ));
        assert!(!verify_signature(
            b"whsec_other",
            header,
            body,
            1_700_000_100,
            300
        ));
        assert!(!verify_signature(
            b"whsec_test",
            header,
            b"{}",
            1_700_000_100,
            300
        ));
        assert!(!verify_signature(
            b"whsec_test",
            header,
            body,
            1_700_001_000,
            300
        ));
    }
}
