//! Conformance of `profiles/sportrix.toml` with seed 004 (Sportrix Data, "API Key
//! Authentication"): REST and WebSocket credentials, every row of the error, key-state and
//! scope tables, several keys per client, the one public endpoint.

mod common;
#[path = "common/profiles.rs"]
mod profiles;

use std::time::Duration;

use common::{actor, Harness};
use keygate_core::{Clock, KeyState};
use keygate_test::WsUpstream;
use profiles::{get, profile, ws};

async fn start() -> (Harness, WsUpstream) {
    let up = WsUpstream::start().await;
    let text = profile(
        "sportrix",
        &[(
            "url = \"http://127.0.0.1:9001\"",
            &format!("url = \"{}\"", up.url()),
        )],
    );
    (Harness::start(&text).await, up)
}

fn detail(a: &profiles::Answer) -> (u16, String) {
    (a.status, a.body.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_errors_key_states_and_the_public_endpoint() {
    let (h, _up) = start().await;
    h.client(
        "Acme",
        &["fixtures", "live_scores"],
        &["soccer"],
        &[],
        "default",
    )
    .await;
    // "A single client account can have multiple API keys … one key per environment"
    let (dev, _) = h.key("Acme", None).await;
    let (prod, prod_key) = h.key("Acme", None).await;
    assert!(dev.starts_with("sk_") && prod.starts_with("sk_"));

    // curl https://api.sportrixdata.com/api/sports -H "X-API-Key: sk_your_api_key_here"
    for key in [&dev, &prod] {
        let a = get(&h, "/api/sports", &[("X-API-Key", key)]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // "The only endpoint that does not require authentication is GET /health."
    assert_eq!(get(&h, "/health", &[]).await.status, 200);
    for path in ["/ready", "/status", "/metrics", "/api/sports"] {
        assert_ne!(get(&h, path, &[]).await.status, 200, "{path} is not public");
    }

    // | 401 | The X-API-Key header … is missing, the key is unknown, or the key has been
    // disabled or has expired |
    assert_eq!(
        detail(&get(&h, "/api/sports", &[]).await),
        (
            401,
            r#"{"detail":"Missing API key: send the X-API-Key header."}"#.into()
        )
    );
    let (unknown, _) = h.issuer.issue();
    for bad in [unknown.expose(), "sk_your_api_key_here"] {
        assert_eq!(
            detail(&get(&h, "/api/sports", &[("X-API-Key", bad)]).await),
            (401, r#"{"detail":"Unknown API key."}"#.into())
        );
    }
    // "REST API — X-API-Key header": the stream's `key` parameter is not a REST credential.
    let a = get(&h, &format!("/api/sports?key={dev}"), &[]).await;
    assert_eq!(a.status, 401);

    // Key states: | Active | … | Disabled | 401 | Expired | 401 |
    h.set_state(&prod_key, KeyState::Disabled).await;
    assert_eq!(
        detail(&get(&h, "/api/sports", &[("X-API-Key", &prod)]).await),
        (
            401,
            r#"{"detail":"This API key has been disabled."}"#.into()
        )
    );
    assert_eq!(
        get(&h, "/api/sports", &[("X-API-Key", &dev)]).await.status,
        200
    );
    h.set_state(&prod_key, KeyState::Active).await;
    assert_eq!(
        get(&h, "/api/sports", &[("X-API-Key", &prod)]).await.status,
        200
    );
    let expiry = h.clock.now().plus(Duration::from_secs(3_600));
    let (staging, _) = h.key("Acme", Some(expiry)).await;
    assert_eq!(
        get(&h, "/api/sports", &[("X-API-Key", &staging)])
            .await
            .status,
        200
    );
    h.clock.advance(Duration::from_secs(3_601));
    assert_eq!(
        detail(&get(&h, "/api/sports", &[("X-API-Key", &staging)]).await),
        (401, r#"{"detail":"This API key has expired."}"#.into())
    );

    // | 403 | The key is valid but does not have the scope required by the requested endpoint |
    // { "detail": "Missing required scope: live_scores" }
    h.client("Fixtures Only", &["fixtures"], &["soccer"], &[], "default")
        .await;
    let (narrow, _) = h.key("Fixtures Only", None).await;
    assert_eq!(
        detail(
            &get(
                &h,
                "/api/sports/soccer/live-scores",
                &[("X-API-Key", &narrow)]
            )
            .await
        ),
        (
            403,
            r#"{"detail":"Missing required scope: live_scores"}"#.into()
        )
    );
    assert_eq!(
        detail(
            &get(
                &h,
                "/api/sports/soccer/final-scores",
                &[("X-API-Key", &narrow)]
            )
            .await
        ),
        (
            403,
            r#"{"detail":"Missing required scope: final_scores"}"#.into()
        )
    );
    // The sport allowlist every key of a client inherits.
    let a = get(&h, "/api/sports/tennis/matches", &[("X-API-Key", &dev)]).await;
    assert_eq!(
        detail(&a),
        (
            403,
            r#"{"detail":"Sport not in this key's allowlist: tennis"}"#.into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_scope_table() {
    let (h, _up) = start().await;
    let scopes = [
        "fixtures",
        "live_scores",
        "live_scores_statistics",
        "final_scores",
    ];
    let mut keys = Vec::new();
    for s in scopes {
        h.client(s, &[s], &["soccer"], &[], "default").await;
        keys.push(h.key(s, None).await.0);
    }
    // Scope → what it grants; every REST route against every single-scope key.
    let routes = [
        ("/api/sports", [true, false, false, false]),
        ("/api/sports/soccer/leagues", [true, false, false, false]),
        ("/api/sports/soccer/matches", [true, false, false, false]),
        ("/api/sports/soccer/matches/m1", [true, false, false, false]),
        // "On-demand live score snapshots" / "Real-time WebSocket stream and live score snapshots"
        ("/api/sports/soccer/live-scores", [false, true, true, false]),
        // "Half-time and full-time result snapshots"
        (
            "/api/sports/soccer/final-scores",
            [false, false, false, true],
        ),
    ];
    for (path, granted) in routes {
        for (i, key) in keys.iter().enumerate() {
            let a = get(&h, path, &[("X-API-Key", key)]).await;
            let want = if granted[i] { 200 } else { 403 };
            assert_eq!(a.status, want, "{path} with {}: {}", scopes[i], a.body);
        }
    }
    // Several keys of one client inherit its scopes: a second key of `final_scores`.
    let (second, _) = h.key("final_scores", None).await;
    assert_eq!(
        get(
            &h,
            "/api/sports/soccer/final-scores",
            &[("X-API-Key", &second)]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&h, "/api/sports", &[("X-API-Key", &second)])
            .await
            .status,
        403
    );
    // A scope granted later reaches every key of the client.
    h.store
        .update_client(
            &actor(),
            "final_scores",
            keygate_store::ClientUpdate {
                scopes: Some(vec![
                    keygate_core::Scope::new("final_scores").unwrap(),
                    keygate_core::Scope::new("fixtures").unwrap(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.sync().await;
    for key in [&keys[3], &second] {
        assert_eq!(
            get(&h, "/api/sports", &[("X-API-Key", key)]).await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_header_or_key_parameter_and_401_at_the_handshake() {
    let (h, up) = start().await;
    h.client("Live", &["live_scores_statistics"], &[], &[], "default")
        .await;
    let (key, key_row) = h.key("Live", None).await;
    h.client("Snapshots", &["live_scores"], &[], &[], "default")
        .await;
    let (snapshots, _) = h.key("Snapshots", None).await;

    // wss://scores.sportrixdata.com/v1/stream / X-API-Key: sk_your_api_key_here
    ws(&h, "/v1/stream", &[("X-API-Key", &key)]).await.unwrap();
    // wss://scores.sportrixdata.com/v1/stream?key=sk_your_api_key_here
    ws(&h, &format!("/v1/stream?key={key}"), &[]).await.unwrap();
    let conns = up.wait_connections(2, Duration::from_secs(5)).await;
    assert!(
        conns.iter().all(|c| !c.uri.contains(&key)),
        "the key stops at the gateway"
    );

    // "The connection is rejected with HTTP 401 during the handshake if the key is invalid or
    // lacks the required scope."
    let a = ws(&h, "/v1/stream", &[]).await.unwrap_err();
    assert_eq!(
        detail(&a),
        (
            401,
            r#"{"detail":"Missing API key: send the X-API-Key header."}"#.into()
        )
    );
    let a = ws(&h, "/v1/stream?key=sk_your_api_key_here", &[])
        .await
        .unwrap_err();
    assert_eq!(detail(&a), (401, r#"{"detail":"Unknown API key."}"#.into()));
    let a = ws(&h, "/v1/stream", &[("X-API-Key", &snapshots)])
        .await
        .unwrap_err();
    assert_eq!(
        detail(&a),
        (
            401,
            r#"{"detail":"Missing required scope: live_scores_statistics"}"#.into()
        )
    );
    // The same key on REST: the scope is a 403 there.
    h.client("Fixtures", &["fixtures"], &[], &[], "default")
        .await;
    let (fixtures, _) = h.key("Fixtures", None).await;
    let a = get(
        &h,
        "/api/sports/soccer/final-scores",
        &[("X-API-Key", &fixtures)],
    )
    .await;
    assert_eq!(a.status, 403);
    // Disabled and expired keys: 401 at the handshake too.
    h.set_state(&key_row, KeyState::Disabled).await;
    let a = ws(&h, "/v1/stream", &[("X-API-Key", &key)])
        .await
        .unwrap_err();
    assert_eq!(
        detail(&a),
        (
            401,
            r#"{"detail":"This API key has been disabled."}"#.into()
        )
    );
}

/// Issue 17 (16). "All error responses include a JSON body with a `detail` field": JSON
/// whatever `Accept` asks for (`formats = ["json"]`), never XML and never a 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_are_json_whatever_accept_asks() {
    let (h, _up) = start().await;
    for accept in [
        "application/xml",
        "text/xml",
        "text/html",
        "application/json",
    ] {
        let a = get(&h, "/api/sports", &[("Accept", accept)]).await;
        assert_eq!(
            detail(&a),
            (
                401,
                r#"{"detail":"Missing API key: send the X-API-Key header."}"#.into()
            ),
            "{accept}"
        );
        assert!(
            a.header("content-type").unwrap().contains("json"),
            "{accept}: {:?}",
            a.header("content-type")
        );
    }
}

/// Issue 17 (16). "Include this header on every request. The only endpoint that does not
/// require authentication is `GET /health`": any other path, one no route serves included, is
/// 401 without a key; only a caller with a valid key learns it does not exist (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_health_answers_without_a_key() {
    let (h, _up) = start().await;
    assert_eq!(get(&h, "/health", &[]).await.status, 200);
    let missing = (
        401,
        r#"{"detail":"Missing API key: send the X-API-Key header."}"#.to_owned(),
    );
    for path in ["/ready", "/status", "/metrics", "/nope", "/api/sports"] {
        assert_eq!(detail(&get(&h, path, &[]).await), missing, "{path}");
    }
    let unknown = (401, r#"{"detail":"Unknown API key."}"#.to_owned());
    assert_eq!(
        detail(&get(&h, "/ready", &[("X-API-Key", "sk_your_api_key_here")]).await),
        unknown
    );
    h.client("Acme", &["fixtures"], &[], &[], "default").await;
    let (key, _) = h.key("Acme", None).await;
    for path in ["/ready", "/nope"] {
        assert_eq!(
            detail(&get(&h, path, &[("X-API-Key", &key)]).await),
            (404, r#"{"detail":"Not found."}"#.to_owned()),
            "{path}"
        );
    }
}

/// Issue 17: the stream names `header:X-API-Key` and `query:key`; a key sent in both reached
/// the upstream in the one it was not read from (`?key=sk_…` in the upstream URL). Neither
/// copy goes upstream, nor a copy in a REST request's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_of_the_key_stops_at_the_gateway() {
    let (h, up) = start().await;
    h.client("Live", &["live_scores_statistics"], &[], &[], "default")
        .await;
    let (key, _) = h.key("Live", None).await;

    let socket = ws(
        &h,
        &format!("/v1/stream?key={key}&match=7"),
        &[("X-API-Key", &key)],
    )
    .await
    .unwrap();
    let conns = up.wait_connections(1, Duration::from_secs(5)).await;
    assert_eq!(conns[0].uri, "/v1/stream?match=7");
    assert_eq!(conns[0].header("x-api-key"), None);
    assert!(
        !format!("{:?}", conns[0].headers).contains(&key),
        "{:?}",
        conns[0].headers
    );
    drop(socket);

    // REST reads the header; the query copy (a source the stream names) goes too.
    h.client("Browse", &["fixtures"], &[], &[], "default").await;
    let (browse, _) = h.key("Browse", None).await;
    let a = get(
        &h,
        &format!("/api/sports?key={browse}&page=2"),
        &[("X-API-Key", &browse)],
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/api/sports?page=2");
    assert!(!format!("{seen:?}").contains(&browse), "{seen:?}");
}
