//! The audit log: entries are written by each operation's transaction; events that change no
//! stored row (a configuration reload) are written by [`Store::record_event`].

use keygate_core::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{Store, StoreError};

/// One operator action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// Which entries to read, newest first.
#[derive(Clone, Debug)]
pub struct AuditFilter {
    pub limit: u32,
    /// Only entries older than this id (the previous page's last id).
    pub before: Option<i64>,
    pub actor: Option<String>,
    /// An exact action (`key.rotate`) or a family (`key.`).
    pub action: Option<String>,
    pub target: Option<String>,
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            limit: 50,
            before: None,
            actor: None,
            action: None,
            target: None,
        }
    }
}

impl Store {
    /// Records an event that writes nothing else: `actor` did `action` to `target`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Full`].
    pub async fn record_event(
        &self,
        actor: &crate::Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        tx.audit(actor, action, target, detail).await?;
        tx.commit().await
    }

    /// Reads audit entries, newest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let action_family = filter
            .action
            .as_deref()
            .filter(|a| a.ends_with('.'))
            .map(str::to_owned);
        let action_exact = filter.action.clone().filter(|a| !a.ends_with('.'));
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit \
             WHERE ($1 IS NULL OR id < $1) AND ($2 IS NULL OR actor = $2) \
             AND ($3 IS NULL OR action = $3) AND ($4 IS NULL OR substr(action, 1, length($4)) = $4) \
             AND ($5 IS NULL OR target = $5) ORDER BY id DESC LIMIT $6",
        )
        .bind(filter.before)
        .bind(filter.actor.as_deref())
        .bind(action_exact)
        .bind(action_family)
        .bind(filter.target.as_deref())
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("detail")?;
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: Timestamp::from_millis(row.try_get("at")?),
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
                })
            })
            .collect()
    }
}
