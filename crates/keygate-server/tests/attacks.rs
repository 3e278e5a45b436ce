//! Attacks from the second hostile round (issue 17) that the request path's one exit closes:
//! query-parameter pollution past an allowlist, forward-auth weaker than keygate's own
//! listener, and a WebSocket handshake answered 502 while the breaker is open.

mod common;

use std::time::Duration;

use common::{status_json, Harness};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::{tokio_tungstenite, WsUpstream};

const CONFIG: &str = r#"
[upstreams.live]
url = "{ws}"

[upstreams.dead]
url = "http://127.0.0.1:9"
connect_timeout = "300ms"
breaker = { failures = 1, window = "60s", open_for = "60s" }

[[routes]]
name = "odds"
path = "/v1/odds"
bookmaker = "query:bookmaker"

[[routes]]
name = "tight"
path = "/v1/tight"
limits = { per_minute = 2, by = "key" }

[[routes]]
name = "private"
path = "/v1/private"
scopes = ["admin"]
errors = { scope_missing = { status = 401 } }

[[routes]]
name = "open"
path = "/v1/open"
public = true

[[routes]]
name = "dead-stream"
path = "/v1/dead-stream"
upstream = "dead"
ws = { mode = "handshake" }
"#;

async fn start() -> (Harness, String, WsUpstream) {
    let up = WsUpstream::start().await;
    let h = Harness::start(&CONFIG.replace("{ws}", &up.url())).await;
    h.client("Acme", &[], &[], &["bet365"], "default").await;
    let (key, _) = h.key("Acme", None).await;
    (h, key, up)
}

/// Requests the upstream saw whose query names `pinnacle` in any spelling.
fn pinnacle_reached(h: &Harness) -> usize {
    h.upstream
        .requests()
        .iter()
        .filter(|r| r.uri.to_ascii_lowercase().contains("pinn"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_bookmaker_parameter_is_refused_in_every_spelling() {
    let (h, key, _up) = start().await;
    let get = |query: &str| {
        h.http
            .get(h.url(&format!("/v1/odds?{query}")))
            .header("X-API-Key", &key)
            .send()
    };
    let (status, _, _) = status_json(get("bookmaker=bet365").await.unwrap()).await;
    assert_eq!(status, 200);
    // A last-wins upstream would read pinnacle from each of these.
    for polluted in [
        "bookmaker=bet365&bookmaker=pinnacle",
        "bookm%61ker=pinnacle&bookmaker=bet365",
        "bookmaker=bet365&BOOKMAKER=pinnacle",
        "bookmaker=bet365;bookmaker=pinnacle",
        "bookmaker=&bookmaker=pinnacle",
    ] {
        let (status, _, body) = status_json(get(polluted).await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("duplicate_parameter")),
            "{polluted}: {body}"
        );
    }
    // Values are compared decoded: an encoded name of another bookmaker is that bookmaker.
    let (status, _, body) = status_json(get("bookmaker=pinn%61cle").await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("bookmaker_not_allowed"))
    );
    assert_eq!(
        pinnacle_reached(&h),
        0,
        "a refused request reached the upstream"
    );

    // The same through forward-auth: the proxy in front gets the same refusal.
    let auth = |uri: &str| {
        h.http
            .get(h.url("/v1/auth/traefik"))
            .header("X-Forwarded-Uri", uri)
            .header("X-API-Key", &key)
            .send()
    };
    let (status, _, _) = status_json(auth("/v1/odds?bookmaker=bet365").await.unwrap()).await;
    assert_eq!(status, 200);
    let (status, _, body) = status_json(
        auth("/v1/odds?bookmaker=bet365&bookmaker=pinnacle")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("duplicate_parameter"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_gets_the_limits_route_answers_and_header_rules_of_the_gateway() {
    let (h, key, _up) = start().await;
    // Limits: a client limited to 2 a minute on the route gets 2 passes, then 429s.
    let traefik = |uri: &str, key: Option<&str>| {
        let mut r = h
            .http
            .get(h.url("/v1/auth/traefik"))
            .header("X-Forwarded-Uri", uri)
            .header("X-Forwarded-Method", "GET");
        if let Some(k) = key {
            r = r.header("X-API-Key", k.to_owned());
        }
        r.send()
    };
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = traefik("/v1/tight", Some(&key)).await.unwrap();
        if resp.status() == 200 {
            assert!(resp.headers().contains_key("x-ratelimit-remaining"));
        } else {
            assert!(resp.headers().contains_key("retry-after"));
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // And those passes were counted: keygate's own listener is refused too.
    let own = h
        .http
        .get(h.url("/v1/tight"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 429);

    // A route's own answers: it says 401 for a missing scope, through forward-auth too.
    let (status, _, _) = status_json(traefik("/v1/private", Some(&key)).await.unwrap()).await;
    assert_eq!(status, 401);
    // nginx hears only 401 and 403 (anything else is an error to it).
    let nginx = h
        .http
        .get(h.url("/v1/auth/nginx"))
        .header("X-Original-URI", "/v1/tight")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(nginx.status(), 403);

    // Envoy: a pass with no identity asks Envoy to drop the caller's own identity headers,
    // and every pass asks it to drop the credential headers.
    let envoy = |path: &str, key: Option<&str>| {
        let mut r = h.http.get(h.url(&format!("/v1/auth/envoy{path}")));
        if let Some(k) = key {
            r = r.header("X-API-Key", k.to_owned());
        }
        r.send()
    };
    let public = envoy("/v1/open", None).await.unwrap();
    assert_eq!(public.status(), 200);
    let remove = public.headers()["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in [
        "x-keygate-client-id",
        "x-keygate-scopes",
        "x-api-key",
        "authorization",
    ] {
        assert!(remove.contains(name), "{name} not in {remove}");
    }
    let keyed = envoy("/v1/odds?bookmaker=bet365", Some(&key))
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    assert!(keyed.headers().contains_key("x-keygate-client-id"));
    let remove = keyed.headers()["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap();
    assert!(remove.contains("x-api-key"), "{remove}");
    assert!(!remove.contains("x-keygate-client-id"), "{remove}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_upgrade_answers_503_with_retry_after_while_the_breaker_is_open() {
    let (h, key, _up) = start().await;
    let upgrade = || async {
        let mut req = format!("ws://{}/v1/dead-stream", h.gateway.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    // The first connect fails and opens the breaker (one failure is enough here).
    let first = tokio::time::timeout(Duration::from_secs(10), upgrade())
        .await
        .unwrap();
    assert_eq!(first.status(), 502);
    // Now answered at once, as HTTP is: 503, Retry-After, the profile's upstream_unavailable.
    let open = upgrade().await;
    assert_eq!(open.status(), 503);
    assert!(open.headers().contains_key("retry-after"));
    let body: serde_json::Value =
        serde_json::from_slice(open.body().as_deref().unwrap_or_default()).unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
}
