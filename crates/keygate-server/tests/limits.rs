//! Limits end to end: headers on every authenticated response, 429 bodies per profile, client
//! overrides, route limits, calendar quotas. The gateway's clock is a test clock, so outcomes
//! are counted, never timed.

mod common;

use std::num::NonZeroU64;
use std::time::Duration;

use common::{status_json, Harness};
use keygate_core::Clock;
use keygate_store::{ClientUpdate, LimitPatch};

const CONFIG: &str = r#"
[plans.pro]
limits = { per_minute = 600, by = "key" }

[plans.burst]
limits = { rps = 100 }

[plans.free]
limits = { per_day = 5 }

[[routes]]
name = "regenerate"
path = "/api/me/regenerate-key"
methods = ["POST"]
limits = { per_minute = 5, by = "key" }

[[routes]]
name = "everything"
path = "/{*rest}"
"#;

fn header(resp: &keygate_test::reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", resp.headers()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_response_reports_its_limit() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "pro").await;
    let (key, _) = h.key("Acme", None).await;
    let now = h.clock.now().as_secs();
    let resp = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ratelimit-limit"), "600");
    assert_eq!(header(&resp, "x-ratelimit-remaining"), "599");
    let reset: i64 = header(&resp, "x-ratelimit-reset").parse().unwrap();
    assert!(
        (now..=now + 60).contains(&reset),
        "reset {reset} vs now {now}"
    );
    assert_eq!(header(&resp, "ratelimit-policy"), "\"default\";q=600;w=60");
    assert!(
        header(&resp, "ratelimit").starts_with("\"default\";r=599;t="),
        "{}",
        header(&resp, "ratelimit")
    );
    assert!(resp.headers().get("retry-after").is_none());
    // Unauthenticated refusals carry no limit headers: nothing was counted.
    let anon = h.http.get(h.url("/data")).send().await.unwrap();
    assert!(anon.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_429_body_is_the_profiles_to_the_byte() {
    // Seed 000: {"detail": "Rate limit exceeded", "limit": "100", "retry_after": 1}
    let config = format!(
        "{CONFIG}\n[profile.errors.rate_limited]\nstatus = 429\nbody = {{ detail = \"Rate limit exceeded\", limit = \"{{limit}}\", retry_after = {{ var = \"retry_after\" }} }}\n"
    );
    let h = Harness::start(&config).await;
    h.client("Bursty", &[], &[], &[], "burst").await;
    let (key, _) = h.key("Bursty", None).await;
    for i in 0..100 {
        let resp = h
            .http
            .get(h.url("/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i} of the burst");
    }
    let resp = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "1");
    assert_eq!(header(&resp, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&resp, "content-type"), "application/json");
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        r#"{"detail":"Rate limit exceeded","limit":"100","retry_after":1}"#
    );
    assert_eq!(
        h.upstream.request_count(),
        100,
        "refused requests never reach the upstream"
    );

    // Time moves on: one emission interval (10 ms) later one more request fits.
    h.clock.advance(Duration::from_millis(10));
    let resp = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_overrides_and_route_limits() {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "pro").await;
    let (key, _) = h.key("Acme", None).await;
    // Route limit: 5/minute per key on regenerate, on top of the plan's 600/minute.
    for _ in 0..5 {
        let r = h
            .http
            .post(h.url("/api/me/regenerate-key"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = h
        .http
        .post(h.url("/api/me/regenerate-key"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit"), "5");
    let (_, ct, body) = status_json(r).await;
    assert_eq!(
        (ct.as_str(), body["code"].as_str()),
        ("application/problem+json", Some("rate_limited"))
    );
    let other = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "other routes are not affected");

    // A per-contract override replaces the plan's value for this client only.
    h.store
        .update_client(
            &common::actor(),
            "Acme",
            ClientUpdate {
                limits: LimitPatch {
                    per_minute: Some(NonZeroU64::new(2)),
                    ..LimitPatch::default()
                },
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    h.sync().await;
    let (fresh, _) = h.key("Acme", None).await;
    let first = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&first, "x-ratelimit-limit"), "2");
    let _ = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &fresh)
        .send()
        .await
        .unwrap();
    let third = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_admits_exactly_its_number_and_resets_at_utc_midnight() {
    let h = Harness::start(CONFIG).await;
    h.client("Free", &[], &[], &[], "free").await;
    let (key, _) = h.key("Free", None).await;
    let mut admitted = 0;
    for _ in 0..8 {
        if h.http
            .get(h.url("/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    let r = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let now_ms = h.clock.now().as_millis();
    let midnight = (now_ms / 86_400_000 + 1) * 86_400;
    assert_eq!(header(&r, "x-ratelimit-reset"), midnight.to_string());
    let retry: i64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    // The next UTC day starts from zero.
    h.clock
        .advance(Duration::from_secs(u64::try_from(retry).unwrap()));
    let r = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_styles_follow_the_profile() {
    let config =
        format!("{CONFIG}\n[profile.rate_limit_headers]\nreset = \"delta\"\nietf = false\n");
    let h = Harness::start(&config).await;
    h.client("Free", &[], &[], &[], "free").await;
    let (key, _) = h.key("Free", None).await;
    let r = h
        .http
        .get(h.url("/data"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    let delta: u64 = header(&r, "x-ratelimit-reset").parse().unwrap();
    assert!(delta <= 86_400, "a delta, not an epoch: {delta}");
    assert!(
        r.headers().get("ratelimit").is_none() && r.headers().get("ratelimit-policy").is_none()
    );
}

/// `when = "always"`: refusals report a budget too, read without consuming: an admitted
/// caller's own; a public route's `by = "source"` limits; else the guard's per-source budget
/// of failed authentications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_always_refusals_report_the_budget_without_consuming_it() {
    let config = r#"
[server]
max_body_bytes = 100

[plans.pro]
limits = { per_minute = 600, by = "key" }

[[routes]]
name = "admin"
path = "/admin"
scopes = ["admin"]

[[routes]]
name = "signup"
path = "/signup"
methods = ["POST"]
public = true
limits = { per_minute = 3, by = "source" }

[[routes]]
name = "everything"
path = "/{*rest}"

[profile.rate_limit_headers]
when = "always"
"#;
    let h = Harness::start(config).await;
    h.client("Acme", &[], &[], &[], "pro").await;
    let (key, _) = h.key("Acme", None).await;
    let now = h.clock.now().as_secs();
    let get = |path: &str, key: Option<&str>| {
        let mut req = h.http.get(h.url(path));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        req.send()
    };
    let ok = get("/data", Some(&key)).await.unwrap();
    assert_eq!(header(&ok, "x-ratelimit-remaining"), "599");
    let reset = header(&ok, "x-ratelimit-reset");
    // A 403 reports the key's budget as it stands, in every style, and consumes nothing.
    for _ in 0..3 {
        let r = get("/admin", Some(&key)).await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(header(&r, "x-ratelimit-limit"), "600");
        assert_eq!(header(&r, "x-ratelimit-remaining"), "599");
        assert_eq!(header(&r, "x-ratelimit-reset"), reset);
        assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=600;w=60");
        assert!(header(&r, "ratelimit").starts_with("\"default\";r=599;t="));
        assert!(
            r.headers().get("retry-after").is_none(),
            "a 403 is not a 429"
        );
    }
    let ok = get("/data", Some(&key)).await.unwrap();
    assert_eq!(header(&ok, "x-ratelimit-remaining"), "598");

    // A public route counted per source: a refused body is not counted against it.
    let post = |len: usize| h.http.post(h.url("/signup")).body(vec![b'x'; len]).send();
    let r = post(101).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        (
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining")
        ),
        ("3".to_owned(), "3".to_owned())
    );
    let r = post(10).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "2");
    assert_eq!(
        header(&post(101).await.unwrap(), "x-ratelimit-remaining"),
        "2"
    );

    // No key: the guard's budget for this address (30 failures a minute by default). A
    // missing key is not a guess; an unknown one is, and is counted.
    let r = get("/data", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        (
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining")
        ),
        ("30".to_owned(), "30".to_owned())
    );
    assert_eq!(header(&r, "x-ratelimit-reset"), now.to_string());
    assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=30;w=60");
    let (unknown, _) = h.issuer.issue();
    let r = get("/data", Some(unknown.expose())).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "29");
    assert_eq!(header(&r, "x-ratelimit-reset"), (now + 60).to_string());
    // Before any route: the same budget.
    let r = h.http.delete(h.url("/signup")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "29");
}

#[tokio::test]
async fn bad_limits_are_refused_at_load() {
    let overrides = keygate_server::Overrides {
        upstream: Some("http://127.0.0.1:1".into()),
        ..Default::default()
    };
    for (text, expected) in [
        (
            "[plans.x]\nlimits = { rps = 0 }\n",
            "plans.x.limits.rps: 0 is not a positive whole number (a limit of 0 would refuse every request",
        ),
        (
            "[plans.x]\nlimits = { per_day = -3 }\n",
            "plans.x.limits.per_day: -3 is not a positive whole number",
        ),
        (
            "[plans.x]\nlimits = { per_fortnight = 3 }\n",
            "unknown field `per_fortnight`",
        ),
        ("[plans.x]\nlimits = { rps = \"ten\" }\n", "invalid type"),
        (
            "[plans.x]\nlimits = { rps = 5, by = \"ip\" }\n",
            "`ip` is not `client`, `key` or `source`",
        ),
        (
            "[limits]\nbackend = \"redis\"\nredis_url = \"not a url\"\n",
            "limits.redis_url `not a url` does not parse",
        ),
        (
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis+sentinel://:s3cret@h1,h2:26380\"\n",
            "limits.redis_url `redis+sentinel://:***@h1,h2:26380` does not parse: no master name",
        ),
        ("[limits]\nbackend = \"redis\"\n", "needs limits.redis_url"),
        (
            "[limits]\nbackend = \"memcached\"\n",
            "`memcached` is not `local` or `redis`",
        ),
    ] {
        let err = keygate_server::config::load(text, "l.toml", &overrides)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.starts_with("l.toml:"), "{err}");
    }
}

/// Redis is cut mid-run: fail-open nodes keep limiting locally and say so in /metrics and
/// /status; fail-closed nodes refuse with the profile's 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_redis_falls_back_or_fails_closed() {
    let Some(redis) = keygate_test::redis_url() else {
        return;
    };
    let target: std::net::SocketAddr = redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for fail_closed in [false, true] {
        let relay = keygate_test::Relay::start(target).await;
        let config = format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://{}\"\ntimeout = \"200ms\"\nfail_closed = {fail_closed}\n\n{CONFIG}",
            relay.addr()
        );
        let h = Harness::start(&config).await;
        h.client("Acme", &[], &[], &[], "pro").await;
        let (key, _) = h.key("Acme", None).await;
        let ok = h
            .http
            .get(h.url("/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(header(&ok, "x-ratelimit-remaining"), "599");

        relay.cut();
        let resp = h
            .http
            .get(h.url("/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        let (_, _, status) =
            status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
        assert_eq!(status["limiter"]["degraded"], true, "{status}");
        let metrics = h
            .http
            .get(h.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("keygate_limiter_degraded 1"), "{metrics}");
        if fail_closed {
            let (code, _, body) = status_json(resp).await;
            assert_eq!(
                (code, body["code"].as_str()),
                (503, Some("limiter_unavailable")),
                "{body}"
            );
        } else {
            assert_eq!(resp.status(), 200, "fail-open: local limits answer");
            assert!(resp.headers().contains_key("x-ratelimit-remaining"));
            assert!(
                !metrics.contains("keygate_limiter_fallbacks_total 0\n"),
                "{metrics}"
            );
        }
        relay.restore().await;
    }
}

/// A node on Redis through Sentinel (`redis+sentinel://`; a primary, its replica and a
/// sentinel of the test's own) counts on the primary the sentinel names and answers 429 at
/// the plan's limit. Following a failover is tested in keygate-limits' `tests/sentinel.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_redis_through_sentinel_answers_429_at_the_plans_limit() {
    let dir = tempfile::tempdir().unwrap();
    let Some(set) = keygate_test::SentinelSet::start(dir.path(), None).await else {
        return;
    };
    let config = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\ntimeout = \"2s\"\nconnect_timeout = \"5s\"\n\n{CONFIG}",
        set.url()
    );
    let h = Harness::start(&config).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    let get = || h.http.get(h.url("/data")).header("X-API-Key", &key).send();
    for i in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200, "request {i}");
    }
    assert_eq!(get().await.unwrap().status(), 429);
    let (_, _, status) =
        status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
    assert_eq!(status["limiter"]["degraded"], false, "{status}");
    let counters: Vec<String> = set
        .primary
        .query(keygate_test::redis_server::redis::cmd("KEYS").arg("kg:l:*"))
        .await
        .unwrap_or_default();
    assert!(!counters.is_empty(), "counted on the primary");
}
