//! Embedded migrations, one set per backend, and the schema-version gate.
//!
//! SQLite databases are migrated when opened (one file, one operator, nothing to coordinate).
//! PostgreSQL serves several nodes, so `serve` refuses a schema that is not exactly the one it
//! was built for and `keygate migrate` applies changes explicitly.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::AnyPool;

use crate::{Backend, StoreError};

const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "admin tokens",
        include_str!("../migrations/sqlite/0002_admin_tokens.sql"),
    ),
    (
        3,
        "operations",
        include_str!("../migrations/sqlite/0003_operations.sql"),
    ),
    (
        4,
        "self-service",
        include_str!("../migrations/sqlite/0004_selfservice.sql"),
    ),
    (
        5,
        "last used",
        include_str!("../migrations/sqlite/0005_last_used.sql"),
    ),
    (
        6,
        "amqp feeds",
        include_str!("../migrations/sqlite/0006_amqp_feeds.sql"),
    ),
    (
        7,
        "portal",
        include_str!("../migrations/sqlite/0007_portal.sql"),
    ),
    (
        8,
        "client delete, amqp lease",
        include_str!("../migrations/sqlite/0008_client_delete_amqp_lease.sql"),
    ),
    (
        9,
        "suspensions",
        include_str!("../migrations/sqlite/0009_suspensions.sql"),
    ),
    (
        10,
        "webhooks",
        include_str!("../migrations/sqlite/0010_webhooks.sql"),
    ),
    (
        11,
        "key restrictions",
        include_str!("../migrations/sqlite/0011_key_restrictions.sql"),
    ),
    (
        12,
        "analytics",
        include_str!("../migrations/sqlite/0012_analytics.sql"),
    ),
    (
        13,
        "quota adjustments",
        include_str!("../migrations/sqlite/0013_quota_adjustments.sql"),
    ),
    (
        14,
        "key sharing",
        include_str!("../migrations/sqlite/0014_key_sharing.sql"),
    ),
    (
        15,
        "websocket egress",
        include_str!("../migrations/sqlite/0015_usage_ws.sql"),
    ),
];
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "admin tokens",
        include_str!("../migrations/postgres/0002_admin_tokens.sql"),
    ),
    (
        3,
        "operations",
        include_str!("../migrations/postgres/0003_operations.sql"),
    ),
    (
        4,
        "self-service",
        include_str!("../migrations/postgres/0004_selfservice.sql"),
    ),
    (
        5,
        "last used",
        include_str!("../migrations/postgres/0005_last_used.sql"),
    ),
    (
        6,
        "amqp feeds",
        include_str!("../migrations/postgres/0006_amqp_feeds.sql"),
    ),
    (
        7,
        "portal",
        include_str!("../migrations/postgres/0007_portal.sql"),
    ),
    (
        8,
        "client delete, amqp lease",
        include_str!("../migrations/postgres/0008_client_delete_amqp_lease.sql"),
    ),
    (
        9,
        "suspensions",
        include_str!("../migrations/postgres/0009_suspensions.sql"),
    ),
    (
        10,
        "webhooks",
        include_str!("../migrations/postgres/0010_webhooks.sql"),
    ),
    (
        11,
        "key restrictions",
        include_str!("../migrations/postgres/0011_key_restrictions.sql"),
    ),
    (
        12,
        "analytics",
        include_str!("../migrations/postgres/0012_analytics.sql"),
    ),
    (
        13,
        "quota adjustments",
        include_str!("../migrations/postgres/0013_quota_adjustments.sql"),
    ),
    (
        14,
        "key sharing",
        include_str!("../migrations/postgres/0014_key_sharing.sql"),
    ),
    (
        15,
        "websocket egress",
        include_str!("../migrations/postgres/0015_usage_ws.sql"),
    ),
];

/// What to do when the database's schema is older than this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateMode {
    /// Apply pending migrations.
    Apply,
    /// Refuse to run (the operator runs `keygate migrate`).
    Require,
}

fn set(backend: Backend) -> &'static [(i64, &'static str, &'static str)] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

/// The schema version this build writes.
pub fn latest_version(backend: Backend) -> i64 {
    set(backend).last().map_or(0, |m| m.0)
}

fn migrator(backend: Backend) -> Migrator {
    let migrations = set(backend)
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Reads the applied schema version: `None` for an empty database.
///
/// # Errors
/// [`StoreError::NotKeygate`] when the database holds foreign tables and no keygate schema.
pub(crate) async fn applied_version(
    pool: &AnyPool,
    backend: Backend,
    target: &str,
) -> Result<Option<i64>, StoreError> {
    let tables_sql = match backend {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        Backend::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = current_schema()"
        }
    };
    let tables: Vec<(String,)> = sqlx::query_as(tables_sql)
        .fetch_all(pool)
        .await
        .map_err(|e| open_error(target, &e))?;
    if !tables.iter().any(|(t,)| t == "_sqlx_migrations") {
        return if tables.is_empty() {
            Ok(None)
        } else {
            Err(StoreError::NotKeygate {
                target: target.to_owned(),
            })
        };
    }
    let (version,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(pool)
            .await
            .map_err(|e| open_error(target, &e))?;
    Ok(Some(version.unwrap_or(0)))
}

/// Brings the schema to this build's version, or explains why not.
///
/// # Errors
/// [`StoreError::SchemaTooNew`], [`StoreError::SchemaTooOld`] (in `Require` mode),
/// [`StoreError::NotKeygate`] or [`StoreError::Migrate`].
pub(crate) async fn ensure_schema(
    pool: &AnyPool,
    backend: Backend,
    target: &str,
    mode: MigrateMode,
) -> Result<(), StoreError> {
    let latest = latest_version(backend);
    let found = applied_version(pool, backend, target).await?.unwrap_or(0);
    if found > latest {
        return Err(StoreError::SchemaTooNew {
            target: target.to_owned(),
            found,
            supported: latest,
        });
    }
    if found == latest {
        return Ok(());
    }
    if mode == MigrateMode::Require {
        return Err(StoreError::SchemaTooOld {
            target: target.to_owned(),
            found,
            expected: latest,
        });
    }
    migrator(backend)
        .run(pool)
        .await
        .map_err(|e| StoreError::Migrate {
            target: target.to_owned(),
            reason: e.to_string(),
        })
}

pub(crate) fn open_error(target: &str, e: &sqlx::Error) -> StoreError {
    let reason = match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    };
    StoreError::Open {
        target: target.to_owned(),
        reason,
    }
}
