//! The change feed as the replica reads it: a full snapshot at start, then deltas by version.
//!
//! Rows carry the version of their last change, so a delta is "every client and key changed
//! after version V", read after reading the current version. Reading the version first means a
//! delta may repeat a row that a later delta returns again; applying rows is idempotent, so
//! repeats are harmless and nothing is ever missed.

use keygate_core::suspension::Suspension;
use keygate_core::{ApiKey, Client};
use sqlx::postgres::PgListener;
use sqlx::Acquire;

use crate::quotas::{read_live, QuotaAdjustment};
use crate::rows::{self, client_columns, key_columns};
use crate::settings::{read_emergency, Emergency};
use crate::suspensions::read_active;
use crate::{Store, StoreError};

/// The PostgreSQL channel every write announces its version on.
pub(crate) const CHANNEL: &str = "keygate_changes";

/// Announcements of new versions (PostgreSQL LISTEN). A hint to read the feed now; the feed
/// itself is still read by version, so a lost notification costs one poll interval, not a
/// change.
pub struct ChangeListener {
    inner: PgListener,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// Waits for the next announced version. After a dropped connection the listener
    /// reconnects by itself and answers `Ok(None)` once, so the caller reads the feed to catch
    /// up on anything announced meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the connection cannot be re-established.
    pub async fn next(&mut self) -> Result<Option<i64>, StoreError> {
        match self.inner.try_recv().await? {
            Some(n) => Ok(n.payload().parse().ok()),
            None => Ok(None),
        }
    }
}

/// Every client and every key that is not revoked, as of `version`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: i64,
    pub clients: Vec<Client>,
    pub keys: Vec<ApiKey>,
    pub emergency: Emergency,
    /// The suspensions in force.
    pub suspensions: Vec<Suspension>,
    /// Quota top-ups and resets of the windows in progress.
    pub quotas: Vec<QuotaAdjustment>,
}

/// Clients and keys changed after some version (revoked keys included, so replicas drop them).
#[derive(Clone, Debug, Default)]
pub struct Delta {
    pub version: i64,
    pub clients: Vec<Client>,
    pub keys: Vec<ApiKey>,
    /// Emergency mode as of `version`; read whenever the version moved (one row), `None` when
    /// nothing changed.
    pub emergency: Option<Emergency>,
    /// The suspensions in force as of `version`; read whenever the version moved (a handful
    /// of rows), `None` when nothing changed.
    pub suspensions: Option<Vec<Suspension>>,
    /// The quota adjustments of the windows in progress as of `version`; read whenever the
    /// version moved, `None` when nothing changed.
    pub quotas: Option<Vec<QuotaAdjustment>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.keys.is_empty()
    }
}

impl Store {
    /// A listener for change announcements, on PostgreSQL; `None` on SQLite (polled instead).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the listening connection cannot be opened.
    pub async fn listen(&self) -> Result<Option<ChangeListener>, StoreError> {
        if self.backend != crate::Backend::Postgres {
            return Ok(None);
        }
        let mut inner = PgListener::connect(&self.url).await?;
        inner.listen(CHANNEL).await?;
        Ok(Some(ChangeListener { inner }))
    }

    /// The version of the last committed change.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn version(&self) -> Result<i64, StoreError> {
        let (v,): (i64,) = sqlx::query_as("SELECT version FROM feed_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }

    /// Everything a replica needs to start.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let (version,): (i64,) = sqlx::query_as("SELECT version FROM feed_version WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let clients = sqlx::query(concat!("SELECT ", client_columns!(), " FROM clients"))
            .fetch_all(&mut *tx)
            .await?;
        let keys = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE state <> 'revoked'"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let emergency = read_emergency(&mut *tx).await?;
        let suspensions = read_active(&mut *tx, self.now()).await?;
        let quotas = read_live(&mut *tx, self.now()).await?;
        tx.commit().await?;
        Ok(Snapshot {
            version,
            quotas,
            emergency,
            suspensions,
            clients: clients.iter().map(rows::client).collect::<Result<_, _>>()?,
            keys: keys.iter().map(rows::key).collect::<Result<_, _>>()?,
        })
    }

    /// What changed after `since`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn delta_since(&self, since: i64) -> Result<Delta, StoreError> {
        let version = self.version().await?;
        if version <= since {
            return Ok(Delta {
                version: since,
                ..Delta::default()
            });
        }
        let clients = sqlx::query(concat!(
            "SELECT ",
            client_columns!(),
            " FROM clients WHERE version > $1"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let keys = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM keys WHERE version > $1"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(Delta {
            version,
            emergency: Some(read_emergency(&self.pool).await?),
            suspensions: Some(read_active(&self.pool, self.now()).await?),
            quotas: Some(read_live(&self.pool, self.now()).await?),
            clients: clients.iter().map(rows::client).collect::<Result<_, _>>()?,
            keys: keys.iter().map(rows::key).collect::<Result<_, _>>()?,
        })
    }
}
