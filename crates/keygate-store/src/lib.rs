//! keygate's source of truth: clients, keys, the audit log and the `changes` feed.
//!
//! One set of queries serves SQLite (the embedded default: one file, nothing to install) and
//! PostgreSQL (several nodes) through sqlx's `Any` driver; both accept `$N` placeholders. Each
//! backend has its own migrations. Every write is one transaction that bumps the feed version,
//! changes the rows, appends to `changes` and to `audit`; a crash leaves either all or nothing.
//!
//! The store never sees a plaintext key: callers generate the key, digest it, and pass the digest
//! and hint in.

mod admin_tokens;
mod amqp;
mod analytics;
mod audit;
mod clients;
mod error;
mod feed;
mod idempotency;
mod import;
mod keys;
mod leaks;
mod migrate;
mod portal;
mod quotas;
mod rows;
mod settings;
mod sharing;
mod suspensions;
mod usage;
mod webhooks;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keygate_core::{Clock, SystemClock, Timestamp};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

pub use admin_tokens::AdminToken;
pub use amqp::{AmqpFeed, AmqpLease, FeedOfClient, FeedState};
pub use analytics::{
    AnalyticsBatch, AnalyticsQuery, AnalyticsRow, AnalyticsRows, Dimension, GroupValue,
    LatencyCount, LatencyQuery, Page, Paged, RequestCount, WsCount, HOUR_MS, LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS, MAX_ANALYTICS_ROWS,
};
pub use audit::{AuditEntry, AuditFilter};
pub use clients::{ClientFilter, ClientUpdate, DeletedClient, LimitChange, LimitPatch, NewClient};
pub use error::StoreError;
pub use feed::{ChangeListener, Delta, Snapshot};
pub use idempotency::{IdempotencyClaim, Once, Replay, SealedAnswer};
pub use import::ImportOutcome;
pub use keygate_core::KeyMaterial;
pub use keys::{IssuedKey, KeyFilter, NewKey, Replacement, Rotation};
pub use leaks::{LeakAction, LeakFinding, LeakReport};
pub use migrate::{latest_version, MigrateMode};
pub use portal::{normalize_email, LinkRefusal, PortalSession, PortalUser};
pub use quotas::{parse_window, QuotaAdjustment, MAX_RESETS, MAX_TOPUP, MAX_TOPUP_TOTAL};
pub use settings::Emergency;
pub use sharing::{SharingAction, SharingSuspicion, SHARING_ACTOR};
pub use suspensions::{NewSuspension, MAX_ACTIVE as MAX_ACTIVE_SUSPENSIONS};
pub use usage::{UsageRow, UsageWsRow};
pub use webhooks::{Delivery, DeliveryFilter, DeliveryState, DueDelivery, EventType, Outcome};

/// Which database engine a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Who made a change, as written to the audit log (`cli:alice`, `admin-token:billing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

/// How to open a store.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub migrate: MigrateMode,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long an operation waits for a connection before failing.
    pub acquire_timeout: Duration,
    /// SQLite only: `PRAGMA max_page_count` on every connection, so the file cannot grow past
    /// this many pages (SQLite never lowers it below the file's size when the connection
    /// opens, so a small number freezes the file). A hard size ceiling for operators, and how
    /// tests fill the "disk" without root; writes past it fail with [`StoreError::Full`].
    pub max_pages: Option<u32>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            migrate: MigrateMode::Apply,
            max_connections: 4,
            acquire_timeout: Duration::from_secs(3),
            max_pages: None,
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    options: OpenOptions,
    target: Arc<str>,
    /// The connection URL (with credentials), for the change listener; never shown.
    url: Arc<str>,
    clock: Arc<dyn Clock>,
    /// Changes committed through this handle, its clones and siblings (see
    /// [`Store::writes_committed`]).
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("target", &self.target)
            .finish()
    }
}

/// Characters escaped when a file path becomes a `sqlite://` URL (`%` first of all, since sqlx
/// percent-decodes the path).
const PATH_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Parsed `--db` argument: a PostgreSQL URL, a `sqlite:` URL, or a plain file path.
fn resolve(target: &str) -> Result<(Backend, String, String), StoreError> {
    let open_err = |reason: &str| StoreError::Open {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    if target.trim().is_empty() {
        return Err(open_err("the database path is empty"));
    }
    if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        let shown = redact_password(target);
        return Ok((Backend::Postgres, target.to_owned(), shown));
    }
    let path =
        match target
            .strip_prefix("sqlite://")
            .or_else(|| target.strip_prefix("sqlite:"))
        {
            Some(rest) => rest.split('?').next().unwrap_or(rest),
            None if target.contains("://") => return Err(open_err(
                "unknown database URL scheme (use a file path, sqlite://PATH or postgres://...)",
            )),
            None => target,
        };
    let path = Path::new(path);
    let absolute = std::path::absolute(path).map_err(|e| open_err(&e.to_string()))?;
    if let Some(parent) = absolute.parent() {
        if !parent.is_dir() {
            return Err(open_err(&format!(
                "directory `{}` does not exist",
                parent.display()
            )));
        }
    }
    if absolute.is_dir() {
        return Err(open_err("it is a directory, not a database file"));
    }
    let encoded = percent_encoding::utf8_percent_encode(&absolute.to_string_lossy(), PATH_ESCAPES)
        .to_string();
    Ok((
        Backend::Sqlite,
        format!("sqlite://{encoded}?mode=rwc"),
        path.display().to_string(),
    ))
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Opens (and for SQLite creates) the database at `target` and checks its schema.
    ///
    /// # Errors
    /// [`StoreError::Open`] naming the target and the reason, or a schema error.
    pub async fn open(target: &str, options: OpenOptions) -> Result<Store, StoreError> {
        Self::open_with_clock(target, options, Arc::new(SystemClock)).await
    }

    /// [`open`](Self::open) with an injected clock (tests).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with_clock(
        target: &str,
        options: OpenOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url, shown) = resolve(target)?;
        let connect: AnyConnectOptions =
            url.parse().map_err(|e: sqlx::Error| StoreError::Open {
                target: shown.clone(),
                reason: e.to_string(),
            })?;
        // One direct connection first: a wrong host, bad credentials or a file that is not a
        // database fail here at once with the driver's reason, instead of a pool that keeps
        // retrying until its timeout.
        let mut probe = AnyConnection::connect_with(&connect)
            .await
            .map_err(|e| migrate::open_error(&shown, &e))?;
        let probe_sql = match backend {
            // WAL lets the gateway read while the CLI writes; the mode is stored in the file.
            Backend::Sqlite => "PRAGMA journal_mode = WAL",
            Backend::Postgres => "SELECT 1",
        };
        sqlx::query(probe_sql)
            .fetch_optional(&mut probe)
            .await
            .map_err(|e| migrate::open_error(&shown, &e))?;
        let _ = probe.close().await;
        let pool = pool_options(backend, options)
            .connect_with(connect)
            .await
            .map_err(|e| migrate::open_error(&shown, &e))?;
        migrate::ensure_schema(&pool, backend, &shown, options.migrate).await?;
        Ok(Store {
            pool,
            backend,
            options,
            target: shown.into(),
            url: url.into(),
            clock,
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Another pool of `max_connections` on the same database, schema already checked, same
    /// clock: for a part of the node that must neither queue behind the rest for a connection
    /// nor make the rest queue behind it (the customer portal). Open it on the runtime that
    /// uses it: the pool's tasks, and SQLite's connection threads, start where it is opened.
    ///
    /// # Errors
    /// [`StoreError::Open`] as [`open`](Self::open).
    pub async fn sibling(&self, max_connections: u32) -> Result<Store, StoreError> {
        let connect: AnyConnectOptions =
            self.url
                .parse()
                .map_err(|e: sqlx::Error| StoreError::Open {
                    target: self.target.to_string(),
                    reason: e.to_string(),
                })?;
        let options = OpenOptions {
            max_connections,
            ..self.options
        };
        let pool = pool_options(self.backend, options)
            .connect_with(connect)
            .await
            .map_err(|e| migrate::open_error(&self.target, &e))?;
        Ok(Store {
            pool,
            options,
            ..self.clone()
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database as shown to people (passwords redacted).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Closes the pool, waiting for connections to return.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// How many changes this process has committed through this handle, its clones and
    /// siblings. A reader that notes it before reading and finds it unchanged later knows none
    /// of its own process's writes came between (the change feed's version tells the same of
    /// other processes' writes, once the replica has read it).
    pub fn writes_committed(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// Starts a write: one transaction that has already bumped the feed version, which takes the
    /// database's write lock first (no read-then-upgrade deadlock between processes) and gives
    /// this change a version no concurrent writer can share.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (version,): (i64,) = sqlx::query_as(
            "UPDATE feed_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(WriteTx {
            tx,
            version,
            now: self.clock.now(),
            backend: self.backend,
            writes: Arc::clone(&self.writes),
        })
    }
}

/// The pool's settings; on SQLite every connection also gets its pragmas.
fn pool_options(backend: Backend, options: OpenOptions) -> AnyPoolOptions {
    let pool = AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout);
    if backend != Backend::Sqlite {
        return pool;
    }
    let max_pages = options.max_pages;
    pool.after_connect(move |conn, _meta| {
        Box::pin(async move {
            if let Some(pages) = max_pages {
                conn.execute(format!("PRAGMA max_page_count = {pages}").as_str())
                    .await?;
            }
            // Wait for another process's write instead of failing at once.
            conn.execute("PRAGMA busy_timeout = 5000").await?;
            conn.execute("PRAGMA foreign_keys = ON").await?;
            conn.execute("PRAGMA synchronous = NORMAL").await?;
            Ok(())
        })
    })
}

/// An open write transaction with its feed version.
pub(crate) struct WriteTx {
    pub(crate) tx: sqlx::Transaction<'static, sqlx::Any>,
    pub(crate) version: i64,
    pub(crate) now: Timestamp,
    backend: Backend,
    writes: Arc<AtomicU64>,
}

impl WriteTx {
    /// Appends to the change feed.
    pub(crate) async fn change(
        &mut self,
        entity: &str,
        entity_id: &str,
        action: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO changes (version, entity, entity_id, action, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.version)
        .bind(entity)
        .bind(entity_id)
        .bind(action)
        .bind(self.now.as_millis())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Appends to the audit log, and enqueues the webhook event the action announces (if
    /// any) in the same transaction. `detail` must never hold a secret.
    pub(crate) async fn audit(
        &mut self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.now.as_millis())
        .bind(actor.0.as_str())
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .execute(&mut *self.tx)
        .await?;
        webhooks::announce(self, action, target, &detail).await
    }

    /// Commits; on PostgreSQL the change is announced to every listening node (a NOTIFY is
    /// delivered only when, and if, the transaction commits).
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(feed::CHANNEL)
                .bind(self.version.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        // Counted after the commit, so a reader that notes the new count reads the new rows.
        self.writes.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_password("postgres://kg:s3cret@db:5432/keygate"),
            "postgres://kg:***@db:5432/keygate"
        );
        assert_eq!(
            redact_password("postgres://db/keygate"),
            "postgres://db/keygate"
        );
    }

    #[test]
    fn targets_resolve() {
        assert_eq!(resolve("postgres://x/y").unwrap().0, Backend::Postgres);
        let (backend, url, shown) = resolve("weird #name%.db").unwrap();
        assert_eq!(backend, Backend::Sqlite);
        assert!(url.ends_with("weird%20%23name%25.db?mode=rwc"), "{url}");
        assert_eq!(shown, "weird #name%.db");
        assert!(matches!(resolve("mysql://x"), Err(StoreError::Open { .. })));
        assert!(matches!(resolve(""), Err(StoreError::Open { .. })));
        assert!(matches!(
            resolve("/no/such/dir/k.db"),
            Err(StoreError::Open { .. })
        ));
    }
}
