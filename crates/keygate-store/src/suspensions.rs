//! Scoped suspensions (`keygate suspend`, `POST /v1/suspensions`): stored, audited, and
//! followed by every node through the change feed like any other write. Lifting one
//! (`keygate resume`) is a write too; reaching `until` is not (each node compares with its
//! clock), so an expiry needs no process to be running at that instant.

use keygate_core::names::check_notice;
use keygate_core::suspension::{Suspension, Target};
use keygate_core::{ClientId, SuspensionId, Timestamp};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Actor, Store, StoreError};

/// Most suspensions active at once. Every node checks each active one against the requests
/// it could hold, so the set stays a handful in practice; the cap keeps a runaway script from
/// making that check long.
pub const MAX_ACTIVE: usize = 100;

/// A suspension to make.
#[derive(Clone, Debug)]
pub struct NewSuspension {
    pub target: Target,
    /// A client's name or id: only its requests are held.
    pub client: Option<String>,
    /// What callers read (1 to 500 printable characters).
    pub message: Option<String>,
    /// Lifted by the clock at this instant (must be in the future).
    pub until: Option<Timestamp>,
}

macro_rules! columns {
    () => {
        "id, kind, value, client_id, message, until, created_at, created_by, lifted_at, lifted_by"
    };
}

fn row(r: &AnyRow) -> Result<Suspension, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("suspension {what}: {e}"))
    };
    let id: String = r.try_get("id")?;
    let kind: String = r.try_get("kind")?;
    let value: String = r.try_get("value")?;
    let client_id: Option<String> = r.try_get("client_id")?;
    let ms = |col: &str| -> Result<Option<Timestamp>, StoreError> {
        Ok(r.try_get::<Option<i64>, _>(col)?
            .map(Timestamp::from_millis))
    };
    Ok(Suspension {
        id: SuspensionId::parse(&id).map_err(|e| corrupt("id", &e))?,
        target: Target::parse(&kind, &value).map_err(|e| corrupt(&id, &e))?,
        client_id: client_id
            .map(|c| ClientId::parse(&c))
            .transpose()
            .map_err(|e| corrupt(&id, &e))?,
        message: r.try_get("message")?,
        until: ms("until")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
        created_by: r.try_get("created_by")?,
        lifted_at: ms("lifted_at")?,
        lifted_by: r.try_get("lifted_by")?,
    })
}

/// The suspensions not lifted by an operator and not past `until` at `now`, oldest first:
/// what every node holds in memory.
pub(crate) async fn read_active<'e, E>(
    exec: E,
    now: Timestamp,
) -> Result<Vec<Suspension>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM suspensions WHERE lifted_at IS NULL AND (until IS NULL OR until > $1)",
        " ORDER BY created_at, id"
    ))
    .bind(now.as_millis())
    .fetch_all(exec)
    .await?;
    rows.iter().map(row).collect()
}

impl Store {
    /// Suspends what `new` names. Every node holds matching requests within its feed interval;
    /// the suspension is audited.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a bad message, [`StoreError::UntilInPast`] for an `until`
    /// not in the future, [`StoreError::ClientNotFound`], [`StoreError::TooManySuspensions`].
    pub async fn create_suspension(
        &self,
        actor: &Actor,
        new: NewSuspension,
    ) -> Result<Suspension, StoreError> {
        if let Some(m) = &new.message {
            check_notice(m)?;
        }
        let mut tx = self.begin_write().await?;
        if let Some(until) = new.until {
            if until <= tx.now {
                return Err(StoreError::UntilInPast(until));
            }
        }
        let client_id = match &new.client {
            None => None,
            Some(c) => {
                let found: Option<(String,)> = sqlx::query_as(
                    "SELECT id FROM clients WHERE (id = $1 OR name = $1) AND deleted_at IS NULL",
                )
                .bind(c)
                .fetch_optional(&mut *tx.tx)
                .await?;
                let (id,) = found.ok_or_else(|| StoreError::ClientNotFound(c.clone()))?;
                Some(ClientId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
        };
        let active = read_active(&mut *tx.tx, tx.now).await?.len();
        if active >= MAX_ACTIVE {
            return Err(StoreError::TooManySuspensions(MAX_ACTIVE));
        }
        let s = Suspension {
            id: SuspensionId::generate(),
            target: new.target,
            client_id,
            message: new.message,
            until: new.until,
            created_at: tx.now,
            created_by: actor.0.clone(),
            lifted_at: None,
            lifted_by: None,
        };
        sqlx::query(
            "INSERT INTO suspensions (id, kind, value, client_id, message, until, created_at, \
             created_by, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(s.id.as_str())
        .bind(s.target.kind())
        .bind(s.target.value())
        .bind(s.client_id.as_ref().map(ClientId::as_str))
        .bind(s.message.as_deref())
        .bind(s.until.map(Timestamp::as_millis))
        .bind(s.created_at.as_millis())
        .bind(actor.0.as_str())
        .bind(tx.version)
        .execute(&mut *tx.tx)
        .await?;
        tx.change("suspension", s.id.as_str(), "create").await?;
        tx.audit(
            actor,
            "suspension.create",
            s.id.as_str(),
            json!({
                "kind": s.target.kind(),
                "value": s.target.value(),
                "client_id": s.client_id,
                "message": s.message,
                "until": s.until,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(s)
    }

    /// Lifts a suspension: every node serves its requests again within its feed interval.
    /// Lifting one already lifted changes nothing and answers it as it is.
    ///
    /// # Errors
    /// [`StoreError::SuspensionNotFound`].
    pub async fn lift_suspension(&self, actor: &Actor, id: &str) -> Result<Suspension, StoreError> {
        let mut tx = self.begin_write().await?;
        let found = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM suspensions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let mut s = match found {
            Some(r) => row(&r)?,
            None => return Err(StoreError::SuspensionNotFound(id.to_owned())),
        };
        if s.lifted_at.is_some() {
            return Ok(s);
        }
        sqlx::query(
            "UPDATE suspensions SET lifted_at = $1, lifted_by = $2, version = $3 WHERE id = $4",
        )
        .bind(tx.now.as_millis())
        .bind(actor.0.as_str())
        .bind(tx.version)
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
        tx.change("suspension", id, "lift").await?;
        tx.audit(
            actor,
            "suspension.lift",
            id,
            json!({ "kind": s.target.kind(), "value": s.target.value() }),
        )
        .await?;
        s.lifted_at = Some(tx.now);
        s.lifted_by = Some(actor.0.clone());
        tx.commit().await?;
        Ok(s)
    }

    /// The suspensions in force now (`all`: every one ever made, newest first).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn suspensions(&self, all: bool) -> Result<Vec<Suspension>, StoreError> {
        if !all {
            return read_active(&self.pool, self.now()).await;
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM suspensions ORDER BY created_at DESC, id DESC LIMIT 1000"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    /// One suspension, active or not.
    ///
    /// # Errors
    /// [`StoreError::SuspensionNotFound`].
    pub async fn suspension(&self, id: &str) -> Result<Suspension, StoreError> {
        let found = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM suspensions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match found {
            Some(r) => row(&r),
            None => Err(StoreError::SuspensionNotFound(id.to_owned())),
        }
    }
}
