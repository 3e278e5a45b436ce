//! The store suite: every test runs against SQLite (a real file in a temp dir) and PostgreSQL
//! (its own schema in `KEYGATE_TEST_DATABASE_URL`).

use std::num::NonZeroU64;
use std::time::Duration;

use keygate_core::{Digester, KeyFormat, KeyId, KeyState, Scope, Slug, Timestamp};
use keygate_store::{
    Actor, AuditFilter, ClientFilter, ClientUpdate, IdempotencyClaim, KeyFilter, LimitPatch,
    LinkRefusal, NewClient, NewKey, Once, SealedAnswer, Store, StoreError, UsageRow,
};

mod common;

use common::{material, suite, Fixture, T0};

fn actor() -> Actor {
    Actor("test:suite".into())
}

fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter().map(|s| Scope::new(s).unwrap()).collect()
}

async fn acme(store: &Store) -> keygate_core::Client {
    store
        .create_client(
            &actor(),
            NewClient {
                name: "Acme Sportsbook".into(),
                plan: "pro".into(),
                scopes: scopes(&["cs2:matches:read", "cs2:matches:list", "cs2:matches:read"]),
                sports: vec![Slug::new("cs2").unwrap()],
                ..NewClient::default()
            },
        )
        .await
        .unwrap()
}

async fn new_key(store: &Store, client: &str) -> (String, keygate_core::ApiKey) {
    let (plain, m) = material(&KeyFormat::default());
    let key = store
        .create_key(
            &actor(),
            client,
            NewKey {
                material: m,
                label: "prod".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .unwrap();
    (plain, key)
}

async fn audit_len(store: &Store) -> usize {
    store
        .audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .len()
}

async fn clients_are_created_listed_and_unique(f: Fixture) {
    let s = &f.store;
    let c = acme(s).await;
    assert_eq!(
        c.scopes,
        scopes(&["cs2:matches:list", "cs2:matches:read"]),
        "sorted, deduplicated"
    );
    assert!(c.active);
    assert_eq!(s.client("Acme Sportsbook").await.unwrap(), c);
    assert_eq!(s.client(c.id.as_str()).await.unwrap(), c);

    let version = s.version().await.unwrap();
    let audits = audit_len(s).await;
    let dup = s
        .create_client(
            &actor(),
            NewClient {
                name: "Acme Sportsbook".into(),
                plan: "free".into(),
                ..NewClient::default()
            },
        )
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateClient(ref n)) if n == "Acme Sportsbook"),
        "{dup:?}"
    );
    assert_eq!(
        s.version().await.unwrap(),
        version,
        "a refused write leaves no trace"
    );
    assert_eq!(audit_len(s).await, audits);

    let bad = s
        .create_client(
            &actor(),
            NewClient {
                name: " x".into(),
                plan: "pro".into(),
                ..NewClient::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));

    for name in ["b", "c", "d"] {
        s.create_client(
            &actor(),
            NewClient {
                name: name.into(),
                plan: "free".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    }
    let page = s
        .list_clients(&ClientFilter {
            limit: 2,
            ..ClientFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["Acme Sportsbook", "b"]
    );
    let next = s
        .list_clients(&ClientFilter {
            after: Some("b".into()),
            limit: 2,
            ..ClientFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["c", "d"]
    );
    let free = s
        .list_clients(&ClientFilter {
            plan: Some("free".into()),
            ..ClientFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(free.len(), 3);
    assert!(matches!(
        s.client("nobody").await,
        Err(StoreError::ClientNotFound(_))
    ));
}

async fn clients_are_updated_and_disabled(f: Fixture) {
    let s = &f.store;
    let c = acme(s).await;
    s.create_client(
        &actor(),
        NewClient {
            name: "taken".into(),
            plan: "free".into(),
            ..NewClient::default()
        },
    )
    .await
    .unwrap();
    f.clock.advance(Duration::from_secs(5));
    let updated = s
        .update_client(
            &actor(),
            "Acme Sportsbook",
            ClientUpdate {
                plan: Some("pro_plus".into()),
                bookmakers: Some(vec![
                    Slug::new("pinnacle").unwrap(),
                    Slug::new("bet365").unwrap(),
                ]),
                limits: LimitPatch {
                    rps: Some(NonZeroU64::new(250)),
                    per_day: Some(NonZeroU64::new(10_000)),
                    ..LimitPatch::default()
                },
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.plan, "pro_plus");
    assert_eq!(
        updated
            .bookmakers
            .iter()
            .map(Slug::as_str)
            .collect::<Vec<_>>(),
        ["bet365", "pinnacle"]
    );
    assert_eq!(updated.limits.rps, NonZeroU64::new(250));
    assert_eq!(updated.updated_at, Timestamp::from_millis(T0 + 5_000));
    assert_eq!(updated.scopes, c.scopes, "untouched fields stay");

    let cleared = s
        .update_client(
            &actor(),
            c.id.as_str(),
            ClientUpdate {
                limits: LimitPatch {
                    rps: Some(None),
                    ..LimitPatch::default()
                },
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.limits.rps, None);
    assert_eq!(cleared.limits.per_day, NonZeroU64::new(10_000));

    let rename = s
        .update_client(
            &actor(),
            c.id.as_str(),
            ClientUpdate {
                name: Some("taken".into()),
                ..ClientUpdate::default()
            },
        )
        .await;
    assert!(matches!(rename, Err(StoreError::DuplicateClient(_))));
    assert_eq!(
        s.client(c.id.as_str()).await.unwrap().name,
        "Acme Sportsbook"
    );

    let off = s
        .set_client_active(&actor(), "Acme Sportsbook", false)
        .await
        .unwrap();
    assert!(!off.active);
    let v = s.version().await.unwrap();
    s.set_client_active(&actor(), "Acme Sportsbook", false)
        .await
        .unwrap();
    assert_eq!(
        s.version().await.unwrap(),
        v,
        "setting the same state writes nothing"
    );
    assert!(matches!(
        s.set_client_active(&actor(), "ghost", true).await,
        Err(StoreError::ClientNotFound(_))
    ));
}

async fn keys_are_created_and_listed_masked(f: Fixture) {
    let s = &f.store;
    let c = acme(s).await;
    let (plain, k) = new_key(s, "Acme Sportsbook").await;
    assert_eq!(k.client_id, c.id);
    assert_eq!(k.state, KeyState::Active);
    assert_eq!(k.digest, Digester::plain().digest(&plain));
    assert!(k.hint.starts_with("kg_...") && plain.ends_with(&k.hint[6..]));
    assert_eq!(s.key(&k.id).await.unwrap(), k);

    f.clock.advance(Duration::from_millis(1));
    let (_, k2) = new_key(s, c.id.as_str()).await;
    let all = s
        .list_keys(&KeyFilter {
            client: Some("Acme Sportsbook".into()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|k| &k.id).collect::<Vec<_>>(),
        [&k.id, &k2.id]
    );
    assert_eq!(s.keys_of_client(&c.id).await.unwrap(), all);
    let page = s
        .list_keys(&KeyFilter {
            after: Some(k.id.clone()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);

    let missing = s
        .create_key(
            &actor(),
            "ghost",
            NewKey {
                material: material(&KeyFormat::default()).1,
                label: String::new(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await;
    assert!(matches!(missing, Err(StoreError::ClientNotFound(_))));
    let past = s
        .create_key(
            &actor(),
            "Acme Sportsbook",
            NewKey {
                material: material(&KeyFormat::default()).1,
                label: String::new(),
                expires_at: Some(Timestamp::from_millis(T0 - 1)),
                restrictions: Default::default(),
            },
        )
        .await;
    assert!(matches!(past, Err(StoreError::ExpiryInPast(_))));
    assert!(matches!(
        s.key(&KeyId::generate()).await,
        Err(StoreError::KeyNotFound(_))
    ));
    assert!(matches!(
        s.list_keys(&KeyFilter {
            client: Some("ghost".into()),
            ..KeyFilter::default()
        })
        .await,
        Err(StoreError::ClientNotFound(_))
    ));
}

async fn rotation_revokes_at_once_or_after_grace(f: Fixture) {
    let s = &f.store;
    acme(s).await;
    let (_, k) = new_key(s, "Acme Sportsbook").await;
    let r = s
        .rotate_key(&actor(), &k.id, material(&KeyFormat::default()).1, None)
        .await
        .unwrap();
    assert_eq!(r.old.state, KeyState::Revoked);
    assert_eq!(r.old.replaced_by.as_ref(), Some(&r.new.id));
    assert_eq!(r.new.label, "prod");
    assert_eq!(r.new.client_id, k.client_id);
    assert_eq!(r.new.state, KeyState::Active);
    let again = s
        .rotate_key(&actor(), &k.id, material(&KeyFormat::default()).1, None)
        .await;
    assert!(matches!(again, Err(StoreError::KeyRevoked(_))));

    let r2 = s
        .rotate_key(
            &actor(),
            &r.new.id,
            material(&KeyFormat::default()).1,
            Some(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(
        r2.old.state,
        KeyState::Active,
        "grace keeps the old key working"
    );
    assert_eq!(
        r2.old.expires_at,
        Some(Timestamp::from_millis(T0 + 3_600_000))
    );
    assert_eq!(
        r2.old
            .usable_at(Timestamp::from_millis(T0 + 3_599_999), true),
        Ok(())
    );
    assert!(r2
        .old
        .usable_at(Timestamp::from_millis(T0 + 3_600_000), true)
        .is_err());

    let snap = s.snapshot().await.unwrap();
    let ids: Vec<_> = snap.keys.iter().map(|k| k.id.clone()).collect();
    assert!(!ids.contains(&k.id), "revoked keys are not in the snapshot");
    assert!(ids.contains(&r2.old.id) && ids.contains(&r2.new.id));

    // Rotating an expired key is refused: the new key would be dead on arrival.
    f.clock.advance(Duration::from_secs(7200));
    let expired = s
        .rotate_key(
            &actor(),
            &r2.old.id,
            material(&KeyFormat::default()).1,
            None,
        )
        .await;
    assert!(
        matches!(expired, Err(StoreError::KeyExpired(..))),
        "{expired:?}"
    );
    let audit = s
        .audit(&AuditFilter {
            action: Some("key.rotate".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].actor, "test:suite");
    assert_eq!(audit[0].detail["grace_seconds"], 3600);
}

async fn states_and_expiry(f: Fixture) {
    let s = &f.store;
    acme(s).await;
    let (_, k) = new_key(s, "Acme Sportsbook").await;
    assert_eq!(
        s.set_key_state(&actor(), &k.id, KeyState::Disabled)
            .await
            .unwrap()
            .state,
        KeyState::Disabled
    );
    assert_eq!(
        s.set_key_state(&actor(), &k.id, KeyState::Active)
            .await
            .unwrap()
            .state,
        KeyState::Active
    );
    let at = Timestamp::from_millis(T0 + 86_400_000);
    assert_eq!(
        s.set_key_expiry(&actor(), &k.id, Some(at))
            .await
            .unwrap()
            .expires_at,
        Some(at)
    );
    let past = s
        .set_key_expiry(&actor(), &k.id, Some(Timestamp::from_millis(T0)))
        .await;
    assert!(matches!(past, Err(StoreError::ExpiryInPast(_))));
    assert_eq!(
        s.key(&k.id).await.unwrap().expires_at,
        Some(at),
        "a refused change leaves the key as it was"
    );
    assert_eq!(
        s.set_key_expiry(&actor(), &k.id, None)
            .await
            .unwrap()
            .expires_at,
        None
    );
    s.set_key_state(&actor(), &k.id, KeyState::Revoked)
        .await
        .unwrap();
    for state in [KeyState::Active, KeyState::Disabled] {
        assert!(matches!(
            s.set_key_state(&actor(), &k.id, state).await,
            Err(StoreError::KeyRevoked(_))
        ));
    }
    assert!(matches!(
        s.set_key_expiry(&actor(), &k.id, None).await,
        Err(StoreError::KeyRevoked(_))
    ));
    let actions: Vec<_> = s
        .audit(&AuditFilter {
            action: Some("key.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [
            "key.revoke",
            "key.expire",
            "key.expire",
            "key.enable",
            "key.disable",
            "key.create"
        ]
    );
}

async fn the_feed_reports_every_change_in_order(f: Fixture) {
    let s = &f.store;
    assert_eq!(s.version().await.unwrap(), 0);
    let c = acme(s).await;
    let (_, k) = new_key(s, "Acme Sportsbook").await;
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.version, 2);
    assert_eq!(snap.clients.len(), 1);
    assert_eq!(snap.keys.len(), 1);
    assert!(s.delta_since(2).await.unwrap().is_empty());

    s.set_key_state(&actor(), &k.id, KeyState::Revoked)
        .await
        .unwrap();
    let d = s.delta_since(2).await.unwrap();
    assert_eq!(d.version, 3);
    assert!(d.clients.is_empty());
    assert_eq!(d.keys.len(), 1);
    assert_eq!(
        d.keys[0].state,
        KeyState::Revoked,
        "revocations reach replicas"
    );

    s.set_client_active(&actor(), c.id.as_str(), false)
        .await
        .unwrap();
    let d = s.delta_since(3).await.unwrap();
    assert_eq!((d.version, d.clients.len(), d.keys.len()), (4, 1, 0));
    assert_eq!(s.delta_since(0).await.unwrap().keys.len(), 1);
}

async fn concurrent_writers_get_distinct_versions(f: Fixture) {
    let s = f.store.clone();
    acme(&s).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            new_key(&s, "Acme Sportsbook").await.1
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.version().await.unwrap(), 21);
    assert_eq!(s.snapshot().await.unwrap().keys.len(), 20);
}

async fn admin_tokens_are_digests_and_can_be_revoked(f: Fixture) {
    let s = &f.store;
    let format = KeyFormat::admin_token();
    let (plain, m) = material(&format);
    let t = s
        .create_admin_token(&actor(), "billing", false, m)
        .await
        .unwrap();
    assert!(t.id.starts_with("adm_") && !t.read_only && t.revoked_at.is_none());
    let digest = Digester::plain().digest(&plain);
    assert_eq!(
        s.admin_token_by_digest(&digest).await.unwrap(),
        Some(t.clone())
    );
    let dup = s
        .create_admin_token(&actor(), "billing", true, material(&format).1)
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateAdminToken(_))),
        "{dup:?}"
    );
    let (_, m) = material(&format);
    let ro = s
        .create_admin_token(&actor(), "dashboard", true, m)
        .await
        .unwrap();
    assert!(ro.read_only);
    let names: Vec<_> = s
        .list_admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["billing", "dashboard"]);
    let revoked = s.revoke_admin_token(&actor(), "billing").await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        s.admin_token_by_digest(&digest).await.unwrap(),
        None,
        "revoked tokens stop at once"
    );
    assert!(matches!(
        s.revoke_admin_token(&actor(), "nobody").await,
        Err(StoreError::AdminTokenNotFound(_))
    ));
    let audit = s
        .audit(&AuditFilter {
            action: Some("admin_token.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 3);
    assert!(!format!("{audit:?}").contains(&plain));
}

async fn emergency_mode_is_stored_replicated_and_audited(f: Fixture) {
    let s = &f.store;
    let off = s.emergency().await.unwrap();
    assert!(!off.on && off.changed_at.is_none() && off.changed_by.is_none());
    assert!(s.snapshot().await.unwrap().emergency == off);
    let v0 = s.version().await.unwrap();

    let on = s
        .set_emergency(
            &actor(),
            true,
            Some("Upstream maintenance until 14:00 UTC."),
        )
        .await
        .unwrap();
    assert!(on.on);
    assert_eq!(on.changed_by.as_deref(), Some("test:suite"));
    assert_eq!(s.emergency().await.unwrap(), on);
    // Every node learns of it through the feed.
    let d = s.delta_since(v0).await.unwrap();
    assert_eq!(d.emergency.as_ref(), Some(&on));
    assert!(d.is_empty(), "no client or key changed");
    assert_eq!(s.snapshot().await.unwrap().emergency, on);
    assert!(s.delta_since(d.version).await.unwrap().emergency.is_none());

    // Switching off drops the message.
    let off = s
        .set_emergency(&actor(), false, Some("ignored"))
        .await
        .unwrap();
    assert!(!off.on && off.message.is_none());
    for bad in ["", "   ", "line\nbreak"] {
        let e = s.set_emergency(&actor(), true, Some(bad)).await;
        assert!(matches!(e, Err(StoreError::Invalid(_))), "{bad:?}: {e:?}");
    }
    let long = "x".repeat(501);
    assert!(s.set_emergency(&actor(), true, Some(&long)).await.is_err());
    assert_eq!(
        s.emergency().await.unwrap(),
        off,
        "refused switches change nothing"
    );
    let audit = s
        .audit(&AuditFilter {
            action: Some("emergency.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["emergency.off", "emergency.on"]);
}

async fn usage_adds_up_per_day_and_status(f: Fixture) {
    let s = &f.store;
    let c = acme(s).await;
    let row = |day: &str, status: u16, requests: u64| UsageRow {
        client_id: c.id.to_string(),
        day: day.into(),
        status,
        requests,
    };
    let v0 = s.version().await.unwrap();
    s.add_usage(&[row("2026-11-22", 200, 5), row("2026-11-23", 200, 2)])
        .await
        .unwrap();
    s.add_usage(&[row("2026-11-23", 200, 3), row("2026-11-23", 429, 1)])
        .await
        .unwrap();
    s.add_usage(&[]).await.unwrap();
    assert_eq!(
        s.usage(&c.id, "2026-11-01", "2026-11-30").await.unwrap(),
        [
            row("2026-11-22", 200, 5),
            row("2026-11-23", 200, 5),
            row("2026-11-23", 429, 1)
        ]
    );
    assert_eq!(
        s.usage(&c.id, "2026-11-23", "2026-11-23")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.version().await.unwrap(),
        v0,
        "usage is telemetry, not a change every node must replay"
    );
}

async fn last_use_keeps_the_latest_time_without_a_feed_version(f: Fixture) {
    let s = &f.store;
    let c = acme(s).await;
    let (_, a) = new_key(s, c.name.as_str()).await;
    let (_, b) = new_key(s, c.name.as_str()).await;
    assert_eq!(a.last_used_at, None, "a new key was never used");
    let v0 = s.version().await.unwrap();
    let at = |ms: i64| Timestamp::from_millis(1_780_000_000_000 + ms);
    s.record_key_use(&[(a.id.clone(), at(5_000)), (b.id.clone(), at(1_000))])
        .await
        .unwrap();
    // Another node flushes an older time for `a` and a newer one for `b`: the later one stays.
    s.record_key_use(&[(a.id.clone(), at(2_000)), (b.id.clone(), at(9_000))])
        .await
        .unwrap();
    s.record_key_use(&[]).await.unwrap();
    // A key that is gone by the time of the flush is skipped, not an error.
    s.record_key_use(&[(KeyId::generate(), at(1))])
        .await
        .unwrap();
    assert_eq!(s.key(&a.id).await.unwrap().last_used_at, Some(at(5_000)));
    assert_eq!(s.key(&b.id).await.unwrap().last_used_at, Some(at(9_000)));
    let listed = s.list_keys(&KeyFilter::default()).await.unwrap();
    assert!(listed.iter().any(|k| k.last_used_at == Some(at(9_000))));
    assert_eq!(
        s.version().await.unwrap(),
        v0,
        "last use is telemetry, not a change every node must replay"
    );
    // The replica's snapshot carries it, so a restarted node does not rewrite it at once.
    let snap = s.snapshot().await.unwrap();
    assert!(snap.keys.iter().any(|k| k.last_used_at == Some(at(5_000))));
}

fn claim(id: u8, body: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        id: vec![id; 32],
        fingerprint: body.as_bytes().to_vec(),
        ttl: Duration::from_secs(3600),
    }
}

async fn an_idempotent_create_or_rotate_happens_once(f: Fixture) {
    let s = &f.store;
    acme(s).await;
    let new = || NewKey {
        material: material(&KeyFormat::default()).1,
        label: "prod".into(),
        expires_at: None,
        restrictions: Default::default(),
    };
    let seal = |k: &keygate_core::ApiKey| SealedAnswer {
        status: 201,
        sealed: k.id.as_str().as_bytes().to_vec(),
    };
    let first = s
        .create_key_once(&actor(), "Acme Sportsbook", new(), &claim(1, "a"), seal)
        .await
        .unwrap();
    let Once::Done(key) = first else {
        panic!("the first request creates")
    };
    let v1 = s.version().await.unwrap();
    let again = s
        .create_key_once(&actor(), "Acme Sportsbook", new(), &claim(1, "a"), seal)
        .await
        .unwrap();
    let Once::Replayed(replay) = again else {
        panic!("a retry replays")
    };
    assert_eq!(replay.fingerprint, b"a");
    assert_eq!(replay.answer.status, 201);
    assert_eq!(replay.answer.sealed, key.id.as_str().as_bytes());
    assert_eq!(s.version().await.unwrap(), v1, "a replay writes nothing");
    assert_eq!(s.snapshot().await.unwrap().keys.len(), 1);

    // Concurrent retries under one claim: one key.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let new = NewKey {
                material: material(&KeyFormat::default()).1,
                label: String::new(),
                expires_at: None,
                restrictions: Default::default(),
            };
            s.create_key_once(&actor(), "Acme Sportsbook", new, &claim(2, "b"), |k| {
                SealedAnswer {
                    status: 201,
                    sealed: k.id.as_str().as_bytes().to_vec(),
                }
            })
            .await
            .unwrap()
        }));
    }
    let mut done = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Once::Done(_)) {
            done += 1;
        }
    }
    assert_eq!(done, 1);
    assert_eq!(s.snapshot().await.unwrap().keys.len(), 2);

    // Rotation: the retry finds the record before it would find the old key revoked.
    let rotate = |c: IdempotencyClaim| {
        let id = key.id.clone();
        async move {
            s.rotate_key_once(
                &actor(),
                &id,
                material(&KeyFormat::default()).1,
                None,
                &c,
                |r| SealedAnswer {
                    status: 201,
                    sealed: r.new.id.as_str().as_bytes().to_vec(),
                },
            )
            .await
        }
    };
    let Once::Done(r) = rotate(claim(3, "r")).await.unwrap() else {
        panic!("rotates")
    };
    let Once::Replayed(again) = rotate(claim(3, "r")).await.unwrap() else {
        panic!("replays")
    };
    assert_eq!(again.answer.sealed, r.new.id.as_str().as_bytes());
    assert!(matches!(
        rotate(claim(4, "r")).await,
        Err(StoreError::KeyRevoked(_))
    ));

    // Expired records are dropped: the claim is free again.
    f.clock.advance(Duration::from_secs(3601));
    let fresh = s
        .create_key_once(&actor(), "Acme Sportsbook", new(), &claim(1, "a"), seal)
        .await
        .unwrap();
    assert!(matches!(fresh, Once::Done(_)));
}

/// Self-service: registration makes an account and its key in one write; a child account
/// ("portfolio bot") belongs to one parent, whose key may replace the child's keys; metadata
/// is set, replaced and removed field by field.
async fn accounts_children_metadata_and_key_replacement(f: Fixture) {
    let s = &f.store;
    let id = keygate_core::ClientId::generate();
    let (plain, m) = material(&KeyFormat::default());
    let (parent, first) = s
        .create_client_with_key(
            &Actor(format!("self:{id}")),
            NewClient {
                id: Some(id.clone()),
                name: "RiverRat".into(),
                plan: "free".into(),
                metadata: [("email".to_owned(), "rr@example.com".to_owned())].into(),
                ..NewClient::default()
            },
            NewKey {
                material: m,
                label: "primary".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(parent.id, id);
    assert_eq!(first.client_id, id);
    assert!(!plain.is_empty());
    let read = s.client(id.as_str()).await.unwrap();
    assert_eq!(read.metadata["email"], "rr@example.com");
    assert_eq!(read.parent, None);
    let audit = s
        .audit(&AuditFilter {
            actor: Some(format!("self:{id}")),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.create", "client.create"]);

    // A failed registration (taken name) leaves nothing behind.
    let before = audit_len(s).await;
    let (_, m) = material(&KeyFormat::default());
    let taken = s
        .create_client_with_key(
            &actor(),
            NewClient {
                name: "RiverRat".into(),
                plan: "free".into(),
                ..NewClient::default()
            },
            NewKey {
                material: m,
                label: String::new(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await;
    assert!(matches!(taken, Err(StoreError::DuplicateClient(_))));
    assert_eq!(audit_len(s).await, before);

    // Metadata patch: set one field, remove another.
    let updated = s
        .update_client(
            &actor(),
            id.as_str(),
            ClientUpdate {
                metadata: [
                    ("wallet_address".to_owned(), Some("0xabc".to_owned())),
                    ("email".to_owned(), None),
                ]
                .into(),
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        updated.metadata,
        [("wallet_address".to_owned(), "0xabc".to_owned())].into()
    );
    assert_eq!(
        s.client(id.as_str()).await.unwrap().metadata,
        updated.metadata
    );

    // Children: one level only, and the parent must exist.
    let child = s
        .create_client(
            &actor(),
            NewClient {
                name: "RiverRat bot 1".into(),
                plan: "free".into(),
                parent: Some("RiverRat".into()),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(child.parent.as_ref(), Some(&id));
    for parent in ["RiverRat bot 1", "nobody"] {
        let err = s
            .create_client(
                &actor(),
                NewClient {
                    name: format!("grandchild of {parent}"),
                    plan: "free".into(),
                    parent: Some(parent.into()),
                    ..NewClient::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidParent(_)), "{err}");
    }
    let (_, k1) = new_key(s, "RiverRat bot 1").await;
    let (_, k2) = new_key(s, "RiverRat bot 1").await;
    let other = acme(s).await;
    let (_, m) = material(&KeyFormat::default());

    // Someone else's account is "not found", and nothing changes.
    let before = s.version().await.unwrap();
    let err = s
        .replace_keys(&actor(), &child.id, Some(&other.id), m.clone(), "bot")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ClientNotFound(_)), "{err}");
    assert_eq!(s.version().await.unwrap(), before);

    let r = s
        .replace_keys(&Actor(format!("self:{id}")), &child.id, Some(&id), m, "bot")
        .await
        .unwrap();
    let mut expected = vec![k1.id.clone(), k2.id.clone()];
    expected.sort();
    let mut got = r.revoked.clone();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(r.new.client_id, child.id);
    assert_eq!(r.new.state, KeyState::Active);
    for old in [&k1, &k2] {
        let k = s.key(&old.id).await.unwrap();
        assert_eq!(k.state, KeyState::Revoked);
        assert_eq!(k.replaced_by.as_ref(), Some(&r.new.id));
    }
    let delta = s.delta_since(before).await.unwrap();
    let revoked: Vec<_> = delta
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Revoked)
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(revoked.len(), 2, "the feed carries both revocations");
    let replaced = s
        .audit(&AuditFilter {
            action: Some("key.replace".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].actor, format!("self:{id}"));
    assert_eq!(replaced[0].target, child.id.as_str());
}

async fn amqp_feeds_are_stored_without_passwords_with_feed_and_audit(f: Fixture) {
    let s = &f.store;
    let client = acme(s).await;
    let other = s
        .create_client(
            &actor(),
            NewClient {
                name: "Other".into(),
                plan: "pro".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let v0 = s.version().await.unwrap();
    let mut feed = keygate_store::AmqpFeed {
        client_id: client.id.as_str().to_owned(),
        slug: "acme-sportsbook".into(),
        vhost: "acme-sportsbook".into(),
        username: "op-acme-sportsbook".into(),
        password_hash: "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR".into(),
        state: keygate_store::FeedState::Active,
        created_at: s.now(),
        rotated_at: None,
        revoked_at: None,
    };
    s.put_amqp_feed(
        &actor(),
        &feed,
        "provision",
        serde_json::json!({ "slug": "acme-sportsbook" }),
    )
    .await
    .unwrap();
    assert!(s.version().await.unwrap() > v0, "a feed write is a change");
    let read = s.amqp_feed(client.id.as_str()).await.unwrap().unwrap();
    assert_eq!(read.feed, feed);
    assert_eq!(read.client_name, "Acme Sportsbook");
    assert!(read.client_active);
    // The hash never leaves through serialization (the CLI's and the API's JSON).
    assert!(!serde_json::to_string(&read.feed).unwrap().contains("kI3GC"));
    // Another client cannot hold the same slug, vhost or user.
    let mut taken = feed.clone();
    taken.client_id = other.id.as_str().to_owned();
    assert!(matches!(
        s.put_amqp_feed(&actor(), &taken, "provision", serde_json::json!({}))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let holder = s
        .amqp_feed_by_name("x", "y", "op-acme-sportsbook")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder.feed.client_id, client.id.as_str());
    // Revocation replaces the row; the client's state comes with it.
    feed.state = keygate_store::FeedState::Revoked;
    feed.revoked_at = Some(s.now());
    s.put_amqp_feed(&actor(), &feed, "revoke", serde_json::json!({}))
        .await
        .unwrap();
    s.set_client_active(&actor(), client.id.as_str(), false)
        .await
        .unwrap();
    let all = s.amqp_feeds().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].feed.state, keygate_store::FeedState::Revoked);
    assert!(!all[0].client_active);
    s.audit_amqp(
        &actor(),
        "reconcile",
        "op-x",
        serde_json::json!({ "drift": "orphan_user" }),
    )
    .await
    .unwrap();
    let audit = s
        .audit(&AuditFilter {
            action: Some("amqp.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["amqp.reconcile", "amqp.revoke", "amqp.provision"]);
    assert!(audit
        .iter()
        .all(|a| !a.detail.to_string().contains("kI3GC")));
}

/// The portal's sign-in: a link opens one session, once, within its 15 minutes; a session ends
/// at its expiry, at sign-out, and when its user or client is disabled.
async fn portal_links_open_one_session_and_disabling_ends_it(f: Fixture) {
    let s = &f.store;
    let client = acme(s).await;
    let ann = s
        .ensure_portal_user(&actor(), &client.name, " Ann@Acme.test ")
        .await
        .unwrap();
    assert_eq!(ann.email, "ann@acme.test");
    assert!(ann.id.as_str().starts_with("pu_"));
    // Inviting again is the same user; another client cannot take the address.
    let again = s
        .ensure_portal_user(&actor(), client.id.as_str(), "ann@acme.test")
        .await
        .unwrap();
    assert_eq!(again, ann);
    let other = s
        .create_client(
            &actor(),
            NewClient {
                name: "Other".into(),
                plan: "free".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let taken = s
        .ensure_portal_user(&actor(), &other.name, "ann@acme.test")
        .await
        .unwrap_err();
    assert!(matches!(taken, StoreError::PortalUserTaken(_)), "{taken}");
    let bad = s
        .ensure_portal_user(&actor(), &client.name, "ann@acme.test\r\nBcc: x@evil.test")
        .await
        .unwrap_err();
    assert!(matches!(bad, StoreError::InvalidEmail(_)), "{bad}");
    assert_eq!(s.portal_users(&client.id).await.unwrap(), vec![ann.clone()]);
    assert_eq!(
        s.active_portal_user("ANN@acme.test").await.unwrap(),
        Some(ann.clone())
    );
    assert_eq!(
        s.active_portal_user("nobody@acme.test").await.unwrap(),
        None
    );

    let fifteen = Duration::from_secs(15 * 60);
    let day = Duration::from_secs(86_400);
    let expires = s
        .create_sign_in_link(&ann.id, b"link-1", fifteen)
        .await
        .unwrap();
    assert_eq!(expires.as_millis(), T0 + 15 * 60 * 1000);
    let session = s
        .redeem_sign_in_link(b"link-1", b"session-1", day)
        .await
        .unwrap();
    assert_eq!(session.user, ann);
    assert_eq!(
        s.portal_session(b"session-1").await.unwrap(),
        Some(session.clone())
    );
    // Single use, unknown links and expired links are refused.
    let refused = |e: StoreError| match e {
        StoreError::SignInRefused(r) => r,
        other => panic!("{other}"),
    };
    let reuse = s
        .redeem_sign_in_link(b"link-1", b"session-2", day)
        .await
        .unwrap_err();
    assert_eq!(refused(reuse), LinkRefusal::Used);
    let unknown = s
        .redeem_sign_in_link(b"nope", b"session-2", day)
        .await
        .unwrap_err();
    assert_eq!(refused(unknown), LinkRefusal::Unknown);
    s.create_sign_in_link(&ann.id, b"link-2", fifteen)
        .await
        .unwrap();
    f.clock.advance(fifteen);
    let late = s
        .redeem_sign_in_link(b"link-2", b"session-2", day)
        .await
        .unwrap_err();
    assert_eq!(refused(late), LinkRefusal::Expired);
    assert_eq!(s.portal_session(b"session-2").await.unwrap(), None);

    // Sign-out ends the session.
    s.create_sign_in_link(&ann.id, b"link-3", fifteen)
        .await
        .unwrap();
    s.redeem_sign_in_link(b"link-3", b"session-3", day)
        .await
        .unwrap();
    s.revoke_portal_session(b"session-3").await.unwrap();
    assert_eq!(s.portal_session(b"session-3").await.unwrap(), None);

    // The session's lifetime ends it.
    f.clock.advance(day);
    assert_eq!(s.portal_session(b"session-1").await.unwrap(), None);

    // Disabling the client, then the user, ends a live session at once.
    s.create_sign_in_link(&ann.id, b"link-4", fifteen)
        .await
        .unwrap();
    s.redeem_sign_in_link(b"link-4", b"session-4", day)
        .await
        .unwrap();
    s.set_client_active(&actor(), &client.name, false)
        .await
        .unwrap();
    assert_eq!(s.portal_session(b"session-4").await.unwrap(), None);
    assert_eq!(s.active_portal_user("ann@acme.test").await.unwrap(), None);
    s.set_client_active(&actor(), &client.name, true)
        .await
        .unwrap();
    assert!(s.portal_session(b"session-4").await.unwrap().is_some());
    s.set_portal_user_disabled(&actor(), "ann@acme.test", true)
        .await
        .unwrap();
    assert_eq!(s.portal_session(b"session-4").await.unwrap(), None);
    s.set_portal_user_disabled(&actor(), "ann@acme.test", false)
        .await
        .unwrap();
    // Revoked, not merely hidden: enabling the user again does not bring the session back.
    assert_eq!(s.portal_session(b"session-4").await.unwrap(), None);
    // A link of a disabled user opens nothing, and is spent.
    s.create_sign_in_link(&ann.id, b"link-5", fifteen)
        .await
        .unwrap();
    s.set_portal_user_disabled(&actor(), "ann@acme.test", true)
        .await
        .unwrap();
    let off = s
        .redeem_sign_in_link(b"link-5", b"session-5", day)
        .await
        .unwrap_err();
    assert_eq!(refused(off), LinkRefusal::Disabled);
    let audit = s
        .audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for a in [
        "portal_user.create",
        "portal.sign_in",
        "portal_user.disable",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

async fn the_broker_lease_has_one_holder_until_it_expires_or_is_given_up(f: Fixture) {
    let s = &f.store;
    let v0 = s.version().await.unwrap();
    let a = s
        .amqp_lease("node-a", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(a.held);
    assert_eq!(a.holder.as_deref(), Some("node-a"));
    let b = s
        .amqp_lease("node-b", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(!b.held, "a live lease is not taken");
    assert_eq!(b.holder.as_deref(), Some("node-a"));
    // Renewed by its holder, it outlives its first expiry.
    f.clock.advance(Duration::from_secs(2));
    assert!(
        s.amqp_lease("node-a", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    f.clock.advance(Duration::from_secs(2));
    assert!(
        !s.amqp_lease("node-b", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    // Unrenewed, another node takes it.
    f.clock.advance(Duration::from_secs(3));
    assert!(
        s.amqp_lease("node-b", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    assert!(
        !s.amqp_lease("node-a", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    // Given up, it is free at once; only the holder can give it up.
    s.release_amqp_lease("node-a").await.unwrap();
    assert!(
        !s.amqp_lease("node-a", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    s.release_amqp_lease("node-b").await.unwrap();
    assert!(
        s.amqp_lease("node-a", Duration::from_secs(3))
            .await
            .unwrap()
            .held
    );
    assert_eq!(
        s.version().await.unwrap(),
        v0,
        "lease renewals wake no feed reader"
    );
}

async fn a_deleted_client_is_hidden_its_keys_revoked_and_its_name_kept(f: Fixture) {
    let s = &f.store;
    let client = acme(s).await;
    let (_, m) = material(&KeyFormat::default());
    let key = s
        .create_key(
            &actor(),
            client.id.as_str(),
            NewKey {
                material: m,
                label: "p".into(),
                expires_at: None,
                restrictions: Default::default(),
            },
        )
        .await
        .unwrap();
    let v0 = s.version().await.unwrap();
    let deleted = s.delete_client(&actor(), "Acme Sportsbook").await.unwrap();
    assert_eq!((deleted.keys_revoked, deleted.portal_users), (1, 0));
    assert!(deleted.feed.is_none());
    assert!(matches!(
        s.client("Acme Sportsbook").await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(matches!(
        s.client(client.id.as_str()).await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(s
        .list_clients(&ClientFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.key(&key.id).await.unwrap().state, KeyState::Revoked);
    // The replicas learn it from the feed: the client inactive, its key revoked.
    let delta = s.delta_since(v0).await.unwrap();
    assert!(delta.clients.iter().any(|c| c.id == client.id && !c.active));
    assert!(delta
        .keys
        .iter()
        .any(|k| k.id == key.id && k.state == KeyState::Revoked));
    assert!(matches!(
        s.delete_client(&actor(), "Acme Sportsbook").await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(matches!(
        s.set_client_active(&actor(), client.id.as_str(), true)
            .await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert!(matches!(
        acme_again(s).await,
        Err(StoreError::DuplicateClient(_))
    ));
    let audit = s.audit(&AuditFilter::default()).await.unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "client.delete" && e.target == client.id.as_str()));
    assert!(audit
        .iter()
        .any(|e| e.action == "client.create" && e.target == client.id.as_str()));
}

async fn suspensions_are_stored_replicated_audited_and_run_out(f: Fixture) {
    use keygate_core::suspension::Target;
    use keygate_store::NewSuspension;
    let s = &f.store;
    let client = acme(s).await;
    let v0 = s.version().await.unwrap();
    assert!(s.snapshot().await.unwrap().suspensions.is_empty());
    let sport = |until: Option<Timestamp>| NewSuspension {
        target: Target::Sport(Slug::new("cs2").unwrap()),
        client: None,
        message: Some("Integrity hold.".into()),
        until,
    };
    let held = s.create_suspension(&actor(), sport(None)).await.unwrap();
    assert_eq!(held.created_by, "test:suite");
    f.clock.advance(Duration::from_millis(1));
    // For one client, by name; kept by id.
    let mine = s
        .create_suspension(
            &actor(),
            NewSuspension {
                target: Target::Bookmaker(Slug::new("bet365").unwrap()),
                client: Some("Acme Sportsbook".into()),
                message: None,
                until: Some(Timestamp::from_millis(T0 + 60_000)),
            },
        )
        .await
        .unwrap();
    assert_eq!(mine.client_id.as_ref(), Some(&client.id));
    // Every node sees both through the feed.
    let d = s.delta_since(v0).await.unwrap();
    assert_eq!(
        d.suspensions.as_deref(),
        Some(&[held.clone(), mine.clone()][..])
    );
    assert!(s
        .delta_since(d.version)
        .await
        .unwrap()
        .suspensions
        .is_none());
    assert_eq!(s.snapshot().await.unwrap().suspensions.len(), 2);
    assert_eq!(s.suspension(held.id.as_str()).await.unwrap(), held);

    // Refused: a bad message, a past `until`, an unknown client; nothing written.
    let v1 = s.version().await.unwrap();
    let bad = NewSuspension {
        message: Some("x\ny".into()),
        ..sport(None)
    };
    assert!(matches!(
        s.create_suspension(&actor(), bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.create_suspension(&actor(), sport(Some(Timestamp::from_millis(T0))))
            .await,
        Err(StoreError::UntilInPast(_))
    ));
    let nobody = NewSuspension {
        client: Some("Nobody".into()),
        ..sport(None)
    };
    assert!(matches!(
        s.create_suspension(&actor(), nobody).await,
        Err(StoreError::ClientNotFound(_))
    ));
    assert_eq!(s.version().await.unwrap(), v1);

    // Lifted: gone from what nodes hold, kept in `all` with who lifted it; twice is harmless.
    let lifted = s.lift_suspension(&actor(), held.id.as_str()).await.unwrap();
    assert!(lifted.lifted_at.is_some());
    assert_eq!(
        s.lift_suspension(&actor(), held.id.as_str()).await.unwrap(),
        lifted
    );
    assert!(matches!(
        s.lift_suspension(&actor(), "sus_0000000000000000").await,
        Err(StoreError::SuspensionNotFound(_))
    ));
    let d = s.delta_since(v1).await.unwrap();
    assert_eq!(d.suspensions, Some(vec![mine.clone()]));
    // `until` passes by the clock alone: no write, no longer in force.
    f.clock.advance(Duration::from_secs(60));
    assert!(s.suspensions(false).await.unwrap().is_empty());
    assert_eq!(s.suspensions(true).await.unwrap().len(), 2);
    let audit = s
        .audit(&AuditFilter {
            action: Some("suspension.".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["suspension.lift", "suspension.create", "suspension.create"]
    );
    // The cap on suspensions in force.
    for i in 0..keygate_store::MAX_ACTIVE_SUSPENSIONS {
        let new = NewSuspension {
            target: Target::Sport(Slug::new(&format!("s{i}")).unwrap()),
            ..sport(None)
        };
        s.create_suspension(&actor(), new).await.unwrap();
    }
    assert!(matches!(
        s.create_suspension(&actor(), sport(None)).await,
        Err(StoreError::TooManySuspensions(_))
    ));
}

async fn acme_again(s: &Store) -> Result<keygate_core::Client, StoreError> {
    s.create_client(
        &actor(),
        NewClient {
            name: "Acme Sportsbook".into(),
            plan: "pro".into(),
            ..NewClient::default()
        },
    )
    .await
}

/// 1,200 keys (three insert batches) written at one feed version with one audit entry; a dry
/// run or a single bad line writes nothing; a re-run changes nothing.
async fn imported_keys_are_written_at_once_or_not_at_all(f: Fixture) {
    use keygate_core::import::{ImportKey, ImportProblem};
    let s = &f.store;
    let c = acme(s).await;
    let format = KeyFormat::default();
    let keys: Vec<ImportKey> = (0..1200u64)
        .map(|i| ImportKey {
            line: i + 1,
            client: if i % 2 == 0 {
                c.name.clone()
            } else {
                c.id.to_string()
            },
            material: material(&format).1,
            label: format!("imported {i}"),
            expires_at: None,
        })
        .collect();
    let before = s.version().await.unwrap();
    let dry = s
        .import_keys(&actor(), "keys.jsonl", &keys, true)
        .await
        .unwrap();
    assert_eq!((dry.imported, dry.unchanged, dry.version), (1200, 0, None));
    assert_eq!(
        s.version().await.unwrap(),
        before,
        "a dry run bumps no version"
    );

    let mut bad = keys.clone();
    bad[700].client = "nobody".into();
    bad[900].expires_at = Some(s.now());
    let refused = s
        .import_keys(&actor(), "keys.jsonl", &bad, false)
        .await
        .unwrap();
    assert_eq!(
        refused.problems,
        vec![
            (701, ImportProblem::ClientNotFound),
            (901, ImportProblem::ExpiryInPast)
        ]
    );
    assert_eq!(
        (refused.version, s.version().await.unwrap()),
        (None, before)
    );
    assert!(s.snapshot().await.unwrap().keys.is_empty());

    let done = s
        .import_keys(&actor(), "keys.jsonl", &keys, false)
        .await
        .unwrap();
    assert_eq!((done.imported, done.unchanged), (1200, 0));
    let version = done.version.unwrap();
    let delta = s.delta_since(before).await.unwrap();
    assert_eq!((delta.version, delta.keys.len()), (version, 1200));
    assert!(delta
        .keys
        .iter()
        .all(|k| k.state == KeyState::Active && k.client_id == c.id));
    let audit = s
        .audit(&AuditFilter {
            action: Some("key.import".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].detail["imported"], 1200);
    assert_eq!(audit[0].detail["version"], version);

    let again = s
        .import_keys(&actor(), "keys.jsonl", &keys, false)
        .await
        .unwrap();
    assert_eq!(
        (again.imported, again.unchanged, again.version),
        (0, 1200, None)
    );
    assert_eq!(s.version().await.unwrap(), version);

    let other = s
        .create_client(
            &actor(),
            NewClient {
                name: "Other".into(),
                plan: "pro".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let mut theirs = keys[..2].to_vec();
    theirs[0].client = other.name.clone();
    let mut fresh = theirs[1].clone();
    fresh.material = material(&format).1;
    fresh.line = 3;
    let mut dup = fresh.clone();
    dup.line = 4;
    dup.client = other.name.clone();
    theirs.extend([fresh, dup]);
    let conflict = s
        .import_keys(&actor(), "other.csv", &theirs, false)
        .await
        .unwrap();
    assert_eq!(
        conflict.problems,
        vec![
            (1, ImportProblem::OtherClient),
            (4, ImportProblem::DuplicateOfLine(3))
        ]
    );
    assert_eq!(conflict.unchanged, 1);
}

/// Nodes crossing the threshold together record a (key, hour) once: one row, one audit entry,
/// one disable; the next hour is a new record; no key material in the audit detail.
async fn key_sharing_is_recorded_once_per_key_and_hour(f: Fixture) {
    use keygate_store::{SharingAction, SHARING_ACTOR};
    let s = &f.store;
    let client = acme(s).await;
    let (plain, key) = new_key(s, &client.name).await;
    let hour = Timestamp::from_millis(T0 - T0.rem_euclid(3_600_000));
    let (a, b) = tokio::join!(
        s.record_key_sharing(&key.id, hour, 3, SharingAction::Disable),
        s.record_key_sharing(&key.id, hour, 4, SharingAction::Disable),
    );
    let recorded: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].client_id, client.id);
    assert_eq!(recorded[0].hour, hour);
    assert!(s
        .record_key_sharing(&key.id, hour, 9, SharingAction::Disable)
        .await
        .unwrap()
        .is_none());
    assert_eq!(s.key(&key.id).await.unwrap().state, KeyState::Disabled);
    let audit = s
        .audit(&AuditFilter {
            action: Some("key.sharing_suspected".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, SHARING_ACTOR);
    assert_eq!(audit[0].detail["action"], "disable");
    let disabled = s
        .audit(&AuditFilter {
            action: Some("key.disable".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].actor, SHARING_ACTOR);
    let text = audit[0].detail.to_string();
    assert!(
        !text.contains(&plain) && !text.contains(&key.hint),
        "{text}"
    );
    // The next hour is a new suspicion; the key stays disabled, nothing to change.
    let next = Timestamp::from_millis(hour.as_millis() + 3_600_000);
    f.clock.advance(Duration::from_secs(3_600));
    let again = s
        .record_key_sharing(&key.id, next, 5, SharingAction::Flag)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.action, SharingAction::Flag);
    let all = s.suspected_keys(None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].hour, next, "newest first");
    let recent = s
        .suspected_keys(Some(Timestamp::from_millis(T0 + 1)))
        .await
        .unwrap();
    assert_eq!(recent, vec![again]);
    assert!(matches!(
        s.record_key_sharing(&KeyId::generate(), hour, 3, SharingAction::Flag)
            .await,
        Err(StoreError::KeyNotFound(_))
    ));
}

suite!(
    "kg_test";
    clients_are_created_listed_and_unique,
    clients_are_updated_and_disabled,
    keys_are_created_and_listed_masked,
    rotation_revokes_at_once_or_after_grace,
    states_and_expiry,
    the_feed_reports_every_change_in_order,
    concurrent_writers_get_distinct_versions,
    admin_tokens_are_digests_and_can_be_revoked,
    emergency_mode_is_stored_replicated_and_audited,
    usage_adds_up_per_day_and_status,
    last_use_keeps_the_latest_time_without_a_feed_version,
    an_idempotent_create_or_rotate_happens_once,
    accounts_children_metadata_and_key_replacement,
    amqp_feeds_are_stored_without_passwords_with_feed_and_audit,
    portal_links_open_one_session_and_disabling_ends_it,
    the_broker_lease_has_one_holder_until_it_expires_or_is_given_up,
    a_deleted_client_is_hidden_its_keys_revoked_and_its_name_kept,
    suspensions_are_stored_replicated_audited_and_run_out,
    imported_keys_are_written_at_once_or_not_at_all,
    key_restrictions_narrow_are_stored_replicated_audited_and_found_by_external_id,
    key_sharing_is_recorded_once_per_key_and_hour,
    a_replacement_keeps_the_restrictions_of_the_key_it_replaces,
    websocket_egress_adds_up_per_client_and_day,
);

/// Issue 22: self-service regeneration (`replace_keys`) issues a key as narrow as the one it
/// replaces, within the client's scopes, and moves its external id; never an unrestricted key.
async fn a_replacement_keeps_the_restrictions_of_the_key_it_replaces(f: Fixture) {
    use keygate_core::key_restrictions::parse_cidr;
    use keygate_core::KeyRestrictions;
    let s = &f.store;
    let c = acme(s).await;
    let narrow = KeyRestrictions {
        scopes: Some(scopes(&["cs2:matches:list"])),
        allowed_cidrs: vec![parse_cidr("203.0.113.0/24").unwrap()],
        metadata: [("team".to_owned(), "odds".to_owned())].into(),
        external_id: Some("crm-7".into()),
    };
    let old = s
        .create_key(
            &actor(),
            c.name.as_str(),
            NewKey {
                material: material(&KeyFormat::default()).1,
                label: "bot".into(),
                expires_at: None,
                restrictions: narrow.clone(),
            },
        )
        .await
        .unwrap();
    let r = s
        .replace_keys(
            &actor(),
            &c.id,
            None,
            material(&KeyFormat::default()).1,
            "bot",
        )
        .await
        .unwrap();
    assert_eq!(r.revoked, std::slice::from_ref(&old.id));
    assert_eq!(r.new.restrictions, old.restrictions, "as narrow as before");
    assert_eq!(s.key(&r.new.id).await.unwrap().restrictions, narrow);
    let gone = s.key(&old.id).await.unwrap();
    assert_eq!(gone.state, KeyState::Revoked);
    assert_eq!(gone.restrictions.external_id, None, "the id moved");

    // A scope the client lost since is not given back to the key (nor refused).
    s.update_client(
        &actor(),
        c.name.as_str(),
        ClientUpdate {
            scopes: Some(scopes(&["cs2:matches:read"])),
            ..ClientUpdate::default()
        },
    )
    .await
    .unwrap();
    let again = s
        .replace_keys(
            &actor(),
            &c.id,
            None,
            material(&KeyFormat::default()).1,
            "bot",
        )
        .await
        .unwrap();
    assert_eq!(again.new.restrictions.scopes, Some(vec![]), "never wider");
    assert_eq!(again.new.restrictions.external_id.as_deref(), Some("crm-7"));
}

/// Issue 22: WebSocket egress rows add up per client and day, written with the usage flush.
async fn websocket_egress_adds_up_per_client_and_day(f: Fixture) {
    use keygate_store::{AnalyticsBatch, UsageWsRow};
    let s = &f.store;
    let c = acme(s).await;
    let row = |day: &str, messages: u64, bytes: u64| UsageWsRow {
        client_id: c.id.to_string(),
        day: day.into(),
        messages,
        bytes,
    };
    let none = AnalyticsBatch::default();
    s.add_counts(&[], &[row("2026-11-22", 5, 500)], &none)
        .await
        .unwrap();
    s.add_counts(
        &[],
        &[row("2026-11-22", 1, 20), row("2026-11-23", 2, 30)],
        &none,
    )
    .await
    .unwrap();
    assert_eq!(
        s.usage_ws(&c.id, "2026-11-01", "2026-11-30").await.unwrap(),
        [row("2026-11-22", 6, 520), row("2026-11-23", 2, 30)]
    );
    assert_eq!(
        s.usage_ws(&c.id, "2026-11-23", "2026-11-30")
            .await
            .unwrap()
            .len(),
        1
    );
    let other = keygate_core::ClientId::generate();
    assert!(s
        .usage_ws(&other, "2026-11-01", "2026-11-30")
        .await
        .unwrap()
        .is_empty());
}

/// Issue 22: a key's restrictions round-trip through both backends, reach the feed, are
/// audited, never widen the client, and its external id is unique per client, follows a
/// rotation and is found by a listing.
async fn key_restrictions_narrow_are_stored_replicated_audited_and_found_by_external_id(
    f: Fixture,
) {
    use keygate_core::key_restrictions::parse_cidr;
    use keygate_core::{KeyRestrictions, RestrictionsChange};
    let s = &f.store;
    acme(s).await;
    let restricted = |r: KeyRestrictions| NewKey {
        material: material(&KeyFormat::default()).1,
        label: String::new(),
        expires_at: Some(Timestamp::from_millis(T0 + 86_400_000)),
        restrictions: r,
    };
    let wanted = KeyRestrictions {
        scopes: Some(scopes(&["cs2:matches:list"])),
        allowed_cidrs: vec![
            parse_cidr("203.0.113.7/24").unwrap(),
            parse_cidr("2001:db8::/32").unwrap(),
        ],
        metadata: [("team".to_owned(), "odds".to_owned())].into(),
        external_id: Some("crm-42".into()),
    };
    let before = s.version().await.unwrap();
    let k = s
        .create_key(&actor(), "Acme Sportsbook", restricted(wanted.clone()))
        .await
        .unwrap();
    assert_eq!(
        k.restrictions.allowed_cidrs[0].to_string(),
        "203.0.113.0/24",
        "host bits cleared"
    );
    assert_eq!(s.key(&k.id).await.unwrap(), k, "read back as written");
    let delta = s.delta_since(before).await.unwrap();
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(
        delta.keys[0].restrictions, k.restrictions,
        "the feed carries them"
    );

    // Never wider than the client, at issue and at update; nothing is written.
    let wide = KeyRestrictions {
        scopes: Some(scopes(&["cs2:matches:read", "cs2:admin"])),
        ..KeyRestrictions::default()
    };
    let refused = s
        .create_key(&actor(), "Acme Sportsbook", restricted(wide))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::ScopeNotGranted(sc)) if sc == "cs2:admin"),
        "{refused:?}"
    );
    let widen = RestrictionsChange {
        scopes: Some(Some(scopes(&["cs2:admin"]))),
        ..RestrictionsChange::default()
    };
    assert!(matches!(
        s.set_key_restrictions(&actor(), &k.id, &widen).await,
        Err(StoreError::ScopeNotGranted(_))
    ));
    assert_eq!(s.key(&k.id).await.unwrap(), k);

    // Bounds hold at the store too (a caller that skipped the API's checks).
    let huge = KeyRestrictions {
        metadata: (0..10_000).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..KeyRestrictions::default()
    };
    assert!(matches!(
        s.create_key(&actor(), "Acme Sportsbook", restricted(huge))
            .await,
        Err(StoreError::InvalidRestriction(_))
    ));

    // The external id is the client's: taken by a live key, free again once it is revoked.
    let dup = KeyRestrictions {
        external_id: Some("crm-42".into()),
        ..KeyRestrictions::default()
    };
    assert!(matches!(
        s.create_key(&actor(), "Acme Sportsbook", restricted(dup.clone()))
            .await,
        Err(StoreError::DuplicateExternalId(_))
    ));
    let found = s
        .list_keys(&KeyFilter {
            external_id: Some("crm-42".into()),
            ..KeyFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|k| &k.id).collect::<Vec<_>>(), [&k.id]);

    // A change replaces what it names, keeps the rest, and is fed and audited.
    let v = s.version().await.unwrap();
    let changed = s
        .set_key_restrictions(
            &actor(),
            &k.id,
            &RestrictionsChange {
                scopes: Some(None),
                metadata: Some(Default::default()),
                ..RestrictionsChange::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.restrictions.scopes, None);
    assert!(changed.restrictions.metadata.is_empty());
    assert_eq!(
        changed.restrictions.allowed_cidrs,
        k.restrictions.allowed_cidrs
    );
    assert_eq!(changed.restrictions.external_id.as_deref(), Some("crm-42"));
    assert_eq!(s.delta_since(v).await.unwrap().keys, vec![changed.clone()]);
    let audit = s
        .audit(&AuditFilter {
            action: Some("key.restrict".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);

    // A rotation keeps the restrictions on the new key and moves the external id to it.
    let r = s
        .rotate_key(
            &actor(),
            &k.id,
            material(&KeyFormat::default()).1,
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r.new.restrictions, changed.restrictions);
    assert_eq!(r.old.restrictions.external_id, None);
    assert_eq!(
        s.key(&r.old.id).await.unwrap().restrictions.allowed_cidrs,
        changed.restrictions.allowed_cidrs,
        "the old key, in its grace, stays as narrow"
    );
    s.set_key_state(&actor(), &r.new.id, KeyState::Revoked)
        .await
        .unwrap();
    let reused = s
        .create_key(&actor(), "Acme Sportsbook", restricted(dup))
        .await
        .unwrap();
    assert_eq!(reused.restrictions.external_id.as_deref(), Some("crm-42"));

    // A key without restrictions stores none (NULL), and its JSON shows none.
    let (_, plain) = new_key(s, "Acme Sportsbook").await;
    let json = serde_json::to_value(&plain).unwrap();
    for field in ["scopes", "allowed_cidrs", "metadata", "external_id"] {
        assert!(json.get(field).is_none(), "{field} in {json}");
    }
}
