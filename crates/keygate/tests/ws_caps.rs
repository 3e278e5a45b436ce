//! WebSocket subscription caps and egress metering (issue 22) against two real `keygate serve`
//! processes on PostgreSQL and Redis: a plan's `max_channels_per_session` holds on one session,
//! its `max_channels_per_client` across the client's sessions on both nodes (a closed session,
//! an unsubscribe or a dead node frees its slots), refusals answer `channel_limit`; a channel
//! the key (not the client) lacks is `key_scope_missing`; the messages and bytes delivered to
//! the client show in `keygate client usage`, locally and through the admin API.

use std::time::{Duration, Instant};

mod operator;

use futures_util::{SinkExt, StreamExt};
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{postgres_schema, redis_url, WsClient, WsUpstream};
use operator::{admin_token, cli, remote, start};
use serde_json::{json, Value};

/// Channels c1..c8 need `live:stream`; `secret` needs `live:secret`. Leases live 1 s, so a
/// dead node's slots come back within a couple of seconds.
fn config(redis: &str) -> String {
    let mut channels = String::new();
    for i in 1..=8 {
        channels.push_str(&format!("\"c{i}\" = \"live:stream\"\n"));
    }
    format!(
        r#"
[server]
usage_flush = "200ms"

[limits]
backend = "redis"
redis_url = "{redis}"
timeout = "250ms"

[guard]
threshold = 100000
prefix_threshold = 100000

[[routes]]
path = "/v1/stream"
ws = {{ mode = "handshake" }}

[profile.ws]
client_messages = "json"
lease_ttl = "1s"

[profile.ws.channels]
{channels}"secret" = "live:secret"

[plans.capped.ws]
max_channels_per_session = 3
max_channels_per_client = 4
"#
    )
}

async fn connect(addr: &str, key: &str) -> WsClient {
    keygate_test::ws_connect(&format!("ws://{addr}/v1/stream"), key)
        .await
        .unwrap_or_else(|s| panic!("refused with {s}"))
}

fn subscribe(channels: &[&str]) -> Message {
    Message::Text(
        json!({"type": "subscribe", "channels": channels})
            .to_string()
            .into(),
    )
}

/// Sends `msg`, then reads until the echo of a subscribe comes back from the upstream (the
/// channels the gateway forwarded) and, when `refusal`, the gateway's error: both, in the order
/// they come. The echo's channels are `None` when nothing was forwarded.
async fn ask(c: &mut WsClient, msg: Message, refusal: bool) -> (Option<Value>, Option<Value>) {
    c.send(msg).await.unwrap();
    let (mut echo, mut error) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    // With every channel refused nothing is forwarded: only the error comes.
    while (refusal && error.is_none()) || (echo.is_none() && !refusal) {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, c.next()).await;
        let Ok(Some(Ok(Message::Text(t)))) = next else {
            panic!("no answer: {next:?}");
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["type"].as_str() {
            Some("subscribe") => echo = Some(v["channels"].clone()),
            Some("error") => error = Some(v),
            _ => panic!("unexpected {v}"),
        }
    }
    if refusal && echo.is_none() {
        // A partial grant's forward may trail the error: take it if it comes promptly.
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), c.next()).await
        {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "subscribe" {
                echo = Some(v["channels"].clone());
            }
        }
    }
    (echo, error)
}

/// Subscribes `channels` on `c` until all are granted (a freed slot reaches this node's view
/// within `limit`); an attempt that gets some refused is undone with an unsubscribe.
async fn until_granted(c: &mut WsClient, channels: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        c.send(subscribe(channels)).await.unwrap();
        let mut refused = false;
        let mut forwarded = false;
        // The echo of a full grant, or an error (then maybe a partial echo).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(forwarded || refused) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(left, c.next()).await else {
                panic!("no answer");
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            match v["type"].as_str() {
                Some("subscribe") => forwarded = true,
                Some("error") => {
                    assert_eq!(v["code"], "channel_limit", "{v}");
                    refused = true;
                }
                _ => {}
            }
        }
        if !refused {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still refused after {:?}",
            started.elapsed()
        );
        let undo = json!({"type": "unsubscribe", "channels": channels}).to_string();
        c.send(Message::Text(undo.into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Drain echoes of the undo and any trailing partial forward.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(50), c.next()).await
        {
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_caps_hold_per_session_and_per_client_across_nodes() {
    let (Some(redis), Some(db)) = (redis_url(), postgres_schema("kg_ws_caps").await) else {
        return;
    };
    let up = WsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, config(&redis)).unwrap();
    let cfg = &config_path;
    cli(&db, cfg, &["migrate"]);
    let scopes = "live:stream,live:secret";
    cli(
        &db,
        cfg,
        &[
            "client", "create", "Acme", "--plan", "capped", "--scopes", scopes,
        ],
    );
    let key = |args: &[&str]| {
        let mut all = vec!["key", "create", "--client", "Acme"];
        all.extend_from_slice(args);
        cli(&db, cfg, &all)["key"].as_str().unwrap().to_owned()
    };
    let acme = key(&[]);
    let narrow = key(&["--scopes", "live:stream"]);
    let a = start(dir.path(), &db, cfg, &up.url(), "a").await;
    let b = start(dir.path(), &db, cfg, &up.url(), "b").await;

    // Per session: three of four granted in order, the fourth refused with `channel_limit`;
    // only the three reach the upstream. A duplicate counts once.
    let mut a1 = connect(&a.listen, &acme).await;
    let (echo, error) = ask(&mut a1, subscribe(&["c1", "c2", "c2", "c3", "c4"]), true).await;
    assert_eq!(echo, Some(json!(["c1", "c2", "c3"])));
    let error = error.unwrap();
    assert_eq!(error["code"], "channel_limit", "{error}");
    assert_eq!(error["channels"], json!(["c4"]), "{error}");
    assert!(error["detail"].as_str().unwrap().contains('3'), "{error}");
    // Subscribing again to what the session holds costs nothing and is not refused.
    let (echo, error) = ask(&mut a1, subscribe(&["c1", "c2"]), false).await;
    assert_eq!((echo, error), (Some(json!(["c1", "c2"])), None));

    // Per client, across nodes: a session on node B gets the one slot left of four.
    let mut b1 = connect(&b.listen, &acme).await;
    let (echo, error) = ask(&mut b1, subscribe(&["c5", "c5", "c6"]), true).await;
    assert_eq!(echo, Some(json!(["c5"])));
    let error = error.unwrap();
    assert_eq!(error["code"], "channel_limit", "{error}");
    assert_eq!(error["channels"], json!(["c6"]), "{error}");
    // A flood of subscribes at the cap: each refused whole, nothing forwarded, nothing leaked.
    for _ in 0..30 {
        let (echo, error) = ask(&mut b1, subscribe(&["c7", "c8"]), true).await;
        assert_eq!(echo, None);
        assert_eq!(error.unwrap()["channels"], json!(["c7", "c8"]));
    }
    // A channel list past the message bound is refused as invalid, not counted.
    let huge: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
    let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
    let (_, error) = ask(&mut b1, subscribe(&huge), true).await;
    assert_eq!(error.unwrap()["code"], "invalid_channels");

    // An unsubscribe frees its slot on the other node too.
    a1.send(Message::Text(
        json!({"type": "unsubscribe", "channels": ["c3"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    until_granted(&mut b1, &["c6"], Duration::from_secs(5)).await;

    // A closed session frees all its slots: node B's session then holds its own cap of three.
    a1.close(None).await.unwrap();
    until_granted(&mut b1, &["c7"], Duration::from_secs(5)).await;
    let (echo, error) = ask(&mut b1, subscribe(&["c8"]), true).await;
    assert_eq!(echo, None);
    assert_eq!(error.unwrap()["code"], "channel_limit", "per session: 3");

    // A dead node's slots expire with their leases (TTL 1 s) rather than leak.
    let mut b2 = connect(&b.listen, &acme).await;
    let (echo, error) = ask(&mut b2, subscribe(&["c1", "c2"]), true).await;
    assert_eq!(echo, Some(json!(["c1"])), "one slot of four left");
    assert_eq!(error.unwrap()["channels"], json!(["c2"]));
    drop(b2);
    drop(b1);
    let mut a2 = connect(&a.listen, &acme).await;
    until_granted(&mut a2, &["c1", "c2", "c3"], Duration::from_secs(5)).await;
    let mut a3 = connect(&a.listen, &acme).await;
    let (echo, _) = ask(&mut a3, subscribe(&["c4", "c5"]), true).await;
    assert_eq!(echo, Some(json!(["c4"])));
    let mut a = a;
    a.proc.kill();
    let died = Instant::now();
    let mut b3 = connect(&b.listen, &acme).await;
    let took = until_granted(&mut b3, &["c1", "c2", "c3"], Duration::from_secs(6)).await;
    assert!(
        died.elapsed() >= Duration::from_millis(900),
        "freed after {took:?}, before the dead node's leases could expire"
    );

    // The key, not the client, lacks the channel's scope: key_scope_missing, as on REST.
    let mut n = connect(&b.listen, &narrow).await;
    let (echo, error) = ask(&mut n, subscribe(&["secret"]), true).await;
    assert_eq!(echo, None);
    let error = error.unwrap();
    assert_eq!(error["code"], "key_scope_missing", "{error}");
    drop(n);
    drop(b3);

    // Egress: every echo the gateway delivered is counted with usage, per client and day.
    let token = admin_token(&db, cfg, "ops", true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = cli(&db, cfg, &["client", "usage", "Acme"]);
        if report["ws_messages"].as_u64().unwrap_or(0) >= 8 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let messages = report["ws_messages"].as_u64().unwrap();
    let bytes = report["ws_bytes"].as_u64().unwrap();
    assert!(messages >= 8, "{report}");
    assert!(bytes > messages * 20, "{report}");
    let day = &report["days"][0];
    assert_eq!(day["ws_messages"], messages, "{report}");
    let through = remote(&b.admin, &token, cfg, &["client", "usage", "Acme"]);
    assert!(
        through["ws_messages"].as_u64().unwrap() >= messages,
        "{through}"
    );
}
