//! Brute-force throttling end to end: a source flooding invalid keys gets 429 for every key
//! that fails, for the cool-down, while a key that authenticates is still served, from that
//! source or any other; verify and forward-auth count too; a trusted proxy's
//! `X-Forwarded-For`, `Forwarded` or `X-Real-IP` names the source; guessing around one key
//! prefix from many sources cools that prefix down for failing keys only.
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
async fn a_flooding_source_cools_down_for_failing_keys_and_valid_keys_are_served() {
    let (h, key) = setup().await;
    let attacker = from("127.0.0.1");
    let customer = from("127.0.0.2");
    for n in 0..5 {
        let (status, body) = get(&h, &attacker, &unknown("kg_", n)).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unknown_key")));
    }
    // Past the threshold: 429 in the profile's rate-limit shape, with Retry-After, for every
    // key that fails, whatever its failure (no oracle: malformed, unknown, missing alike).
    let resp = attacker
        .get(h.url("/matches"))
        .header("X-API-Key", "kg_garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "300");
    let (status, _, body) = status_json(resp).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(get(&h, &attacker, &unknown("kg_", 7)).await.0, 429);
    let bare = attacker.get(h.url("/matches")).send().await.unwrap();
    assert_eq!(bare.status(), 429);
    // A key that authenticates is served from the cooled-down source: the guard refuses
    // guessing, not customers behind the same address.
    let before = h.upstream.request_count();
    assert_eq!(get(&h, &attacker, &key).await.0, 200);
    // Another source is unaffected, with its valid key and with invalid ones.
    for _ in 0..20 {
        assert_eq!(get(&h, &customer, &key).await.0, 200);
    }
    assert_eq!(get(&h, &customer, "kg_typo").await.0, 401);
    assert_eq!(h.upstream.request_count(), before + 21);

    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"source\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_guard_refused_total{by=\"source\"} 3"),
        "{m}"
    );
    assert!(!m.contains(&key));

    // Each guess restarted the cool-down; once it has passed, failures are failures again.
    h.clock.advance(Duration::from_secs(301));
    assert_eq!(get(&h, &attacker, "kg_typo").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revoked_key_retried_does_not_lock_out_valid_keys_from_its_source() {
    // The defaults' shape (30 and 30): one key's retries reach the source's and the prefix's
    // thresholds together.
    let h = Harness::start(&CONFIG.replace("prefix_threshold = 4", "prefix_threshold = 5")).await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (key, _) = h.key("Acme", None).await;
    let (stale, stale_key) = h.key("Acme", None).await;
    h.set_state(&stale_key, keygate_core::KeyState::Revoked)
        .await;
    // One address (a NAT, an office) runs a forgotten job retrying a revoked key: 401s,
    // until its retries cool the address (and the key's prefix) down, then 429s...
    let office = from("127.0.0.21");
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(get(&h, &office, &stale).await.0);
    }
    let cooled = answers
        .iter()
        .position(|&s| s == 429)
        .expect("never cooled down");
    assert_eq!(cooled, 5, "{answers:?}");
    assert!(answers[..cooled].iter().all(|&s| s == 401), "{answers:?}");
    assert!(answers[cooled..].iter().all(|&s| s == 429), "{answers:?}");
    // ...and every valid key from that address is still served.
    for _ in 0..5 {
        assert_eq!(get(&h, &office, &key).await.0, 200);
    }
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
    let (s, _, b) = status_json(verify(unknown("kg_v", 9)).await.unwrap()).await;
    assert_eq!(
        (
            s,
            b["valid"].as_bool(),
            b["reason"].as_str(),
            b["status"].as_u64()
        ),
        (200, Some(false), Some("rate_limited"), Some(429))
    );
    let (_, _, b) = status_json(verify(key.clone()).await.unwrap()).await;
    assert_eq!(
        b["valid"], true,
        "a valid key is verified during a cool-down"
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
    assert_eq!(nginx(&unknown("kg_n", 9)).await.unwrap().status(), 403);
    assert_eq!(nginx(&key).await.unwrap().status(), 200);
    // Traefik passes the profile's answer through: 429.
    let traefik = |k: String| {
        nginx_client
            .get(h.url("/v1/auth/traefik"))
            .header("X-Forwarded-Uri", "/matches")
            .header("X-API-Key", k)
            .send()
    };
    assert_eq!(traefik(unknown("kg_t", 1)).await.unwrap().status(), 429);
    assert_eq!(traefik(key.clone()).await.unwrap().status(), 200);
    // whoami goes through the same gate.
    let whoami = |k: String| {
        nginx_client
            .get(h.url("/v1/whoami"))
            .header("X-API-Key", k)
            .send()
    };
    assert_eq!(whoami(unknown("kg_w", 1)).await.unwrap().status(), 429);
    assert_eq!(whoami(key.clone()).await.unwrap().status(), 200);
    assert_eq!(get(&h, &from("127.0.0.2"), &key).await.0, 200);
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"source\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_behind_an_untrusted_proxy_still_serves_valid_keys() {
    // nginx in front, `trusted_proxies` left empty: every caller shares nginx's address.
    let (h, key) = setup().await;
    let nginx_peer = from("127.0.0.60");
    let ask = |k: String| {
        nginx_peer
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", "/matches")
            .header("X-Forwarded-For", "203.0.113.5")
            .header("X-API-Key", k)
            .send()
    };
    // One client's bad keys cool the shared address down...
    for n in 0..5 {
        assert_eq!(ask(unknown("kg_u", n)).await.unwrap().status(), 401);
    }
    assert_eq!(ask(unknown("kg_u", 9)).await.unwrap().status(), 403);
    // ...and every caller with a valid key still gets through.
    for _ in 0..10 {
        assert_eq!(ask(key.clone()).await.unwrap().status(), 200);
    }
}

/// The headers each proxy's forward-auth request carries, as the README's snippets configure
/// them: the client's address where each proxy puts it.
fn proxy_request(
    h: &Harness,
    proxy: &reqwest::Client,
    which: &str,
    client_ip: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    let req = match which {
        // `proxy_set_header X-Real-IP $remote_addr;` and
        // `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;` (a forged
        // X-Forwarded-For from the client is kept to the left and not believed).
        "nginx" => proxy
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", "/matches")
            .header("X-Original-Method", "GET")
            .header("X-Real-IP", client_ip)
            .header("X-Forwarded-For", format!("198.51.100.66, {client_ip}")),
        // ForwardAuth sets X-Forwarded-For to the client's address (trustForwardHeader off).
        "traefik" => proxy
            .get(h.url("/v1/auth/traefik"))
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Proto", "http")
            .header("X-Forwarded-Uri", "/matches")
            .header("X-Forwarded-For", client_ip),
        // ext_authz with `use_remote_address: true` and x-forwarded-for allowed through.
        "envoy" => proxy
            .get(h.url("/v1/auth/envoy/matches"))
            .header("X-Forwarded-For", client_ip)
            .header("X-Envoy-External-Address", client_ip),
        other => panic!("no proxy {other}"),
    };
    req.header("X-API-Key", key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_counts_each_client_behind_a_trusted_nginx_traefik_or_envoy() {
    let (h, key) = setup().await;
    let proxy = from("127.0.0.50"); // `trusted_proxies = ["127.0.0.50"]`
    for (i, which) in ["nginx", "traefik", "envoy"].into_iter().enumerate() {
        let guesser = format!("203.0.113.{}", 10 + i);
        let neighbour = format!("203.0.113.{}", 20 + i);
        let status = |ip: String, k: String| {
            let req = proxy_request(&h, &proxy, which, &ip, &k);
            async move { req.send().await.unwrap().status().as_u16() }
        };
        for n in 0..5 {
            let s = status(guesser.clone(), unknown("kg_f", 10 * i + n)).await;
            assert_eq!(s, 401, "{which}");
        }
        let cooled = if which == "nginx" { 403 } else { 429 };
        let s = status(guesser.clone(), unknown("kg_f", 10 * i + 9)).await;
        assert_eq!(s, cooled, "{which}: the guesser is cooled down");
        let s = status(neighbour.clone(), unknown("kg_g", i)).await;
        assert_eq!(s, 401, "{which}: its neighbour behind the proxy is not");
        assert_eq!(status(guesser, key.clone()).await, 200, "{which}");
        assert_eq!(status(neighbour, key.clone()).await, 200, "{which}");
    }
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
    let status = |ip, k| async move { via_proxy(ip, k).await.unwrap().status() };
    assert_eq!(status("203.0.113.1", unknown("kg_p", 9)).await, 429);
    assert_eq!(status("203.0.113.1", key.clone()).await, 200);
    // The other clients behind the proxy are not refused.
    assert_eq!(status("203.0.113.2", unknown("kg_p", 8)).await, 401);
    assert_eq!(status("203.0.113.2", key.clone()).await, 200);
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
    assert_eq!(get(&h, &liar, &unknown("kg_l", 9)).await.0, 429);
    assert_eq!(get(&h, &liar, &key).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_around_a_valid_keys_prefix_cools_the_prefix_down_but_serves_the_key() {
    let (h, key) = setup().await;
    // Four sources, one guess each, all sharing the valid key's first 8 body characters.
    let prefix = &key[..3 + 8];
    for n in 0..4 {
        let guesser = from(&format!("127.0.1.{n}"));
        assert_eq!(get(&h, &guesser, &unknown(prefix, n)).await.0, 401);
    }
    // Further guesses with that prefix get 429, from any source, for the cool-down...
    assert_eq!(
        get(&h, &from("127.0.1.9"), &unknown(prefix, 9)).await.0,
        429
    );
    // ...and the valid key with that prefix is served, from anywhere, all along.
    for ip in ["127.0.0.2", "127.0.1.0", "127.0.1.9"] {
        assert_eq!(get(&h, &from(ip), &key).await.0, 200, "{ip}");
    }
    // Keys with other prefixes fail as themselves.
    assert_eq!(
        get(&h, &from("127.0.0.2"), &unknown("kg_zz", 1)).await.0,
        401
    );
    let m = metrics(&h).await;
    assert!(
        m.contains("keygate_guard_incidents_total{by=\"key_prefix\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("keygate_guard_refused_total{by=\"key_prefix\"} 1"),
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
    // ...cool the source down for REST as well, for failing keys; valid ones are served.
    assert_eq!(get(&h, &upgrader, &unknown("kg_", 10)).await.0, 429);
    assert_eq!(get(&h, &upgrader, &key).await.0, 200);

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
    let status = token_request(unknown("kg_", 29)).await.unwrap().status();
    assert_eq!(status, 429, "a failing key from a cooled-down source");
    let status = token_request(key.clone()).await.unwrap().status();
    assert_eq!(status, 200, "a valid key from a cooled-down source");
    assert_eq!(get(&h, &tokens, &unknown("kg_", 30)).await.0, 429);

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
