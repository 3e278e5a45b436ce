//! Shared by the profile conformance suites (`ticktock.rs`, `oddsstream.rs`, `sportrix.rs`):
//! the shipped profile file, started on the harness with a named upstream pointed at a test
//! server, and small HTTP and WebSocket calls that keep status, headers and exact body bytes.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use keygate_test::reqwest;
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Error as WsError;
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use tokio::net::TcpStream;

use super::Harness;

pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The text of `profiles/NAME.toml` as shipped, with each `(from, to)` replaced (each `from`
/// must occur, so a renamed upstream fails loudly instead of testing nothing).
pub fn profile(name: &str, replace: &[(&str, &str)]) -> String {
    let path = format!("{}/../../profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in replace {
        assert!(text.contains(from), "{path} has no `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// One answer: status, headers, the body's bytes as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A request with `headers` and the answer.
pub async fn call(h: &Harness, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = h.http.request(method, h.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

pub async fn get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Answer {
    call(h, "GET", path, headers).await
}

/// Opens a WebSocket through the gateway; a refused handshake is its HTTP answer.
pub async fn ws(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Result<WsClient, Answer> {
    let mut req = format!("ws://{}{path}", h.gateway.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match connect_async(req).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(resp)) => Err(Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into(),
        }),
        Err(e) => panic!("connect {path}: {e}"),
    }
}

/// Polls `path` with `headers` until it answers `status`; how long that took. Fails past 1 s,
/// the providers' promise for rotation and revocation.
pub async fn within_a_second(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
) -> Duration {
    let started = Instant::now();
    loop {
        if get(h, path, headers).await.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} did not answer {status} within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
