//! The customer portal's people, sign-in links and sessions.
//!
//! Like keys, links and session tokens are stored as digests the caller computes: the store never
//! sees the plaintext. A session is only good while its user and client are enabled, which every
//! lookup checks, so disabling either ends every session at once on every node.

use std::time::Duration;

use keygate_core::model::PortalUserId;
use keygate_core::{ClientId, Timestamp};
use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{clients, Actor, Store, StoreError};

/// Longest e-mail address kept (RFC 5321's path limit).
pub(crate) const MAX_EMAIL: usize = 254;

/// A person who signs in to the portal for a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortalUser {
    pub id: PortalUserId,
    pub client_id: ClientId,
    /// Lowercased.
    pub email: String,
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// A signed-in session as the portal needs it on each request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalSession {
    pub user: PortalUser,
    pub expires_at: Timestamp,
}

/// Why a sign-in link was not accepted. The portal shows one page for all of them; the variants
/// are for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("no such sign-in link")]
    Unknown,
    #[error("the sign-in link was used already")]
    Used,
    #[error("the sign-in link has expired")]
    Expired,
    #[error("the portal user or the client is disabled")]
    Disabled,
}

/// An e-mail address as stored: trimmed, lowercased, one `@`, no whitespace or control
/// characters (so it can never carry a header into a mail).
///
/// # Errors
/// [`StoreError::InvalidEmail`].
pub fn normalize_email(raw: &str) -> Result<String, StoreError> {
    let email = raw.trim().to_ascii_lowercase();
    let bad = |why: &str| StoreError::InvalidEmail(why.to_owned());
    if email.is_empty() || email.len() > MAX_EMAIL {
        return Err(bad("an address has 3 to 254 characters"));
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
    {
        return Err(bad("spaces, control characters and <>,;\" are not allowed"));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(email)
        }
        _ => Err(bad("an address is local@domain")),
    }
}

macro_rules! user_columns {
    () => {
        "u.id, u.client_id, u.email, u.disabled, u.created_at"
    };
}

fn user(row: &AnyRow) -> Result<PortalUser, StoreError> {
    let id: String = row.try_get("id")?;
    let client: String = row.try_get("client_id")?;
    Ok(PortalUser {
        id: PortalUserId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        client_id: ClientId::parse(&client).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        email: row.try_get("email")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
    })
}

fn add(at: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(
        at.as_millis()
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

impl Store {
    /// The portal user with this address, creating one for `client` when there is none. An
    /// address belongs to one client: asking for it under another is refused.
    ///
    /// # Errors
    /// [`StoreError::ClientNotFound`], [`StoreError::InvalidEmail`],
    /// [`StoreError::PortalUserTaken`].
    pub async fn ensure_portal_user(
        &self,
        actor: &Actor,
        client: &str,
        email: &str,
    ) -> Result<PortalUser, StoreError> {
        let email = normalize_email(email)?;
        let mut tx = self.begin_write().await?;
        let owner = clients::find(&mut tx, client)
            .await?
            .ok_or_else(|| StoreError::ClientNotFound(client.to_owned()))?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_users u WHERE u.email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
        if let Some(row) = row {
            let existing = user(&row)?;
            if existing.client_id != owner.id {
                return Err(StoreError::PortalUserTaken(email));
            }
            return Ok(existing);
        }
        let u = PortalUser {
            id: PortalUserId::generate(),
            client_id: owner.id.clone(),
            email,
            disabled: false,
            created_at: tx.now,
        };
        sqlx::query(
            "INSERT INTO portal_users (id, client_id, email, disabled, created_at) \
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(u.id.as_str())
        .bind(u.client_id.as_str())
        .bind(u.email.as_str())
        .bind(u.created_at.as_millis())
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            actor,
            "portal_user.create",
            u.id.as_str(),
            json!({ "client": owner.name, "email": u.email }),
        )
        .await?;
        tx.commit().await?;
        Ok(u)
    }

    /// The enabled user with this address whose client is active, if any.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn active_portal_user(&self, email: &str) -> Result<Option<PortalUser>, StoreError> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_users u JOIN clients c ON c.id = u.client_id \
             WHERE u.email = $1 AND u.disabled = 0 AND c.active <> 0"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    /// A client's portal users, by address.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn portal_users(&self, client: &ClientId) -> Result<Vec<PortalUser>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_users u WHERE u.client_id = $1 ORDER BY u.email"
        ))
        .bind(client.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user).collect()
    }

    /// Disables or enables a portal user; disabling revokes every session of the user.
    ///
    /// # Errors
    /// [`StoreError::PortalUserNotFound`].
    pub async fn set_portal_user_disabled(
        &self,
        actor: &Actor,
        email: &str,
        disabled: bool,
    ) -> Result<PortalUser, StoreError> {
        let email = normalize_email(email)?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_users u WHERE u.email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
        let mut u = match row {
            Some(row) => user(&row)?,
            None => return Err(StoreError::PortalUserNotFound(email)),
        };
        u.disabled = disabled;
        sqlx::query("UPDATE portal_users SET disabled = $2 WHERE id = $1")
            .bind(u.id.as_str())
            .bind(i64::from(disabled))
            .execute(&mut *tx.tx)
            .await?;
        if disabled {
            sqlx::query(
                "UPDATE portal_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(u.id.as_str())
            .bind(tx.now.as_millis())
            .execute(&mut *tx.tx)
            .await?;
        }
        let action = if disabled {
            "portal_user.disable"
        } else {
            "portal_user.enable"
        };
        tx.audit(actor, action, u.id.as_str(), json!({ "email": u.email }))
            .await?;
        tx.commit().await?;
        Ok(u)
    }

    /// Records a sign-in link (by its digest) for `user`, good for `ttl`; returns its expiry.
    /// Links past their expiry are swept on the way.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn create_sign_in_link(
        &self,
        user: &PortalUserId,
        digest: &[u8],
        ttl: Duration,
    ) -> Result<Timestamp, StoreError> {
        let now = self.now();
        let expires_at = add(now, ttl);
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM portal_links WHERE expires_at < $1")
            .bind(now.as_millis() - 86_400_000)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO portal_links (digest, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(digest.to_vec())
        .bind(user.as_str())
        .bind(now.as_millis())
        .bind(expires_at.as_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(expires_at)
    }

    /// The user a sign-in link would sign in, without spending it: the link unused and
    /// unexpired, its user and client enabled. The confirmation page names the account, so a
    /// link someone else sent cannot sign a visitor in to that person's account unnoticed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn sign_in_link_user(
        &self,
        link_digest: &[u8],
    ) -> Result<Option<PortalUser>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_links l JOIN portal_users u ON u.id = l.user_id \
             JOIN clients c ON c.id = u.client_id \
             WHERE l.digest = $1 AND l.used_at IS NULL AND l.expires_at > $2 \
             AND u.disabled = 0 AND c.active <> 0"
        ))
        .bind(link_digest.to_vec())
        .bind(self.now().as_millis())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user).transpose()
    }

    /// Spends a sign-in link and opens a session (by the digest of its token) for `lifetime`,
    /// in one transaction: a link opens one session at most, however many nodes race for it.
    ///
    /// # Errors
    /// [`StoreError::SignInRefused`] with the reason, or [`StoreError::Unavailable`].
    pub async fn redeem_sign_in_link(
        &self,
        link_digest: &[u8],
        session_digest: &[u8],
        lifetime: Duration,
    ) -> Result<PortalSession, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = tx.now;
        let row =
            sqlx::query("SELECT user_id, expires_at, used_at FROM portal_links WHERE digest = $1")
                .bind(link_digest.to_vec())
                .fetch_optional(&mut *tx.tx)
                .await?;
        let Some(row) = row else {
            return Err(StoreError::SignInRefused(LinkRefusal::Unknown));
        };
        let user_id: String = row.try_get("user_id")?;
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            return Err(StoreError::SignInRefused(LinkRefusal::Used));
        }
        if row.try_get::<i64, _>("expires_at")? <= now.as_millis() {
            return Err(StoreError::SignInRefused(LinkRefusal::Expired));
        }
        // Guarded by `used_at IS NULL`: of two racing transactions only one updates the row.
        let spent = sqlx::query(
            "UPDATE portal_links SET used_at = $2 WHERE digest = $1 AND used_at IS NULL",
        )
        .bind(link_digest.to_vec())
        .bind(now.as_millis())
        .execute(&mut *tx.tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Err(StoreError::SignInRefused(LinkRefusal::Used));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM portal_users u JOIN clients c ON c.id = u.client_id \
             WHERE u.id = $1 AND u.disabled = 0 AND c.active <> 0"
        ))
        .bind(user_id.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
        let Some(row) = row else {
            // The link is spent all the same (committed below).
            tx.commit().await?;
            return Err(StoreError::SignInRefused(LinkRefusal::Disabled));
        };
        let u = user(&row)?;
        let expires_at = add(now, lifetime);
        sqlx::query(
            "INSERT INTO portal_sessions (digest, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(session_digest.to_vec())
        .bind(u.id.as_str())
        .bind(now.as_millis())
        .bind(expires_at.as_millis())
        .execute(&mut *tx.tx)
        .await?;
        tx.audit(
            &Actor(format!("portal:{}", u.email)),
            "portal.sign_in",
            u.id.as_str(),
            json!({ "client_id": u.client_id }),
        )
        .await?;
        tx.commit().await?;
        Ok(PortalSession {
            user: u,
            expires_at,
        })
    }

    /// The live session with this token digest: not expired, not revoked, its user and client
    /// enabled.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn portal_session(&self, digest: &[u8]) -> Result<Option<PortalSession>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", s.expires_at AS session_expires FROM portal_sessions s \
             JOIN portal_users u ON u.id = s.user_id JOIN clients c ON c.id = u.client_id \
             WHERE s.digest = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
             AND u.disabled = 0 AND c.active <> 0"
        ))
        .bind(digest.to_vec())
        .bind(self.now().as_millis())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(PortalSession {
                user: user(&row)?,
                expires_at: Timestamp::from_millis(row.try_get("session_expires")?),
            })
        })
        .transpose()
    }

    /// Ends a session (sign-out). Unknown digests are ignored. A write like any other (it
    /// moves the change feed's version), so every node's portal drops what it kept of the
    /// session.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn revoke_portal_session(&self, digest: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE portal_sessions SET revoked_at = $2 WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(digest.to_vec())
        .bind(tx.now.as_millis())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn addresses_are_normalized_and_header_safe() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@",
            "a@b@c",
            "ann@example.com\r\nBcc: evil@x.io",
            "ann@example.com\nBcc:x@y",
            "Ann <ann@example.com>",
            "a,b@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(normalize_email(&format!("{}@x.io", "a".repeat(260))).is_err());
    }
}
