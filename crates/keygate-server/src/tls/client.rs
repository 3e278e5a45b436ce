//! The client side: roots (the system's, or a CA file), an optional client certificate, and
//! the connection every upstream uses, plain or TLS (HTTP and WebSocket alike).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::{pem, provider, ClientFiles, TlsError};

/// ALPN of upstream connections: keygate forwards over HTTP/1.1 (WebSocket included).
pub(crate) const ALPN_UPSTREAM: &[&[u8]] = &[b"http/1.1"];

/// An upstream connection: plain TCP, or TLS over it. The TLS state is boxed: inline it made
/// every plain connection 1.3 KiB, and a WebSocket session holds its upstream's for its
/// whole life (BENCHMARKS.md, memory per idle session).
pub(crate) type UpstreamStream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// A TLS client configuration: which roots to trust, which certificate to present.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

/// The system's roots, read once per process (the store is a few hundred certificates).
fn system_roots() -> Result<RootCertStore, TlsError> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| pem::system_roots().map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| TlsError::SystemRoots { detail })
}

impl ClientTls {
    /// Builds a client configuration: `files.ca_file`'s roots or the system's, the client
    /// certificate if any, `alpn` in preference order. Server names are always verified.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used.
    pub fn new(files: &ClientFiles, alpn: &[&[u8]]) -> Result<ClientTls, TlsError> {
        let roots = match &files.ca_file {
            Some(path) => pem::roots(path)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots);
        let mut config = match &files.client_cert {
            None => builder.with_no_client_auth(),
            Some(pair) => {
                let chain = pem::certs(&pair.cert)?;
                let key = pem::key(&pair.key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Mismatch {
                        cert: pair.cert.clone(),
                        key: pair.key.clone(),
                        source,
                    })?
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for clients built elsewhere (the remote CLI's).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The handshake over `tcp`, verifying the server's certificate for `name`.
    ///
    /// # Errors
    /// The handshake's I/O error (an untrusted or mismatched certificate included).
    pub(crate) async fn handshake(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
    }
}

/// Why an upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot connect: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("connecting timed out")]
    Timeout,
}

/// Opens a connection to an upstream within `timeout` (the TLS handshake included), with
/// TLS when it has a `tls` configuration.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&(ClientTls, ServerName<'static>)>,
    timeout: Duration,
) -> Result<UpstreamStream, ConnectError> {
    let open = async {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Either::Left(tcp)),
            Some((client, name)) => client
                .handshake(name.clone(), tcp)
                .await
                .map(|tls| Either::Right(Box::new(tls)))
                .map_err(ConnectError::Tls),
        }
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ConnectError::Timeout)?
}
