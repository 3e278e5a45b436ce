//! Operations on a live gateway: emergency mode switched in the store and followed by the data
//! plane, usage counted per client, day and status, and keys' last uses, then flushed to the
//! store.

mod common;

use std::time::{Duration, Instant};

use common::{actor, status_json, Harness};
use keygate_core::Clock;

const CONFIG: &str = r#"
[upstreams.default]
url = "{upstream}"

[[routes]]
name = "matches"
path = "/v1/matches"
scopes = ["matches:read"]

[[routes]]
name = "echo"
path = "/echo/{*rest}"
"#;

/// Waits until the gateway's emergency switch is `on`; the feed must bring it within a second.
async fn until_emergency(h: &Harness, on: bool) {
    let started = Instant::now();
    while h.gateway.gateway().emergency.is_on() != on {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "emergency mode did not reach the gateway within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_mode_refuses_everything_but_infra_and_ends_cleanly() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &["matches:read"], &[], &[], "default")
        .await;
    let (key, _) = h.key("Acme", None).await;
    let get = |path: &str| h.http.get(h.url(path)).header("x-api-key", &key);
    assert_eq!(get("/v1/matches").send().await.unwrap().status(), 200);

    let message = "Odds feed maintenance until 14:00 UTC.";
    h.store
        .set_emergency(&actor(), true, Some(message))
        .await
        .unwrap();
    until_emergency(&h, true).await;
    for path in ["/v1/matches", "/echo/a", "/v1/whoami", "/nowhere"] {
        let (status, ct, body) = status_json(get(path).send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("emergency")),
            "{path}: {body}"
        );
        assert_eq!(ct, "application/problem+json");
        assert_eq!(body["detail"], message, "{path}");
    }
    // Without a key too: nothing is looked up while the switch is on.
    let anonymous = h.http.get(h.url("/v1/matches")).send().await.unwrap();
    assert_eq!(anonymous.status(), 503);
    let verify = h
        .http
        .post(h.url("/v1/keys/verify"))
        .json(&serde_json::json!({ "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), 503);
    // Infra endpoints keep answering, so orchestrators do not restart the fleet.
    let health = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = h.http.get(h.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Without a message: the default sentence.
    h.store.set_emergency(&actor(), true, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (_, _, body) = status_json(get("/v1/matches").send().await.unwrap()).await;
        if body["detail"] == "The service is temporarily unavailable." {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    h.store.set_emergency(&actor(), false, None).await.unwrap();
    until_emergency(&h, false).await;
    assert_eq!(get("/v1/matches").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_per_client_day_and_status_and_flushed_at_shutdown() {
    let h = Harness::start(CONFIG).await;
    let acme = h
        .client("Acme", &["matches:read"], &[], &[], "default")
        .await;
    let other = h.client("Other", &[], &[], &[], "default").await;
    let (acme_key, _) = h.key("Acme", None).await;
    let (other_key, _) = h.key("Other", None).await;
    let get = |path: &str, key: &str| h.http.get(h.url(path)).header("x-api-key", key).send();
    for _ in 0..3 {
        assert_eq!(get("/v1/matches", &acme_key).await.unwrap().status(), 200);
    }
    assert_eq!(get("/echo/x", &acme_key).await.unwrap().status(), 200);
    // A refusal after authentication counts for the client it names.
    assert_eq!(get("/v1/matches", &other_key).await.unwrap().status(), 403);
    // An unknown key names no client: counted nowhere.
    assert_eq!(
        get("/v1/matches", "kg_unknownunknownunknownunknown0")
            .await
            .unwrap()
            .status(),
        401
    );

    let gw = &h.gateway.gateway();
    keygate_server::usage::flush(gw, &h.store).await.unwrap();
    let today = h.clock.now().utc_day();
    let rows = h.store.usage(&acme.id, &today, &today).await.unwrap();
    let counts: Vec<(u16, u64)> = rows.iter().map(|r| (r.status, r.requests)).collect();
    assert_eq!(counts, [(200, 4)]);
    let rows = h.store.usage(&other.id, &today, &today).await.unwrap();
    let counts: Vec<(u16, u64)> = rows.iter().map(|r| (r.status, r.requests)).collect();
    assert_eq!(counts, [(403, 1)]);
    // A flush with nothing new adds nothing.
    assert_eq!(keygate_server::usage::flush(gw, &h.store).await.unwrap(), 0);

    // Requests answered after the last periodic flush reach the store at shutdown.
    for _ in 0..2 {
        assert_eq!(get("/v1/matches", &acme_key).await.unwrap().status(), 200);
    }
    let common::Harness { gateway, store, .. } = h;
    gateway.shutdown().await;
    let rows = store.usage(&acme.id, &today, &today).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_last_use_is_recorded_once_a_minute_and_survives_a_store_outage() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "default").await;
    let (key, issued) = h.key("Acme", None).await;
    let (_, idle) = h.key("Acme", None).await;
    let get = || {
        h.http
            .get(h.url("/echo/x"))
            .header("x-api-key", &key)
            .send()
    };
    let gw = &h.gateway.gateway();
    let stored = |id: keygate_core::KeyId| {
        let store = h.store.clone();
        async move { store.key(&id).await.unwrap().last_used_at }
    };

    let first = h.clock.now();
    assert_eq!(get().await.unwrap().status(), 200);
    // A refusal after authentication is still a use of the key.
    let refused = h.http.get(h.url("/v1/matches")).header("x-api-key", &key);
    assert_eq!(refused.send().await.unwrap().status(), 403);
    keygate_server::usage::flush(gw, &h.store).await.unwrap();
    assert_eq!(stored(issued.id.clone()).await, Some(first));
    assert_eq!(stored(idle.id.clone()).await, None, "never used");

    // Within the minute, uses change nothing and queue nothing.
    h.clock.advance(Duration::from_secs(59));
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(gw.last_used.pending(), 0);
    assert_eq!(stored(issued.id.clone()).await, Some(first));

    // Past it, the next use moves the time.
    h.clock.advance(Duration::from_secs(2));
    let later = h.clock.now();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(gw.last_used.pending(), 1);
    keygate_server::usage::flush(gw, &h.store).await.unwrap();
    assert_eq!(stored(issued.id.clone()).await, Some(later));
    // An unknown key names no key: nothing queued.
    let unknown = h
        .http
        .get(h.url("/echo/x"))
        .header("x-api-key", "kg_unknownunknownunknownunknown0");
    assert_eq!(unknown.send().await.unwrap().status(), 401);
    assert_eq!(gw.last_used.pending(), 0);

    // A flush into a closed store fails and keeps the use for the next one.
    h.clock.advance(Duration::from_secs(61));
    let latest = h.clock.now();
    assert_eq!(get().await.unwrap().status(), 200);
    let closed = keygate_store::Store::open_with_clock(
        &h.dir.path().join("keygate.db").display().to_string(),
        keygate_store::OpenOptions::default(),
        h.clock.clone(),
    )
    .await
    .unwrap();
    closed.close().await;
    assert!(keygate_server::usage::flush(gw, &closed).await.is_err());
    assert_eq!(gw.last_used.pending(), 1, "kept for the next flush");
    keygate_server::usage::flush(gw, &h.store).await.unwrap();
    assert_eq!(stored(issued.id).await, Some(latest));
    assert_eq!(gw.last_used.pending(), 0);
}

/// Every family on `/metrics` declares its type once, before its samples, and the type is
/// what the numbers are: a `_total` is a counter and every counter is a `_total` (a counter
/// declared a gauge makes `rate()` wrong and alerts silent), histograms have their three
/// series, and nothing is sampled without a declaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_declares_the_type_it_is() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &["matches:read"], &[], &[], "default")
        .await;
    let (key, _) = h.key("Acme", None).await;
    // Something in each family that is only written when it has samples.
    for (path, api_key) in [("/v1/matches", key.as_str()), ("/v1/matches", "kg_nope")] {
        h.http
            .get(h.url(path))
            .header("X-API-Key", api_key)
            .send()
            .await
            .unwrap();
    }
    let text = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let mut types: std::collections::HashMap<&str, &str> = Default::default();
    let mut helps = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                types.insert(name, kind).is_none(),
                "{name} declared twice:\n{text}"
            );
            match kind {
                "counter" => assert!(name.ends_with("_total"), "counter {name} is not a _total"),
                "gauge" | "histogram" => {
                    assert!(!name.ends_with("_total"), "{name} is declared a {kind}")
                }
                other => panic!("{name}: unexpected type {other}"),
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helps.insert(name), "{name} has two HELP lines");
        } else if !line.is_empty() {
            let series = line.split(['{', ' ']).next().unwrap();
            let family = match ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s))
            {
                Some(base) if types.get(base) == Some(&"histogram") => base,
                _ => series,
            };
            assert!(
                types.contains_key(family),
                "{series} is sampled before (or without) its # TYPE:\n{text}"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert_eq!(
        types.get("keygate_limiter_fallbacks_total"),
        Some(&"counter")
    );
    assert_eq!(types.get("keygate_requests_total"), Some(&"counter"));
    assert_eq!(types.get("keygate_decision_seconds"), Some(&"histogram"));
    assert!(types.len() >= 15, "{types:?}");
    assert_eq!(helps.len(), types.len(), "a HELP for every family");
}
