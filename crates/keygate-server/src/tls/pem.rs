//! Reading PEM files: certificate chains, private keys and root stores, each error naming
//! the file.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::TlsError;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// The certificates of a PEM file's bytes, in order.
///
/// # Errors
/// [`TlsError::Pem`] or [`TlsError::NoCertificate`].
pub fn certs_from(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file's bytes.
///
/// # Errors
/// [`TlsError::Pem`] or [`TlsError::NoKey`].
pub fn key_from(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => pem_error(path, &e),
    })
}

/// A certificate chain file.
///
/// # Errors
/// As [`certs_from`], or [`TlsError::Read`].
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from(path, &read(path)?)
}

/// A private key file.
///
/// # Errors
/// As [`key_from`], or [`TlsError::Read`].
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from(path, &read(path)?)
}

/// A root store of the CA certificates in `path`.
///
/// # Errors
/// As [`certs`], or [`TlsError::Roots`] when none of them can be a trust anchor.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    roots_from(path, &read(path)?)
}

/// A root store of the CA certificates in a PEM file's bytes.
///
/// # Errors
/// As [`certs_from`], or [`TlsError::Roots`] when none of them can be a trust anchor.
pub fn roots_from(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certs_from(path, bytes)?);
    if added == 0 {
        return Err(TlsError::Roots {
            path: path.to_owned(),
            detail: format!("{ignored} certificate(s), none parsable"),
        });
    }
    Ok(store)
}

/// The operating system's root store.
///
/// # Errors
/// [`TlsError::SystemRoots`] when it holds no usable certificate.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "no certificates found".to_owned(),
        };
        return Err(TlsError::SystemRoots { detail });
    }
    Ok(store)
}
