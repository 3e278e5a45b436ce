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
