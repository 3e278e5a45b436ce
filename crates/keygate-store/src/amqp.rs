//! Messaging feed credentials: which RabbitMQ vhost and user belong to which client.
//!
//! keygate-amqp makes the broker match these rows; this module only keeps them. Each write is
//! one transaction with its change-feed entry (`amqp_feed`) and audit row, like every other
//! write, so every node learns of a rotation or revocation from the feed. The plaintext
//! password is never here: `password_hash` is the broker's own salted form of it.

use keygate_core::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Actor, Store, StoreError};

/// Where a feed credential is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedState {
    /// The vhost and user exist (while the client is active, the user may connect).
    Active,
    /// The vhost and user were deleted; the row keeps the slug reserved for its client.
    Revoked,
}

impl FeedState {
    fn as_str(self) -> &'static str {
        match self {
            FeedState::Active => "active",
            FeedState::Revoked => "revoked",
        }
    }
}

/// One client's feed credential as stored. Never holds the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmqpFeed {
    pub client_id: String,
    pub slug: String,
    pub vhost: String,
    pub username: String,
    /// RabbitMQ's `rabbit_password_hashing_sha256` form of the password (base64 of a 4-byte
    /// salt and SHA-256(salt + password)).
    #[serde(skip_serializing)]
    pub password_hash: String,
    pub state: FeedState,
    pub created_at: Timestamp,
    pub rotated_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl std::fmt::Debug for AmqpFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpFeed")
            .field("client_id", &self.client_id)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A feed with what the broker side needs to know about its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedOfClient {
    pub feed: AmqpFeed,
    pub client_name: String,
    pub client_active: bool,
}

const COLUMNS: &str = "f.client_id, f.slug, f.vhost, f.username, f.password_hash, f.state, \
    f.created_at, f.rotated_at, f.revoked_at, c.name, c.active";

fn decode(row: &AnyRow) -> Result<FeedOfClient, StoreError> {
    let state: String = row.try_get("state")?;
    let state = match state.as_str() {
        "active" => FeedState::Active,
        "revoked" => FeedState::Revoked,
        other => return Err(StoreError::Corrupt(format!("amqp feed state `{other}`"))),
    };
    let active: i64 = row.try_get("active")?;
    Ok(FeedOfClient {
        feed: AmqpFeed {
            client_id: row.try_get("client_id")?,
            slug: row.try_get("slug")?,
            vhost: row.try_get("vhost")?,
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
            state,
            created_at: Timestamp::from_millis(row.try_get("created_at")?),
            rotated_at: row
                .try_get::<Option<i64>, _>("rotated_at")?
                .map(Timestamp::from_millis),
            revoked_at: row
                .try_get::<Option<i64>, _>("revoked_at")?
                .map(Timestamp::from_millis),
        },
        client_name: row.try_get("name")?,
        client_active: active != 0,
    })
}

impl Store {
    /// The feed credential of a client (by client id), if it ever had one.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn amqp_feed(&self, client_id: &str) -> Result<Option<FeedOfClient>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM amqp_feeds f JOIN clients c ON c.id = f.client_id \
             WHERE f.client_id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// The feed that holds a slug, vhost or user name, whichever client it belongs to.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn amqp_feed_by_name(
        &self,
        slug: &str,
        vhost: &str,
        username: &str,
    ) -> Result<Option<FeedOfClient>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM amqp_feeds f JOIN clients c ON c.id = f.client_id \
             WHERE f.slug = $1 OR f.vhost = $2 OR f.username = $3"
        );
        let row = sqlx::query(&sql)
            .bind(slug)
            .bind(vhost)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every feed credential, revoked ones included, ordered by slug.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn amqp_feeds(&self) -> Result<Vec<FeedOfClient>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM amqp_feeds f JOIN clients c ON c.id = f.client_id \
             ORDER BY f.slug"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }

    /// Writes a client's feed row (insert or replace), with its change-feed entry and its audit
    /// row (`amqp.<action>`). `detail` must never hold a secret.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when another client holds the slug, vhost or user name;
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn put_amqp_feed(
        &self,
        actor: &Actor,
        feed: &AmqpFeed,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM amqp_feeds WHERE client_id = $1")
            .bind(feed.client_id.as_str())
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query(
            "INSERT INTO amqp_feeds (client_id, slug, vhost, username, password_hash, state, \
             created_at, rotated_at, revoked_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(feed.client_id.as_str())
        .bind(feed.slug.as_str())
        .bind(feed.vhost.as_str())
        .bind(feed.username.as_str())
        .bind(feed.password_hash.as_str())
        .bind(feed.state.as_str())
        .bind(feed.created_at.as_millis())
        .bind(feed.rotated_at.map(Timestamp::as_millis))
        .bind(feed.revoked_at.map(Timestamp::as_millis))
        .bind(tx.version)
        .execute(&mut *tx.tx)
        .await?;
        tx.change("amqp_feed", &feed.client_id, action).await?;
        tx.audit(actor, &format!("amqp.{action}"), &feed.client_id, detail)
            .await?;
        tx.commit().await
    }

    /// Records a broker step that changed no row (connections closed, drift repaired) in the
    /// audit log as `amqp.<action>`. `detail` must never hold a secret.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Full`].
    pub async fn audit_amqp(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.record_event(actor, &format!("amqp.{action}"), target, detail)
            .await
    }
}
