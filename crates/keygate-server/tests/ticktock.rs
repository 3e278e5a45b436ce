//! Conformance of `profiles/ticktock.toml` with seed 001 (docs.ticktock.bet, "Tenant API
//! key"): every row of its error table, its whoami document, its error body, its rate limit
//! and its rotation promise, through a real gateway, upstream and clients.

mod common;
#[path = "common/profiles.rs"]
mod profiles;

use std::time::Duration;

use common::{actor, Harness};
use keygate_core::KeyState;
use keygate_store::{ClientUpdate, LimitPatch};
use keygate_test::WsUpstream;
use profiles::{get, profile, within_a_second, ws};

const SCOPES: [&str; 6] = [
    "cs2:matches:list",
    "cs2:matches:read",
    "cs2:markets:read",
    "cs2:markets:settlements",
    "cs2:stream:matches",
    "cs2:stream:markets",
];

/// The shipped profile in front of the harness's upstream (`--upstream` replaces `default`).
async fn start() -> (Harness, ()) {
    (Harness::start(&profile("ticktock", &[])).await, ())
}

async fn acme(h: &Harness, scopes: &[&str]) -> String {
    h.client("Acme Sportsbook", scopes, &["cs2"], &[], "default")
        .await;
    h.key("Acme Sportsbook", None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_example_and_whoami_in_the_documents_shape() {
    let (h, _up) = start().await;
    let key = acme(&h, &SCOPES).await;
    let id = h.store.client("Acme Sportsbook").await.unwrap().id;

    // "GET /cs2/v1/matches HTTP/1.1 / X-API-Key: <your-key> / Accept: application/json"
    let a = get(
        &h,
        "/cs2/v1/matches",
        &[("X-API-Key", &key), ("Accept", "application/json")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/cs2/v1/matches");
    assert_eq!(
        seen.header("x-keygate-client-name"),
        Some("Acme Sportsbook")
    );
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key stops at the gateway"
    );

    // curl -H "X-API-Key: <key>" https://ticktock.bet/v1/whoami
    // {"data": {"tenant_id": "…", "name": "Acme Sportsbook", "scopes": [...],
    //  "sport_allowlist": ["cs2"], "rate_limit_rpm": 600}}  (exactly these fields, this order;
    // scopes come sorted)
    let a = get(&h, "/v1/whoami", &[("X-API-Key", &key)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let expected = format!(
        r#"{{"data":{{"tenant_id":"{id}","name":"Acme Sportsbook","scopes":["cs2:markets:read","cs2:markets:settlements","cs2:matches:list","cs2:matches:read","cs2:stream:markets","cs2:stream:matches"],"sport_allowlist":["cs2"],"rate_limit_rpm":600}}}}"#
    );
    assert_eq!(a.body, expected);
    let mut doc_scopes: Vec<_> = a.json()["data"]["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    doc_scopes.sort();
    let mut seed_scopes = SCOPES.map(String::from).to_vec();
    seed_scopes.sort();
    assert_eq!(doc_scopes, seed_scopes);

    // XML when XML is asked for.
    let a = get(
        &h,
        "/v1/whoami",
        &[("X-API-Key", &key), ("Accept", "application/xml")],
    )
    .await;
    assert_eq!(a.header("content-type"), Some("application/xml"));
    assert!(
        a.body.starts_with(&format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><whoami><data><tenant_id>{id}</tenant_id><name>Acme Sportsbook</name><scopes><item>cs2:markets:read</item>"#
        )),
        "{}",
        a.body
    );
    assert!(a
        .body
        .ends_with("<rate_limit_rpm>600</rate_limit_rpm></data></whoami>"));

    // "If the scope list is shorter than expected …": a narrower bundle shows as such.
    h.store
        .update_client(
            &actor(),
            "Acme Sportsbook",
            ClientUpdate {
                scopes: Some(vec![keygate_core::Scope::new("cs2:matches:list").unwrap()]),
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    h.sync().await;
    let a = get(&h, "/v1/whoami", &[("X-API-Key", &key)]).await;
    assert_eq!(
        a.json()["data"]["scopes"],
        serde_json::json!(["cs2:matches:list"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_error_table() {
    let (h, _up) = start().await;
    let key = acme(&h, &SCOPES[..3]).await;

    // 401 | Missing X-API-Key header (REST)
    let a = get(&h, "/cs2/v1/matches", &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (401, r#"{"detail":"Missing X-API-Key header."}"#)
    );

    // 403 | Key invalid, deactivated, lacks the required scope, or sport not in sport_allowlist
    let (never_issued, _) = h.issuer.issue();
    for bad in [never_issued.expose(), "tt_not-a-key"] {
        let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", bad)]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (403, r#"{"detail":"Invalid API key."}"#)
        );
    }
    // The error body, byte for byte (compact): { "detail": "Required scope
    // 'cs2:markets:settlements' is not granted to this API key. Contact your account manager to
    // extend the key's scopes." }
    let a = get(&h, "/cs2/v1/matches/m1/settlements", &[("X-API-Key", &key)]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.body,
        r#"{"detail":"Required scope 'cs2:markets:settlements' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#
    );
    // The same refusal in XML.
    let a = get(
        &h,
        "/cs2/v1/matches/m1/settlements",
        &[("X-API-Key", &key), ("Accept", "application/xml")],
    )
    .await;
    assert_eq!(
        (a.status, a.header("content-type")),
        (403, Some("application/xml"))
    );
    assert_eq!(
        a.body,
        r#"<?xml version="1.0" encoding="UTF-8"?><error><detail>Required scope &apos;cs2:markets:settlements&apos; is not granted to this API key. Contact your account manager to extend the key&apos;s scopes.</detail></error>"#
    );
    // Scopes are per namespace: a cs2 bundle does not reach dota2, and the refusal names the
    // scope the dota2 endpoint needs.
    let a = get(&h, "/dota2/v1/matches", &[("X-API-Key", &key)]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            r#"{"detail":"Required scope 'dota2:matches:list' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#
        )
    );
    // "only keys with that sport in their sport_allowlist reach those endpoints": dota2
    // scopes without dota2 in the allowlist.
    h.client(
        "Scoped Elsewhere",
        &["dota2:matches:list"],
        &["cs2"],
        &[],
        "default",
    )
    .await;
    let (elsewhere, _) = h.key("Scoped Elsewhere", None).await;
    let a = get(&h, "/dota2/v1/matches", &[("X-API-Key", &elsewhere)]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            r#"{"detail":"Sport 'dota2' is not in this API key's sport_allowlist."}"#
        )
    );
    let a = get(&h, "/cs2/v1/matches/m1/markets", &[("X-API-Key", &key)]).await;
    assert_eq!(a.status, 200, "cs2:markets:read is granted");

    // 404 | Resource not found
    let a = get(&h, "/cs2/v2/nothing", &[("X-API-Key", &key)]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, r#"{"detail":"Resource not found."}"#)
    );

    // 406 | Accept header negotiation failed (neither JSON nor XML accepted)
    let a = get(
        &h,
        "/cs2/v1/matches",
        &[("X-API-Key", &key), ("Accept", "text/html")],
    )
    .await;
    assert_eq!(a.status, 406);
    assert_eq!(
        a.body,
        r#"{"detail":"Accept header negotiation failed: neither JSON nor XML is accepted."}"#
    );
    for accept in ["application/json", "application/xml", "text/xml", "*/*"] {
        let a = get(
            &h,
            "/cs2/v1/matches",
            &[("X-API-Key", &key), ("Accept", accept)],
        )
        .await;
        assert_eq!(a.status, 200, "{accept}");
    }

    // Deactivated: the key, or its tenant.
    let (other, other_key) = h.key("Acme Sportsbook", None).await;
    h.set_state(&other_key, KeyState::Disabled).await;
    let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", &other)]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, r#"{"detail":"This API key is deactivated."}"#)
    );
    h.store
        .set_client_active(&actor(), "Acme Sportsbook", false)
        .await
        .unwrap();
    h.sync().await;
    let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", &key)]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, r#"{"detail":"This API key is deactivated."}"#)
    );
}

/// "When future sports launch (Dota 2, soccer, …) at /{sport}/v1/*": the profile's scopes are
/// `{sport}:…`, so each namespace has its own bundle, resolved from the path per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_follow_the_sport_namespace() {
    let (h, _up) = start().await;
    h.client(
        "Dota Books",
        &["dota2:matches:list", "dota2:matches:read"],
        &["dota2"],
        &[],
        "default",
    )
    .await;
    let (dota, _) = h.key("Dota Books", None).await;
    let headers = [("X-API-Key", dota.as_str())];

    let a = get(&h, "/dota2/v1/matches", &headers).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(h.upstream.last_request().unwrap().uri, "/dota2/v1/matches");
    assert_eq!(get(&h, "/dota2/v1/matches/m7", &headers).await.status, 200);

    // The same endpoint in another namespace asks for that namespace's scope, and says so.
    let a = get(&h, "/cs2/v1/matches", &headers).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            r#"{"detail":"Required scope 'cs2:matches:list' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#
        )
    );
    // Within dota2, an endpoint outside the bundle.
    let a = get(&h, "/dota2/v1/matches/m7/settlements", &headers).await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("'dota2:markets:settlements'"), "{}", a.body);
    // A namespace that is not one scope segment is never granted: not `DOTA2`, and not
    // `dota2:matches`, which would splice segments into the scope.
    for path in ["/DOTA2/v1/matches", "/dota2:matches/v1/matches"] {
        let a = get(&h, path, &headers).await;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
        assert!(a.body.contains("Required scope"), "{path}: {}", a.body);
    }

    // A key holding both bundles reaches both.
    h.client(
        "Both Books",
        &["cs2:matches:list", "dota2:matches:list"],
        &["cs2", "dota2"],
        &[],
        "default",
    )
    .await;
    let (both, _) = h.key("Both Books", None).await;
    for path in ["/cs2/v1/matches", "/dota2/v1/matches"] {
        assert_eq!(
            get(&h, path, &[("X-API-Key", &both)]).await.status,
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_a_minute_per_key_then_429_with_retry_after() {
    let (h, _up) = start().await;
    let key = acme(&h, &SCOPES).await;
    let (second, _) = h.key("Acme Sportsbook", None).await;
    // "Default 600 req/min per tenant key": the clock stands still, so exactly 600 pass.
    let mut ok = 0;
    let headers = [("X-API-Key", key.as_str())];
    for chunk in 0..20 {
        let calls = (0..30).map(|_| get(&h, "/cs2/v1/matches", &headers));
        for a in futures_util::future::join_all(calls).await {
            assert_eq!(
                a.status,
                200,
                "request {} of chunk {chunk}: {}",
                ok + 1,
                a.body
            );
            ok += 1;
        }
    }
    assert_eq!(ok, 600);
    // "HTTP/1.1 429 Too Many Requests / Retry-After: 30" (the wait is the limiter's: one
    // request's share of the minute, rounded up to a second).
    let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", &key)]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(
        a.body,
        r#"{"detail":"Rate limit exceeded. Retry after 1 seconds."}"#
    );
    // Per key: the tenant's other key has its own 600.
    assert_eq!(
        get(&h, "/cs2/v1/matches", &[("X-API-Key", &second)])
            .await
            .status,
        200
    );
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(
        get(&h, "/cs2/v1/matches", &[("X-API-Key", &key)])
            .await
            .status,
        200
    );

    // "(configurable per contract)"
    h.store
        .update_client(
            &actor(),
            "Acme Sportsbook",
            ClientUpdate {
                limits: LimitPatch {
                    per_minute: Some(std::num::NonZeroU64::new(2)),
                    ..LimitPatch::default()
                },
                ..ClientUpdate::default()
            },
        )
        .await
        .unwrap();
    h.sync().await;
    let a = get(&h, "/v1/whoami", &[("X-API-Key", &key)]).await;
    assert_eq!(a.json()["data"]["rate_limit_rpm"], 2);
    h.clock.advance(Duration::from_secs(60));
    let (third, _) = h.key("Acme Sportsbook", None).await;
    for _ in 0..2 {
        assert_eq!(
            get(&h, "/cs2/v1/matches", &[("X-API-Key", &third)])
                .await
                .status,
            200
        );
    }
    let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", &third)]).await;
    assert_eq!((a.status, a.header("retry-after")), (429, Some("30")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_and_revoke_take_effect_within_a_second() {
    let (h, _up) = start().await;
    let key = acme(&h, &SCOPES).await;
    let id = h.store.list_keys(&Default::default()).await.unwrap()[0]
        .id
        .clone();
    // "Rotate — issue a fresh secret, keep the same scopes. Old key invalidated immediately."
    let (fresh, material) = h.issuer.issue();
    h.store
        .rotate_key(&actor(), &id, material, None)
        .await
        .unwrap();
    within_a_second(&h, "/cs2/v1/matches", &[("X-API-Key", &key)], 403).await;
    let a = get(
        &h,
        "/cs2/v1/matches/m1/settlements",
        &[("X-API-Key", fresh.expose())],
    )
    .await;
    assert_eq!(a.status, 200, "the same scopes: {}", a.body);
    // "Revoke — disable the key. No replacement issued."
    let new_id = h.store.list_keys(&Default::default()).await.unwrap();
    let new_id = new_id
        .iter()
        .find(|k| k.state == KeyState::Active)
        .unwrap()
        .id
        .clone();
    h.store
        .set_key_state(&actor(), &new_id, KeyState::Revoked)
        .await
        .unwrap();
    within_a_second(&h, "/cs2/v1/matches", &[("X-API-Key", fresh.expose())], 403).await;
    let a = get(&h, "/cs2/v1/matches", &[("X-API-Key", fresh.expose())]).await;
    assert_eq!(a.body, r#"{"detail":"Invalid API key."}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_key_as_query_parameter() {
    let up = WsUpstream::start().await;
    // The stream's upstream: `default` is replaced by the harness's HTTP upstream, so the
    // stream route is pointed at a WebSocket server by its own upstream entry.
    let text = profile(
        "ticktock",
        &[(
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\n",
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\nupstream = \"stream\"\n",
        )],
    ) + &format!("\n[upstreams.stream]\nurl = \"{}\"\n", up.url());
    let h = Harness::start(&text).await;
    let key = acme(&h, &SCOPES).await;

    // 401 | … api_key query param (WS)
    let a = ws(&h, "/cs2/v1/stream", &[]).await.unwrap_err();
    assert_eq!(
        (a.status, a.body.as_str()),
        (401, r#"{"detail":"Missing api_key query parameter."}"#)
    );
    // 403 | Key invalid … or sport not in sport_allowlist
    let a = ws(&h, "/cs2/v1/stream?api_key=tt_wrong", &[])
        .await
        .unwrap_err();
    assert_eq!(
        (a.status, a.body.as_str()),
        (403, r#"{"detail":"Invalid API key."}"#)
    );
    let a = ws(&h, &format!("/dota2/v1/stream?api_key={key}"), &[])
        .await
        .unwrap_err();
    assert_eq!(a.status, 403);

    // wss://ticktock.bet/cs2/v1/stream?api_key=<your-key>
    let mut socket = ws(&h, &format!("/cs2/v1/stream?api_key={key}"), &[])
        .await
        .unwrap();
    let conns = up.wait_connections(1, Duration::from_secs(5)).await;
    assert!(!conns[0].uri.contains(&key), "the key stops at the gateway");
    use futures_util::SinkExt;
    socket
        .send(keygate_test::tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"ping"}"#.into(),
        ))
        .await
        .unwrap();
    let texts = conns[0].wait_received(1, Duration::from_secs(5)).await;
    assert_eq!(texts.len(), 1);
    drop(socket);
}

/// Issue 17 (6). The whoami example lists the stream's scopes: "cs2:stream:matches",
/// "cs2:stream:markets". "403 | Key invalid, deactivated, lacks the required scope": a key
/// with neither is refused at the upgrade; with one, only that scope's channel is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_asks_its_scopes_and_relays_only_granted_channels() {
    use futures_util::{SinkExt, StreamExt};
    use keygate_test::tokio_tungstenite::tungstenite::Message;

    let up = WsUpstream::start().await;
    let text = profile(
        "ticktock",
        &[(
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\n",
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\nupstream = \"stream\"\n",
        )],
    ) + &format!("\n[upstreams.stream]\nurl = \"{}\"\n", up.url());
    let h = Harness::start(&text).await;
    // The gateway's answer to a refused subscribe (the upstream's echoes may come between).
    async fn refusal(socket: &mut profiles::WsClient) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let frame = tokio::time::timeout_at(deadline, socket.next())
                .await
                .expect("an answer to the subscribe")
                .expect("the session is open")
                .unwrap();
            if let Ok(text) = frame.to_text() {
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                if v["type"] == "error" {
                    return v;
                }
            }
        }
    }
    let issue = |name: &'static str, scopes: &'static [&'static str], sports| {
        let h = &h;
        async move {
            h.client(name, scopes, sports, &[], "default").await;
            h.key(name, None).await.0
        }
    };
    let rest_only = issue("Rest Only", &["cs2:matches:list"], &["cs2"]).await;
    let matches_only = issue("Matches Only", &["cs2:stream:matches"], &["cs2"]).await;
    let dota = issue("Dota", &["dota2:stream:markets"], &["dota2"]).await;

    // No stream scope: 403 before the upgrade, in the document's error body.
    let a = ws(&h, &format!("/cs2/v1/stream?api_key={rest_only}"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            403,
            r#"{"detail":"Required scope 'cs2:stream:matches' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#
        )
    );
    assert!(
        up.connections().is_empty(),
        "no upstream session was opened"
    );

    // cs2:stream:matches only: "markets" is refused on the socket and never relayed.
    let mut socket = ws(&h, &format!("/cs2/v1/stream?api_key={matches_only}"), &[])
        .await
        .unwrap();
    let conns = up.wait_connections(1, Duration::from_secs(5)).await;
    socket
        .send(Message::Text(
            r#"{"type":"subscribe","channels":["matches","markets"]}"#.into(),
        ))
        .await
        .unwrap();
    let refused = refusal(&mut socket).await;
    assert_eq!(
        refused["channels"],
        serde_json::json!(["markets"]),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("cs2:stream:markets"),
        "{refused}"
    );
    conns[0].wait_received(1, Duration::from_secs(5)).await;
    let relayed: serde_json::Value = serde_json::from_str(&conns[0].texts()[0]).unwrap();
    assert_eq!(relayed["channels"], serde_json::json!(["matches"]));
    // A subscribe naming only the refused channel reaches the upstream not at all.
    socket
        .send(Message::Text(
            r#"{"type":"subscribe","channels":["markets"]}"#.into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        refusal(&mut socket).await["channels"],
        serde_json::json!(["markets"])
    );
    socket
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    conns[0].wait_received(2, Duration::from_secs(5)).await;
    let seen = conns[0].texts();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1], r#"{"type":"ping"}"#,
        "the refused subscribe was not relayed"
    );
    drop(socket);

    // The scopes are per sport namespace, on the stream as on REST: dota2:stream:markets
    // opens /dota2/v1/stream and its "markets" channel, not "matches".
    let mut socket = ws(&h, &format!("/dota2/v1/stream?api_key={dota}"), &[])
        .await
        .unwrap();
    let conns = up.wait_connections(2, Duration::from_secs(5)).await;
    socket
        .send(Message::Text(
            r#"{"type":"subscribe","channels":["markets","matches"]}"#.into(),
        ))
        .await
        .unwrap();
    let refused = refusal(&mut socket).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("dota2:stream:matches"),
        "{refused}"
    );
    conns[1].wait_received(1, Duration::from_secs(5)).await;
    let relayed: serde_json::Value = serde_json::from_str(&conns[1].texts()[0]).unwrap();
    assert_eq!(relayed["channels"], serde_json::json!(["markets"]));
}

/// Issue 17: the stream route names two sources (`query:api_key`, `header:X-API-Key`); a key
/// sent in both reached the upstream in the one it was not read from. Neither copy goes
/// upstream, in the URL or the headers; nor does a key sent to a REST route in the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_copy_of_the_key_stops_at_the_gateway() {
    let up = WsUpstream::start().await;
    let text = profile(
        "ticktock",
        &[(
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\n",
            "name = \"stream\"\npath = \"/{sport}/v1/stream\"\nupstream = \"stream\"\n",
        )],
    ) + &format!("\n[upstreams.stream]\nurl = \"{}\"\n", up.url());
    let h = Harness::start(&text).await;
    let key = acme(&h, &SCOPES).await;

    let socket = ws(
        &h,
        &format!("/cs2/v1/stream?api_key={key}&since=5"),
        &[("X-API-Key", &key)],
    )
    .await
    .unwrap();
    let conns = up.wait_connections(1, Duration::from_secs(5)).await;
    assert_eq!(conns[0].uri, "/cs2/v1/stream?since=5");
    assert_eq!(conns[0].header("x-api-key"), None);
    assert!(
        !format!("{:?}", conns[0].headers).contains(&key),
        "{:?}",
        conns[0].headers
    );
    drop(socket);

    // REST reads the header; the query copy (a source the stream names) goes too.
    let a = get(
        &h,
        &format!("/cs2/v1/matches?api_key={key}&page=2"),
        &[("X-API-Key", &key)],
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/cs2/v1/matches?page=2");
    assert!(!format!("{seen:?}").contains(&key), "{seen:?}");
}
