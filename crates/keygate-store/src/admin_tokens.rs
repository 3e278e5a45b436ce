//! Admin tokens: the credentials of the admin API. Like keys, only a digest and a hint are
//! stored; the plaintext is shown once. A token is revoked, never deleted, so the audit log's
//! actor names stay meaningful.

use keygate_core::model::AdminTokenId;
use keygate_core::names::check_client_name;
use keygate_core::{KeyDigest, KeyMaterial, Timestamp};
use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Actor, Store, StoreError};

/// An admin token as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub hint: String,
    pub read_only: bool,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

macro_rules! token_columns {
    () => {
        "id, name, hint, read_only, created_at, revoked_at"
    };
}

fn token(row: &AnyRow) -> Result<AdminToken, StoreError> {
    Ok(AdminToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hint: row.try_get("hint")?,
        read_only: row.try_get::<i64, _>("read_only")? != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(Timestamp::from_millis),
    })
}

impl Store {
    /// Creates an admin token named `name` (unique among all tokens ever created).
    ///
    /// # Errors
    /// [`StoreError::DuplicateAdminToken`], [`StoreError::Invalid`] for a bad name.
    pub async fn create_admin_token(
        &self,
        actor: &Actor,
        name: &str,
        read_only: bool,
        material: KeyMaterial,
    ) -> Result<AdminToken, StoreError> {
        check_client_name(name)?;
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT id FROM admin_tokens WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::DuplicateAdminToken(name.to_owned()));
        }
        let t = AdminToken {
            id: AdminTokenId::generate().to_string(),
            name: name.to_owned(),
            hint: material.hint,
            read_only,
            created_at: tx.now,
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, digest, hint, read_only, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.id.as_str())
        .bind(t.name.as_str())
        .bind(material.digest.as_bytes().to_vec())
        .bind(t.hint.as_str())
        .bind(i64::from(read_only))
        .bind(t.created_at.as_millis())
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            actor,
            "admin_token.create",
            &t.id,
            json!({ "name": t.name, "read_only": read_only, "hint": t.hint }),
        )
        .await?;
        tx.commit().await?;
        Ok(t)
    }

    /// The live token with this digest.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn admin_token_by_digest(
        &self,
        digest: &KeyDigest,
    ) -> Result<Option<AdminToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM admin_tokens WHERE digest = $1 AND revoked_at IS NULL"
        ))
        .bind(digest.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token).transpose()
    }

    /// Every token, live and revoked, by name.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM admin_tokens ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token).collect()
    }

    /// Revokes a token by name.
    ///
    /// # Errors
    /// [`StoreError::AdminTokenNotFound`].
    pub async fn revoke_admin_token(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<AdminToken, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM admin_tokens WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let mut t = match row {
            Some(row) => token(&row)?,
            None => return Err(StoreError::AdminTokenNotFound(name.to_owned())),
        };
        if t.revoked_at.is_some() {
            return Ok(t);
        }
        t.revoked_at = Some(tx.now);
        sqlx::query("UPDATE admin_tokens SET revoked_at = $2 WHERE id = $1")
            .bind(t.id.as_str())
            .bind(tx.now.as_millis())
            .execute(&mut *tx.tx)
            .await?;
        tx.audit(
            actor,
            "admin_token.revoke",
            &t.id,
            json!({ "name": t.name }),
        )
        .await?;
        tx.commit().await?;
        Ok(t)
    }
}
