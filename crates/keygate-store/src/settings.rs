//! Settings every node follows through the change feed. Today one: emergency mode, in which the
//! gateways answer every non-infra request with 503 until an operator switches it off.

use keygate_core::names::check_notice;
use keygate_core::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use crate::{Actor, Store, StoreError, WriteTx};

const EMERGENCY: &str = "emergency";

/// Emergency mode as stored: whether it is on, the message callers read, and who last switched
/// it and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emergency {
    pub on: bool,
    /// Shown to callers in the refusal's detail; the profile's default sentence when absent.
    pub message: Option<String>,
    /// When it was last switched (absent when never).
    pub changed_at: Option<Timestamp>,
    /// Who last switched it (`cli:…`, `admin:…`).
    pub changed_by: Option<String>,
}

/// The stored value: only what is not already a column.
#[derive(Serialize, Deserialize)]
struct Value {
    on: bool,
    message: Option<String>,
}

/// Reads emergency mode through any executor (a pool or an open transaction).
pub(crate) async fn read_emergency<'e, E>(exec: E) -> Result<Emergency, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT value, updated_at, updated_by FROM settings WHERE name = $1")
        .bind(EMERGENCY)
        .fetch_optional(exec)
        .await?;
    let Some(row) = row else {
        return Ok(Emergency::default());
    };
    let text: String = row.try_get("value")?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("setting {EMERGENCY}: {e}")))?;
    Ok(Emergency {
        on: value.on,
        message: value.message,
        changed_at: Some(Timestamp::from_millis(row.try_get("updated_at")?)),
        changed_by: Some(row.try_get("updated_by")?),
    })
}

async fn write(tx: &mut WriteTx, actor: &Actor, value: &Value) -> Result<(), StoreError> {
    let text = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO settings (name, value, updated_at, updated_by, version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, \
         updated_by = excluded.updated_by, version = excluded.version",
    )
    .bind(EMERGENCY)
    .bind(text)
    .bind(tx.now.as_millis())
    .bind(actor.0.as_str())
    .bind(tx.version)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

impl Store {
    /// Emergency mode as it stands.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn emergency(&self) -> Result<Emergency, StoreError> {
        read_emergency(&self.pool).await
    }

    /// Switches emergency mode on (with an optional message for callers) or off. Every node
    /// follows within its feed interval; the switch is audited.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a message that is empty, too long or not printable.
    pub async fn set_emergency(
        &self,
        actor: &Actor,
        on: bool,
        message: Option<&str>,
    ) -> Result<Emergency, StoreError> {
        if let Some(m) = message {
            check_notice(m)?;
        }
        let value = Value {
            on,
            message: message.filter(|_| on).map(str::to_owned),
        };
        let mut tx = self.begin_write().await?;
        write(&mut tx, actor, &value).await?;
        let action = if on { "on" } else { "off" };
        tx.change("setting", EMERGENCY, action).await?;
        tx.audit(
            actor,
            &format!("emergency.{action}"),
            EMERGENCY,
            json!({ "message": value.message }),
        )
        .await?;
        let stored = Emergency {
            on,
            message: value.message,
            changed_at: Some(tx.now),
            changed_by: Some(actor.0.clone()),
        };
        tx.commit().await?;
        Ok(stored)
    }
}
