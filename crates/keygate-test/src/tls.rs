//! TLS for tests: a CA generated per test (rcgen, ring), the certificates it issues, clients
//! that trust it, one request over a fresh TLS connection, and a TLS front that terminates TLS
//! before a plain test upstream (an `https://` or `wss://` upstream for the gateway).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The ring provider as keygate configures it (`keygate_server::tls`): rustls deprecates ring
/// for its lack of post-quantum key exchange, and ring's default order offers P-384 first
/// where browsers, curl and OpenSSL offer X25519.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

/// A certificate and its key, issued by a [`TestCa`].
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate authority of one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), with CN `names[0]`.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }

    /// A root store trusting this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA is a trust anchor");
        roots
    }

    /// A client configuration trusting this CA, offering `alpn`, presenting `client` if any.
    /// Sessions are never resumed, so each connection sees the server's current certificate.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        client: Option<&Issued>,
    ) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots());
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(vec![c.der.clone()], c.key())
                .expect("client certificate"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

impl Issued {
    /// The private key, DER.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("generated key parses")
    }

    /// Writes `dir/{stem}.pem` and `dir/{stem}-key.pem`; returns (cert, key) paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// A server configuration serving this certificate (HTTP/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config_for(None)
    }

    /// [`Issued::server_config`] requiring a client certificate `clients` signed.
    pub fn server_config_requiring(&self, clients: &TestCa) -> Arc<rustls::ServerConfig> {
        self.server_config_for(Some(clients))
    }

    fn server_config_for(&self, clients: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .expect("client verifier"),
            ),
        };
        let mut config = builder
            .with_single_cert(vec![self.der.clone()], self.key())
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TLS connection to `addr`, with `sni` as the server name.
///
/// # Errors
/// The connection's or the handshake's error.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// What [`get`] saw.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
    /// The protocol ALPN chose (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    /// The server's leaf certificate.
    pub peer: CertificateDer<'static>,
}

/// One GET over a fresh TLS connection (HTTP/2 when ALPN chose `h2`), with `headers`.
///
/// # Errors
/// The connection's, the handshake's or the exchange's error, as text.
pub async fn get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsAnswer, String> {
    let tls = connect(addr, sni, config)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let peer = session
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no peer certificate")?;
    let mut req = hyper::Request::get(format!("https://{sni}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some("h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = req
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        alpn,
        peer,
    })
}

/// Terminates TLS on a port of its own and relays each connection to a plain server: an
/// `https://` (or `wss://`) face for [`crate::Upstream`] and [`crate::WsUpstream`].
pub struct TlsFront {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves `config` on 127.0.0.1:0, relaying to `target`.
    pub async fn start(config: Arc<rustls::ServerConfig>, target: SocketAddr) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let addr = listener.local_addr().expect("front address");
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
