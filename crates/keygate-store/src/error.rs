//! What can go wrong at the store boundary, each variant one sentence an operator can act on.

use keygate_core::{KeyId, Timestamp};

/// A failed store operation. "Not found" and "not allowed" are variants, not panics or strings,
/// so the CLI and the admin API can map each to an exit code or a status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database `{target}`: {reason}")]
    Open { target: String, reason: String },
    #[error("database `{target}` has schema version {found}, newer than the {supported} this keygate understands; upgrade keygate")]
    SchemaTooNew {
        target: String,
        found: i64,
        supported: i64,
    },
    #[error("database `{target}` has schema version {found}, older than the {expected} this keygate needs; run `keygate migrate`")]
    SchemaTooOld {
        target: String,
        found: i64,
        expected: i64,
    },
    #[error("database `{target}` is not a keygate database (it has tables of its own and no keygate schema)")]
    NotKeygate { target: String },
    #[error("migrating `{target}` failed: {reason}")]
    Migrate { target: String, reason: String },
    #[error("no client named or numbered `{0}`")]
    ClientNotFound(String),
    #[error("a client named `{0}` already exists")]
    DuplicateClient(String),
    #[error("an admin token named `{0}` already exists")]
    DuplicateAdminToken(String),
    #[error("no admin token named `{0}`")]
    AdminTokenNotFound(String),
    #[error("invalid e-mail address: {0}")]
    InvalidEmail(String),
    #[error("`{0}` is already a portal user of another client")]
    PortalUserTaken(String),
    #[error("no portal user `{0}`")]
    PortalUserNotFound(String),
    #[error("sign-in refused: {0}")]
    SignInRefused(crate::portal::LinkRefusal),
    #[error("invalid parent account: {0}")]
    InvalidParent(String),
    #[error("no webhook delivery {0}")]
    DeliveryNotFound(i64),
    #[error("no key `{0}`")]
    KeyNotFound(String),
    #[error("key {0} is revoked; a revoked key can never be used or changed again")]
    KeyRevoked(KeyId),
    #[error(
        "key {0} expired at {1}; give it a future expiry first (`key expire`) or create a new key"
    )]
    KeyExpired(KeyId, Timestamp),
    #[error(
        "expiry {0} is in the past; give a future instant, or revoke or disable the key instead"
    )]
    ExpiryInPast(Timestamp),
    #[error(transparent)]
    Invalid(#[from] keygate_core::NameError),
    /// A key restriction out of bounds (`keygate_core::key_restrictions`).
    #[error(transparent)]
    InvalidRestriction(#[from] keygate_core::RestrictionError),
    /// A key asked for a scope its client lacks: a key may only narrow its client.
    #[error("scope `{0}` is not one of the client's scopes; a key can only narrow its client's scopes, never widen them")]
    ScopeNotGranted(String),
    /// Another of the client's keys that is not revoked has this external id.
    #[error("external id `{0}` is already used by another key of this client")]
    DuplicateExternalId(String),
    #[error("no suspension `{0}`")]
    SuspensionNotFound(String),
    #[error("`until` {0} is in the past; give a future instant")]
    UntilInPast(Timestamp),
    #[error("{0} suspensions are already in force, the most there may be; resume some first")]
    TooManySuspensions(usize),
    #[error("invalid quota change: {0}")]
    InvalidQuota(String),
    #[error("the database refused the change: {0}")]
    Conflict(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database cannot grow: the disk, a quota, or SQLite's `max_page_count` is reached.
    /// Reads still work; writes fail until space is freed.
    #[error("the store is full ({0}); free disk space or raise the database's size limit")]
    Full(String),
    #[error("stored row is unreadable ({0}); the database was changed outside keygate")]
    Corrupt(String),
}

impl StoreError {
    /// Stable machine-readable code, shared by the CLI's JSON errors and the admin API.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "store_open_failed",
            StoreError::SchemaTooNew { .. } => "schema_too_new",
            StoreError::SchemaTooOld { .. } => "schema_too_old",
            StoreError::NotKeygate { .. } => "not_a_keygate_database",
            StoreError::Migrate { .. } => "migration_failed",
            StoreError::ClientNotFound(_) => "client_not_found",
            StoreError::DuplicateClient(_) => "duplicate_client",
            StoreError::DuplicateAdminToken(_) => "duplicate_admin_token",
            StoreError::AdminTokenNotFound(_) => "admin_token_not_found",
            StoreError::InvalidEmail(_) => "invalid_email",
            StoreError::PortalUserTaken(_) => "portal_user_taken",
            StoreError::PortalUserNotFound(_) => "portal_user_not_found",
            StoreError::SignInRefused(_) => "sign_in_refused",
            StoreError::InvalidParent(_) => "invalid_parent",
            StoreError::DeliveryNotFound(_) => "delivery_not_found",
            StoreError::KeyNotFound(_) => "key_not_found",
            StoreError::KeyRevoked(_) => "key_revoked",
            StoreError::KeyExpired(..) => "key_expired",
            StoreError::ExpiryInPast(_) => "expiry_in_past",
            StoreError::Invalid(_) | StoreError::InvalidRestriction(_) => "invalid_value",
            StoreError::ScopeNotGranted(_) => "scope_not_granted",
            StoreError::DuplicateExternalId(_) => "duplicate_external_id",
            StoreError::SuspensionNotFound(_) => "suspension_not_found",
            StoreError::UntilInPast(_) => "until_in_past",
            StoreError::TooManySuspensions(_) => "too_many_suspensions",
            StoreError::InvalidQuota(_) => "invalid_quota",
            StoreError::Conflict(_) => "conflict",
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Full(_) => "store_full",
            StoreError::Corrupt(_) => "store_corrupt",
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                StoreError::Conflict(db.message().to_owned())
            }
            sqlx::Error::Database(db) if is_full(db.code().as_deref()) => {
                StoreError::Full(db.message().to_owned())
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Unavailable(e),
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, in the low byte of extended codes) or PostgreSQL's
/// `disk_full` (53100).
fn is_full(code: Option<&str>) -> bool {
    match code {
        Some("53100") => true,
        Some(c) => c.parse::<i32>().is_ok_and(|n| n & 0xff == 13),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn full_codes() {
        assert!(super::is_full(Some("13")));
        assert!(super::is_full(Some("53100")));
        assert!(!super::is_full(Some("2067")));
        assert!(!super::is_full(None));
    }
}
