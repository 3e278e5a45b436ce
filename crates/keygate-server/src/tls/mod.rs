//! TLS with rustls on ring (no OpenSSL): the listeners' certificates chosen by SNI and
//! reloaded without a restart ([`server`]), the client side every outgoing connection shares
//! (upstreams, the remote CLI: [`client`]), and reading PEM files with errors that name the
//! file ([`pem`]).
//!
//! A leaf of the crate, like `policy/`: it imports nothing else from it, so the configuration,
//! the upstream specs and the runtime can all hold its types. One builder per side, so the
//! protocol versions, ALPN and root choice are decided in one place: [`server::ServerTls`] for the public and admin listeners, [`client::ClientTls`] for
//! upstreams (HTTP and WebSocket alike) and any other client of this crate's users.

pub mod client;
pub(crate) mod der;
pub mod pem;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use client::ClientTls;
pub use server::{ServerTls, Tls};

/// Why TLS material could not be used. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid PEM: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("`{path}` holds no certificate (expected `-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { path: PathBuf },
    #[error("`{path}` holds no private key (expected a PKCS#8, PKCS#1 or SEC1 PEM key)")]
    NoKey { path: PathBuf },
    #[error("`{path}`: the key cannot be used: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("`{cert}` and `{key}` do not belong together: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("`{path}`: the certificate cannot be parsed: {detail}")]
    Certificate { path: PathBuf, detail: String },
    #[error("`{path}`: no certificate in it can be a trust anchor: {detail}")]
    Roots { path: PathBuf, detail: String },
    #[error("the system's root certificates cannot be loaded: {detail}")]
    SystemRoots { detail: String },
    #[error("client certificate verification cannot be set up from `{path}`: {detail}")]
    ClientCa { path: PathBuf, detail: String },
    #[error("TLS configuration refused: {0}")]
    Config(#[source] rustls::Error),
    #[error("[{table}] was added or removed: turning TLS on or off on a listener needs a restart")]
    Restart { table: &'static str },
}

/// One certificate chain (leaf first) and its private key, as files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A listener's TLS settings (`[server.tls]`, `[server.admin_tls]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The configuration table, for log lines (`server.tls`).
    pub table: &'static str,
    /// The default certificate first (served when SNI names none of the others, or is
    /// absent), then the others, each chosen by the DNS names it is valid for.
    pub certificates: Vec<CertFiles>,
    /// Client certificates are required and checked against these roots (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
}

impl ListenerTls {
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// An outgoing connection's TLS settings (an `https://` or `wss://` upstream).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// Roots to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate to present, when the server asks for one.
    pub client_cert: Option<CertFiles>,
}

/// The crypto provider every config of this crate uses: ring, whatever else is compiled in.
/// (rustls deprecates it for its lack of post-quantum key exchange, which only aws-lc-rs has;
/// deny.toml keeps aws-lc-rs out.)
///
/// Key exchange offers X25519 first, as browsers, curl and OpenSSL do: ring's default order
/// puts P-384 first, and a client offering it first gets it (a server takes the client's
/// order), at several times X25519's cost per handshake (BENCHMARKS.md, TLS handshakes).
#[allow(deprecated)]
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    std::sync::Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..default_provider()
    })
}

#[cfg(test)]
mod tests {
    use rustls::NamedGroup;

    #[test]
    fn key_exchange_offers_x25519_first() {
        let groups: Vec<NamedGroup> = super::provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups,
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }
}
