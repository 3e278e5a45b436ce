//! The listeners' side: certificates chosen by SNI, swapped atomically when their files change
//! or on SIGHUP, so new handshakes get the new certificate while open connections keep theirs.
//! The admin listener's client CA (`client_ca`, mTLS) is watched and reloaded the same way:
//! new handshakes are verified against the new roots.
//!
//! A reload reads every file of a listener first and swaps only a complete, consistent set; a
//! file that does not parse, a key that does not match its certificate, a CA file without a
//! usable certificate, or a missing file is refused with a log line naming the file, and the
//! previous set keeps serving. The watcher
//! reloads only once the files have stopped changing for a poll (one second), so a
//! certificate written in place is not read half-written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde_json::json;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::{pem, provider, CertFiles, ListenerTls, TlsError};

/// ALPN of the public listener: HTTP/2 preferred, HTTP/1.1 for the rest.
pub(crate) const ALPN_PUBLIC: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of the admin and portal listeners, which speak HTTP/1.1 only.
pub(crate) const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// Locks a mutex, through a poisoning (the snapshots it guards are whole values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often the watcher compares the files with what was last loaded.
const POLL: Duration = Duration::from_secs(1);

/// One certificate as loaded.
#[derive(Debug)]
struct Loaded {
    files: CertFiles,
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names of its subjectAltName (`*.example.com` included as written).
    names: Vec<String>,
    not_after: Option<String>,
}

/// A listener's certificates and the SNI index over them.
#[derive(Debug)]
struct CertSet {
    loaded: Vec<Loaded>,
    /// Exact names and `*.suffix` wildcards (stored as `suffix`) → index in `loaded`; the
    /// first certificate to name one wins.
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Builds the set from the files' bytes (`contents[i]`: certificate i's chain and key).
    fn build(files: &[CertFiles], contents: &[Contents]) -> Result<CertSet, TlsError> {
        let provider = provider();
        let mut set = CertSet {
            loaded: Vec::with_capacity(files.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, (f, (chain, key))) in files.iter().zip(contents).enumerate() {
            let certs = pem::certs_from(&f.cert, chain)?;
            let key = pem::key_from(&f.key, key)?;
            let signer = provider
                .key_provider
                .load_private_key(key)
                .map_err(|source| TlsError::Key {
                    path: f.key.clone(),
                    source,
                })?;
            let end_entity =
                webpki::EndEntityCert::try_from(&certs[0]).map_err(|e| TlsError::Certificate {
                    path: f.cert.clone(),
                    detail: e.to_string(),
                })?;
            let names: Vec<String> = end_entity
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect();
            let not_after = super::der::not_after(&certs[0]);
            let certified = CertifiedKey::new(certs, signer);
            match certified.keys_match() {
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(source) => {
                    return Err(TlsError::Mismatch {
                        cert: f.cert.clone(),
                        key: f.key.clone(),
                        source,
                    })
                }
            }
            for name in &names {
                let (index, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut set.wildcard, suffix),
                    None => (&mut set.exact, name.as_str()),
                };
                index.entry(key.to_owned()).or_insert(i);
            }
            set.loaded.push(Loaded {
                files: f.clone(),
                key: Arc::new(certified),
                names,
                not_after,
            });
        }
        Ok(set)
    }

    /// The certificate for a client's SNI: an exact name, else a wildcard one label up,
    /// else the default (the first).
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let found = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        &self.loaded[found.unwrap_or(0)].key
    }
}

/// Picks the certificate of each handshake from the current set.
#[derive(Debug)]
struct Resolver(ArcSwap<CertSet>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().pick(hello.server_name())))
    }
}

/// Every file a listener reads: each certificate's chain and key in
/// [`ListenerTls::certificates`] order, then the client CA if there is one.
fn watched(settings: &ListenerTls) -> impl Iterator<Item = &PathBuf> {
    settings
        .certificates
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .chain(settings.client_ca.as_ref())
}

/// The bytes of a listener's files, in [`watched`] order; `None` for a file that cannot be
/// read now.
type Snapshot = Vec<Option<Vec<u8>>>;

fn snapshot(settings: &ListenerTls) -> Snapshot {
    watched(settings).map(|p| std::fs::read(p).ok()).collect()
}

/// One certificate's chain and key, as bytes.
type Contents = (Vec<u8>, Vec<u8>);

/// A listener's files as read for one load.
struct Files {
    certificates: Vec<Contents>,
    client_ca: Option<Vec<u8>>,
}

/// Reads every file, with the error of the first that cannot be read.
fn read_all(settings: &ListenerTls) -> Result<Files, TlsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })
    };
    Ok(Files {
        certificates: settings
            .certificates
            .iter()
            .map(|f| Ok((read(&f.cert)?, read(&f.key)?)))
            .collect::<Result<_, TlsError>>()?,
        client_ca: settings.client_ca.as_ref().map(read).transpose()?,
    })
}

/// What a reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// New certificates serve new handshakes.
    Swapped,
    /// The files hold what is already served.
    Unchanged,
}

/// A listener's settings and the rustls configuration built from them.
#[derive(Debug)]
struct Inner {
    settings: ListenerTls,
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

impl Inner {
    /// Builds from the settings and the files' bytes (read by the caller).
    fn build(settings: &ListenerTls, alpn: &[&[u8]], files: &Files) -> Result<Inner, TlsError> {
        let set = CertSet::build(&settings.certificates, &files.certificates)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(set)));
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match (&settings.client_ca, &files.client_ca) {
            (Some(path), Some(bytes)) => {
                let roots = pem::roots_from(path, bytes)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: path.clone(),
                            detail: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&resolver) as _);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Inner {
            settings: settings.clone(),
            resolver,
            config: Arc::new(config),
        })
    }
}

fn seen(files: &Files) -> Snapshot {
    files
        .certificates
        .iter()
        .flat_map(|(c, k)| [Some(c.clone()), Some(k.clone())])
        .chain(files.client_ca.clone().map(Some))
        .collect()
}

/// One listener's TLS: its settings and rustls configuration (replaced whole by
/// [`Tls::reconfigure`], and by [`ServerTls::reload`] when the client CA changed) and its
/// certificates (swapped by [`ServerTls::reload`]).
#[derive(Debug)]
pub struct ServerTls {
    inner: ArcSwap<Inner>,
    alpn: Vec<Vec<u8>>,
    /// The files' bytes behind the certificates that serve.
    served: Mutex<Snapshot>,
    /// The files as last loaded or last refused, so the watcher reports a bad file once, not
    /// on every poll.
    tried: Mutex<Snapshot>,
    /// The files as seen by the previous poll: a reload waits until they stop changing.
    polled: Mutex<Snapshot>,
}

/// A listener's new settings, built and checked, not yet serving ([`ServerTls::stage`]).
#[derive(Debug)]
pub struct Staged {
    inner: Inner,
    seen: Snapshot,
}

impl ServerTls {
    /// Loads a listener's certificates and builds its configuration; `alpn` in preference
    /// order.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used.
    pub fn load(settings: &ListenerTls, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let files = read_all(settings)?;
        let inner = Inner::build(settings, alpn, &files)?;
        let seen = seen(&files);
        Ok(ServerTls {
            inner: ArcSwap::from_pointee(inner),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            served: Mutex::new(seen.clone()),
            tried: Mutex::new(seen.clone()),
            polled: Mutex::new(seen),
        })
    }

    /// Checks a listener's settings as [`ServerTls::load`] would, for configuration checks.
    ///
    /// # Errors
    /// As [`ServerTls::load`].
    pub fn check(settings: &ListenerTls) -> Result<(), TlsError> {
        ServerTls::load(settings, ALPN_PUBLIC).map(drop)
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.inner.load().config))
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.inner.load().settings.handshake_timeout
    }

    fn table(&self) -> &'static str {
        self.inner.load().settings.table
    }

    /// Reads the files again and, when they differ from what serves, swaps in the new set:
    /// the certificates alone, or (the client CA changed) the whole rustls configuration.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used; the previous set keeps serving.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let inner = self.inner.load();
        let settings = &inner.settings;
        *lock(&self.tried) = snapshot(settings);
        let files = read_all(settings)?;
        let seen = seen(&files);
        let mut served = lock(&self.served);
        if *served == seen {
            return Ok(Reloaded::Unchanged);
        }
        let ca_changed = settings.client_ca.is_some() && served.last() != seen.last();
        if ca_changed {
            let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
            self.inner
                .store(Arc::new(Inner::build(settings, &alpn, &files)?));
        } else {
            let set = CertSet::build(&settings.certificates, &files.certificates)?;
            inner.resolver.0.store(Arc::new(set));
        }
        *served = seen;
        Ok(Reloaded::Swapped)
    }

    /// Builds new settings (other files, another `client_ca` or `handshake_timeout`) without
    /// serving them yet; [`ServerTls::install`] then does.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used.
    pub fn stage(&self, settings: &ListenerTls) -> Result<Staged, TlsError> {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let files = read_all(settings)?;
        Ok(Staged {
            inner: Inner::build(settings, &alpn, &files)?,
            seen: seen(&files),
        })
    }

    /// Serves staged settings: new handshakes use them, open connections keep theirs.
    pub fn install(&self, staged: Staged) {
        self.inner.store(Arc::new(staged.inner));
        *lock(&self.served) = staged.seen.clone();
        *lock(&self.tried) = staged.seen.clone();
        *lock(&self.polled) = staged.seen;
    }

    /// One poll of the watcher: `true` when the files changed since the last reload (or
    /// refusal) and have not changed since the previous poll.
    fn settled_change(&self) -> bool {
        let now = snapshot(&self.inner.load().settings);
        let mut polled = lock(&self.polled);
        let settled = *polled == now;
        *polled = now;
        settled && *lock(&self.tried) != *polled
    }

    /// The certificates served, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let inner = self.inner.load();
        let set = inner.resolver.0.load();
        let certificates: Vec<_> = set
            .loaded
            .iter()
            .map(|l| {
                json!({
                    "cert": l.files.cert.display().to_string(),
                    "names": l.names,
                    "not_after": l.not_after,
                })
            })
            .collect();
        json!({
            "client_certificates": inner.settings.client_ca.is_some(),
            "certificates": certificates,
        })
    }
}

/// Every TLS listener of the process, and the count of certificate reloads.
#[derive(Debug, Default)]
pub struct Tls {
    pub public: Option<Arc<ServerTls>>,
    pub admin: Option<Arc<ServerTls>>,
    /// `[portal.tls]`; its settings change only with a restart (as all of `[portal]`), its
    /// certificate files reload like the others'.
    pub portal: Option<Arc<ServerTls>>,
    swapped: AtomicU64,
    refused: AtomicU64,
}

impl Tls {
    /// Loads the listeners' certificates (a configuration's `tls`, `admin_tls` and the
    /// portal's `tls`).
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used.
    pub fn load(
        public: Option<&ListenerTls>,
        admin: Option<&ListenerTls>,
        portal: Option<&ListenerTls>,
    ) -> Result<Tls, TlsError> {
        let load = |settings: Option<&ListenerTls>, alpn| {
            settings
                .map(|s| ServerTls::load(s, alpn).map(Arc::new))
                .transpose()
        };
        Ok(Tls {
            public: load(public, ALPN_PUBLIC)?,
            admin: load(admin, ALPN_HTTP1)?,
            portal: load(portal, ALPN_HTTP1)?,
            ..Tls::default()
        })
    }

    fn listeners(&self) -> impl Iterator<Item = &ServerTls> {
        self.public
            .iter()
            .chain(self.admin.iter())
            .chain(self.portal.iter())
            .map(|t| &**t)
    }

    /// Reloads every listener's certificates from their files: new handshakes use them, open
    /// connections keep theirs. What SIGHUP and a configuration reload call. Each refusal is
    /// logged with the file it concerns; the listener keeps its previous certificates.
    ///
    /// # Errors
    /// The first listener's [`TlsError`], after every listener was tried.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut first = None;
        for listener in self.listeners() {
            if let Err(e) = self.reload_one(listener) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Applies a new configuration's listener settings (`tls`, `admin_tls`): other certificate
    /// files, `client_ca` or `handshake_timeout`. Every listener's new settings are built and
    /// checked first; on an error none is applied and the current ones keep serving. Turning
    /// TLS on or off on a listener needs a restart ([`TlsError::Restart`]). What a
    /// configuration reload calls (it also reloads certificates whose files changed).
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be used, or [`TlsError::Restart`].
    pub fn reconfigure(
        &self,
        public: Option<&ListenerTls>,
        admin: Option<&ListenerTls>,
    ) -> Result<(), TlsError> {
        let plan = [
            (self.public.as_deref(), public, "server.tls"),
            (self.admin.as_deref(), admin, "server.admin_tls"),
        ];
        let mut staged = Vec::new();
        for (current, new, table) in plan {
            let result = match (current, new) {
                (None, None) => continue,
                (Some(listener), Some(settings)) => listener.stage(settings).map(|s| (listener, s)),
                _ => Err(TlsError::Restart { table }),
            };
            match result {
                Ok(ready) => staged.push(ready),
                Err(e) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        listener = table,
                        error = %e,
                        "Refused the new TLS settings; the previous ones keep serving."
                    );
                    return Err(e);
                }
            }
        }
        for (listener, ready) in staged {
            listener.install(ready);
            self.swapped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                listener = listener.table(),
                "Applied the new TLS settings; new handshakes use them."
            );
        }
        Ok(())
    }

    fn reload_one(&self, listener: &ServerTls) -> Result<(), TlsError> {
        let table = listener.table();
        match listener.reload() {
            Ok(Reloaded::Swapped) => {
                self.swapped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    listener = table,
                    "Reloaded the TLS certificates; new handshakes use them."
                );
                Ok(())
            }
            Ok(Reloaded::Unchanged) => Ok(()),
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    listener = table,
                    error = %e,
                    "Refused the new TLS certificate files; the previous certificates keep serving."
                );
                Err(e)
            }
        }
    }

    /// Polls the files every second and reloads a listener whose files changed and then
    /// stayed put; reloads everything on SIGHUP. The SIGHUP handler is installed before this
    /// returns (so the signal no longer ends the process from then on); the future runs until
    /// `stop`.
    pub fn watch(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGHUP; certificates reload only when their files change.");
                None
            }
        };
        async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hung_up = async {
                    match &mut hangup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {
                        for listener in self.listeners() {
                            if listener.settled_change() {
                                let _ = self.reload_one(listener);
                            }
                        }
                    }
                    Some(()) = hung_up => {
                        if self.listeners().next().is_none() {
                            tracing::info!("SIGHUP: no TLS listener, no certificates to reload.");
                        } else {
                            tracing::info!("SIGHUP: reloading the TLS certificates.");
                            let _ = self.reload();
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// The listeners' certificates for `/status`; `None` without TLS.
    pub fn status(&self) -> Option<serde_json::Value> {
        self.listeners().next()?;
        Some(json!({
            "public": self.public.as_ref().map(|t| t.status()),
            "admin": self.admin.as_ref().map(|t| t.status()),
            "portal": self.portal.as_ref().map(|t| t.status()),
        }))
    }

    /// `keygate_tls_certificate_reloads_total{result}`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP keygate_tls_certificate_reloads_total Certificate reloads of the TLS listeners: new certificates swapped in (ok) or refused (error).\n");
        out.push_str("# TYPE keygate_tls_certificate_reloads_total counter\n");
        let _ = writeln!(
            out,
            "keygate_tls_certificate_reloads_total{{result=\"ok\"}} {}",
            self.swapped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "keygate_tls_certificate_reloads_total{{result=\"error\"}} {}",
            self.refused.load(Ordering::Relaxed)
        );
    }
}
