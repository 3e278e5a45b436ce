//! `[server.tls]`, `[server.admin_tls]` and upstreams' TLS settings: paths resolved against
//! the configuration file's directory, and every file read and checked now, so a bad path or
//! a key that does not match its certificate is reported with its line before anything binds.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::errors::{Errors, Zero};
use super::raw::{RawTls, RawUpstream};
use super::spanned::Spanned;
use crate::policy::upstream::UpstreamSpec;
use crate::tls::{pem, CertFiles, ClientFiles, ClientTls, ListenerTls, ServerTls};

/// A path of the file, relative to the file's own directory.
pub(super) fn resolve(errors: &Errors<'_>, path: &str) -> PathBuf {
    let path = Path::new(path);
    match Path::new(errors.file()).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// One listener's TLS table, its files checked unless `read_files` is false.
pub(super) fn listener(
    raw: Option<&Spanned<RawTls>>,
    table: &'static str,
    read_files: bool,
    errors: &mut Errors<'_>,
) -> Option<ListenerTls> {
    let spanned = raw?;
    let span = spanned.span();
    let t = spanned.get_ref();
    let before = errors.len();
    let mut certificates = Vec::new();
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            certificates.extend(pair(cert, key, table, read_files, errors));
        }
        (None, None) => errors.at(
            Some(&span),
            format!("{table} needs `cert` and `key`: the default certificate chain and its key"),
        ),
        (Some(_), None) => errors.at(Some(&span), format!("{table}.cert is set without `key`")),
        (None, Some(_)) => errors.at(Some(&span), format!("{table}.key is set without `cert`")),
    }
    for more in &t.certificates {
        let p = more.get_ref();
        certificates.extend(pair(&p.cert, &p.key, table, read_files, errors));
    }
    let client_ca = t.client_ca.as_ref().and_then(|ca| {
        let path = resolve(errors, ca.get_ref());
        if !read_files {
            return Some(path);
        }
        match pem::roots(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                errors.at(Some(&ca.span()), format!("{table}.client_ca: {e}"));
                None
            }
        }
    });
    let handshake_timeout = errors.duration(
        Some(&span),
        &format!("{table}.handshake_timeout"),
        t.handshake_timeout.as_ref(),
        ListenerTls::DEFAULT_HANDSHAKE_TIMEOUT,
        Zero::Refused,
    );
    let settings = ListenerTls {
        table,
        certificates,
        client_ca,
        handshake_timeout,
    };
    if errors.len() > before {
        return None;
    }
    if !read_files {
        return Some(settings);
    }
    // Each file reads and parses: what is left is how they fit together.
    if let Err(e) = ServerTls::check(&settings) {
        errors.at(Some(&span), format!("{table}: {e}"));
        return None;
    }
    Some(settings)
}

/// One certificate and key, each read and parsed, errors on their own lines.
fn pair(
    cert: &Spanned<String>,
    key: &Spanned<String>,
    table: &str,
    read_files: bool,
    errors: &mut Errors<'_>,
) -> Option<CertFiles> {
    let files = CertFiles {
        cert: resolve(errors, cert.get_ref()),
        key: resolve(errors, key.get_ref()),
    };
    if !read_files {
        return Some(files);
    }
    let cert_ok = check_at(pem::certs(&files.cert), &cert.span(), table, "cert", errors);
    let key_ok = check_at(pem::key(&files.key), &key.span(), table, "key", errors);
    (cert_ok && key_ok).then_some(files)
}

fn check_at<T>(
    read: Result<T, crate::tls::TlsError>,
    span: &Range<usize>,
    table: &str,
    field: &str,
    errors: &mut Errors<'_>,
) -> bool {
    match read {
        Ok(_) => true,
        Err(e) => {
            errors.at(Some(span), format!("{table}.{field}: {e}"));
            false
        }
    }
}

/// An upstream's TLS: `ca_file` and the client certificate, for `https://` URLs only.
pub(super) fn upstream(
    name: &str,
    raw: &RawUpstream,
    spec: &mut UpstreamSpec,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) {
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some(CertFiles {
            cert: resolve(errors, cert),
            key: resolve(errors, key),
        }),
        (None, None) => None,
        _ => {
            errors.at(
                Some(span),
                format!("upstream `{name}`: client_cert and client_key go together"),
            );
            return;
        }
    };
    let files = ClientFiles {
        ca_file: raw.ca_file.as_deref().map(|p| resolve(errors, p)),
        client_cert,
    };
    if !spec.is_https() {
        if files != ClientFiles::default() {
            errors.at(
                Some(span),
                format!(
                    "upstream `{name}`: ca_file, client_cert and client_key are for https:// URLs"
                ),
            );
        }
        return;
    }
    let name_checked = spec.server_name();
    let built = ClientTls::new(&files, crate::tls::client::ALPN_UPSTREAM);
    match (built, name_checked) {
        (Ok(client), Ok(server_name)) => spec.tls = Some((client, server_name)),
        (Err(e), _) => errors.at(Some(span), format!("upstream `{name}`: {e}")),
        (_, Err(e)) => errors.at(Some(span), format!("upstream `{name}`: {e}")),
    }
}
