//! Configuration reload (issue 19): a running gateway reads its file again while requests
//! and a WebSocket session go on; a bad file changes nothing; settings that need a restart are
//! named; sessions the new file no longer allows are closed with the profile's close frame.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{status_json, Harness};
use futures_util::{SinkExt, StreamExt};
use keygate_server::gateway::ReloadError;
use keygate_test::tokio_tungstenite::connect_async;
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::WsUpstream;

const WAIT: Duration = Duration::from_secs(5);

/// `{limit}` is the metered plan's per-minute limit; `{extra_route}` adds routes; `{ws}` is the
/// WebSocket upstream; `{ws_features}` the features of the streaming plan.
const CONFIG: &str = r#"
[upstreams.live]
url = "{ws}"

[plans.busy]
features = ["websocket"]

[plans.metered]
limits = { per_minute = {limit} }

[plans.streaming]
features = [{ws_features}]

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
features = ["websocket"]
ws = { mode = "handshake" }

{extra_route}

[[routes]]
name = "rest"
path = "/v1/{*rest}"

[profile]
credentials = ["header:X-API-Key"]

[profile.ws.close.revoked]
code = 4003
reason = "Access changed"
"#;

fn config(ws: &str, limit: u32, extra_route: &str, ws_features: &str) -> String {
    CONFIG
        .replace("{ws}", ws)
        .replace("{limit}", &limit.to_string())
        .replace("{extra_route}", extra_route)
        .replace("{ws_features}", ws_features)
}

const NEW_ROUTE: &str = r#"
[[routes]]
name = "fixtures"
path = "/v2/fixtures"
"#;

async fn status_of(h: &Harness) -> serde_json::Value {
    let resp = h.http.get(h.admin_url("/status")).send().await.unwrap();
    status_json(resp).await.2
}

async fn metrics(h: &Harness) -> String {
    let resp = h.http.get(h.admin_url("/metrics")).send().await.unwrap();
    resp.text().await.unwrap()
}

async fn get(h: &Harness, key: &str, path: &str) -> u16 {
    h.http
        .get(h.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

type Client = keygate_test::tokio_tungstenite::WebSocketStream<
    keygate_test::tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
>;

async fn open_stream(h: &Harness, key: &str) -> Client {
    let mut req = format!("ws://{}/v1/stream", h.gateway.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    connect_async(req).await.expect("upgrade").0
}

/// Sends `text` and reads the upstream's echo.
async fn echo(c: &mut Client, text: &str) -> Result<String, String> {
    c.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => return Err(format!("{other:?}")),
        }
    }
}

async fn close_of(c: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.as_str().to_owned())
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_changes_a_limit_and_adds_a_route_while_a_session_relays() {
    let up = WsUpstream::start().await;
    let h = Harness::start(&config(&up.url(), 1000, "", "\"websocket\"")).await;
    h.client("Busy", &[], &[], &[], "busy").await;
    let (busy, _) = h.key("Busy", None).await;
    h.client("Metered", &[], &[], &[], "metered").await;
    let (metered, _) = h.key("Metered", None).await;
    let before = status_of(&h).await;
    assert_eq!(before["config"]["version"], 1, "{before}");
    let old_hash = before["config"]["hash"].as_str().unwrap().to_owned();
    assert_eq!(old_hash.len(), 64);

    // A session relaying before, during and after the reload.
    let mut session = open_stream(&h, &busy).await;
    assert_eq!(echo(&mut session, "before").await.unwrap(), "before");
    assert_eq!(get(&h, &busy, "/v2/fixtures").await, 404);

    // Load: four callers on keep-alive connections until told to stop; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (http, url, key) = (h.http.clone(), h.url("/v1/scores"), busy.clone());
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).header("X-API-Key", &key).send().await {
                    Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    h.rewrite_config(&config(&up.url(), 3, NEW_ROUTE, "\"websocket\""));
    let reloaded = h
        .gateway
        .reload("test")
        .await
        .expect("the new file is valid");
    assert_eq!(reloaded.version, 2);
    assert!(reloaded.changed);
    assert!(reloaded.restart_required.is_empty(), "{reloaded:?}");
    assert_eq!(reloaded.sessions_closed, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the reload"
    );
    assert!(
        served.load(Ordering::Relaxed) > 20,
        "too little load to tell"
    );

    // The session is the same connection and still relays.
    assert_eq!(echo(&mut session, "after").await.unwrap(), "after");
    // The new route is served; the plan's new limit is enforced.
    assert_eq!(get(&h, &busy, "/v2/fixtures").await, 200);
    let statuses = [
        get(&h, &metered, "/v1/a").await,
        get(&h, &metered, "/v1/a").await,
        get(&h, &metered, "/v1/a").await,
        get(&h, &metered, "/v1/a").await,
    ];
    assert_eq!(statuses, [200, 200, 200, 429]);

    let after = status_of(&h).await;
    assert_eq!(after["config"]["version"], 2, "{after}");
    assert_eq!(after["config"]["loaded_by"], "test");
    assert_ne!(after["config"]["hash"], old_hash.as_str());
    assert!(metrics(&h)
        .await
        .contains("keygate_config_reloads_total{result=\"applied\"} 1"));
    // Requests counted before the reload stay counted on the route of the same name.
    let m = metrics(&h).await;
    let rest_forwarded = m
        .lines()
        .find(|l| l.starts_with("keygate_requests_total{route=\"rest\",outcome=\"forwarded\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        rest_forwarded >= served.load(Ordering::Relaxed),
        "counts lost across the reload: {rest_forwarded}"
    );
    // The audit log names who reloaded.
    let audit = h
        .store
        .audit(&keygate_store::AuditFilter {
            action: Some("config.reload".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_unreadable_file_is_refused_with_every_error_and_the_old_one_keeps_serving() {
    let up = WsUpstream::start().await;
    let good = config(&up.url(), 3, "", "\"websocket\"");
    let h = Harness::start(&good).await;
    h.client("Metered", &[], &[], &[], "metered").await;
    let (metered, _) = h.key("Metered", None).await;

    // Two errors on two lines: both are reported, with the file's name and their lines.
    let bad = good
        .replace("limits = { per_minute = 3 }", "limits = { per_minute = 0 }")
        .replace("path = \"/v1/stream\"", "path = \"v1/stream\"");
    h.rewrite_config(&bad);
    let Err(ReloadError::Invalid(errors)) = h.gateway.reload("test").await else {
        panic!("a file with errors was applied");
    };
    let text = errors.to_string();
    let file = h.config_path.display().to_string();
    assert_eq!(errors.0.len(), 2, "{text}");
    assert!(
        text.contains(&format!(
            "{file}:8: plans.metered.limits.per_minute: 0 is not a positive whole number"
        )),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with(&format!("{file}:"))),
        "{text}"
    );

    // TOML that does not parse, and a file that is gone: refused the same way.
    h.rewrite_config("[plans.metered\n");
    assert!(matches!(
        h.gateway.reload("test").await,
        Err(ReloadError::Invalid(_))
    ));
    std::fs::remove_file(&h.config_path).unwrap();
    let Err(e @ ReloadError::Unreadable { .. }) = h.gateway.reload("test").await else {
        panic!("a missing file was not refused");
    };
    assert!(e.to_string().contains(&file), "{e}");

    // The old configuration serves on: its limit of 3 still holds.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&h, &metered, "/v1/a").await);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let status = status_of(&h).await;
    assert_eq!(status["config"]["version"], 1);
    assert!(metrics(&h)
        .await
        .contains("keygate_config_reloads_total{result=\"refused\"} 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_named_and_keep_their_running_value() {
    let up = WsUpstream::start().await;
    let good = config(&up.url(), 3, "", "\"websocket\"");
    let h = Harness::start(&good).await;
    h.client("Busy", &[], &[], &[], "busy").await;
    let (busy, _) = h.key("Busy", None).await;
    let changed = format!(
        "[server]\nmax_body_bytes = 1000\n\n[keys]\nprefix = \"other_\"\nlength = 32\n{good}"
    );
    h.rewrite_config(&changed);
    let reloaded = h.gateway.reload("test").await.unwrap();
    assert_eq!(
        reloaded.restart_required,
        ["server (connection and head bounds)", "keys"]
    );
    // Keys of the running format still authenticate.
    assert_eq!(get(&h, &busy, "/v1/a").await, 200);
    assert_ne!(h.gateway.gateway().config.http.max_body_bytes, 1000);
    // Reloading the same file again changes nothing and says so.
    let again = h.gateway.reload("test").await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.version, 3);
    // Two at once (a signal and an admin request) apply one after the other.
    let (a, b) = tokio::join!(h.gateway.reload("one"), h.gateway.reload("two"));
    let mut versions = [a.unwrap().version, b.unwrap().version];
    versions.sort_unstable();
    assert_eq!(versions, [4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_new_file_no_longer_allows_are_closed_with_the_profiles_frame() {
    let up = WsUpstream::start().await;
    let h = Harness::start(&config(&up.url(), 3, "", "\"websocket\"")).await;
    h.client("Streamer", &[], &[], &[], "streaming").await;
    let (streamer, _) = h.key("Streamer", None).await;
    h.client("Busy", &[], &[], &[], "busy").await;
    let (busy, _) = h.key("Busy", None).await;
    let mut losing = open_stream(&h, &streamer).await;
    let mut keeping = open_stream(&h, &busy).await;
    assert_eq!(echo(&mut losing, "one").await.unwrap(), "one");

    // The streaming plan loses its `websocket` feature.
    h.rewrite_config(&config(&up.url(), 3, "", ""));
    let reloaded = h.gateway.reload("test").await.unwrap();
    assert_eq!(reloaded.sessions_closed, 1);
    assert_eq!(
        close_of(&mut losing).await,
        (4003, "Access changed".to_owned())
    );
    assert_eq!(echo(&mut keeping, "still").await.unwrap(), "still");
    // A new upgrade on that plan is refused by the new file.
    let mut req = format!("ws://{}/v1/stream", h.gateway.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", streamer.parse().unwrap());
    assert!(connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reloads_and_answers_errors_as_problems() {
    let up = WsUpstream::start().await;
    let good = config(&up.url(), 3, "", "\"websocket\"");
    let h = Harness::start(&good).await;
    let token = admin_token(&h).await;
    let post = |path: &str| h.http.post(h.admin_url(path)).bearer_auth(&token).send();
    let (status, _, body) = status_json(post("/v1/reload").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["changed"], false);

    h.rewrite_config(&good.replace("path = \"/v1/stream\"", "path = \"v1/stream\""));
    let (status, ct, body) = status_json(post("/v1/reload").await.unwrap()).await;
    assert_eq!(
        (status, ct.as_str()),
        (422, "application/problem+json"),
        "{body}"
    );
    assert_eq!(body["code"], "invalid_config");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains(":14: "),
        "{body}"
    );

    // Without a token: refused before anything is read.
    let resp = h.http.post(h.admin_url("/v1/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

async fn admin_token(h: &Harness) -> String {
    let format = keygate_core::KeyFormat::admin_token();
    let secret = format.generate();
    let material = keygate_core::KeyMaterial {
        digest: keygate_core::Digester::plain().digest(secret.expose()),
        hint: format.hint(&secret),
    };
    h.store
        .create_admin_token(&common::actor(), "ops", false, material)
        .await
        .unwrap();
    secret.expose().to_owned()
}
