//! The webhook outbox: events written in the transaction of the change that causes them, and
//! one delivery row per (event, webhook) that a node claims, sends and settles.
//!
//! Events come from one place: [`WriteTx::audit`] asks [`EventType::for_audit`] whether the
//! audited action is announced, so no write path can forget its event and a rolled-back write
//! announces nothing. Events no write causes (a key about to expire, a quota crossed) are
//! enqueued with [`Store::enqueue_event`], deduplicated by a key so that several nodes noticing
//! the same thing make one event. Which webhooks get an event is configuration, known to the
//! serving node: it fans new events out into deliveries ([`Store::fan_out_events`]).
//!
//! A body holds ids, names, hints and labels: never a plaintext key, a token or a secret.

mod deliveries;

use keygate_core::Timestamp;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use crate::{Store, StoreError, WriteTx};

pub use deliveries::{Delivery, DeliveryFilter, DeliveryState, DueDelivery, Outcome};

/// What happened, as receivers see it in the body's `type` and the `Keygate-Event` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    KeyCreated,
    /// A key was rotated or replaced (one event per replaced key).
    KeyRotated,
    KeyRevoked,
    /// An active key expires within the configured horizon (once per key and expiry).
    KeyExpiring,
    ClientDisabled,
    /// A client was deleted: its keys were revoked with it, without a `key.revoked` each.
    ClientDeleted,
    /// A client used 80% of a quota window.
    Quota80,
    /// A client used all of a quota window.
    Quota100,
    /// Audit action `key.sharing_suspected`.
    KeySharingSuspected,
    /// Audit action `key.leak_reported`.
    LeakReported,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::KeyCreated,
        EventType::KeyRotated,
        EventType::KeyRevoked,
        EventType::KeyExpiring,
        EventType::ClientDisabled,
        EventType::ClientDeleted,
        EventType::Quota80,
        EventType::Quota100,
        EventType::KeySharingSuspected,
        EventType::LeakReported,
    ];

    /// The stable name (`key.revoked`).
    pub fn name(self) -> &'static str {
        match self {
            EventType::KeyCreated => "key.created",
            EventType::KeyRotated => "key.rotated",
            EventType::KeyRevoked => "key.revoked",
            EventType::KeyExpiring => "key.expiring",
            EventType::ClientDisabled => "client.disabled",
            EventType::ClientDeleted => "client.deleted",
            EventType::Quota80 => "quota.80",
            EventType::Quota100 => "quota.100",
            EventType::KeySharingSuspected => "key.sharing_suspected",
            EventType::LeakReported => "leak.reported",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The event an audited action announces, if any: the one mapping from writes to events.
    pub fn for_audit(action: &str) -> Option<EventType> {
        Some(match action {
            "key.create" => EventType::KeyCreated,
            "key.rotate" | "key.replace" => EventType::KeyRotated,
            "key.revoke" => EventType::KeyRevoked,
            "client.disable" => EventType::ClientDisabled,
            "client.delete" => EventType::ClientDeleted,
            "key.sharing_suspected" => EventType::KeySharingSuspected,
            "key.leak_reported" => EventType::LeakReported,
            _ => return None,
        })
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A fresh event id: `evt_` and 24 hex digits (96 random bits), for receivers' deduplication.
fn event_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS CSPRNG must be available");
    format!("evt_{}", keygate_core::digest::hex(&bytes))
}

/// Inserts an event on `conn`; `None` when `dedupe` names an event that already exists.
async fn insert(
    conn: &mut sqlx::AnyConnection,
    now: Timestamp,
    event: EventType,
    data: Value,
    dedupe: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let id = event_id();
    let body = json!({
        "id": id,
        "type": event.name(),
        "created": now,
        "data": data,
    });
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (id, type, created_at, body, dedupe) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(id.as_str())
    .bind(event.name())
    .bind(now.as_millis())
    .bind(body.to_string())
    .bind(dedupe)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((inserted > 0).then_some(id))
}

/// `{"id", "name"}` of a client, or its id alone when the row is gone.
async fn client_data(tx: &mut WriteTx, client_id: &str) -> Result<Value, StoreError> {
    let name: Option<(String,)> = sqlx::query_as("SELECT name FROM clients WHERE id = $1")
        .bind(client_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
    Ok(match name {
        Some((name,)) => json!({ "id": client_id, "name": name }),
        None => json!({ "id": client_id }),
    })
}

/// `{"client": …, "key": …}` for a key, as stored now (its hint, never its digest).
async fn key_data(tx: &mut WriteTx, key_id: &str) -> Result<Value, StoreError> {
    let row = sqlx::query(
        "SELECT k.client_id, k.hint, k.label, k.state, k.expires_at, c.name \
         FROM keys k JOIN clients c ON c.id = k.client_id WHERE k.id = $1",
    )
    .bind(key_id)
    .fetch_optional(&mut *tx.tx)
    .await?;
    let Some(row) = row else {
        return Ok(json!({ "key": { "id": key_id } }));
    };
    let expires_at: Option<i64> = row.try_get("expires_at")?;
    Ok(json!({
        "client": { "id": row.try_get::<String, _>("client_id")?, "name": row.try_get::<String, _>("name")? },
        "key": {
            "id": key_id,
            "hint": row.try_get::<String, _>("hint")?,
            "label": row.try_get::<String, _>("label")?,
            "state": row.try_get::<String, _>("state")?,
            "expires_at": expires_at.map(Timestamp::from_millis),
        },
    }))
}

/// Copies the named fields of an audit detail (never the whole detail: it may grow fields no
/// receiver should see) into `data`.
fn copy_fields(data: &mut Value, detail: &Value, fields: &[&str]) {
    for &field in fields {
        if let Some(v) = detail.get(field) {
            data[field] = v.clone();
        }
    }
}

/// Enqueues the event an audited action announces, inside the write that made it.
pub(crate) async fn announce(
    tx: &mut WriteTx,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    let Some(event) = EventType::for_audit(action) else {
        return Ok(());
    };
    let mut bodies = Vec::new();
    match action {
        // A replacement revokes every key of the client for one new key (target: the client).
        "key.replace" => {
            let revoked = detail.get("revoked").and_then(Value::as_array);
            for old in revoked.into_iter().flatten().filter_map(Value::as_str) {
                let mut data = key_data(tx, old).await?;
                copy_fields(&mut data, detail, &["new_key", "new_hint"]);
                bodies.push(data);
            }
        }
        "client.disable" | "client.delete" => {
            let mut data = json!({ "client": client_data(tx, target).await? });
            copy_fields(&mut data, detail, &["keys_revoked"]);
            bodies.push(data);
        }
        _ => {
            let mut data = key_data(tx, target).await?;
            copy_fields(
                &mut data,
                detail,
                &["new_key", "new_hint", "old_valid_until"],
            );
            // Reports made by other features: their audit detail is written for operators
            // and holds no secret (the audit log's rule), so receivers get it as it is.
            if matches!(
                event,
                EventType::KeySharingSuspected | EventType::LeakReported
            ) {
                data["detail"] = detail.clone();
            }
            bodies.push(data);
        }
    }
    let now = tx.now;
    for data in bodies {
        insert(&mut tx.tx, now, event, data, None).await?;
    }
    Ok(())
}

impl Store {
    /// Enqueues an event that no audited write announces (a quota crossed, a report made by a
    /// background check). With `dedupe`, an event with the same key is made once, however many
    /// nodes notice it; the event's id, or `None` when it already existed. `data` must never
    /// hold a secret. A write that changes stored rows announces its event through its audit
    /// action instead ([`EventType::for_audit`]), in its own transaction.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn enqueue_event(
        &self,
        event: EventType,
        data: Value,
        dedupe: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, self.now(), event, data, dedupe).await
    }

    /// Enqueues `key.expiring` for every active key of an active client that expires within
    /// `ahead`, once per key and expiry (a new expiry is announced again); the number made.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn enqueue_expiring(&self, ahead: std::time::Duration) -> Result<u64, StoreError> {
        let now = self.now();
        let rows = sqlx::query(
            "SELECT k.id, k.client_id, k.hint, k.label, k.expires_at, c.name FROM keys k \
             JOIN clients c ON c.id = k.client_id \
             WHERE k.state = 'active' AND c.active = 1 AND c.deleted_at IS NULL \
             AND k.expires_at > $1 AND k.expires_at <= $2 ORDER BY k.expires_at",
        )
        .bind(now.as_millis())
        .bind(now.plus(ahead).as_millis())
        .fetch_all(&self.pool)
        .await?;
        let mut made = 0;
        for row in rows {
            let id: String = row.try_get("id")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            let data = json!({
                "client": { "id": row.try_get::<String, _>("client_id")?, "name": row.try_get::<String, _>("name")? },
                "key": {
                    "id": id,
                    "hint": row.try_get::<String, _>("hint")?,
                    "label": row.try_get::<String, _>("label")?,
                    "expires_at": Timestamp::from_millis(expires_at),
                },
            });
            let dedupe = format!("key.expiring:{id}:{expires_at}");
            if self
                .enqueue_event(EventType::KeyExpiring, data, Some(&dedupe))
                .await?
                .is_some()
            {
                made += 1;
            }
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_audit_actions_map() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.name()), Some(e));
        }
        assert_eq!(EventType::parse("key.nope"), None);
        assert_eq!(
            EventType::for_audit("key.revoke"),
            Some(EventType::KeyRevoked)
        );
        assert_eq!(
            EventType::for_audit("key.leak_reported"),
            Some(EventType::LeakReported)
        );
        assert_eq!(EventType::for_audit("key.expire"), None);
        assert_eq!(EventType::for_audit("client.enable"), None);
        let id = event_id();
        assert!(id.starts_with("evt_") && id.len() == 28, "{id}");
    }
}
