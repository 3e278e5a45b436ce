//! Conformance of `profiles/openpoker.toml` with seed 002 (openpoker): every endpoint of the
//! seed's two tables, its per-endpoint limits, self-service registration and key regeneration,
//! portfolio bots, and the WebSocket contract. A real gateway, a real SQLite file, real
//! upstreams (HTTP and WebSocket) and real clients; the gateway's clock is a ManualClock.

mod common;

use std::time::Duration;

use common::{status_json, Harness};
use futures_util::{SinkExt, StreamExt};
use keygate_core::{Clock, KeyState};
use keygate_store::{AuditFilter, KeyFilter, NewClient};
use keygate_test::reqwest::{self, Method};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use keygate_test::WsUpstream;
use serde_json::{json, Value};

const PROFILE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../profiles/openpoker.toml"
));
/// The game server's URL in the profile, replaced by the test's WebSocket upstream.
const GAME_URL: &str = "http://127.0.0.1:9100";
/// "401 Unauthorized — Invalid, missing, or expired API key"
const UNAUTHORIZED: &str = "Invalid, missing, or expired API key";
const WAIT: Duration = Duration::from_secs(5);

/// Seed 002's endpoint table: the forwarded ones, with a body where the method takes one.
const FORWARDED: &[(&str, &str)] = &[
    ("GET", "/api/me/hand-history"),
    ("GET", "/api/me/active-game"),
    ("GET", "/api/season/me"),
    ("POST", "/api/season/rebuy"),
    ("POST", "/api/season/pro-bundle"),
    ("PATCH", "/api/season/me"),
];

struct Op {
    h: Harness,
    game: WsUpstream,
}

async fn start() -> Op {
    let game = WsUpstream::start().await;
    let h = Harness::start(&PROFILE.replace(GAME_URL, &game.url())).await;
    Op { h, game }
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

impl Op {
    /// A request with `Authorization: Bearer <key>` (none when `key` is `None`).
    fn req(&self, m: &str, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.h.http.request(method(m), self.h.url(path));
        match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn send(
        &self,
        m: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self.req(m, path, key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let headers = resp.headers().clone();
        let (status, _, json) = status_json(resp).await;
        (status, headers, json)
    }

    /// Registers an account; its id and key.
    async fn register(&self, body: Value) -> (String, String) {
        let (status, _, doc) = self.send("POST", "/api/register", None, Some(body)).await;
        assert_eq!(status, 201, "{doc}");
        (
            doc["id"].as_str().unwrap().to_owned(),
            doc["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// An account made by the operator (not counted against registration limits), and a key.
    async fn account(&self, name: &str) -> String {
        self.h.client(name, &["bot"], &[], &[], "free").await;
        self.h.key(name, None).await.0
    }

    async fn audit_len(&self) -> usize {
        self.h
            .store
            .audit(&AuditFilter {
                limit: 10_000,
                ..AuditFilter::default()
            })
            .await
            .unwrap()
            .len()
    }
}

fn is_op_live(key: &str) -> bool {
    key.strip_prefix("op_live_")
        .is_some_and(|body| body.len() > 32 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_a_bearer_key_and_forwards_identity() {
    // "All authenticated endpoints require your API key"; "Authorization: Bearer <your-api-key>";
    // "401 Unauthorized — Invalid, missing, or expired API key".
    let t = start().await;
    let key = t.account("RiverRat").await;
    let (expired_key, expired) =
        t.h.key(
            "RiverRat",
            Some(t.h.clock.now().plus(Duration::from_secs(60))),
        )
        .await;
    let (never_issued, _) = t.h.issuer.issue();
    t.h.clock.advance(Duration::from_secs(61));
    assert!(expired.expires_at.unwrap() < t.h.clock.now());

    let self_service = [
        ("GET", "/api/me"),
        ("PATCH", "/api/me"),
        ("POST", "/api/me/regenerate-key"),
        (
            "POST",
            "/api/portfolio/bots/cli_0123456789abcdef/regenerate-key",
        ),
    ];
    for &(m, path) in FORWARDED.iter().chain(&self_service) {
        for bad in [
            None,
            Some(never_issued.expose()),
            Some(expired_key.as_str()),
            Some("op_live_typo"),
        ] {
            let (status, headers, body) = t.send(m, path, bad, None).await;
            assert_eq!(status, 401, "{m} {path} with {bad:?}: {body}");
            assert_eq!(body, json!({ "detail": UNAUTHORIZED }), "{m} {path}");
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        // The key only in another place than the Bearer header does not count.
        let resp =
            t.h.http
                .request(method(m), t.h.url(&format!("{path}?api_key={key}")))
                .header("X-API-Key", &key)
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), 401, "{m} {path}");
    }
    assert_eq!(
        t.h.upstream.request_count(),
        0,
        "nothing refused reached the upstream"
    );

    let client = t.h.store.client("RiverRat").await.unwrap();
    for &(m, path) in FORWARDED {
        let body = (m != "GET").then(|| json!({ "auto_rebuy": true }));
        let (status, headers, echo) = t.send(m, path, Some(&key), body).await;
        assert_eq!(status, 200, "{m} {path}: {echo}");
        assert_eq!(echo["method"], m);
        assert_eq!(echo["uri"], path);
        let up = &echo["headers"];
        assert_eq!(up["x-keygate-client-id"], client.id.as_str());
        assert_eq!(up["x-keygate-client-name"], "RiverRat");
        assert_eq!(up["x-keygate-plan"], "free");
        assert_eq!(up["x-keygate-scopes"], "bot");
        assert!(
            up.get("authorization").is_none(),
            "the key stops at the gateway"
        );
        assert!(headers.contains_key("x-ratelimit-remaining"));
        if m != "GET" {
            assert_eq!(echo["body"], r#"{"auto_rebuy":true}"#);
        }
    }
    // Paths outside the seed's table are not routed.
    let (status, _, _) = t.send("GET", "/api/admin", Some(&key), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = t.send("DELETE", "/api/me", Some(&key), None).await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_has_its_own_per_key_limit() {
    // "Your requests are rate-limited per API key": GET /api/me 60/minute, PATCH /api/me
    // 10/minute, GET /api/me/hand-history 30/minute, POST /api/season/rebuy 10/minute, and
    // "60 requests/minute for most endpoints".
    let t = start().await;
    let table: &[(&str, &str, usize)] = &[
        ("GET", "/api/me", 60),
        ("PATCH", "/api/me", 10),
        ("GET", "/api/me/hand-history", 30),
        ("POST", "/api/season/rebuy", 10),
        ("GET", "/api/me/active-game", 60),
        ("GET", "/api/season/me", 60),
        ("POST", "/api/season/pro-bundle", 60),
        ("PATCH", "/api/season/me", 60),
    ];
    for (i, &(m, path, limit)) in table.iter().enumerate() {
        // Fresh accounts for each row: limits are per endpoint, not shared between them.
        let key = t.account(&format!("Bot {i}")).await;
        let other = t.account(&format!("Other {i}")).await;
        let body = || (m == "PATCH").then(|| json!({ "wallet_address": "0xabc" }));
        for n in 0..limit {
            let (status, headers, doc) = t.send(m, path, Some(&key), body()).await;
            assert_eq!(status, 200, "{m} {path} request {}: {doc}", n + 1);
            assert_eq!(headers["x-ratelimit-limit"], limit.to_string().as_str());
            assert_eq!(
                headers["x-ratelimit-remaining"],
                (limit - n - 1).to_string().as_str()
            );
        }
        let (status, headers, doc) = t.send(m, path, Some(&key), body()).await;
        assert_eq!(status, 429, "{m} {path} request {}: {doc}", limit + 1);
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(
            doc["detail"],
            format!("Rate limit exceeded. Retry after {retry} seconds.")
        );
        // Another key is counted apart.
        let (status, _, _) = t.send(m, path, Some(&other), body()).await;
        assert_eq!(status, 200, "{m} {path} for another key");
    }
    // A minute later every endpoint answers again.
    t.h.clock.advance(Duration::from_secs(60));
    let key = t.h.key("Bot 0", None).await.0;
    assert_eq!(t.send("GET", "/api/me", Some(&key), None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_shows_the_key_once_and_the_key_works() {
    // "API keys are generated when you register via POST /api/register"; "The plaintext key is
    // shown only once at registration".
    let t = start().await;
    let resp = t
        .req("POST", "/api/register", None)
        .json(&json!({ "name": "RiverRat", "email": "rr@example.com", "wallet_address": "0xabc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, _, doc) = status_json(resp).await;
    assert_eq!(status, 201, "{doc}");
    let key = doc["api_key"].as_str().unwrap().to_owned();
    let id = doc["id"].as_str().unwrap().to_owned();
    assert!(is_op_live(&key), "{key}");
    assert_eq!(doc["name"], "RiverRat");
    assert_eq!(doc["email"], "rr@example.com");
    assert_eq!(doc["wallet_address"], "0xabc");
    assert_eq!(doc["plan"], "free");

    // "GET /api/me | Your profile", with the new key at once; the key is never shown again.
    let (status, _, me) = t.send("GET", "/api/me", Some(&key), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], id.as_str());
    assert_eq!(me["name"], "RiverRat");
    assert_eq!(me["wallet_address"], "0xabc");
    assert_eq!(me["key_id"], doc["key_id"]);
    assert!(!me.to_string().contains(&key), "{me}");
    // The store keeps a digest and a hint, never the key.
    let keys =
        t.h.store
            .list_keys(&KeyFilter {
                client: Some(id.clone()),
                ..KeyFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].label, "primary");
    assert!(keys[0].hint.starts_with("op_live_") && keys[0].hint.len() < key.len());
    let audit =
        t.h.store
            .audit(&AuditFilter {
                actor: Some(format!("self:{id}")),
                ..AuditFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(audit.len(), 2, "client.create and key.create");
    assert!(
        !serde_json::to_string(&audit.iter().map(|a| &a.detail).collect::<Vec<_>>())
            .unwrap()
            .contains(&key)
    );
    // The key works on the forwarded endpoints too.
    let (status, _, echo) = t
        .send("GET", "/api/me/hand-history", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-keygate-client-id"], id.as_str());

    // "PATCH /api/me | Update name or wallet address".
    let (status, _, me) = t
        .send(
            "PATCH",
            "/api/me",
            Some(&key),
            Some(json!({ "name": "RiverRat II", "wallet_address": "0xdef" })),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["name"].as_str(), me["wallet_address"].as_str()),
        (Some("RiverRat II"), Some("0xdef"))
    );
    assert_eq!(me["email"], "rr@example.com");
    let (_, _, echo) = t.send("GET", "/api/season/me", Some(&key), None).await;
    assert_eq!(
        echo["headers"]["x-keygate-client-name"], "RiverRat II",
        "the replica has the rename"
    );
    let (_, _, me) = t
        .send(
            "PATCH",
            "/api/me",
            Some(&key),
            Some(json!({ "wallet_address": null })),
        )
        .await;
    assert!(me.get("wallet_address").is_none(), "{me}");

    // A taken name is a conflict, and creates nothing.
    let before = t.audit_len().await;
    let (status, _, doc) = t
        .send(
            "POST",
            "/api/register",
            None,
            Some(json!({ "name": "RiverRat II" })),
        )
        .await;
    assert_eq!(status, 409, "{doc}");
    assert_eq!(doc["detail"], "the name `RiverRat II` is already taken");
    assert_eq!(t.audit_len().await, before);
    let (status, _, _) = t
        .send(
            "PATCH",
            "/api/me",
            Some(&key),
            Some(json!({ "name": "Taken" })),
        )
        .await;
    assert_eq!(status, 200);
    let other = t.register(json!({ "name": "Second" })).await.1;
    let (status, _, _) = t
        .send(
            "PATCH",
            "/api/me",
            Some(&other),
            Some(json!({ "name": "Taken" })),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_limited_per_source_address() {
    // No key exists yet, so registration is counted per source address: 5 a minute.
    let t = start().await;
    for i in 0..5 {
        t.register(json!({ "name": format!("Bot {i}") })).await;
    }
    let (status, headers, doc) = t
        .send(
            "POST",
            "/api/register",
            None,
            Some(json!({ "name": "Bot 5" })),
        )
        .await;
    assert_eq!(status, 429, "{doc}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        t.h.store.client("Bot 5").await.is_err(),
        "a refused registration creates nothing"
    );
    t.h.clock.advance(Duration::from_secs(60));
    t.register(json!({ "name": "Bot 5" })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regeneration_returns_a_new_key_and_the_old_one_fails_at_once() {
    // curl -X POST https://api.openpoker.ai/api/me/regenerate-key \
    //   -H "Authorization: Bearer <your-current-key>"
    // Response: { "api_key": "op_live_newkey..." }
    let t = start().await;
    let (id, first) = t.register(json!({ "name": "RiverRat" })).await;
    let bearer = format!("Bearer {first}");
    let mut session = ws_connect(t.h.gateway.addr, Some(&bearer)).await;
    t.game.wait_connections(1, WAIT).await;

    let resp = t
        .req("POST", "/api/me/regenerate-key", Some(&first))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let (status, _, doc) = status_json(resp).await;
    assert_eq!(status, 200, "{doc}");
    let object = doc.as_object().unwrap();
    assert_eq!(object.len(), 1, "{doc}");
    let new = doc["api_key"].as_str().unwrap().to_owned();
    assert!(is_op_live(&new) && new != first, "{new}");

    // The old key is refused at once (no grace); the new one works at once.
    let (status, _, body) = t.send("GET", "/api/me", Some(&first), None).await;
    assert_eq!((status, body), (401, json!({ "detail": UNAUTHORIZED })));
    let (status, _, me) = t.send("GET", "/api/me", Some(&new), None).await;
    assert_eq!((status, me["id"].as_str()), (200, Some(id.as_str())));
    // The session opened with the old key ends with the seed's close code.
    assert_eq!(ws_closed(&mut session).await.0, 4001);
    let rotations =
        t.h.store
            .audit(&AuditFilter {
                action: Some("key.rotate".into()),
                ..AuditFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].actor, format!("self:{id}"));

    // "Rate limit: 5 requests per minute": counted per account, so the new keys a
    // regeneration hands out do not start fresh counts.
    let mut key = new;
    for n in 2..=5 {
        let (status, _, doc) = t
            .send("POST", "/api/me/regenerate-key", Some(&key), None)
            .await;
        assert_eq!(status, 200, "regeneration {n}: {doc}");
        key = doc["api_key"].as_str().unwrap().to_owned();
    }
    let (status, headers, doc) = t
        .send("POST", "/api/me/regenerate-key", Some(&key), None)
        .await;
    assert_eq!(status, 429, "{doc}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        t.send("GET", "/api/me", Some(&key), None).await.0,
        200,
        "the refusal rotated nothing"
    );
    t.h.clock.advance(Duration::from_secs(60));
    let (status, _, _) = t
        .send("POST", "/api/me/regenerate-key", Some(&key), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_regenerates_its_portfolio_bots_keys_and_no_one_else_can() {
    // "For portfolio bots, use POST /api/portfolio/bots/{agent_id}/regenerate-key".
    let t = start().await;
    let (parent_id, parent_key) = t.register(json!({ "name": "Pro Player" })).await;
    let child =
        t.h.store
            .create_client(
                &common::actor(),
                NewClient {
                    name: "Pro Player bot 1".into(),
                    plan: "free".into(),
                    parent: Some(parent_id.clone()),
                    ..NewClient::default()
                },
            )
            .await
            .unwrap();
    let (child_key, _) = t.h.key(child.id.as_str(), None).await;
    let (_, _, me) = t.send("GET", "/api/me", Some(&child_key), None).await;
    assert_eq!(me["parent"], parent_id.as_str());
    let stranger = t.account("Stranger").await;
    let path = format!("/api/portfolio/bots/{}/regenerate-key", child.id);

    // Someone else's bot, a malformed agent id, an unknown one, and a bot regenerating
    // "its own child": all 404, and nothing changes.
    let version = t.h.store.version().await.unwrap();
    for (key, p) in [
        (stranger.as_str(), path.clone()),
        (child_key.as_str(), path.clone()),
        (
            parent_key.as_str(),
            "/api/portfolio/bots/not-an-id/regenerate-key".to_owned(),
        ),
        (
            parent_key.as_str(),
            "/api/portfolio/bots/cli_0123456789abcdef/regenerate-key".to_owned(),
        ),
        (
            parent_key.as_str(),
            format!("/api/portfolio/bots/{parent_id}/regenerate-key"),
        ),
    ] {
        let (status, _, doc) = t.send("POST", &p, Some(key), None).await;
        assert_eq!(
            (status, doc),
            (404, json!({ "detail": "Not found" })),
            "{p}"
        );
    }
    assert_eq!(t.h.store.version().await.unwrap(), version);
    assert_eq!(
        t.send("GET", "/api/me", Some(&child_key), None).await.0,
        200
    );

    let (status, _, doc) = t.send("POST", &path, Some(&parent_key), None).await;
    assert_eq!(status, 200, "{doc}");
    let new = doc["api_key"].as_str().unwrap().to_owned();
    assert!(is_op_live(&new));
    assert_eq!(
        t.send("GET", "/api/me", Some(&child_key), None).await.0,
        401
    );
    let (status, _, me) = t.send("GET", "/api/me", Some(&new), None).await;
    assert_eq!((status, me["id"].as_str()), (200, Some(child.id.as_str())));
    assert_eq!(
        t.send("GET", "/api/me", Some(&parent_key), None).await.0,
        200,
        "the parent's key stays"
    );
    let old =
        t.h.store
            .list_keys(&KeyFilter {
                client: Some(child.id.to_string()),
                state: Some(KeyState::Revoked),
                ..KeyFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(old.len(), 1);
    let audit =
        t.h.store
            .audit(&AuditFilter {
                action: Some("key.replace".into()),
                ..AuditFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(
        (audit[0].actor.as_str(), audit[0].target.as_str()),
        (format!("self:{parent_id}").as_str(), child.id.as_str())
    );
    // 5 a minute, as for the primary key (refused attempts count too).
    t.h.clock.advance(Duration::from_secs(60));
    for _ in 1..=5 {
        assert_eq!(t.send("POST", &path, Some(&parent_key), None).await.0, 200);
    }
    assert_eq!(t.send("POST", &path, Some(&parent_key), None).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_precise_answers_and_change_nothing() {
    let t = start().await;
    let key = t.account("RiverRat").await;
    let version = t.h.store.version().await.unwrap();
    let audit = t.audit_len().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(5000));
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/api/register",
            r#"{"name": "Bot""#,
            400,
            "not valid JSON",
        ),
        ("POST", "/api/register", "", 400, "empty"),
        (
            "POST",
            "/api/register",
            "[1,2]",
            422,
            "must be a JSON object, not an array",
        ),
        (
            "POST",
            "/api/register",
            r#"{"name":"Bot","plan":"pro"}"#,
            422,
            "unknown field `plan`",
        ),
        (
            "POST",
            "/api/register",
            r#"{"email":"a@b.c"}"#,
            422,
            "`name` is required",
        ),
        (
            "POST",
            "/api/register",
            r#"{"name":42}"#,
            422,
            "`name` must be a string, not a number",
        ),
        ("POST", "/api/register", &big, 413, "larger than 4096 bytes"),
        ("PATCH", "/api/me", "{nope", 400, "not valid JSON"),
        ("PATCH", "/api/me", "{}", 422, "nothing to change"),
        (
            "PATCH",
            "/api/me",
            r#"{"email":"x@y.z"}"#,
            422,
            "read-only field `email`",
        ),
        (
            "PATCH",
            "/api/me",
            r#"{"scopes":["admin"]}"#,
            422,
            "`scopes`",
        ),
        (
            "PATCH",
            "/api/me",
            &format!(r#"{{"wallet_address":"{}"}}"#, "f".repeat(129)),
            422,
            "at most 128",
        ),
        ("PATCH", "/api/me", &big, 413, "larger than 4096 bytes"),
    ];
    for &(m, path, body, status, needle) in cases {
        // Refused registrations count against the source's 5 a minute too.
        t.h.clock.advance(Duration::from_secs(60));
        let resp = t
            .req(m, path, (path == "/api/me").then_some(key.as_str()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let (got, _, doc) = status_json(resp).await;
        assert_eq!(got, status, "{m} {path} {body:.40}: {doc}");
        let detail = doc["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{m} {path} {body:.40}: {detail}");
    }
    // Not JSON at all (a form post, as `curl -d` sends by default).
    let (status, _, doc) = status_json(
        t.req("POST", "/api/register", None)
            .form(&[("name", "Bot")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{doc}");
    // A body streamed without a length past the bound is cut off at the bound.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let resp = t
        .req("PATCH", "/api/me", Some(&key))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        t.h.store.version().await.unwrap(),
        version,
        "nothing was written"
    );
    assert_eq!(t.audit_len().await, audit);
    let (_, _, me) = t.send("GET", "/api/me", Some(&key), None).await;
    assert_eq!(me["name"], "RiverRat");
}

type WsClient = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(addr: std::net::SocketAddr, authorization: Option<&str>) -> WsClient {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(a) = authorization {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    connect_async(req).await.expect("the upgrade is accepted").0
}

async fn ws_closed(c: &mut WsClient) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.as_str().to_owned())
            }
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn ws_next_json(c: &mut WsClient) -> Value {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_4001_without_a_valid_key_and_allows_20_messages_a_second() {
    // "WSS /ws | Main game connection"; "WebSocket 4001 close code — Invalid or missing key on
    // connection"; "WebSocket messages | 20/second per connection".
    let t = start().await;
    let (never_issued, _) = t.h.issuer.issue();
    for auth in [
        None,
        Some(format!("Bearer {}", never_issued.expose())),
        Some("Bearer op_live_typo".to_owned()),
    ] {
        let mut c = ws_connect(t.h.gateway.addr, auth.as_deref()).await;
        assert_eq!(
            ws_closed(&mut c).await,
            (4001, "Invalid or missing API key".to_owned()),
            "{auth:?}"
        );
    }
    assert_eq!(
        t.game.connections().len(),
        0,
        "no upstream session without a key"
    );

    let (id, key) = t.register(json!({ "name": "RiverRat" })).await;
    let mut a = ws_connect(t.h.gateway.addr, Some(&format!("Bearer {key}"))).await;
    let mut b = ws_connect(t.h.gateway.addr, Some(&format!("Bearer {key}"))).await;
    let ups = t.game.wait_connections(2, WAIT).await;
    assert_eq!(ups[0].header("x-keygate-client-id"), Some(id.as_str()));
    assert_eq!(ups[0].header("authorization"), None);
    // The clock stands still: 20 messages pass, the 21st is refused; per connection, so the
    // second connection still has its 20.
    for i in 0..20 {
        a.send(Message::Text(
            format!(r#"{{"type":"action","n":{i}}}"#).into(),
        ))
        .await
        .unwrap();
        assert_eq!(ws_next_json(&mut a).await["n"], i);
    }
    a.send(Message::Text(r#"{"type":"action","n":20}"#.into()))
        .await
        .unwrap();
    assert_eq!(ws_next_json(&mut a).await["code"], "rate_limited");
    b.send(Message::Text(r#"{"type":"action","n":0}"#.into()))
        .await
        .unwrap();
    assert_eq!(ws_next_json(&mut b).await["n"], 0);
    t.h.clock.advance(Duration::from_secs(1));
    a.send(Message::Text(r#"{"type":"action","n":21}"#.into()))
        .await
        .unwrap();
    assert_eq!(ws_next_json(&mut a).await["n"], 21);
}

/// Issue 17 (16). An account the operator makes without naming a plan starts on free, like a
/// registered one (`[profile] default_plan = "free"`), so "WSS /ws | Main game connection"
/// (the `websocket` feature) works for it; on the featureless `default` plan it was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_made_account_without_a_plan_can_play() {
    let t = start().await;
    let created =
        t.h.create_client_via_admin(json!({ "name": "House Bot", "scopes": ["bot"] }))
            .await;
    assert_eq!(created["plan"], "free", "{created}");
    let (key, _) = t.h.key("House Bot", None).await;
    let _c = ws_connect(t.h.gateway.addr, Some(&format!("Bearer {key}"))).await;
    let ups = t.game.wait_connections(1, WAIT).await;
    assert_eq!(ups.len(), 1, "the game connection was opened");
}
