//! Delivery rows: made by fanning events out, claimed by one node at a time, settled as
//! delivered, retried later or dead, listed and replayed by operators.
//!
//! Claims are one conditional `UPDATE` (`claimed_until <= now`), atomic on both backends: on
//! PostgreSQL a node that waited on another's row lock re-reads the row and skips it. The
//! claim outlives the attempt's timeout, so while both nodes are up no row is sent twice; a
//! node that dies mid-attempt leaves the row to the next claim after `claimed_until`.

use std::time::Duration;

use keygate_core::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Actor, Store, StoreError};

/// Where a delivery is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up after the webhook's last attempt (or its webhook left the configuration);
    /// an operator may replay it.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        match s {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// One delivery as listed (the body is not: [`Store::delivery_body`] reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub webhook: String,
    pub state: DeliveryState,
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    pub next_at: Timestamp,
    /// The receiver's last status, when it answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed (a status, a timeout, a refused connection).
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

/// A claimed delivery with what sending it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub webhook: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The exact JSON to send.
    pub body: String,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: u16,
    },
    /// Try again at `at`.
    Retry {
        status: Option<u16>,
        error: String,
        at: Timestamp,
    },
    /// No more attempts.
    Dead {
        status: Option<u16>,
        error: String,
    },
}

/// Which deliveries to list, newest first.
#[derive(Clone, Debug)]
pub struct DeliveryFilter {
    pub limit: u32,
    /// Only deliveries older than this id (the previous page's last id).
    pub before: Option<i64>,
    pub state: Option<DeliveryState>,
    pub webhook: Option<String>,
    /// An exact event type (`key.revoked`).
    pub event_type: Option<String>,
    pub event_id: Option<String>,
}

impl Default for DeliveryFilter {
    fn default() -> Self {
        DeliveryFilter {
            limit: 50,
            before: None,
            state: None,
            webhook: None,
            event_type: None,
            event_id: None,
        }
    }
}

const COLUMNS: &str = "d.id, d.event_id, e.type, d.webhook, d.state, d.attempts, d.next_at, \
    d.last_status, d.last_error, d.created_at, d.delivered_at";

fn decode(row: &AnyRow) -> Result<Delivery, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("type")?,
        webhook: row.try_get("webhook")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery state `{state}`")))?,
        attempts: row.try_get("attempts")?,
        next_at: Timestamp::from_millis(row.try_get("next_at")?),
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        delivered_at: row
            .try_get::<Option<i64>, _>("delivered_at")?
            .map(Timestamp::from_millis),
    })
}

impl Store {
    /// Makes the deliveries of up to `limit` new events, in order: one per webhook `route`
    /// names for the event's type. Each event is fanned out by one node, once (the first
    /// statement marks it, so a concurrent node skips it); the number of events handled.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn fan_out_events(
        &self,
        limit: u32,
        route: &(dyn Fn(&str) -> Vec<String> + Sync),
    ) -> Result<usize, StoreError> {
        let now = self.now().as_millis();
        let mut tx = self.pool.begin().await?;
        let events: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE webhook_events SET fanned_out = 1 WHERE seq IN \
             (SELECT seq FROM webhook_events WHERE fanned_out = 0 ORDER BY seq LIMIT $1) \
             AND fanned_out = 0 RETURNING seq, id, type",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut events = events;
        events.sort_unstable_by_key(|e| e.0);
        for (_, id, event_type) in &events {
            for webhook in route(event_type) {
                sqlx::query(
                    "INSERT INTO webhook_deliveries (event_id, webhook, state, attempts, next_at, created_at) \
                     VALUES ($1, $2, 'pending', 0, $3, $3) ON CONFLICT DO NOTHING",
                )
                .bind(id.as_str())
                .bind(webhook)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(events.len())
    }

    /// Claims up to `limit` due deliveries for `node`, for `hold` (longer than an attempt
    /// may take), oldest due first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn claim_deliveries(
        &self,
        node: &str,
        limit: u32,
        hold: Duration,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let now = self.now();
        let claimed: Vec<(i64,)> = sqlx::query_as(
            "UPDATE webhook_deliveries SET claimed_by = $1, claimed_until = $2 WHERE id IN \
             (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_at <= $3 \
              AND claimed_until <= $3 ORDER BY next_at, id LIMIT $4) \
             AND state = 'pending' AND claimed_until <= $3 RETURNING id",
        )
        .bind(node)
        .bind(now.plus(hold).as_millis())
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::with_capacity(claimed.len());
        for (id,) in claimed {
            let row = sqlx::query(
                "SELECT d.id, d.event_id, e.type, d.webhook, d.attempts, e.body \
                 FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
                 WHERE d.id = $1",
            )
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            due.push(DueDelivery {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("type")?,
                webhook: row.try_get("webhook")?,
                attempts: row.try_get("attempts")?,
                body: row.try_get("body")?,
            });
        }
        due.sort_unstable_by_key(|d| d.id);
        Ok(due)
    }

    /// Records how `node`'s attempt at a delivery it claimed ended; `false` when the claim
    /// was no longer its own (it ran out and another node took the row), which changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn settle_delivery(
        &self,
        id: i64,
        node: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let now = self.now().as_millis();
        let (state, status, error, next_at, delivered_at) = match outcome {
            Outcome::Delivered { status } => (
                DeliveryState::Delivered,
                Some(*status),
                None,
                now,
                Some(now),
            ),
            Outcome::Retry { status, error, at } => (
                DeliveryState::Pending,
                *status,
                Some(error.as_str()),
                at.as_millis(),
                None,
            ),
            Outcome::Dead { status, error } => (
                DeliveryState::Dead,
                *status,
                Some(error.as_str()),
                now,
                None,
            ),
        };
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, last_status = $4, \
             last_error = $5, next_at = $6, delivered_at = $7, claimed_until = 0 \
             WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(node)
        .bind(state.as_str())
        .bind(status.map(i64::from))
        .bind(error)
        .bind(next_at)
        .bind(delivered_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    /// Lists deliveries, newest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
             WHERE ($1 IS NULL OR d.id < $1) AND ($2 IS NULL OR d.state = $2) \
             AND ($3 IS NULL OR d.webhook = $3) AND ($4 IS NULL OR e.type = $4) \
             AND ($5 IS NULL OR d.event_id = $5) ORDER BY d.id DESC LIMIT $6"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.before)
            .bind(filter.state.map(DeliveryState::as_str))
            .bind(filter.webhook.as_deref())
            .bind(filter.event_type.as_deref())
            .bind(filter.event_id.as_deref())
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// One delivery.
    ///
    /// # Errors
    /// [`StoreError::DeliveryNotFound`].
    pub async fn delivery(&self, id: i64) -> Result<Delivery, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
             WHERE d.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::DeliveryNotFound(id))?;
        decode(&row)
    }

    /// The JSON body a delivery sends (its event's).
    ///
    /// # Errors
    /// [`StoreError::DeliveryNotFound`].
    pub async fn delivery_body(&self, id: i64) -> Result<String, StoreError> {
        let body: Option<(String,)> = sqlx::query_as(
            "SELECT e.body FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id \
             WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        body.map(|(b,)| b).ok_or(StoreError::DeliveryNotFound(id))
    }

    /// Sends a dead or delivered delivery again: pending, due now, its attempts counted anew.
    /// Written with an audit entry (`webhook.replay`).
    ///
    /// # Errors
    /// [`StoreError::DeliveryNotFound`]; [`StoreError::Conflict`] while it is still pending.
    pub async fn replay_delivery(&self, actor: &Actor, id: i64) -> Result<Delivery, StoreError> {
        let before = self.delivery(id).await?;
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = $2, \
             claimed_until = 0, delivered_at = NULL WHERE id = $1 AND state <> 'pending'",
        )
        .bind(id)
        .bind(tx.now.as_millis())
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "delivery {id} is pending; it is replayed only once delivered or dead"
            )));
        }
        tx.audit(
            actor,
            "webhook.replay",
            &id.to_string(),
            serde_json::json!({
                "event_id": before.event_id,
                "event_type": before.event_type,
                "webhook": before.webhook,
                "was": before.state,
            }),
        )
        .await?;
        tx.commit().await?;
        self.delivery(id).await
    }

    /// Deletes settled deliveries made before `before`, and the events left with none pending;
    /// the number of events deleted.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn prune_webhook_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < $1")
            .bind(before.as_millis())
            .execute(&mut *tx)
            .await?;
        let events = sqlx::query(
            "DELETE FROM webhook_events WHERE fanned_out = 1 AND created_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
        )
        .bind(before.as_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(events)
    }
}
