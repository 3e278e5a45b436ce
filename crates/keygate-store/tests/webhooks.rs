//! The webhook outbox on both backends: events written by the write that causes them (and
//! only when it commits), fanned out once, claimed by one node at a time, settled, replayed,
//! deduplicated and pruned.

use std::time::Duration;

use keygate_core::{KeyFormat, KeyState, Timestamp};
use keygate_store::{
    Actor, DeliveryFilter, DeliveryState, EventType, KeyMaterial, NewClient, NewKey, Outcome,
    Store, StoreError,
};
use serde_json::Value;

const HOLD: Duration = Duration::from_secs(60);

mod common;

use common::{suite, Fixture};

fn actor() -> Actor {
    Actor("test:hooks".into())
}

async fn key(
    store: &Store,
    client: &str,
    expires_at: Option<Timestamp>,
) -> (String, keygate_core::ApiKey) {
    let (plain, material) = material();
    let k = store
        .create_key(
            &actor(),
            client,
            NewKey {
                material,
                label: "prod".into(),
                expires_at,
                restrictions: Default::default(),
            },
        )
        .await
        .unwrap();
    (plain, k)
}

/// A fresh key's plaintext and what the store keeps of it.
fn material() -> (String, KeyMaterial) {
    common::material(&KeyFormat::default())
}

/// Every delivery with its event body, oldest first.
async fn all(store: &Store) -> Vec<(keygate_store::Delivery, Value)> {
    let mut rows = store
        .deliveries(&DeliveryFilter {
            limit: 1000,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    rows.reverse();
    let mut out = Vec::new();
    for d in rows {
        let body = store.delivery_body(d.id).await.unwrap();
        out.push((d, serde_json::from_str(&body).unwrap()));
    }
    out
}

/// Routes every event to `all`, and key events to `keys` too.
fn route(event_type: &str) -> Vec<String> {
    let mut hooks = vec!["all".to_owned()];
    if event_type.starts_with("key.") {
        hooks.push("keys".to_owned());
    }
    hooks
}

async fn writes_announce_their_events_once_and_only_when_they_commit(f: Fixture) {
    let s = &f.store;
    let client = s
        .create_client(
            &actor(),
            NewClient {
                name: "Acme".into(),
                plan: "pro".into(),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let (plain_a, a) = key(s, "Acme", None).await;
    let rotation = s
        .rotate_key(&actor(), &a.id, material().1, None)
        .await
        .unwrap();
    let (plain_b, b) = key(s, "Acme", None).await;
    s.set_key_state(&actor(), &b.id, KeyState::Revoked)
        .await
        .unwrap();
    // Refused writes roll back and announce nothing.
    assert!(s
        .set_key_state(&actor(), &b.id, KeyState::Active)
        .await
        .is_err());
    s.set_client_active(&actor(), "Acme", false).await.unwrap();
    s.set_client_active(&actor(), "Acme", true).await.unwrap();

    assert_eq!(s.fan_out_events(100, &route).await.unwrap(), 5);
    assert_eq!(
        s.fan_out_events(100, &route).await.unwrap(),
        0,
        "an event is fanned out once"
    );
    let rows = all(s).await;
    let types: Vec<(&str, &str)> = rows
        .iter()
        .map(|(d, _)| (d.event_type.as_str(), d.webhook.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("key.created", "all"),
            ("key.created", "keys"),
            ("key.rotated", "all"),
            ("key.rotated", "keys"),
            ("key.created", "all"),
            ("key.created", "keys"),
            ("key.revoked", "all"),
            ("key.revoked", "keys"),
            ("client.disabled", "all"),
        ]
    );
    let (_, revoked) = &rows[6];
    assert_eq!(revoked["type"], "key.revoked");
    assert!(revoked["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(revoked["data"]["key"]["id"], b.id.as_str());
    assert_eq!(revoked["data"]["key"]["hint"], b.hint.as_str());
    assert_eq!(revoked["data"]["key"]["label"], "prod");
    assert_eq!(revoked["data"]["client"]["name"], "Acme");
    assert_eq!(revoked["data"]["client"]["id"], client.id.as_str());
    let (_, rotated) = &rows[2];
    assert_eq!(rotated["data"]["key"]["id"], a.id.as_str());
    assert_eq!(rotated["data"]["new_key"], rotation.new.id.as_str());
    for (_, body) in &rows {
        let text = body.to_string();
        assert!(!text.contains(&plain_a) && !text.contains(&plain_b));
        assert!(!text.contains("digest"), "{text}");
    }
    // Both deliveries of one event carry the same event.
    assert_eq!(rows[6].0.event_id, rows[7].0.event_id);
    assert_eq!(rows[6].1, rows[7].1);
}

async fn one_node_claims_a_delivery_until_it_settles_or_its_claim_runs_out(f: Fixture) {
    let s = &f.store;
    s.enqueue_event(EventType::LeakReported, serde_json::json!({"n": 1}), None)
        .await
        .unwrap();
    s.enqueue_event(EventType::Quota80, serde_json::json!({"n": 2}), None)
        .await
        .unwrap();
    s.fan_out_events(100, &|_| vec!["h".to_owned()])
        .await
        .unwrap();
    let a = s.claim_deliveries("node-a", 10, HOLD).await.unwrap();
    assert_eq!(a.len(), 2);
    assert!(
        s.claim_deliveries("node-b", 10, HOLD)
            .await
            .unwrap()
            .is_empty(),
        "claimed rows are not claimed again"
    );
    assert_eq!(a[0].event_type, "leak.reported");
    assert_eq!(a[0].attempts, 0);
    let delivered = Outcome::Delivered { status: 204 };
    assert!(
        !s.settle_delivery(a[0].id, "node-b", &delivered)
            .await
            .unwrap(),
        "only the claim's holder settles"
    );
    assert!(s
        .settle_delivery(a[0].id, "node-a", &delivered)
        .await
        .unwrap());
    let retry_at = s.now().plus(Duration::from_secs(10));
    let retry = Outcome::Retry {
        status: Some(500),
        error: "the receiver answered 500".into(),
        at: retry_at,
    };
    assert!(s.settle_delivery(a[1].id, "node-a", &retry).await.unwrap());
    assert!(s
        .claim_deliveries("node-b", 10, HOLD)
        .await
        .unwrap()
        .is_empty());
    f.clock.advance(Duration::from_secs(10));
    let b = s.claim_deliveries("node-b", 10, HOLD).await.unwrap();
    assert_eq!(
        (b.len(), b[0].attempts),
        (1, 1),
        "due again after its backoff"
    );
    // A claim that runs out (its node died) is taken by another node.
    f.clock.advance(HOLD);
    let again = s.claim_deliveries("node-a", 10, HOLD).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        !s.settle_delivery(b[0].id, "node-b", &delivered)
            .await
            .unwrap(),
        "a node whose claim ran out changes nothing"
    );
    let dead = Outcome::Dead {
        status: None,
        error: "no answer within 1s".into(),
    };
    assert!(s
        .settle_delivery(again[0].id, "node-a", &dead)
        .await
        .unwrap());

    let shown = s.delivery(again[0].id).await.unwrap();
    assert_eq!(shown.state, DeliveryState::Dead);
    assert_eq!(shown.attempts, 2);
    assert_eq!(shown.last_error.as_deref(), Some("no answer within 1s"));
    let dead_list = s
        .deliveries(&DeliveryFilter {
            state: Some(DeliveryState::Dead),
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead_list.len(), 1);

    // Replay: pending and due now, attempts anew, audited; a pending one is not replayed.
    let replayed = s.replay_delivery(&actor(), again[0].id).await.unwrap();
    assert_eq!(
        (replayed.state, replayed.attempts),
        (DeliveryState::Pending, 0)
    );
    assert!(matches!(
        s.replay_delivery(&actor(), again[0].id).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.replay_delivery(&actor(), 999_999).await,
        Err(StoreError::DeliveryNotFound(999_999))
    ));
    let audit = s
        .audit(&keygate_store::AuditFilter {
            action: Some("webhook.replay".into()),
            ..keygate_store::AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    let claimed = s.claim_deliveries("node-b", 10, HOLD).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(s
        .settle_delivery(claimed[0].id, "node-b", &delivered)
        .await
        .unwrap());
    // A delivered one can be replayed too.
    s.replay_delivery(&actor(), a[0].id).await.unwrap();
}

async fn expiring_keys_and_deduplicated_events_are_made_once_and_pruned(f: Fixture) {
    let s = &f.store;
    s.create_client(
        &actor(),
        NewClient {
            name: "Acme".into(),
            plan: "pro".into(),
            ..NewClient::default()
        },
    )
    .await
    .unwrap();
    let day = Duration::from_secs(86_400);
    let soon = s.now().plus(day * 3);
    let (_, k) = key(s, "Acme", Some(soon)).await;
    key(s, "Acme", Some(s.now().plus(day * 30))).await;
    assert_eq!(s.enqueue_expiring(day * 7).await.unwrap(), 1);
    assert_eq!(
        s.enqueue_expiring(day * 7).await.unwrap(),
        0,
        "once per key and expiry, however many nodes scan"
    );
    // A new expiry is announced again.
    s.set_key_expiry(&actor(), &k.id, Some(s.now().plus(day * 2)))
        .await
        .unwrap();
    assert_eq!(s.enqueue_expiring(day * 7).await.unwrap(), 1);

    let data = serde_json::json!({"client": "x"});
    assert!(s
        .enqueue_event(
            EventType::Quota100,
            data.clone(),
            Some("quota.100:x:2026-09")
        )
        .await
        .unwrap()
        .is_some());
    assert!(s
        .enqueue_event(EventType::Quota100, data, Some("quota.100:x:2026-09"))
        .await
        .unwrap()
        .is_none());

    s.fan_out_events(100, &|_| vec!["h".to_owned()])
        .await
        .unwrap();
    let claimed = s.claim_deliveries("n", 100, HOLD).await.unwrap();
    // Two key.created, two key.expiring, one quota.100.
    assert_eq!(claimed.len(), 5);
    for d in &claimed[1..] {
        s.settle_delivery(d.id, "n", &Outcome::Delivered { status: 200 })
            .await
            .unwrap();
    }
    f.clock.advance(day * 31);
    let cutoff = Timestamp::from_millis(s.now().as_millis() - 30 * 86_400_000);
    s.prune_webhook_events(cutoff).await.unwrap();
    let left = s
        .deliveries(&DeliveryFilter {
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![claimed[0].id],
        "settled deliveries are pruned, pending ones kept"
    );
}

suite!(
    "kg_hooks";
    writes_announce_their_events_once_and_only_when_they_commit,
    one_node_claims_a_delivery_until_it_settles_or_its_claim_runs_out,
    expiring_keys_and_deduplicated_events_are_made_once_and_pruned,
);
