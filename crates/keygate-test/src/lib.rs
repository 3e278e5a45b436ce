//! keygate's dev-only test harness.
//!
//! - [`upstream`]: a real HTTP/1.1 upstream server ([`Upstream`]) that records
//!   every request it receives and serves a few routes useful for proxy tests
//!   (echo, fixed status, slow, server-sent events, large streamed bodies).
//! - [`process`]: helpers to run the `keygate` binary as a child process
//!   ([`Proc`]), pick free ports and wait for an HTTP endpoint to come up.
//! - [`ws_upstream`]: a real WebSocket upstream ([`WsUpstream`]) that echoes, records every
//!   frame per connection, floods on request and lets a test push messages to clients.
//! - [`tls`]: a test CA issuing certificates (rcgen), TLS clients that trust it, one-shot
//!   HTTPS requests, and a TLS front for the plain upstreams ([`tls::TlsFront`]).
//! - [`smtp`]: a tiny SMTP server ([`SmtpServer`]) that records each message, so portal tests
//!   read sign-in links from real mail.
//! - [`webdriver`]: a minimal WebDriver client ([`webdriver::Browser`]) for headless Chromium.
//! - [`redis_server`]: `redis-server` processes of a test's own ([`RedisServer`]), and a
//!   primary, replica and sentinel to fail over ([`SentinelSet`]).
//! - [`webhook_receiver`]: a webhook receiver ([`WebhookReceiver`]) that verifies signatures,
//!   records each POST and can be told to fail, hang and recover.
//! - [`relay`]: a TCP relay a test can cut and restore ([`Relay`]), to take PostgreSQL or
//!   Redis away from a running node.
//!
//! [`reqwest`] is re-exported so tests use the same HTTP client version as the
//! harness; [`http_client`] builds one that ignores proxy environment variables.

pub mod process;
pub mod redis_server;
pub mod relay;
pub mod services;
pub mod smtp;
pub mod tls;
pub mod upstream;
pub mod webdriver;
pub mod webhook_receiver;
pub mod ws_upstream;

pub use process::{
    free_port, json_output, serve, serve_ready, serve_ready_with, serve_with, wait_for_status,
    Proc, Serving,
};
pub use redis_server::{RedisServer, SentinelSet};
pub use relay::Relay;
pub use reqwest;
pub use services::{postgres_schema, program, rabbitmq, redis_url, RabbitMq};
pub use smtp::{Mail, SmtpServer};
pub use tokio_tungstenite;
pub use upstream::{Recorded, Upstream};
pub use webhook_receiver::{Mode as ReceiverMode, WebhookReceiver};
pub use ws_upstream::{Received, WsUpstream};

/// Builds a [`reqwest::Client`] suited to talking to servers on loopback:
/// proxy environment variables (`HTTP_PROXY`, ...) are ignored.
///
/// Panics if the client cannot be built, which fails the calling test.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client for tests")
}

/// A WebSocket client connection, as the tests hold one.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` with `key` in `X-API-Key`; the HTTP status when the gateway
/// refuses before the upgrade.
///
/// Panics on any other failure (no connection, a broken handshake), which fails the test.
pub async fn ws_connect(url: &str, key: &str) -> Result<WsClient, u16> {
    ws_connect_with(url, &[("x-api-key", key)]).await
}

/// [`ws_connect`] with any headers on the upgrade request.
pub async fn ws_connect_with(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((c, _)) => Ok(c),
        Err(Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect to {url}: {e}"),
    }
}
