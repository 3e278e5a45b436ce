//! What every store suite shares: a store on each backend with a clock the test moves, fresh
//! key material, and `suite!`, which runs each test once on SQLite and once on PostgreSQL.

#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use std::sync::Arc;

use keygate_core::{Digester, KeyFormat, ManualClock, Timestamp};
use keygate_store::{Backend, KeyMaterial, OpenOptions, Store};

/// Where every test's clock starts: 2026-09-21.
pub const T0: i64 = 1_790_000_000_000;

/// One store and the clock it reads.
pub struct Fixture {
    pub store: Store,
    pub clock: Arc<ManualClock>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    /// A fresh SQLite file in a temp dir.
    pub async fn sqlite() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.db");
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
        let store = Store::open_with_clock(
            path.to_str().unwrap(),
            OpenOptions::default(),
            clock.clone(),
        )
        .await
        .unwrap();
        Some(Fixture {
            store,
            clock,
            _dir: Some(dir),
        })
    }

    /// A fresh schema named after `prefix` in the test PostgreSQL, or `None` when none answers
    /// outside CI.
    pub async fn postgres(prefix: &str) -> Option<Fixture> {
        let url = keygate_test::postgres_schema(prefix).await?;
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
        let store = Store::open_with_clock(&url, OpenOptions::default(), clock.clone())
            .await
            .unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        Some(Fixture {
            store,
            clock,
            _dir: None,
        })
    }
}

/// A fresh key of `format`: its plaintext and what the store keeps of it.
pub fn material(format: &KeyFormat) -> (String, KeyMaterial) {
    let key = format.generate();
    let m = KeyMaterial {
        digest: Digester::plain().digest(key.expose()),
        hint: format.hint(&key),
    };
    (key.expose().to_owned(), m)
}

/// Runs each test (an `async fn(Fixture)` at the file's root) on SQLite and on PostgreSQL, the
/// latter in a schema named after `$schema`.
macro_rules! suite {
    ($schema:literal; $($test:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $test() {
                if let Some(f) = super::common::Fixture::sqlite().await { super::$test(f).await }
            } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $test() {
                if let Some(f) = super::common::Fixture::postgres($schema).await { super::$test(f).await }
            } )*
        }
    };
}
pub(crate) use suite;
