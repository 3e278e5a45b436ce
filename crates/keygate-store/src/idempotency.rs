//! Idempotency records: a retried create or rotate returns the first answer and issues nothing.
//!
//! The store keeps only digests and a sealed answer. The caller derives the record's id and the
//! sealing key from the idempotency key it was sent (which is never stored), so the plaintext key
//! inside a stored answer is readable only by someone presenting the same idempotency key.
//! The check and the write run inside the change's own transaction, which holds the write lock:
//! two concurrent retries cannot both issue a key.

use std::time::Duration;

use sqlx::Row;

use crate::{StoreError, WriteTx};

/// What a request's idempotency key stands for here.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim {
    /// Digest naming the record (derived from the caller and its idempotency key).
    pub id: Vec<u8>,
    /// Digest of the request, so a different request under the same key is refused.
    pub fingerprint: Vec<u8>,
    /// How long the first answer is kept.
    pub ttl: Duration,
}

/// An answer as kept: its status and the sealed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedAnswer {
    pub status: u16,
    pub sealed: Vec<u8>,
}

/// The first answer to a claim, found again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The fingerprint of the request that produced it.
    pub fingerprint: Vec<u8>,
    pub answer: SealedAnswer,
}

/// Either the change was made now, or an earlier one under the same claim is replayed.
#[derive(Clone, Debug)]
pub enum Once<T> {
    Done(T),
    Replayed(Replay),
}

impl crate::Store {
    /// The unexpired record of `claim`, read outside any write: an operation with slow side
    /// effects elsewhere (a broker) looks first, so a retry is answered before it acts, and
    /// checks again when it writes ([`WriteTx::replay`]).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], [`StoreError::Corrupt`].
    pub async fn idempotency_replay(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<Replay>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, status, sealed FROM idempotency WHERE id = $1 AND expires_at > $2",
        )
        .bind(claim.id.clone())
        .bind(self.now().as_millis())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Replay, StoreError> {
    let status: i64 = row.try_get("status")?;
    Ok(Replay {
        fingerprint: row.try_get("fingerprint")?,
        answer: SealedAnswer {
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("idempotency status {status}")))?,
            sealed: row.try_get("sealed")?,
        },
    })
}

impl WriteTx {
    /// The unexpired record of `claim`, dropping expired records on the way (bounded by the
    /// expiry index; it keeps the table from growing).
    pub(crate) async fn replay(
        &mut self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<Replay>, StoreError> {
        sqlx::query("DELETE FROM idempotency WHERE expires_at <= $1")
            .bind(self.now.as_millis())
            .execute(&mut *self.tx)
            .await?;
        let row = sqlx::query("SELECT fingerprint, status, sealed FROM idempotency WHERE id = $1")
            .bind(claim.id.clone())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Keeps the first answer of `claim`.
    pub(crate) async fn remember(
        &mut self,
        claim: &IdempotencyClaim,
        answer: &SealedAnswer,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO idempotency (id, fingerprint, status, sealed, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(claim.id.clone())
        .bind(claim.fingerprint.clone())
        .bind(i64::from(answer.status))
        .bind(answer.sealed.clone())
        .bind(self.now.as_millis())
        .bind(self.now.plus(claim.ttl).as_millis())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
