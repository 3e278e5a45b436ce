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

use std::time::Duration;

use crate::{Actor, IdempotencyClaim, Once, SealedAnswer, Store, StoreError, WriteTx};

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

/// Who acts on the broker for change-feed events, as read after taking or renewing the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AmqpLease {
    /// Whether the caller holds it now.
    pub held: bool,
    /// The holder (possibly expired); `None` before any node took it.
    pub holder: Option<String>,
    pub expires_at: Timestamp,
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
        match self
            .put_amqp_feed_once(actor, feed, action, detail, None)
            .await?
        {
            Once::Done(()) => Ok(()),
            Once::Replayed(_) => Err(StoreError::Corrupt(
                "a feed write without a claim was replayed".to_owned(),
            )),
        }
    }

    /// [`Store::put_amqp_feed`] under an idempotency claim: in the same transaction, an earlier
    /// answer under the claim is replayed (and nothing written), or `answer` is kept as the
    /// first one. `answer` is sealed by the caller; the plaintext password is never here.
    ///
    /// # Errors
    /// As [`Store::put_amqp_feed`].
    pub async fn put_amqp_feed_once(
        &self,
        actor: &Actor,
        feed: &AmqpFeed,
        action: &str,
        detail: serde_json::Value,
        once: Option<(&IdempotencyClaim, &SealedAnswer)>,
    ) -> Result<Once<()>, StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some((claim, answer)) = once {
            if let Some(replay) = tx.replay(claim).await? {
                return Ok(Once::Replayed(replay));
            }
            tx.remember(claim, answer).await?;
        }
        write(&mut tx, feed).await?;
        tx.change("amqp_feed", &feed.client_id, action).await?;
        tx.audit(actor, &format!("amqp.{action}"), &feed.client_id, detail)
            .await?;
        tx.commit().await?;
        Ok(Once::Done(()))
    }

    /// Takes the broker lease for `holder` when it is free or expired, or renews it when
    /// `holder` has it, for `ttl`. One conditional `UPDATE`, atomic on both backends, and no
    /// feed version: renewals do not wake the other nodes' change-feed readers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn amqp_lease(&self, holder: &str, ttl: Duration) -> Result<AmqpLease, StoreError> {
        let now = self.now();
        sqlx::query(
            "UPDATE amqp_lease SET holder = $1, expires_at = $2 \
             WHERE id = 1 AND (holder = $1 OR expires_at <= $3)",
        )
        .bind(holder)
        .bind(now.plus(ttl).as_millis())
        .bind(now.as_millis())
        .execute(&self.pool)
        .await?;
        let (holder_now, expires_at): (String, i64) =
            sqlx::query_as("SELECT holder, expires_at FROM amqp_lease WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(AmqpLease {
            held: holder_now == holder && expires_at > now.as_millis(),
            holder: Some(holder_now).filter(|h| !h.is_empty()),
            expires_at: Timestamp::from_millis(expires_at),
        })
    }

    /// Gives the broker lease up (a node stopping), so another node takes it at its next try
    /// instead of after the lease runs out.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn release_amqp_lease(&self, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE amqp_lease SET expires_at = 0 WHERE id = 1 AND holder = $1")
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
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

/// Inserts or replaces a feed row inside an open write.
async fn write(tx: &mut WriteTx, feed: &AmqpFeed) -> Result<(), StoreError> {
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
    Ok(())
}

/// Marks a client's active feed revoked inside an open write (a client deletion); the feed as
/// it now is, or `None` when it had no active one.
pub(crate) async fn revoke_in(
    tx: &mut WriteTx,
    client_id: &str,
) -> Result<Option<AmqpFeed>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM amqp_feeds f JOIN clients c ON c.id = f.client_id \
         WHERE f.client_id = $1"
    );
    let row = sqlx::query(&sql)
        .bind(client_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
    let Some(mut feed) = row.as_ref().map(decode).transpose()?.map(|f| f.feed) else {
        return Ok(None);
    };
    if feed.state == FeedState::Revoked {
        return Ok(None);
    }
    feed.state = FeedState::Revoked;
    feed.revoked_at = Some(tx.now);
    // The deletion's own `client` change entry (same id, same version) announces it.
    write(tx, &feed).await?;
    Ok(Some(feed))
}
