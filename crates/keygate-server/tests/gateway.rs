//! End-to-end: a real upstream, the gateway on a random port, a real SQLite file, real HTTP.

mod common;

use std::time::Duration;

use common::{status_json, Harness};
use keygate_core::{KeyState, Timestamp};
use keygate_test::reqwest;

const CONFIG: &str = r#"
[upstreams.default]
url = "{upstream}"

[upstreams.slow]
url = "{upstream}"
timeout = "300ms"

[upstreams.dead]
url = "http://127.0.0.1:9"
connect_timeout = "300ms"

[plans.pro]
features = ["live"]

[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
methods = ["GET"]
scopes = ["matches:read"]
sport_param = "sport"
bookmaker = "query:bookmaker"

[[routes]]
name = "live"
path = "/{sport}/v1/live"
sport_param = "sport"
features = ["live"]

[[routes]]
name = "odds"
path = "/odds"
bookmaker = "query:bookmaker"
bookmaker_required = true

[[routes]]
name = "slow"
path = "/slow/{ms}"
upstream = "slow"

[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"

[[routes]]
name = "sse"
path = "/sse"

[[routes]]
name = "status"
path = "/status/{code}"
public = true

[[routes]]
name = "echo"
path = "/echo/{*rest}"

[profile]
credentials = ["header:X-API-Key", "bearer", "query:api_key"]
"#;

async fn setup() -> (Harness, String) {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &["matches:read"], &["cs2"], &[], "pro")
        .await;
    let (key, _) = h.key("Acme", None).await;
    (h, key)
}

async fn expect(h: &Harness, req: reqwest::RequestBuilder, status: u16, code: &str) {
    let (got, ct, body) = status_json(req.send().await.unwrap()).await;
    assert_eq!(
        (got, body["code"].as_str().unwrap_or("")),
        (status, code),
        "body: {body}"
    );
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["status"], status);
    let _ = h;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_has_its_status_and_code() {
    let (h, key) = setup().await;
    let get = |p: &str| h.http.get(h.url(p));
    let ok = get("/cs2/v1/matches")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    expect(&h, get("/cs2/v1/matches"), 401, "missing_key").await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", ""),
        401,
        "missing_key",
    )
    .await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", "kg_short"),
        401,
        "malformed_key",
    )
    .await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", format!("{key} x")),
        401,
        "malformed_key",
    )
    .await;
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", String::from_utf8(typo).unwrap()),
        401,
        "malformed_key",
    )
    .await;
    let (other, _) = h.issuer.issue();
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", other.expose()),
        401,
        "unknown_key",
    )
    .await;
    expect(
        &h,
        get("/cs2/v1/matches")
            .header("X-API-Key", &key)
            .bearer_auth(other.expose()),
        400,
        "conflicting_credentials",
    )
    .await;
    expect(
        &h,
        get("/dota2/v1/matches").header("X-API-Key", &key),
        403,
        "sport_not_allowed",
    )
    .await;
    expect(
        &h,
        get("/nope/v1/nothing").header("X-API-Key", &key),
        404,
        "not_found",
    )
    .await;
    expect(
        &h,
        h.http
            .post(h.url("/cs2/v1/matches"))
            .header("X-API-Key", &key),
        405,
        "method_not_allowed",
    )
    .await;
    expect(
        &h,
        get("/cs2/v1/matches")
            .header("X-API-Key", &key)
            .header("Accept", "text/html"),
        406,
        "not_acceptable",
    )
    .await;
    // HTTP clients normalize dot segments away, so these go over a raw socket.
    for path in [
        "/cs2/v1/../dota2/v1/matches",
        "/cs2/v1/%2e%2e/x",
        "/cs2%2Fv1/matches",
    ] {
        let raw = common::raw_request(
            h.gateway.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 400"), "{path}: {raw}");
        assert!(raw.contains("bad_request"), "{raw}");
    }
    expect(
        &h,
        get("/dead").header("X-API-Key", &key),
        502,
        "upstream_unavailable",
    )
    .await;
    expect(
        &h,
        get("/slow/2000").header("X-API-Key", &key),
        504,
        "upstream_timeout",
    )
    .await;

    // Scope, bookmaker and plan feature, on a narrower client.
    h.client("Narrow", &[], &["cs2"], &["pinnacle"], "free")
        .await;
    let (narrow, _) = h.key("Narrow", None).await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", &narrow),
        403,
        "scope_missing",
    )
    .await;
    expect(
        &h,
        get("/cs2/v1/live").header("X-API-Key", &narrow),
        403,
        "feature_not_on_plan",
    )
    .await;
    expect(
        &h,
        get("/odds?bookmaker=bet365").header("X-API-Key", &narrow),
        403,
        "bookmaker_not_allowed",
    )
    .await;
    expect(
        &h,
        get("/odds").header("X-API-Key", &narrow),
        403,
        "bookmaker_not_configured",
    )
    .await;
    assert_eq!(
        get("/odds?bookmaker=pinnacle")
            .header("X-API-Key", &narrow)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Empty bookmaker allowlist = all bookmakers.
    assert_eq!(
        get("/odds?bookmaker=bet365")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/cs2/v1/live")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Key and client states.
    let (disabled, k) = h.key("Acme", None).await;
    h.set_state(&k, KeyState::Disabled).await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", &disabled),
        401,
        "key_disabled",
    )
    .await;
    let (revoked, k) = h.key("Acme", None).await;
    h.set_state(&k, KeyState::Revoked).await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", &revoked),
        401,
        "unknown_key",
    )
    .await;
    let soon = Timestamp::from_millis(h.clock_now() + 60_000);
    let (expiring, _) = h.key("Acme", Some(soon)).await;
    assert_eq!(
        get("/cs2/v1/matches")
            .header("X-API-Key", &expiring)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    h.clock.advance(Duration::from_secs(61));
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", &expiring),
        401,
        "key_expired",
    )
    .await;
    h.store
        .set_client_active(&common::actor(), "Acme", false)
        .await
        .unwrap();
    h.sync().await;
    expect(
        &h,
        get("/cs2/v1/matches").header("X-API-Key", &key),
        401,
        "client_inactive",
    )
    .await;

    // Metrics count every reason, and no key appears anywhere in them.
    let metrics = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in [
        "missing_key",
        "malformed_key",
        "unknown_key",
        "scope_missing",
        "upstream_timeout",
        "client_inactive",
    ] {
        assert!(
            metrics.contains(&format!("outcome=\"{code}\"")),
            "{code} not counted:\n{metrics}"
        );
    }
    assert!(!metrics.contains(&key) && !metrics.contains(&narrow));
}

impl Harness {
    fn clock_now(&self) -> i64 {
        use keygate_core::Clock;
        self.clock.now().as_millis()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_bodies_when_xml_is_asked_for() {
    let (h, _) = setup().await;
    let resp = h
        .http
        .get(h.url("/cs2/v1/matches"))
        .header("Accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+xml");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("<code>missing_key</code>") && body.contains("urn:ietf:rfc:7807"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_set_and_spoofs_and_keys_stripped() {
    let (h, key) = setup().await;
    let resp = h
        .http
        .get(h.url("/echo/a/b?page=2&api_key=ignored-not-used"))
        .header("X-API-Key", &key)
        .header("X-Keygate-Client-Id", "cli_spoofed0000000")
        .header("X-Keygate-Scopes", "admin:everything")
        .header("Connection", "x-hop")
        .header("X-Hop", "secret")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    // Two differing credentials (header and query) are refused, not guessed between.
    assert_eq!(resp.status(), 400);

    let resp = h
        .http
        .get(h.url("/echo/a/b?page=2"))
        .header("X-API-Key", &key)
        .header("X-Keygate-Client-Id", "cli_spoofed0000000")
        .header("X-Keygate-Scopes", "admin:everything")
        .header("Connection", "x-hop")
        .header("X-Hop", "secret")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    let acme = h.store.client("Acme").await.unwrap();
    assert_eq!(seen.uri, "/echo/a/b?page=2");
    assert_eq!(seen.header_all("x-keygate-client-id"), [acme.id.as_str()]);
    assert_eq!(seen.header("x-keygate-client-name"), Some("Acme"));
    assert_eq!(seen.header("x-keygate-scopes"), Some("matches:read"));
    assert_eq!(seen.header("x-keygate-plan"), Some("pro"));
    assert!(seen.header("x-keygate-key-id").unwrap().starts_with("key_"));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key stops at the gateway"
    );
    assert_eq!(
        seen.header("x-hop"),
        None,
        "Connection-named headers are hop-by-hop"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    // A key in the query string is removed before forwarding.
    let resp = h
        .http
        .get(h.url(&format!("/echo/q?api_key={key}&x=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/echo/q?x=1");
    assert!(!format!("{seen:?}").contains(&key));

    // Public routes forward without identity, and spoofed identity is still stripped.
    let resp = h
        .http
        .get(h.url("/status/204"))
        .header("X-Keygate-Client-Id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        h.upstream
            .last_request()
            .unwrap()
            .header("x-keygate-client-id"),
        None
    );
}

/// Issue 17 (5): the client's sport and bookmaker allowlists reach the upstream (and the
/// forward-auth answer) as identity headers, so an upstream can confine its answer without a
/// lookup of its own: comma separated, `*` for every bookmaker, empty for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_reach_the_upstream_as_identity_headers() {
    let (h, key) = setup().await; // Acme: sports cs2, no bookmaker allowlist
    h.client(
        "Books",
        &["matches:read"],
        &["dota2", "cs2"],
        &["pinnacle", "bet365"],
        "pro",
    )
    .await;
    let (books, _) = h.key("Books", None).await;
    h.client("Nothing", &[], &[], &[], "pro").await;
    let (nothing, _) = h.key("Nothing", None).await;
    for (key, sports, bookmakers) in [
        (&key, "cs2", "*"),
        (&books, "cs2,dota2", "bet365,pinnacle"),
        (&nothing, "", "*"),
    ] {
        let resp = h
            .http
            .get(h.url("/echo/odds"))
            .header("X-API-Key", key)
            // Forged by the caller: replaced, never passed on beside the real value.
            .header("X-Keygate-Sports", "everything")
            .header("X-Keygate-Bookmakers", "*")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = h.upstream.last_request().unwrap();
        assert_eq!(seen.header_all("x-keygate-sports"), [sports]);
        assert_eq!(seen.header_all("x-keygate-bookmakers"), [bookmakers]);

        let answer = h
            .http
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", "/echo/odds")
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["x-keygate-sports"], sports);
        assert_eq!(answer.headers()["x-keygate-bookmakers"], bookmakers);
    }
    // Without a key (a public route) none is sent, and forged ones are removed.
    let resp = h
        .http
        .get(h.url("/status/204"))
        .header("X-Keygate-Bookmakers", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        h.upstream
            .last_request()
            .unwrap()
            .header("x-keygate-bookmakers"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_unbuffered() {
    let (h, key) = setup().await;
    let started = std::time::Instant::now();
    let mut resp = h
        .http
        .get(h.url("/sse"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("data: 0"));
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("data: 4"));
    assert!(
        total - first_at >= Duration::from_millis(300),
        "first event at {first_at:?}, end at {total:?}: buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_and_infra_endpoints() {
    let (h, key) = setup().await;
    let (status, _, body) = status_json(
        h.http
            .get(h.url("/v1/whoami"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let d = &body["data"];
    assert_eq!(d["name"], "Acme");
    assert_eq!(d["scopes"], serde_json::json!(["matches:read"]));
    assert_eq!(d["sport_allowlist"], serde_json::json!(["cs2"]));
    assert!(d["tenant_id"].as_str().unwrap().starts_with("cli_"));
    assert!(d.get("rate_limit_rpm").is_some());
    let (status, _, body) =
        status_json(h.http.get(h.url("/v1/whoami")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("missing_key")));

    // Public by the default profile: /health and /ready. /status and /metrics only on admin.
    assert_eq!(
        h.http.get(h.url("/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        h.http.get(h.url("/ready")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        h.http.get(h.url("/metrics")).send().await.unwrap().status(),
        404,
        "not public: an ordinary path"
    );
    let (status, _, s) =
        status_json(h.http.get(h.admin_url("/status")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(s["replica"]["keys"], 1);
    assert_eq!(s["store"]["state"], "up");
    let m = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("keygate_replica_keys 1") && m.contains("keygate_decision_seconds_count"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_api_and_forward_auth_contracts() {
    let (h, key) = setup().await;
    let verify = |body: serde_json::Value| h.http.post(h.url("/v1/keys/verify")).json(&body).send();
    let (s, _, b) = status_json(verify(serde_json::json!({ "key": key })).await.unwrap()).await;
    assert_eq!((s, b["valid"].as_bool()), (200, Some(true)), "{b}");
    assert_eq!(b["client"]["name"], "Acme");
    let (_, _, b) = status_json(
        verify(serde_json::json!({ "key": key, "method": "GET", "path": "/dota2/v1/matches" }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            b["valid"].as_bool(),
            b["reason"].as_str(),
            b["status"].as_u64()
        ),
        (Some(false), Some("sport_not_allowed"), Some(403))
    );
    let (_, _, b) = status_json(
        verify(serde_json::json!({ "key": key, "scopes": ["matches:write"] }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["reason"], "scope_missing");
    let (_, _, b) = status_json(
        verify(serde_json::json!({ "key": "kg_nope" }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(b["reason"], "malformed_key");
    let bad = h
        .http
        .post(h.url("/v1/keys/verify"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unknown_field = verify(serde_json::json!({ "key": key, "admin": true }))
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    let huge = h
        .http
        .post(h.url("/v1/keys/verify"))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 400);

    // nginx auth_request: 2xx with identity, 401/403 only.
    let nginx = |uri: &str| {
        h.http
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", uri)
            .header("X-Original-Method", "GET")
    };
    let ok = nginx("/cs2/v1/matches")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-keygate-client-name"], "Acme");
    assert_eq!(nginx("/cs2/v1/matches").send().await.unwrap().status(), 401);
    assert_eq!(
        nginx("/dota2/v1/matches")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        nginx("/nope/v1/x")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "nginx only honours 401/403"
    );

    // Traefik ForwardAuth: the profile's answer is passed to the client as is.
    let t = h
        .http
        .get(h.url("/v1/auth/traefik"))
        .header("X-Forwarded-Uri", "/cs2/v1/matches")
        .header("X-Forwarded-Method", "GET");
    assert_eq!(
        t.header("X-API-Key", &key).send().await.unwrap().status(),
        200
    );
    let (s, _, b) = status_json(
        h.http
            .get(h.url("/v1/auth/traefik"))
            .header("X-Forwarded-Uri", "/nope/v1/x")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));

    // Envoy ext_authz (HTTP): original method and path after the prefix.
    let e = h
        .http
        .get(h.url("/v1/auth/envoy/cs2/v1/matches"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), 200);
    assert!(e.headers().contains_key("x-keygate-key-id"));
    let e = h
        .http
        .post(h.url("/v1/auth/envoy/cs2/v1/matches"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), 405);
    assert_eq!(
        h.upstream.request_count(),
        0,
        "auth contracts never forward"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_precise_answers() {
    let (h, key) = setup().await;

    // Proof that a malformed key is never looked up: plant a replica entry under the digest of
    // a malformed string. Were it looked up, it would authenticate.
    let acme = h.store.client("Acme").await.unwrap();
    let planted = "kg_malformed-but-planted";
    let fake = keygate_core::ApiKey {
        id: keygate_core::KeyId::generate(),
        client_id: acme.id.clone(),
        digest: h.issuer.digester.digest(planted),
        hint: String::new(),
        label: String::new(),
        state: KeyState::Active,
        expires_at: None,
        created_at: Timestamp::from_millis(0),
        rotated_at: None,
        replaced_by: None,
        last_used_at: None,
        restrictions: Default::default(),
    };
    h.gateway.gateway().replica.apply(
        &keygate_store::Delta {
            version: 0,
            clients: vec![],
            keys: vec![fake],
            ..Default::default()
        },
        &|_: &str| Vec::new(),
    );
    let (status, _, body) = status_json(
        h.http
            .get(h.url("/cs2/v1/matches"))
            .header("X-API-Key", planted)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("malformed_key"))
    );

    let addr = h.gateway.addr;
    let raw = |req: String| async move { common::raw_request(addr, &req).await };
    // Non-ASCII and control bytes in the key header.
    let r = raw("GET /cs2/v1/matches HTTP/1.1\r\nHost: x\r\nX-API-Key: kg_\u{00fc}ber\r\nConnection: close\r\n\r\n".to_owned()).await;
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("malformed_key"),
        "{r}"
    );
    let r = raw("GET /cs2/v1/matches HTTP/1.1\r\nHost: x\r\nX-API-Key: kg_a\tb\r\nConnection: close\r\n\r\n".to_owned()).await;
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("malformed_key"),
        "{r}"
    );
    // An oversized credential is malformed without further work (or refused by the HTTP layer).
    let big = "k".repeat(200_000);
    let r = raw(format!(
        "GET /cs2/v1/matches HTTP/1.1\r\nHost: x\r\nX-API-Key: {big}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(
        r.contains("malformed_key")
            || r.starts_with("HTTP/1.1 431")
            || r.starts_with("HTTP/1.1 400"),
        "{}",
        &r[..r.len().min(200)]
    );
    // Absurd methods and paths.
    let r = raw(format!("FROBNICATE /cs2/v1/matches HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let long_path = format!("/{}", "a/".repeat(4000));
    let r = raw(format!(
        "GET {long_path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{}", &r[..r.len().min(200)]);
    let r = raw("GET nonsense HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned()).await;
    assert!(r.starts_with("HTTP/1.1 4"), "{r}");
    // Still serving.
    let ok = h
        .http
        .get(h.url("/cs2/v1/matches"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Issue 17: only the source the key was read from was stripped. Every source the profile
/// names goes, whichever copy the caller sent, on public routes too; `forward_credential`
/// forwards the one source the key was read from and no other copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_of_the_key_stops_at_the_gateway_on_every_route() {
    let (h, key) = setup().await;
    let bearer = format!("Bearer {key}");
    let everywhere = |path: &str| {
        h.http
            .get(h.url(path))
            .header("X-API-Key", &key)
            .header("Authorization", &bearer)
    };
    let leaked = |seen: &keygate_test::Recorded| format!("{seen:?}").contains(&key);

    // Header, Bearer and query, with a second copy of the header: the same key, so accepted.
    let resp = everywhere(&format!("/echo/a?page=2&api_key={key}&Api%5FKey={key}"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/echo/a?page=2");
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("authorization"), None);
    assert!(!leaked(&seen), "{seen:?}");

    // A public route reads no key, and forwards none.
    let resp = everywhere(&format!("/status/200?api_key={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/status/200");
    assert!(!leaked(&seen), "{seen:?}");

    // forward_credential: the source the key was read from (X-API-Key, the first) goes on.
    let forwarding = CONFIG.replace("[profile]\n", "[profile]\nforward_credential = true\n");
    let h = Harness::start(&forwarding).await;
    h.client("Acme", &["matches:read"], &["cs2"], &[], "pro")
        .await;
    let (key, _) = h.key("Acme", None).await;
    let resp = h
        .http
        .get(h.url(&format!("/echo/b?api_key={key}")))
        .header("X-API-Key", &key)
        .header("Authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.header_all("x-api-key"), [key.as_str()]);
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.uri, "/echo/b");
    // The key only in the query: that is the source forwarded.
    let resp = h
        .http
        .get(h.url(&format!("/echo/c?api_key={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        h.upstream.last_request().unwrap().uri,
        format!("/echo/c?api_key={key}")
    );
    // Nothing was read on a public route: nothing is forwarded.
    let resp = h
        .http
        .get(h.url("/status/200"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h.upstream.last_request().unwrap().header("x-api-key"), None);
}

/// Sends `request` as it is; the status line's code, the body, and what the upstream got.
async fn raw_status(h: &Harness, request: &str) -> (u16, String, Option<keygate_test::Recorded>) {
    h.upstream.clear();
    let answer = common::raw_request(h.gateway.addr, request).await;
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer, h.upstream.last_request())
}

/// Issue 17: `..;` segments and double-encoded dots were forwarded as they were, and servlet
/// containers (Tomcat, Jetty) normalize them into another path than the one authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servlet_dot_segments_and_double_encoded_dots_are_refused() {
    let (h, key) = setup().await;
    for path in [
        "/echo/a/..;/b",
        "/echo/..;jsessionid=1/b",
        "/echo/%252e%252e/b",
        "/echo/a%252Fb",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
        );
        let (code, answer, seen) = raw_status(&h, &request).await;
        assert_eq!(code, 400, "{path}: {answer}");
        assert!(answer.contains("bad_request"), "{path}: {answer}");
        assert!(seen.is_none(), "{path} reached the upstream");
    }
    let request = format!(
        "GET /echo/a;b/c HTTP/1.1\r\nHost: gw\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw_status(&h, &request).await.0, 200);
}

/// Issue 17: an HTTP/1.1 request without `Host`, or any request with two, was forwarded; the
/// upstream, a cache or a log could each believe another host (RFC 9112 §3.2: 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_repeated_host_is_a_400() {
    let (h, key) = setup().await;
    for (what, head) in [
        ("no Host", "GET /echo/a HTTP/1.1\r\n".to_owned()),
        (
            "two Hosts",
            "GET /echo/a HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\n".to_owned(),
        ),
        (
            "two Hosts on 1.0",
            "GET /echo/a HTTP/1.0\r\nHost: gw\r\nHost: evil.example\r\n".to_owned(),
        ),
        (
            "no Host on a public route",
            "GET /status/200 HTTP/1.1\r\n".to_owned(),
        ),
    ] {
        let request = format!("{head}X-API-Key: {key}\r\nConnection: close\r\n\r\n");
        let (code, answer, seen) = raw_status(&h, &request).await;
        assert_eq!(code, 400, "{what}: {answer}");
        assert!(answer.contains("bad_request"), "{what}: {answer}");
        assert!(seen.is_none(), "{what} reached the upstream");
    }
    // HTTP/1.0 may omit it.
    let request = format!("GET /echo/a HTTP/1.0\r\nX-API-Key: {key}\r\n\r\n");
    let (code, answer, seen) = raw_status(&h, &request).await;
    assert_eq!(code, 200, "{answer}");
    assert!(seen.is_some());
}

/// Issue 17: `X-Real-IP` and `Forwarded` from any caller reached the upstream, which might
/// take them for the client's address; they are believed only from a trusted proxy, like
/// `X-Forwarded-For` (`[guard] trusted_proxies`). Path overrides never go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_headers_pass_only_from_trusted_proxies() {
    for (trusted, passes) in [("10.0.0.0/8", false), ("127.0.0.0/8", true)] {
        let config = format!("{CONFIG}\n[guard]\ntrusted_proxies = [\"{trusted}\"]\n");
        let h = Harness::start(&config).await;
        h.client("Acme", &["matches:read"], &["cs2"], &[], "pro")
            .await;
        let (key, _) = h.key("Acme", None).await;
        for path in ["/echo/a", "/status/200"] {
            let resp = h
                .http
                .get(h.url(path))
                .header("X-API-Key", &key)
                .header("X-Real-IP", "203.0.113.7")
                .header("Forwarded", "for=203.0.113.7")
                .header("X-Original-URL", "/admin")
                .header("X-Rewrite-URL", "/admin")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let seen = h.upstream.last_request().unwrap();
            let expected = passes.then_some("203.0.113.7");
            assert_eq!(seen.header("x-real-ip"), expected, "{trusted} {path}");
            assert_eq!(
                seen.header("forwarded"),
                passes.then_some("for=203.0.113.7"),
                "{trusted} {path}"
            );
            assert_eq!(seen.header("x-original-url"), None);
            assert_eq!(seen.header("x-rewrite-url"), None);
        }
    }
}

/// Issue 17: a route that allows only GET forwarded `X-HTTP-Method-Override: DELETE` (and its
/// siblings, and `?_method=DELETE`), which many frameworks obey. Not on such routes; routes
/// that allow every method pass them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_do_not_pass_routes_that_restrict_methods() {
    let (h, key) = setup().await;
    let overriding = |path: &str| {
        h.http
            .get(h.url(path))
            .header("X-API-Key", &key)
            .header("X-HTTP-Method-Override", "DELETE")
            .header("X-Method-Override", "DELETE")
            .header("X-HTTP-Method", "DELETE")
    };
    let resp = overriding("/cs2/v1/matches?_method=DELETE&page=2&_Method=PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/cs2/v1/matches?page=2");
    for name in [
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
    // `echo` allows every method: an override is the caller's and the upstream's business.
    let resp = overriding("/echo/a?_method=DELETE").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/echo/a?_method=DELETE");
    assert_eq!(seen.header("x-http-method-override"), Some("DELETE"));
}
