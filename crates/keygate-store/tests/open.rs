//! Opening databases that are missing, foreign, newer, or not databases at all.

use keygate_store::{OpenOptions, Store, StoreError};

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let path = path.to_str().unwrap();
    let store = Store::open(path, OpenOptions::default()).await.unwrap();
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'future', TRUE, x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = Store::open(path, OpenOptions::default()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported,
                ..
            } if supported == keygate_store::latest_version(keygate_store::Backend::Sqlite)
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "newer than the {} this keygate understands",
            keygate_store::latest_version(keygate_store::Backend::Sqlite)
        )),
        "{err}"
    );
}

#[tokio::test]
async fn foreign_and_broken_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("other.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", foreign.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = Store::open(foreign.to_str().unwrap(), OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotKeygate { .. }), "{err}");

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, it is a text file of some length....",
    )
    .unwrap();
    let err = Store::open(text.to_str().unwrap(), OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");

    let err = Store::open(dir.path().to_str().unwrap(), OpenOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

/// PostgreSQL over TLS (the machine's server has SSL on): `sslmode=require` encrypts,
/// `verify-full` with a root that did not sign the server's certificate is refused with the
/// reason, and the URL is shown without its password.
#[tokio::test]
async fn postgres_over_tls_follows_sslmode_and_sslrootcert() {
    let Some(url) = keygate_test::postgres_schema("kg_tls").await else {
        return;
    };
    let required = format!("{url}&sslmode=require");
    let store = Store::open(&required, OpenOptions::default())
        .await
        .unwrap();
    store.close().await;
    let pool = sqlx::PgPool::connect(&required).await.unwrap();
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "sslmode=require: the connection is encrypted");
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let stranger = keygate_test::tls::TestCa::new("not the server's CA").write_ca(dir.path());
    for mode in ["verify-ca", "verify-full"] {
        let bad_root = format!("{url}&sslmode={mode}&sslrootcert={}", stranger.display());
        let err = Store::open(&bad_root, OpenOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificate") || err.contains("UnknownIssuer"),
            "{mode}: {err}"
        );
    }
}
