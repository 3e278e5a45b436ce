//! Several nodes' foundations on PostgreSQL: changes announced by NOTIFY reach the gateway
//! long before its poll would; with the store cut the gateway keeps serving from its replica
//! and catches up when the store returns; bad database URLs are named precisely.

mod common;

use std::time::{Duration, Instant};

use common::{postgres_schema, status_json, Harness};
use keygate_core::KeyState;
use keygate_store::{MigrateMode, OpenOptions, Store, StoreError};
use keygate_test::Relay;

async fn until_status(h: &Harness, key: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        let s = h
            .http
            .get(h.url("/x"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status();
        if s.as_u16() == status {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no {status} within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_the_gateway_long_before_the_poll() {
    let Some(url) = postgres_schema().await else {
        return;
    };
    // A 10 s poll: only LISTEN/NOTIFY can make this fast.
    let h = Harness::start_on("[server]\nfeed_poll = \"10s\"\n", Some(url)).await;
    h.client("Acme", &[], &[], &[], "pro").await;
    let (secret, key) = h.key("Acme", None).await;
    until_status(&h, &secret, 200, Duration::from_secs(2)).await;
    h.store
        .set_key_state(&common::actor(), &key.id, KeyState::Revoked)
        .await
        .unwrap();
    let took = until_status(&h, &secret, 401, Duration::from_secs(2)).await;
    assert!(
        took < Duration::from_millis(500),
        "revocation took {took:?} with a 10 s poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_static_serves_through_a_store_outage_and_catches_up() {
    let Some(url) = postgres_schema().await else {
        return;
    };
    let pg: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let relay = Relay::start(pg).await;
    // The gateway reaches PostgreSQL only through the relay; the test writes directly.
    let relayed = url.replace("127.0.0.1:5432", &relay.addr().to_string());
    assert_ne!(
        relayed, url,
        "the test database URL must name 127.0.0.1:5432"
    );
    let direct = Store::open(&url, OpenOptions::default()).await.unwrap();
    let h = Harness::start_on("[server]\nfeed_poll = \"100ms\"\n", Some(relayed)).await;
    let actor = common::actor();
    direct
        .create_client(
            &actor,
            keygate_store::NewClient {
                name: "Acme".into(),
                plan: "pro".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (secret, material) = h.issuer.issue();
    let key = direct
        .create_key(
            &actor,
            "Acme",
            keygate_store::NewKey {
                material,
                label: String::new(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .unwrap();
    let secret = secret.expose().to_owned();
    until_status(&h, &secret, 200, Duration::from_secs(3)).await;
    let admin_issuer = keygate_core::Issuer::new(
        keygate_core::key_format::KeyFormat::admin_token(),
        keygate_core::Digester::plain(),
    );
    let (admin_token, material) = admin_issuer.issue();
    direct
        .create_admin_token(&actor, "ops", false, material)
        .await
        .unwrap();

    relay.cut();
    // Revoked while the gateway cannot see the store.
    direct
        .set_key_state(&actor, &key.id, KeyState::Revoked)
        .await
        .unwrap();
    let noticed = Instant::now();
    loop {
        let (_, _, status) =
            status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
        if status["store"]["state"] == "unreachable" {
            break;
        }
        assert!(
            noticed.elapsed() < Duration::from_secs(3),
            "outage not noticed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("outage noticed after {:?}", noticed.elapsed());
    h.clock.advance(Duration::from_secs(5));
    let resp = h
        .http
        .get(h.url("/x"))
        .header("X-API-Key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "fail static: the replica keeps serving");
    let (_, _, status) =
        status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
    assert!(
        status["store"]["down_seconds"].as_f64().unwrap() >= 5.0,
        "{status}"
    );
    assert_eq!(
        h.http.get(h.url("/ready")).send().await.unwrap().status(),
        200,
        "still ready by default"
    );
    let metrics = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keygate_store_up 0"), "{metrics}");
    // Admin writes cannot reach the store: a clear 503, while the data plane keeps serving.
    let write = h
        .http
        .post(h.admin_url("/v1/clients"))
        .bearer_auth(admin_token.expose())
        .json(&serde_json::json!({ "name": "During outage" }))
        .send()
        .await
        .unwrap();
    let (status, _, body) = status_json(write).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("keeps serving"),
        "{body}"
    );

    relay.restore().await;
    let took = until_status(&h, &secret, 401, Duration::from_secs(5)).await;
    let (_, _, status) =
        status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
    assert_eq!(status["store"]["state"], "up");
    eprintln!("caught up {took:?} after the store returned");
}

#[tokio::test]
async fn bad_database_urls_are_named() {
    let Some(url) = postgres_schema().await else {
        return;
    };
    let refused = Store::open(
        "postgres://postgres@127.0.0.1:1/test",
        OpenOptions::default(),
    )
    .await
    .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("127.0.0.1:1") && text.to_lowercase().contains("refused"),
        "{text}"
    );

    let base = url.split('?').next().unwrap();
    let no_db = base.rsplit_once('/').unwrap().0.to_owned() + "/keygate_no_such_db";
    let text = Store::open(&no_db, OpenOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("keygate_no_such_db") && text.contains("does not exist"),
        "{text}"
    );

    let ghost = base.replacen("postgres://postgres@", "postgres://ghost:secret@", 1);
    let text = Store::open(&ghost, OpenOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("ghost") && !text.contains("secret"),
        "names the role, hides the password: {text}"
    );

    // An empty schema needs `keygate migrate` before serve.
    let err = Store::open(
        &url,
        OpenOptions {
            migrate: MigrateMode::Require,
            ..OpenOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooOld { found: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run `keygate migrate`"), "{err}");
    Store::open(&url, OpenOptions::default())
        .await
        .unwrap()
        .close()
        .await;
    Store::open(
        &url,
        OpenOptions {
            migrate: MigrateMode::Require,
            ..OpenOptions::default()
        },
    )
    .await
    .unwrap();

    // Somebody else's tables: refused, untouched.
    let other_url = postgres_schema().await.unwrap();
    let other = other_url.rsplit('=').next().unwrap().to_owned();
    let pool = sqlx::PgPool::connect(&other_url).await.unwrap();
    sqlx::query(&format!("CREATE TABLE {other}.invoices (id INT)"))
        .execute(&pool)
        .await
        .unwrap();
    let err = Store::open(&other_url, OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotKeygate { .. }), "{err}");
}
