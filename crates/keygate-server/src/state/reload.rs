//! Configuration reload (SIGHUP, `POST /v1/reload`, `keygate reload`): read and compile the
//! file the node started from; if it has errors, answer them all and keep serving; otherwise
//! put a new [`Gateway`] in force around the same node, atomically.
//!
//! What a reload changes: routes, plans (every client's compiled policy is rebuilt), the
//! profile, upstreams (pools and breakers are kept for upstreams whose address did not
//! change), the guard, self-service and the WebSocket contract. Requests already running
//! finish on the configuration they started with; connections and WebSocket sessions stay
//! open, and sessions the new configuration no longer allows are closed with the profile's
//! close frame, as the change feed does for keys. What needs the process itself (listen
//! addresses, workers, the store, the limiter, key format and digest, connection bounds,
//! `[amqp]`) keeps its running value and is named in the answer and the log.

use std::sync::Arc;

use serde_json::json;

use crate::config::{self, Config, ConfigErrors};
use crate::state::gateway::{Gateway, Plans};
use crate::state::live::Live;
use crate::state::loaded::ReloadResult;
use crate::state::locks::lock;

/// Why a reload did not happen; the old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Started with the embedded default configuration (or by a test): no file to read.
    #[error(
        "this node was started without a configuration file (--config); there is nothing to reload"
    )]
    NoFile,
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Every problem of the file, each with its line.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A listener's new certificate, key or CA file cannot be used (the file is named).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A reload that was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The configuration's version now (1 at start, one more per applied reload).
    pub version: u64,
    /// SHA-256 of the file's text.
    pub hash: String,
    /// Whether the file differed from the one in force.
    pub changed: bool,
    /// Settings the file changes that take effect only at the next start.
    pub restart_required: Vec<&'static str>,
    /// WebSocket sessions closed because the new configuration no longer allows them.
    pub sessions_closed: usize,
}

impl Reloaded {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "version": self.version,
            "hash": self.hash,
            "changed": self.changed,
            "restart_required": self.restart_required,
            "sessions_closed": self.sessions_closed,
        })
    }
}

/// Reloads the configuration of the node `live` serves; `by` names who asked (`signal`, or an
/// admin token's name), for the log, `/status` and the audit log.
///
/// # Errors
/// [`ReloadError`]; nothing changed.
pub(crate) async fn reload(live: &Live, by: &str) -> Result<Reloaded, ReloadError> {
    let node = Arc::clone(&live.load().node);
    let _one_at_a_time = node.reloading.lock().await;
    let current = live.load();
    let now = current.clock.now();
    let (config, restart_required) = match prepare(&current).await {
        Ok(prepared) => prepared,
        Err(e) => {
            current.loaded.record(ReloadResult::Refused, now, by);
            tracing::error!(by, error = %e, "Configuration reload refused; the configuration in force keeps serving.");
            audit(
                &current,
                by,
                "config.reload_refused",
                json!({ "error": e.to_string() }),
            )
            .await;
            return Err(e);
        }
    };
    let changed = config.hash != current.config.hash;
    let next = Arc::new(current.reconfigured(config));
    {
        // In force, then every client compiled under its plans; the change feed takes the same
        // lock and the gateway in force, so no client is left compiled under the old plans.
        let _writes = lock(&next.replica_writes);
        live.replace(Arc::clone(&next));
        next.replica.recompile(&Plans(&next.config));
    }
    let sessions_closed = next.ws_sessions.revalidate(&next);
    let version = next.loaded.record(ReloadResult::Applied, now, by);
    let reloaded = Reloaded {
        version,
        hash: next.config.hash.clone(),
        changed,
        restart_required,
        sessions_closed,
    };
    if reloaded.restart_required.is_empty() {
        tracing::info!(by, version, hash = %reloaded.hash, changed, sessions_closed, "Configuration reloaded.");
    } else {
        tracing::warn!(
            by,
            version,
            hash = %reloaded.hash,
            restart_required = ?reloaded.restart_required,
            "Configuration reloaded; these settings changed but take effect only after a restart."
        );
    }
    audit(&next, by, "config.reload", reloaded.to_json()).await;
    Ok(reloaded)
}

/// The new configuration, with what needs a restart kept as running (and named), and the
/// listeners' TLS settings already applied: the last step that can fail.
async fn prepare(current: &Gateway) -> Result<(Config, Vec<&'static str>), ReloadError> {
    let config = read_and_compile(current).await?;
    let (mut config, mut restart_required) = keep_restart_only(&current.config, config);
    if let Some(tls) = current.tls.get() {
        // Turning TLS on or off on a listener needs a restart; other files, another CA or
        // deadline are staged for every listener first and applied only if all are usable.
        let running = &current.config;
        for (table, was, next) in [
            ("server.tls", &running.tls, &mut config.tls),
            (
                "server.admin_tls",
                &running.admin_tls,
                &mut config.admin_tls,
            ),
        ] {
            if was.is_some() != next.is_some() {
                restart_required.push(table);
                next.clone_from(was);
            }
        }
        tls.reconfigure(config.tls.as_ref(), config.admin_tls.as_ref())?;
    }
    Ok((config, restart_required))
}

async fn read_and_compile(gw: &Gateway) -> Result<Config, ReloadError> {
    let source = gw.source.get().ok_or(ReloadError::NoFile)?;
    let path = source.path.display().to_string();
    let text =
        tokio::fs::read_to_string(&source.path)
            .await
            .map_err(|e| ReloadError::Unreadable {
                path: path.clone(),
                source: e,
            })?;
    config::load(&text, &path, &source.overrides).map_err(ReloadError::Invalid)
}

/// The audit log's entry; a store that is down loses it (logged), never the reload.
async fn audit(gw: &Gateway, by: &str, action: &str, detail: serde_json::Value) {
    let Some(store) = gw.writer.get() else {
        return;
    };
    let actor = keygate_store::Actor(by.to_owned());
    if let Err(e) = store
        .record_event(&actor, action, &gw.config.source, detail)
        .await
    {
        tracing::warn!(error = %e, action, "Cannot write the reload to the audit log.");
    }
}

/// `next` with every setting that needs a restart put back to `running`'s value, and the
/// names of those the file changed.
fn keep_restart_only(running: &Config, mut next: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident => $name:literal),+ $(,)?) => {$(
            if next.$field != running.$field {
                kept.push($name);
                next.$field = running.$field.clone();
            }
        )+};
    }
    keep!(
        listen => "server.listen",
        admin_listen => "server.admin_listen",
        workers => "server.workers",
        db => "server.db",
        feed_poll => "server.feed_poll",
        usage_flush => "server.usage_flush",
        http => "server (connection and head bounds)",
        limiter => "limits (backend, redis_url, timeouts)",
        amqp => "amqp",
        analytics => "analytics",
        tracing => "tracing",
    );
    // The portal runs on its own listener with its settings from the start: all of it needs
    // a restart. (A base URL the file leaves to the bound address was filled in at start.)
    if let (Some(was), Some(next_portal)) = (&running.portal, &mut next.portal) {
        if next_portal.base_url_follows_listen() {
            next_portal.base_url.clone_from(&was.base_url);
        }
    }
    keep!(portal => "portal");
    // Keys issued under the running format and digest must keep authenticating.
    if next.issuer.format != running.issuer.format
        || next.issuer.legacy != running.issuer.legacy
        || next.issuer.digester.digest("keygate-reload-probe")
            != running.issuer.digester.digest("keygate-reload-probe")
    {
        kept.push("keys");
        next.issuer = running.issuer.clone();
    }
    // A token secret the process drew itself (no `secret_env`) stays, or every token issued
    // before the reload would stop working.
    if !next.ws.profile.token.from_env && !running.ws.profile.token.from_env {
        next.ws.profile.token.secret = running.ws.profile.token.secret.clone();
    }
    (next, kept)
}
