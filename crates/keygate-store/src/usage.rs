//! Usage counters: requests per client, UTC day and status, added by each gateway's periodic
//! flush. Telemetry, not configuration: no feed version, no audit entry.

use keygate_core::ClientId;
use serde::Serialize;
use sqlx::Row;

use crate::{Store, StoreError};

/// Requests of one client on one day that were answered with one status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub client_id: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub status: u16,
    pub requests: u64,
}

/// WebSocket egress of one client on one day: messages and bytes delivered to its sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageWsRow {
    pub client_id: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub messages: u64,
    pub bytes: u64,
}

impl Store {
    /// A client's WebSocket egress for the days `from..=to` (`YYYY-MM-DD`), by day.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn usage_ws(
        &self,
        client: &ClientId,
        from: &str,
        to: &str,
    ) -> Result<Vec<UsageWsRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id, day, messages, bytes FROM usage_ws \
             WHERE client_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        )
        .bind(client.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let count = |n: i64| {
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("usage_ws count {n}")))
        };
        rows.iter()
            .map(|row| {
                Ok(UsageWsRow {
                    client_id: row.try_get("client_id")?,
                    day: row.try_get("day")?,
                    messages: count(row.try_get("messages")?)?,
                    bytes: count(row.try_get("bytes")?)?,
                })
            })
            .collect()
    }

    /// Adds counts (one transaction for the whole batch, so a flush is all or nothing).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; the caller keeps the counts and retries.
    pub async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        add_in(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A client's counts for the days `from..=to` (`YYYY-MM-DD`), by day then status.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn usage(
        &self,
        client: &ClientId,
        from: &str,
        to: &str,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id, day, status, requests FROM usage \
             WHERE client_id = $1 AND day >= $2 AND day <= $3 ORDER BY day, status",
        )
        .bind(client.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: i64 = row.try_get("status")?;
                let requests: i64 = row.try_get("requests")?;
                Ok(UsageRow {
                    client_id: row.try_get("client_id")?,
                    day: row.try_get("day")?,
                    status: u16::try_from(status)
                        .map_err(|_| StoreError::Corrupt(format!("usage status {status}")))?,
                    requests: u64::try_from(requests)
                        .map_err(|_| StoreError::Corrupt(format!("usage count {requests}")))?,
                })
            })
            .collect()
    }
}

/// Adds usage rows within `tx` (also [`Store::add_counts`]'s first step).
pub(crate) async fn add_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[UsageRow],
) -> Result<(), StoreError> {
    for r in rows {
        sqlx::query(
            "INSERT INTO usage (client_id, day, status, requests) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (client_id, day, status) DO UPDATE SET requests = usage.requests + excluded.requests",
        )
        .bind(r.client_id.as_str())
        .bind(r.day.as_str())
        .bind(i64::from(r.status))
        .bind(i64::try_from(r.requests).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Adds WebSocket egress rows within `tx` ([`Store::add_counts`]).
pub(crate) async fn add_ws_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[UsageWsRow],
) -> Result<(), StoreError> {
    for r in rows {
        sqlx::query(
            "INSERT INTO usage_ws (client_id, day, messages, bytes) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (client_id, day) DO UPDATE SET \
             messages = usage_ws.messages + excluded.messages, bytes = usage_ws.bytes + excluded.bytes",
        )
        .bind(r.client_id.as_str())
        .bind(r.day.as_str())
        .bind(i64::try_from(r.messages).unwrap_or(i64::MAX))
        .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
