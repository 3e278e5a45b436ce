//! Key-sharing suspicions: a key seen from `[plans.NAME.sharing] networks_per_hour` source
//! networks or more in one UTC hour. One row per (key, hour), so nodes that cross the
//! threshold together record it once, with one audit entry (`key.sharing_suspected`, which the
//! webhook outbox announces) and, with the `disable` action, one key disable.

use keygate_core::{ClientId, KeyId, KeyState, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::keys::{change_state, find};
use crate::{Actor, Store, StoreError};

/// The actor of the detector's writes (audit entries, disables).
pub const SHARING_ACTOR: &str = "sharing-detector";

/// What a plan does with a key it suspects of being shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharingAction {
    /// Record it (audit, event, metric, `keygate keys suspected`); the key keeps working.
    Flag,
    /// Record it and disable the key.
    Disable,
}

impl SharingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SharingAction::Flag => "flag",
            SharingAction::Disable => "disable",
        }
    }

    pub fn parse(s: &str) -> Option<SharingAction> {
        match s {
            "flag" => Some(SharingAction::Flag),
            "disable" => Some(SharingAction::Disable),
            _ => None,
        }
    }
}

/// One suspected key in one hour. Ids and counts only: never key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingSuspicion {
    pub key_id: KeyId,
    pub client_id: ClientId,
    /// The start of the UTC hour the networks were counted in.
    pub hour: Timestamp,
    /// Distinct source networks counted when the threshold was crossed.
    pub networks: u64,
    pub action: SharingAction,
    pub created_at: Timestamp,
}

fn row(r: &AnyRow) -> Result<SharingSuspicion, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("key_sharing: {e}"));
    let key_id: String = r.try_get("key_id")?;
    let client_id: String = r.try_get("client_id")?;
    let action: String = r.try_get("action")?;
    Ok(SharingSuspicion {
        key_id: KeyId::parse(&key_id).map_err(|e| corrupt(&e))?,
        client_id: ClientId::parse(&client_id).map_err(|e| corrupt(&e))?,
        hour: Timestamp::from_millis(r.try_get("hour")?),
        networks: u64::try_from(r.try_get::<i64, _>("networks")?).unwrap_or(0),
        action: SharingAction::parse(&action).ok_or_else(|| corrupt(&action))?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
    })
}

impl Store {
    /// Records that `key` was seen from `networks` source networks in the hour starting at
    /// `hour`, and applies `action`. `None` when this (key, hour) was already recorded (by this
    /// node or another): nothing is written then, so a caller counts only its own `Some`.
    /// A key already revoked or disabled is recorded but not changed.
    ///
    /// # Errors
    /// [`StoreError::KeyNotFound`], [`StoreError::Unavailable`].
    pub async fn record_key_sharing(
        &self,
        key: &KeyId,
        hour: Timestamp,
        networks: u64,
        action: SharingAction,
    ) -> Result<Option<SharingSuspicion>, StoreError> {
        // A read first, so repeated crossings by other nodes never take the write lock.
        let seen = sqlx::query("SELECT 1 FROM key_sharing WHERE key_id = $1 AND hour = $2")
            .bind(key.as_str())
            .bind(hour.as_millis())
            .fetch_optional(&self.pool)
            .await?;
        if seen.is_some() {
            return Ok(None);
        }
        let actor = Actor(SHARING_ACTOR.to_owned());
        let mut tx = self.begin_write().await?;
        let mut found = find(&mut tx, key).await?;
        let inserted = sqlx::query(
            "INSERT INTO key_sharing (key_id, hour, client_id, networks, action, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_id, hour) DO NOTHING",
        )
        .bind(key.as_str())
        .bind(hour.as_millis())
        .bind(found.client_id.as_str())
        .bind(i64::try_from(networks).unwrap_or(i64::MAX))
        .bind(action.as_str())
        .bind(tx.now.as_millis())
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let s = SharingSuspicion {
            key_id: found.id.clone(),
            client_id: found.client_id.clone(),
            hour,
            networks,
            action,
            created_at: tx.now,
        };
        tx.audit(
            &actor,
            "key.sharing_suspected",
            found.id.as_str(),
            json!({
                "key_id": s.key_id,
                "client_id": s.client_id,
                "hour": s.hour,
                "networks": s.networks,
                "action": s.action,
            }),
        )
        .await?;
        if action == SharingAction::Disable && found.state == KeyState::Active {
            change_state(&mut tx, &actor, &mut found, KeyState::Disabled).await?;
        }
        tx.commit().await?;
        Ok(Some(s))
    }

    /// Suspicions recorded at or after `since` (all when `None`), newest first, at most 1,000.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn suspected_keys(
        &self,
        since: Option<Timestamp>,
    ) -> Result<Vec<SharingSuspicion>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, hour, client_id, networks, action, created_at FROM key_sharing \
             WHERE created_at >= $1 ORDER BY created_at DESC, key_id DESC LIMIT 1000",
        )
        .bind(since.map_or(i64::MIN, Timestamp::as_millis))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }
}
