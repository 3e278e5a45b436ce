//! Conformance of `profiles/oddsstream.toml` with seed 003 (oddsstream, "Getting your API
//! key"): the key format and its example, every row of the error table and of the plan table,
//! the rate-limit headers, rotation and revocation, the WebSocket stream and its tokens.

mod common;
#[path = "common/profiles.rs"]
mod profiles;

use std::time::Duration;

use common::{actor, Harness};
use keygate_core::{Clock, KeyState};
use keygate_test::WsUpstream;
use profiles::{call, get, profile, within_a_second, ws};

/// The document's example key.
const EXAMPLE: &str = "os_live_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";

/// The shipped profile; the stream (`/ws`) on its own WebSocket upstream.
async fn start() -> (Harness, WsUpstream) {
    let up = WsUpstream::start().await;
    let text = profile(
        "oddsstream",
        &[(
            "name = \"stream\"\npath = \"/ws\"\n",
            "name = \"stream\"\npath = \"/ws\"\nupstream = \"stream\"\n",
        )],
    ) + &format!("\n[upstreams.stream]\nurl = \"{}\"\n", up.url());
    (Harness::start(&text).await, up)
}

async fn customer(h: &Harness, name: &str, plan: &str, bookmakers: &[&str]) -> String {
    h.client(name, &[], &[], bookmakers, plan).await;
    h.key(name, None).await.0
}

fn code(a: &profiles::Answer) -> (u16, String) {
    (a.status, a.json()["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_format_and_the_401_row() {
    let (h, _up) = start().await;
    // "Key format: os_live_ followed by 32 hex characters."
    assert!(
        h.issuer.format.check(EXAMPLE).is_ok(),
        "the document's example is well-formed"
    );
    let key = customer(&h, "Acme", "pro", &[]).await;
    assert!(key.starts_with("os_live_"));
    assert_eq!(key.len(), "os_live_".len() + 32);
    assert!(key["os_live_".len()..]
        .bytes()
        .all(|b| b.is_ascii_hexdigit()));

    // curl "https://api.oddsstream.io/api/odds" -H "X-Api-Key: os_live_YOUR_KEY"
    let a = get(&h, "/api/odds", &[("X-Api-Key", &key)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(h.upstream.last_request().unwrap().header("x-api-key"), None);

    // 401 | unauthorized | Key missing, empty, or doesn't exist
    for headers in [
        &[][..],
        &[("X-Api-Key", "")],
        &[("X-Api-Key", EXAMPLE)],
        &[("X-Api-Key", "os_live_YOUR_KEY")],
    ] {
        let a = get(&h, "/api/odds", headers).await;
        assert_eq!(code(&a), (401, "unauthorized".into()), "{headers:?}");
    }
    let a = get(&h, "/api/odds", &[]).await;
    assert_eq!(
        a.body,
        r#"{"code":"unauthorized","message":"API key missing. Send it in the X-Api-Key header."}"#
    );

    // Rotate: "The old key stops working instantly." Revoke: "Permanently disables the key."
    let id = h.store.list_keys(&Default::default()).await.unwrap()[0]
        .id
        .clone();
    let (fresh, material) = h.issuer.issue();
    h.store
        .rotate_key(&actor(), &id, material, None)
        .await
        .unwrap();
    within_a_second(&h, "/api/sports", &[("X-Api-Key", &key)], 401).await;
    assert_eq!(
        get(&h, "/api/sports", &[("X-Api-Key", fresh.expose())])
            .await
            .status,
        200
    );
    let keys = h.store.list_keys(&Default::default()).await.unwrap();
    let active = keys.iter().find(|k| k.state == KeyState::Active).unwrap();
    h.store
        .set_key_state(&actor(), &active.id, KeyState::Revoked)
        .await
        .unwrap();
    within_a_second(&h, "/api/sports", &[("X-Api-Key", fresh.expose())], 401).await;
}

/// Issue 17 (5). "Free | 200 req/day | … | Sports, Bookmakers, Events, Odds (1 bookmaker)" and
/// "Pro | … | + Value Bets, all bookmakers": a Free request without `?bookmaker=` is served
/// (the parameter is optional), and the upstream learns which bookmaker the client selected
/// from `X-Keygate-Bookmakers`, so it answers with that bookmaker's odds only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_selected_bookmaker_reaches_the_upstream() {
    let (h, _up) = start().await;
    let free = customer(&h, "Hobbyist", "free", &["bet365"]).await;
    let unpicked = customer(&h, "Newcomer", "free", &[]).await;
    let pro = customer(&h, "Tipster", "pro", &[]).await;
    for (key, path, bookmakers) in [
        (&free, "/api/odds", "bet365"),
        (&free, "/api/events", "bet365"),
        // Nothing picked yet: routes without a bookmaker are served, with an empty list.
        (&unpicked, "/api/sports", ""),
        (&pro, "/api/odds", "*"),
    ] {
        let a = get(
            &h,
            path,
            &[("X-Api-Key", key), ("X-Keygate-Bookmakers", "*")],
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let seen = h.upstream.last_request().unwrap();
        assert_eq!(
            seen.header_all("x-keygate-bookmakers"),
            [bookmakers],
            "{path}"
        );
        assert_eq!(
            seen.header_all("x-keygate-sports"),
            [""],
            "no sport allowlist"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_403_row_and_the_plan_endpoints() {
    let (h, _up) = start().await;
    let unpicked = customer(&h, "Newcomer", "free", &[]).await;
    let free = customer(&h, "Hobbyist", "free", &["bet365"]).await;
    let pro = customer(&h, "Tipster", "pro", &[]).await;
    let rt = customer(&h, "Ticker", "pro_plus_rt", &[]).await;
    let live = customer(&h, "Trader", "pro_plus_live", &[]).await;

    // Free: "Sports, Bookmakers, Events, Odds (1 bookmaker)"
    for path in [
        "/api/sports",
        "/api/bookmakers",
        "/api/events",
        "/api/odds",
        "/api/odds?bookmaker=bet365",
    ] {
        assert_eq!(
            get(&h, path, &[("X-Api-Key", &free)]).await.status,
            200,
            "{path}"
        );
    }
    // 403 | bookmaker_not_configured | Free plan: no bookmaker selected in dashboard
    let a = get(
        &h,
        "/api/odds?bookmaker=bet365",
        &[("X-Api-Key", &unpicked)],
    )
    .await;
    assert_eq!(code(&a), (403, "bookmaker_not_configured".into()));
    assert_eq!(
        a.body,
        r#"{"code":"bookmaker_not_configured","message":"No bookmaker selected. Visit Dashboard → Billing to pick one."}"#
    );
    assert_eq!(
        code(&get(&h, "/api/odds", &[("X-Api-Key", &unpicked)]).await).1,
        "bookmaker_not_configured"
    );
    assert_eq!(
        get(&h, "/api/sports", &[("X-Api-Key", &unpicked)])
            .await
            .status,
        200
    );
    // 403 | bookmaker_forbidden | Free plan: requesting a different bookmaker than your selected one
    let a = get(&h, "/api/odds?bookmaker=pinnacle", &[("X-Api-Key", &free)]).await;
    assert_eq!(code(&a), (403, "bookmaker_forbidden".into()));
    assert!(a.json()["message"].as_str().unwrap().contains("'pinnacle'"));
    // Pro: "+ Value Bets, all bookmakers"
    for path in [
        "/api/odds?bookmaker=pinnacle",
        "/api/odds?bookmaker=bet365",
        "/api/value-bets",
    ] {
        assert_eq!(
            get(&h, path, &[("X-Api-Key", &pro)]).await.status,
            200,
            "{path}"
        );
    }
    let a = get(&h, "/api/value-bets", &[("X-Api-Key", &free)]).await;
    assert_eq!(code(&a), (403, "value_bets_not_on_plan".into()));
    // 403 | live_not_on_plan | Requested live odds without Pro Live plan
    for key in [&free, &pro, &rt] {
        let a = get(&h, "/api/odds/live", &[("X-Api-Key", key)]).await;
        assert_eq!(code(&a), (403, "live_not_on_plan".into()));
        assert_eq!(
            a.body,
            r#"{"code":"live_not_on_plan","message":"Live odds need the Pro+ Live plan. Upgrade to Pro+ Live."}"#
        );
    }
    assert_eq!(
        get(&h, "/api/odds/live", &[("X-Api-Key", &live)])
            .await
            .status,
        200
    );
    // 403 | websocket_not_on_plan | Requested WS token without a plan that includes WebSocket
    let a = call(&h, "POST", "/v1/ws-token", &[("X-Api-Key", &pro)]).await;
    assert_eq!(code(&a), (403, "websocket_not_on_plan".into()));
    assert_eq!(
        a.body,
        r#"{"code":"websocket_not_on_plan","message":"Your plan does not include WebSocket. Upgrade to Pro+ RT or Pro+ Live."}"#
    );
    let a = ws(&h, "/ws", &[("X-Api-Key", &pro)]).await.unwrap_err();
    assert_eq!(code(&a), (403, "websocket_not_on_plan".into()));
    for key in [&rt, &live, &free] {
        let a = call(&h, "POST", "/v1/ws-token", &[("X-Api-Key", key)]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let token = a.json()["token"].as_str().unwrap().to_owned();
        ws(&h, &format!("/ws?token={token}"), &[]).await.unwrap();
    }
    // Unknown endpoints are the provider's 404.
    let a = get(&h, "/api/nothing", &[("X-Api-Key", &pro)]).await;
    assert_eq!(code(&a), (404, "not_found".into()));
}

fn next_boundary(h: &Harness, period: i64) -> i64 {
    let now = h.clock.now().as_millis() / 1000;
    (now / period + 1) * period
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_free_daily_quota_and_pro_hourly() {
    let (h, _up) = start().await;
    let free = customer(&h, "Hobbyist", "free", &["bet365"]).await;
    let pro = customer(&h, "Tipster", "pro", &[]).await;

    // "Every response includes: X-RateLimit-Remaining: 187 / X-RateLimit-Reset: 1745160060"
    let day_end = next_boundary(&h, 86_400).to_string();
    for (i, path) in ["/api/sports", "/api/bookmakers", "/api/events", "/api/odds"]
        .iter()
        .enumerate()
    {
        let a = get(&h, path, &[("X-Api-Key", &free)]).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some((199 - i).to_string().as_str()),
            "{path}"
        );
        assert_eq!(a.header("x-ratelimit-reset"), Some(day_end.as_str()));
    }
    // | Free | 200 req/day |
    for _ in 4..200 {
        assert_eq!(
            get(&h, "/api/sports", &[("X-Api-Key", &free)]).await.status,
            200
        );
    }
    // 429 | rate_limit_exceeded | Back off and retry after X-RateLimit-Reset
    let a = get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    assert_eq!(code(&a), (429, "rate_limit_exceeded".into()));
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(a.header("x-ratelimit-reset"), Some(day_end.as_str()));
    assert!(a.json()["message"].as_str().unwrap().contains(&day_end));
    // The next UTC day.
    let now = h.clock.now().as_millis() / 1000;
    h.clock.advance(Duration::from_secs(
        u64::try_from(next_boundary(&h, 86_400) - now).unwrap(),
    ));
    let a = get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    assert_eq!(
        (a.status, a.header("x-ratelimit-remaining")),
        (200, Some("199"))
    );

    // | Pro | 5,500 req/hr |
    let hour_end = next_boundary(&h, 3_600).to_string();
    let a = get(&h, "/api/value-bets", &[("X-Api-Key", &pro)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-ratelimit-limit"), Some("5500"));
    assert_eq!(a.header("x-ratelimit-remaining"), Some("5499"));
    assert_eq!(a.header("x-ratelimit-reset"), Some(hour_end.as_str()));
}

/// `(status, X-RateLimit-Remaining, X-RateLimit-Reset)`; both headers must be there.
fn budget(a: &profiles::Answer) -> (u16, u64, i64) {
    let number = |name: &str| {
        a.header(name)
            .unwrap_or_else(|| panic!("{} without {name}: {a:?}", a.status))
            .to_owned()
    };
    (
        a.status,
        number("x-ratelimit-remaining").parse().unwrap(),
        number("x-ratelimit-reset").parse().unwrap(),
    )
}

/// "Every response includes: X-RateLimit-Remaining: 187 / X-RateLimit-Reset: 1745160060":
/// answers that are refused report the budget as it stands, and cost nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_includes_the_rate_limit_headers() {
    let (h, _up) = start().await;
    let free = customer(&h, "Hobbyist", "free", &["bet365"]).await;
    let unpicked = customer(&h, "Newcomer", "free", &[]).await;
    let pro = customer(&h, "Tipster", "pro", &[]).await;
    let rt = customer(&h, "Ticker", "pro_plus_rt", &[]).await;
    let day_end = next_boundary(&h, 86_400);
    let hour_end = next_boundary(&h, 3_600);
    let now = h.clock.now().as_secs();

    // 200: Free's 200 a day, the 13th request leaves "X-RateLimit-Remaining: 187".
    for _ in 0..12 {
        get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    }
    let a = get(&h, "/api/events", &[("X-Api-Key", &free)]).await;
    assert_eq!(budget(&a), (200, 187, day_end));
    // Each 403 of the table, for a caller it knows: the same budget, nothing taken from it.
    let free_403s = [
        ("/api/odds?bookmaker=pinnacle", "bookmaker_forbidden"),
        ("/api/value-bets", "value_bets_not_on_plan"),
        ("/api/odds/live", "live_not_on_plan"),
    ];
    for (path, expected) in free_403s {
        let a = get(&h, path, &[("X-Api-Key", &free)]).await;
        assert_eq!(code(&a).1, expected);
        assert_eq!(budget(&a), (403, 187, day_end), "{path}");
        assert_eq!(a.header("x-ratelimit-limit"), Some("200"));
        assert_eq!(a.header("retry-after"), None);
    }
    let a = get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    assert_eq!(budget(&a), (200, 186, day_end), "the 403s cost nothing");
    // 403 bookmaker_not_configured: a Free client yet to make a request has all 200.
    let a = get(&h, "/api/odds", &[("X-Api-Key", &unpicked)]).await;
    assert_eq!(code(&a).1, "bookmaker_not_configured");
    assert_eq!(budget(&a), (403, 200, day_end));
    // 403 websocket_not_on_plan, from the token endpoint and from the stream: Pro's 5,500 an
    // hour.
    let a = get(&h, "/api/value-bets", &[("X-Api-Key", &pro)]).await;
    assert_eq!(budget(&a), (200, 5499, hour_end));
    let a = call(&h, "POST", "/v1/ws-token", &[("X-Api-Key", &pro)]).await;
    assert_eq!(code(&a).1, "websocket_not_on_plan");
    assert_eq!(budget(&a), (403, 5499, hour_end));
    let a = ws(&h, "/ws", &[("X-Api-Key", &pro)]).await.unwrap_err();
    assert_eq!(code(&a).1, "websocket_not_on_plan");
    assert_eq!(budget(&a), (403, 5499, hour_end));
    // A token bought (200) reports too; it is not a request against the plan.
    let a = call(&h, "POST", "/v1/ws-token", &[("X-Api-Key", &rt)]).await;
    assert_eq!(budget(&a), (200, 5500, hour_end));

    // 401 unauthorized: no plan to report. The budget such a caller spends is the guard's
    // per address: failed authentications before a cool-down, 30 a minute ([guard] defaults).
    // A missing key is not a guess and costs nothing; Reset is now while nothing is counted.
    let a = get(&h, "/api/odds", &[]).await;
    assert_eq!(code(&a).0, 401);
    assert_eq!(budget(&a), (401, 30, now));
    assert_eq!(a.header("x-ratelimit-limit"), Some("30"));
    let a = get(&h, "/api/odds", &[("X-Api-Key", EXAMPLE)]).await;
    assert_eq!(budget(&a), (401, 29, now + 60));
    let a = get(&h, "/api/odds", &[("X-Api-Key", "os_live_YOUR_KEY")]).await;
    assert_eq!(budget(&a), (401, 28, now + 60));
    let a = ws(&h, "/ws", &[("X-Api-Key", EXAMPLE)]).await.unwrap_err();
    assert_eq!(code(&a).0, 401);
    assert_eq!(a.header("x-ratelimit-limit"), Some("30"));
    let a = call(&h, "POST", "/v1/ws-token", &[]).await;
    assert_eq!(budget(&a).0, 401);

    // 429 rate_limit_exceeded, the plan's: Free's day is used up.
    for _ in 0..186 {
        get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    }
    let a = get(&h, "/api/sports", &[("X-Api-Key", &free)]).await;
    assert_eq!(code(&a), (429, "rate_limit_exceeded".into()));
    assert_eq!(budget(&a), (429, 0, day_end));
    assert!(a.header("retry-after").is_some());
    // A 403 now says so too (and is still a 403, without Retry-After).
    let a = get(&h, "/api/value-bets", &[("X-Api-Key", &free)]).await;
    assert_eq!(budget(&a), (403, 0, day_end));
    assert_eq!(a.header("retry-after"), None);

    // 429 rate_limit_exceeded, the guard's: the 30th guess starts a five-minute cool-down.
    let (unknown, _) = h.issuer.issue();
    let mut last = None;
    for _ in 0..30 {
        let a = get(&h, "/api/odds", &[("X-Api-Key", unknown.expose())]).await;
        if a.status != 401 {
            break;
        }
        last = Some(budget(&a));
    }
    assert_eq!(last, Some((401, 0, now + 300)), "the guess that started it");
    let a = get(&h, "/api/odds", &[("X-Api-Key", unknown.expose())]).await;
    assert_eq!(code(&a), (429, "rate_limit_exceeded".into()));
    assert_eq!(budget(&a), (429, 0, now + 300));
    assert_eq!(a.header("retry-after"), Some("300"));
    // The cool-down is the address's, for every key that fails (a missing one too) ...
    let a = get(&h, "/api/odds", &[]).await;
    assert_eq!(code(&a), (429, "rate_limit_exceeded".into()));
    assert_eq!(budget(&a), (429, 0, now + 300));
    // ... while a good key from it is served and reports its own plan (issue 17: the guard
    // refuses guessing, not customers).
    let a = get(&h, "/api/value-bets", &[("X-Api-Key", &pro)]).await;
    assert_eq!(budget(&a), (200, 5498, hour_end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_websocket_is_30_connections_a_day_pro_rt_unlimited() {
    let (h, up) = start().await;
    let free = customer(&h, "Hobbyist", "free", &["bet365"]).await;
    let rt = customer(&h, "Ticker", "pro_plus_rt", &[]).await;
    // | Free | … | 30 connections/day |
    for i in 0..30 {
        let socket = ws(&h, "/ws", &[("X-Api-Key", &free)]).await;
        assert!(socket.is_ok(), "connection {}: {:?}", i + 1, socket.err());
    }
    let a = ws(&h, "/ws", &[("X-Api-Key", &free)]).await.unwrap_err();
    assert_eq!(code(&a), (429, "rate_limit_exceeded".into()));
    // | Pro+ RT | … | Unlimited |
    for _ in 0..40 {
        ws(&h, "/ws", &[("X-Api-Key", &rt)]).await.unwrap();
    }
    assert!(up.connections().len() >= 70);
    // Tomorrow, 30 more.
    h.clock.advance(Duration::from_secs(86_400));
    ws(&h, "/ws", &[("X-Api-Key", &free)]).await.unwrap();
}

/// Issue 17 (16). "A free account gives you immediate access" and "Every response includes:
/// X-RateLimit-Remaining … X-RateLimit-Reset": a client created without a plan (here through
/// the admin API) starts on Free (`[profile] default_plan = "free"`), so its responses carry
/// Free's 200 a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_created_without_a_plan_starts_on_free_with_its_headers() {
    let (h, _up) = start().await;
    let created = h
        .create_client_via_admin(serde_json::json!({ "name": "Signup", "bookmakers": ["bet365"] }))
        .await;
    assert_eq!(created["plan"], "free", "{created}");
    let (key, _) = h.key("Signup", None).await;
    let a = get(&h, "/api/odds", &[("X-Api-Key", &key)]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("x-ratelimit-remaining"), Some("199"));
    assert!(a.header("x-ratelimit-reset").is_some());
}
