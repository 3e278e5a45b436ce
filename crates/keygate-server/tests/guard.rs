//! Brute-force throttling end to end: a source flooding invalid keys is refused (429) for the
//! cool-down, even with a valid key, while other sources are unaffected; verify and
//! forward-auth count too; a trusted proxy's `X-Forwarded-For` names the source; guessing
//! around one key prefix from many sources locks that prefix.
//!
//! Sources are distinct loopback addresses (127.0.0.x): the gateway counts the peer address.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{status_json, Harness};
use keygate_test::reqwest;

const CONFIG: &str = r#"
[keys]
prefix = "kg_"
length = 32
checksum = false

[upstreams.default]
url = "{upstream}"

[[routes]]
name = "matches"
path = "/matches"

[guard]
threshold = 5
prefix_threshold = 4
window = "1m"
cooldown = "5m"
trusted_proxies = ["127.0.0.50"]
"#;

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn setup() -> (Harness, String) {
    let h = Harness::start(CONFIG).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    (h, key)
}

/// A well-formed key that is not issued (`checksum = false`, so any body is well-formed).
fn unknown(prefix: &str, n: usize) -> String {
    format!("{prefix}{n}{}", "0".repeat(35))[..35].to_owned()
}

async fn get(h: &Harness, client: &reqwest::Client, key: &str) -> (u16, serde_json::Value) {
    let resp = client
        .get(h.url("/matches"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let (status, _, body) = status_json(resp).await;
    (status, body)
}

async fn metrics(h: &Harness) -> String {
    h.http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_cools_down_and_valid_clients_are_unaffected() {
    let (h, key) = setup().await;
    let attacker = from("127.0.0.1");
    let customer = from("127.0.0.2");
    for n in 0..5 {
        let (status, body) = get(&h, &attacker, &unknown("kg_", n)).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unknown_key")));
    }
    // Past the threshold: 429 in the profile's rate-limit shape, with Retry-After.
    let resp = attacker
        .get(h.url("/matches"))
        .header("X-API-Key", "kg_garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "300");
    let (status, _, body) = status_json(resp).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    // Refused even with a valid key: the cool-down comes before any lookup.
    let (status, _) = get(&h, &attacker, &key).await;
    assert_eq!(status, 429);
    let before = h.upstream.request_count();
    // Another source is unaffected, with its valid key and even with invalid ones.
    for _ in 0..20 {
        assert_eq!(get(&h, &customer, &key).await.0, 200);
    }
    assert_eq!(get(&h, &customer, "kg_typo").await.0, 401);
    assert_eq!(h.upstream.request_count(), before + 20);

    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"source\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_guard_refused_total{by=\"source\"} 2"),
        "{m}"
    );
    assert!(!m.contains(&key));

    // After the cool-down the source may authenticate again.
    h.clock.advance(Duration::from_secs(301));
    assert_eq!(get(&h, &attacker, &key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_forward_auth_count_and_refuse_too() {
    let (h, key) = setup().await;
    let verifier = from("127.0.0.3");
    let verify = |k: String| {
        verifier
            .post(h.url("/v1/keys/verify"))
            .json(&serde_json::json!({ "key": k }))
            .send()
    };
    for n in 0..5 {
        let (_, _, b) = status_json(verify(unknown("kg_v", n)).await.unwrap()).await;
        assert_eq!(b["reason"], "unknown_key");
    }
    let (s, _, b) = status_json(verify(key.clone()).await.unwrap()).await;
    assert_eq!(
        (
            s,
            b["valid"].as_bool(),
            b["reason"].as_str(),
            b["status"].as_u64()
        ),
        (200, Some(false), Some("rate_limited"), Some(429))
    );

    // nginx auth_request: only 401/403 are honoured, so a cool-down answers 403.
    let nginx_client = from("127.0.0.4");
    let nginx = |k: &str| {
        nginx_client
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", "/matches")
            .header("X-API-Key", k)
            .send()
    };
    for n in 0..5 {
        assert_eq!(nginx(&unknown("kg_n", n)).await.unwrap().status(), 401);
    }
    assert_eq!(nginx(&key).await.unwrap().status(), 403);
    // Traefik passes the profile's answer through: 429.
    let traefik = nginx_client
        .get(h.url("/v1/auth/traefik"))
        .header("X-Forwarded-Uri", "/matches")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(traefik.status(), 429);
    // whoami goes through the same gate.
    let whoami = nginx_client
        .get(h.url("/v1/whoami"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 429);
    assert_eq!(get(&h, &from("127.0.0.2"), &key).await.0, 200);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"source\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_names_the_source_only_behind_a_trusted_proxy() {
    let (h, key) = setup().await;
    let proxy = from("127.0.0.50");
    let via_proxy = |client_ip: &'static str, k: String| {
        proxy
            .get(h.url("/matches"))
            .header("X-API-Key", k)
            .header("X-Forwarded-For", client_ip)
            .send()
    };
    for n in 0..5 {
        let s = via_proxy("203.0.113.1", unknown("kg_p", n))
            .await
            .unwrap()
            .status();
        assert_eq!(s, 401);
    }
    assert_eq!(
        via_proxy("203.0.113.1", key.clone())
            .await
            .unwrap()
            .status(),
        429
    );
    // The proxy itself and the other clients behind it are not refused.
    assert_eq!(
        via_proxy("203.0.113.2", key.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    // An untrusted peer cannot pick its source by header: its own address counts.
    let liar = from("127.0.0.7");
    for n in 0..5 {
        let resp = liar
            .get(h.url("/matches"))
            .header("X-API-Key", unknown("kg_l", n))
            .header("X-Forwarded-For", format!("198.51.100.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(get(&h, &liar, &key).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_around_one_key_prefix_from_many_sources_locks_that_prefix() {
    let (h, key) = setup().await;
    // Four sources, one guess each, all sharing the valid key's first 8 body characters.
    let prefix = &key[..3 + 8];
    for n in 0..4 {
        let guesser = from(&format!("127.0.1.{n}"));
        assert_eq!(get(&h, &guesser, &unknown(prefix, n)).await.0, 401);
    }
    // The key with that prefix is refused before lookup, from any source, for the cool-down.
    assert_eq!(get(&h, &from("127.0.0.2"), &key).await.0, 429);
    // Other keys are not.
    h.client("Other", &[], &[], &[], "free").await;
    let (other, _) = h.key("Other", None).await;
    assert_ne!(&other[..11], prefix);
    assert_eq!(get(&h, &from("127.0.0.2"), &other).await.0, 200);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"key_prefix\"} 1"),
        "{m}"
    );
}

/// The REST gate plus a handshake-mode WebSocket route and the WebSocket token endpoint: keys
/// guessed through either count toward the same cool-down as REST guesses.
const WS_CONFIG: &str = r#"
[keys]
prefix = "kg_"
length = 32
checksum = false

[upstreams.default]
url = "{upstream}"

[[routes]]
name = "matches"
path = "/matches"

[[routes]]
name = "stream"
path = "/v1/stream"
ws = { mode = "handshake" }

[profile.ws]
token = { path = "/v1/ws-token", ttl = "30s", param = "token" }

[guard]
threshold = 5
prefix_threshold = 100
window = "1m"
cooldown = "5m"
"#;

/// A WebSocket upgrade request sent as plain HTTP (the refusal comes before any upgrade).
async fn upgrade(h: &Harness, client: &reqwest::Client, key: &str) -> u16 {
    client
        .get(h.url("/v1/stream"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_and_token_requests_count_as_guesses_too() {
    let h = Harness::start(WS_CONFIG).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;

    // Guesses through the WebSocket handshake...
    let upgrader = from("127.0.0.11");
    for n in 0..5 {
        assert_eq!(upgrade(&h, &upgrader, &unknown("kg_", n)).await, 401);
    }
    assert_eq!(upgrade(&h, &upgrader, &unknown("kg_", 9)).await, 429);
    // ...cool the source down for REST as well, valid key or not.
    assert_eq!(get(&h, &upgrader, &key).await.0, 429);

    // Guesses at the token endpoint likewise.
    let tokens = from("127.0.0.12");
    let token_request = |k: String| {
        tokens
            .post(h.url("/v1/ws-token"))
            .header("X-API-Key", k)
            .send()
    };
    for n in 0..5 {
        let status = token_request(unknown("kg_", 20 + n))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let status = token_request(key.clone()).await.unwrap().status();
    assert_eq!(status, 429, "a valid key from a cooled-down source");
    assert_eq!(get(&h, &tokens, &key).await.0, 429);

    // Another source is unaffected on every path.
    let customer = from("127.0.0.13");
    assert_eq!(get(&h, &customer, &key).await.0, 200);
    let issued = customer
        .post(h.url("/v1/ws-token"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 200);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"source\"} 2"),
        "{m}"
    );
}
