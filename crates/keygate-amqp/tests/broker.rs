//! Feed credentials against the machine's real RabbitMQ, with a real AMQP client (lapin) using
//! the URLs keygate issues. Seed 001 (docs.ticktock.bet): "AMQP — Provisioned per tenant on
//! request — see the Messaging Feed page.
//! `amqp://op-<slug>:<password>@mq.ticktock.bet:5672/<slug>`".
//!
//! Every test gets names of its own (a random part in each client name, or its own prefixes),
//! so tests running side by side on the shared broker never touch each other's users, and each
//! cleans up by revoking what it made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_amqp::{AmqpConfig, AmqpError, Feeds, RawAmqp, PASSWORD_ENV, USER_ENV};
use keygate_store::{Actor, AuditFilter, FeedState, NewClient, OpenOptions, Store};
use keygate_test::RabbitMq;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn actor() -> Actor {
    Actor("test:amqp".to_owned())
}

fn random() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Env {
    feeds: Feeds,
    store: Store,
    mq: RabbitMq,
    _dir: tempfile::TempDir,
}

fn config_for(mq: &RabbitMq, management_url: &str, f: impl FnOnce(&mut RawAmqp)) -> AmqpConfig {
    let mut raw = RawAmqp {
        management_url: management_url.to_owned(),
        // Tenants are told the broker's real address here, so the issued URL connects as is.
        public_address: mq.amqp_address.clone(),
        timeout: Some("3s".to_owned()),
        ..RawAmqp::default()
    };
    f(&mut raw);
    let (user, password) = (mq.user.clone(), mq.password.clone());
    AmqpConfig::compile(&raw, &move |name| match name {
        USER_ENV => Some(user.clone()),
        PASSWORD_ENV => Some(password.clone()),
        _ => None,
    })
    .expect("test config compiles")
}

async fn env_with(f: impl FnOnce(&mut RawAmqp)) -> Option<Env> {
    let mq = keygate_test::rabbitmq().await?;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("k.db").to_str().unwrap(),
        OpenOptions::default(),
    )
    .await
    .unwrap();
    let feeds = Feeds::new(store.clone(), config_for(&mq, &mq.management_url, f)).unwrap();
    Some(Env {
        feeds,
        store,
        mq,
        _dir: dir,
    })
}

async fn env() -> Option<Env> {
    env_with(|_| {}).await
}

async fn client(store: &Store, name: &str) -> String {
    store
        .create_client(
            &actor(),
            NewClient {
                name: name.to_owned(),
                plan: "default".to_owned(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap()
        .name
}

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connecting answers within 10 s")
}

/// Publishes one message to a fresh queue and consumes it back.
async fn round_trip(conn: &Connection, body: &[u8]) {
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("q-{}", random());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .expect("a delivery");
    assert_eq!(delivery.data, body);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
}

/// Waits until the broker has closed `conn`, and says how long that took.
async fn closed_within(conn: &Connection, limit: Duration) -> Duration {
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < limit,
            "the connection is still open {limit:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// The URL with another vhost in place of the tenant's own.
fn with_vhost(url: &str, vhost: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{vhost}")
}

#[tokio::test]
async fn seed_001_feed_url_publishes_and_consumes_in_its_own_vhost_only() {
    let Some(e) = env().await else { return };
    let tag = random();
    let acme = client(&e.store, &format!("Acme Sportsbook {tag}")).await;
    let other = client(&e.store, &format!("Other Book {tag}")).await;
    let issued = e.feeds.provision(&actor(), &acme, None).await.unwrap();
    let theirs = e.feeds.provision(&actor(), &other, None).await.unwrap();

    // Seed 001's shape: amqp://op-<slug>:<password>@host:5672/<slug>.
    let slug = format!("acme-sportsbook-{tag}");
    assert_eq!(issued.slug, slug);
    assert_eq!(issued.user, format!("op-{slug}"));
    assert_eq!(issued.vhost, slug);
    let prefix = format!("amqp://op-{slug}:");
    assert!(issued.url.starts_with(&prefix), "{}", issued.url);
    assert!(
        issued
            .url
            .ends_with(&format!("@{}/{slug}", e.mq.amqp_address)),
        "{}",
        issued.url
    );
    let password = &issued.url[prefix.len()..issued.url.rfind('@').unwrap()];
    assert_eq!(password.len(), 32);
    assert!(!format!("{issued:?}").contains(password));

    let conn = connect(&issued.url).await.expect("the issued URL connects");
    round_trip(&conn, b"{\"match\":\"cs2\"}").await;

    // The same credentials in the other tenant's vhost, and in the default vhost, are refused.
    for vhost in [theirs.vhost.as_str(), "%2f"] {
        let refused = connect(&with_vhost(&issued.url, vhost)).await;
        assert!(refused.is_err(), "op-{slug} reached vhost {vhost}");
    }
    // Nothing of the password was stored.
    let stored = e.store.amqp_feed(&issued.client_id).await.unwrap().unwrap();
    assert!(!stored.feed.password_hash.contains(password));
    assert_eq!(stored.feed.state, FeedState::Active);

    // Provisioning again is refused (the password is shown once; rotate makes a new one).
    assert!(matches!(
        e.feeds.provision(&actor(), &acme, None).await,
        Err(AmqpError::AlreadyProvisioned(_))
    ));
    let _ = conn.close(200, "done".into()).await;
    e.feeds.revoke(&actor(), &acme).await.unwrap();
    e.feeds.revoke(&actor(), &other).await.unwrap();
}

#[tokio::test]
async fn rotate_makes_the_old_password_fail_and_closes_its_connections() {
    let Some(e) = env().await else { return };
    let name = client(&e.store, &format!("Rotor {}", random())).await;
    let first = e.feeds.provision(&actor(), &name, None).await.unwrap();
    let old = connect(&first.url).await.unwrap();

    let second = e.feeds.rotate(&actor(), &name).await.unwrap();
    assert_ne!(first.url, second.url);
    assert_eq!(first.vhost, second.vhost);
    let took = closed_within(&old, Duration::from_secs(1)).await;
    eprintln!("connection closed {took:?} after the rotation returned");
    assert!(
        connect(&first.url).await.is_err(),
        "the old password still works"
    );
    let new = connect(&second.url).await.expect("the new URL connects");
    round_trip(&new, b"after rotate").await;

    let audit = e
        .store
        .audit(&AuditFilter {
            action: Some("amqp.".to_owned()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["amqp.rotate", "amqp.provision"]);
    assert_eq!(audit[0].detail["connections_closed"], true);
    assert!(!audit[0].detail.to_string().contains(&second.url));
    e.feeds.revoke(&actor(), &name).await.unwrap();
}

#[tokio::test]
async fn revoke_closes_open_connections_within_a_second_and_refuses_new_ones() {
    let Some(e) = env().await else { return };
    let name = client(&e.store, &format!("Revoked {}", random())).await;
    let issued = e.feeds.provision(&actor(), &name, None).await.unwrap();
    let open = connect(&issued.url).await.unwrap();
    round_trip(&open, b"before").await;

    let view = e.feeds.revoke(&actor(), &name).await.unwrap();
    assert_eq!(view.state, FeedState::Revoked);
    let took = closed_within(&open, Duration::from_secs(1)).await;
    eprintln!("connection closed {took:?} after the revocation returned");
    assert!(connect(&issued.url).await.is_err());
    let m = e.feeds.management();
    assert!(m.user(&issued.user).await.unwrap().is_none());
    assert!(m.vhost(&issued.vhost).await.unwrap().is_none());
    // Idempotent: a second revoke succeeds and changes nothing.
    e.feeds.revoke(&actor(), &name).await.unwrap();
    // A revoked client may be provisioned again, under its old slug, with a new password.
    let again = e.feeds.provision(&actor(), &name, None).await.unwrap();
    assert_eq!(again.slug, issued.slug);
    assert_ne!(again.url, issued.url);
    e.feeds.revoke(&actor(), &name).await.unwrap();
}

#[tokio::test]
async fn disabling_the_client_closes_its_feed_within_a_second_and_enabling_restores_it() {
    let Some(e) = env().await else { return };
    let name = client(&e.store, &format!("Disabled {}", random())).await;
    let issued = e.feeds.provision(&actor(), &name, None).await.unwrap();
    let status = Arc::new(keygate_amqp::EnforcerStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keygate_amqp::enforce(
        e.feeds.clone(),
        "test-node".to_owned(),
        status.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    // Let the enforcer take in the current state first (alone on its store, it acts).
    let start = Instant::now();
    while status.report().feeds == 0 || !status.report().acting {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = connect(&issued.url).await.unwrap();

    e.store
        .set_client_active(&actor(), &name, false)
        .await
        .unwrap();
    let took = closed_within(&open, Duration::from_secs(1)).await;
    eprintln!("connection closed {took:?} after the client was disabled");
    assert!(
        connect(&issued.url).await.is_err(),
        "a disabled client connected"
    );

    e.store
        .set_client_active(&actor(), &name, true)
        .await
        .unwrap();
    let start = Instant::now();
    let again = loop {
        match connect(&issued.url).await {
            Ok(c) => break c,
            Err(err) => assert!(
                start.elapsed() < Duration::from_secs(5),
                "the enabled client's feed still refuses: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    round_trip(&again, b"back").await;
    // The audit row follows the broker step, so it may land a moment after the feed reopens.
    let start = Instant::now();
    loop {
        let audit = e
            .store
            .audit(&AuditFilter {
                action: Some("amqp.".to_owned()),
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        if actions.contains(&"amqp.suspend") && actions.contains(&"amqp.resume") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{actions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    e.feeds.revoke(&actor(), &name).await.unwrap();
}

#[tokio::test]
async fn a_broker_outage_answers_unavailable_and_leaves_nothing_half_made() {
    let Some(e) = env().await else { return };
    let name = client(&e.store, &format!("Outage {}", random())).await;

    // Nothing listens there: unreachable, nothing stored.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let down = Feeds::new(e.store.clone(), config_for(&e.mq, &dead_url, |_| {})).unwrap();
    let err = down.provision(&actor(), &name, None).await.unwrap_err();
    assert!(matches!(err, AmqpError::BrokerUnreachable { .. }), "{err}");
    assert_eq!(err.status(), 503);
    assert!(err.to_string().contains(&dead_url), "{err}");
    assert!(!err.to_string().contains(&e.mq.password) || e.mq.password == "guest");
    let client_id = e.store.client(&name).await.unwrap().id;
    assert!(e
        .store
        .amqp_feed(client_id.as_str())
        .await
        .unwrap()
        .is_none());

    // The broker refuses a step half-way (a permission pattern it cannot compile, after the
    // vhost and the user were made): both are rolled back and nothing is stored.
    let refusing = Feeds::new(
        e.store.clone(),
        config_for(&e.mq, &e.mq.management_url, |r| {
            r.permissions.read = Some("(".to_owned());
        }),
    )
    .unwrap();
    let err = refusing.provision(&actor(), &name, None).await.unwrap_err();
    assert!(matches!(err, AmqpError::Broker { .. }), "{err}");
    assert_eq!(err.status(), 503);
    let slug = keygate_amqp::derive_slug(&name).unwrap();
    let m = e.feeds.management();
    assert!(m.vhost(&slug).await.unwrap().is_none(), "a vhost was left");
    assert!(
        m.user(&format!("op-{slug}")).await.unwrap().is_none(),
        "a user was left"
    );
    assert!(e
        .store
        .amqp_feed(client_id.as_str())
        .await
        .unwrap()
        .is_none());

    // With the broker back, the same call works.
    let issued = e.feeds.provision(&actor(), &name, None).await.unwrap();
    let conn = connect(&issued.url).await.unwrap();
    // Rotating during an outage keeps the old password working.
    assert!(matches!(
        down.rotate(&actor(), &name).await,
        Err(AmqpError::BrokerUnreachable { .. })
    ));
    assert!(conn.status().connected());
    connect(&issued.url)
        .await
        .expect("the old password still works");
    e.feeds.revoke(&actor(), &name).await.unwrap();
}

#[tokio::test]
async fn hostile_names_and_slugs_never_reach_another_tenant() {
    let Some(e) = env().await else { return };
    let tag = random();
    // Client names full of separators become plain slugs; none addresses another resource.
    for (name, slug) in [
        (format!("../../{tag}/etc"), format!("{tag}-etc")),
        (format!("a/b%2F{tag}"), format!("a-b-2f{tag}")),
        (format!("Zürich {tag} ✓"), format!("z-rich-{tag}")),
    ] {
        let name = client(&e.store, &name).await;
        let issued = e.feeds.provision(&actor(), &name, None).await.unwrap();
        assert_eq!(issued.slug, slug);
        let conn = connect(&issued.url).await.unwrap();
        round_trip(&conn, name.as_bytes()).await;
        let _ = conn.close(200, "done".into()).await;
        e.feeds.revoke(&actor(), &name).await.unwrap();
    }
    // A name with nothing usable, and hostile explicit slugs, are refused before the broker.
    let unicode = client(&e.store, &format!("日本語 {}", "✓")).await;
    assert!(matches!(
        e.feeds.provision(&actor(), &unicode, None).await,
        Err(AmqpError::NoSlug(_))
    ));
    for bad in ["/", "..", "%2f", "a/b", "A", "x:y@z", &"a".repeat(41), "ü"] {
        let err = e
            .feeds
            .provision(&actor(), &unicode, Some(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, AmqpError::InvalidSlug(_)), "{bad}: {err}");
        assert_eq!(err.status(), 422);
    }
    // A very long name is cut to a slug of 40.
    let long = client(&e.store, &format!("{tag}{}", "x".repeat(90))).await;
    let issued = e.feeds.provision(&actor(), &long, None).await.unwrap();
    assert_eq!(issued.slug.len(), 40);
    e.feeds.revoke(&actor(), &long).await.unwrap();

    // Two clients whose names make the same slug: the second is refused, names the first.
    let first = client(&e.store, &format!("Twin {tag}")).await;
    let second = client(&e.store, &format!("twin-{tag}!")).await;
    e.feeds.provision(&actor(), &first, None).await.unwrap();
    let err = e
        .feeds
        .provision(&actor(), &second, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AmqpError::SlugTaken { holder, .. } if *holder == first),
        "{err}"
    );
    assert_eq!(err.status(), 409);
    // Nor can it take the first one's slug explicitly, or its user name through the slug.
    assert!(matches!(
        e.feeds
            .provision(&actor(), &second, Some(&format!("twin-{tag}")))
            .await,
        Err(AmqpError::SlugTaken { .. })
    ));
    e.feeds.revoke(&actor(), &first).await.unwrap();

    // A vhost made by hand on the broker is never taken over.
    let manual = format!("manual-{tag}");
    let http = keygate_test::http_client();
    let r = http
        .put(format!("{}/api/vhosts/{manual}", e.mq.management_url))
        .basic_auth(&e.mq.user, Some(&e.mq.password))
        .json(&serde_json::json!({ "description": "made by hand" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let err = e
        .feeds
        .provision(&actor(), &second, Some(&manual))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AmqpError::NameTakenOnBroker { what: "vhost", .. }),
        "{err}"
    );
    assert!(e.feeds.management().vhost(&manual).await.unwrap().is_some());
    e.feeds.management().delete_vhost(&manual).await.unwrap();
}

#[tokio::test]
async fn drift_is_found_and_reconcile_repairs_it() {
    let tag = random();
    let Some(e) = env_with(|r| {
        r.user_prefix = Some(format!("op-t{tag}-"));
        r.vhost_prefix = Some(format!("t{tag}-"));
    })
    .await
    else {
        return;
    };
    let kept = client(&e.store, "Kept").await;
    let revoked = client(&e.store, "Gone").await;
    let issued = e.feeds.provision(&actor(), &kept, None).await.unwrap();
    assert_eq!(issued.user, format!("op-t{tag}-kept"));
    assert_eq!(issued.vhost, format!("t{tag}-kept"));
    let gone = e.feeds.provision(&actor(), &revoked, None).await.unwrap();
    e.feeds.revoke(&actor(), &revoked).await.unwrap();
    assert!(e.feeds.drift().await.unwrap().is_empty());

    // By hand: the tenant's user deleted, the revoked one put back, an orphan keygate user and
    // a user under the naming that keygate never made.
    let m = e.feeds.management();
    m.delete_user(&issued.user).await.unwrap();
    m.put_vhost(&gone.vhost, &gone.client_id).await.unwrap();
    m.put_user(
        &format!("op-t{tag}-orphan"),
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
    )
    .await
    .unwrap();
    let http = keygate_test::http_client();
    let manual = format!("op-t{tag}-manual");
    http.put(format!("{}/api/users/{manual}", e.mq.management_url))
        .basic_auth(&e.mq.user, Some(&e.mq.password))
        .json(&serde_json::json!({ "password": "by-hand", "tags": "" }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    let drift = e.feeds.drift().await.unwrap();
    let mut kinds: Vec<&str> = drift.items.iter().map(|d| d.kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "missing_user",
            "orphan_user",
            "revoked_vhost_present",
            "unmanaged_user"
        ],
        "{drift:?}"
    );
    let done = e.feeds.reconcile(&actor(), None).await.unwrap();
    assert_eq!(done.repaired, 3);
    assert_eq!(done.left.len(), 1);
    assert!(done.remaining.is_empty(), "{:?}", done.remaining);
    // The user came back with the stored hash: the URL issued before works again.
    let conn = connect(&issued.url)
        .await
        .expect("the restored user connects");
    round_trip(&conn, b"repaired").await;
    assert!(
        m.user(&manual).await.unwrap().is_some(),
        "an unmanaged user was deleted"
    );
    m.delete_user(&manual).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    e.feeds.revoke(&actor(), &kept).await.unwrap();
}
