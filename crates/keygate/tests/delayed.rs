//! Delayed tiers against a real `keygate serve` process: a delayed plan's WebSocket session
//! gets each upstream message no earlier than its arrival plus the plan's delay, in order,
//! while a real-time plan's gets it at once; a session that would hold more than the bound is
//! closed with `delay_overflow`; a plan change reaches open sessions; REST requests of the
//! delayed plan go to the route's `delayed_upstream` (or, without one, to its upstream), with
//! `X-Keygate-Delay`, which no caller can forge; and the bad values the configuration refuses.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod operator;

use futures_util::StreamExt;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{http_client, ws_upstream::Conn, Serving, Upstream, WsClient, WsUpstream};
use operator::{cli, start};

/// The delay of the `delayed` plan: long enough that "at once" and "after the delay" stay
/// apart on a busy machine.
const DELAY: Duration = Duration::from_secs(3);

/// How late a message may come past what it is owed: generous, for a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(4);

/// Most messages a delayed session holds in these tests.
const BUFFER_MESSAGES: usize = 100;

fn config(ws: &WsUpstream, rest: &Upstream, delayed: &Upstream) -> String {
    format!(
        r#"
[guard]
threshold = 100000
prefix_threshold = 100000

[upstreams.feed]
url = "{ws}"

[upstreams.rest]
url = "{rest}"

[upstreams.delayed]
url = "{delayed}"

[plans.live]
features = []

[plans.delayed]
delay = "3s"

[profile.ws]
delay_buffer_messages = {BUFFER_MESSAGES}

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "feed"
ws = {{ mode = "handshake" }}

[[routes]]
name = "odds"
path = "/v1/odds"
upstream = "rest"
delayed_upstream = "delayed"

[[routes]]
name = "scores"
path = "/v1/scores"
upstream = "rest"
"#,
        ws = ws.url(),
        rest = rest.url(),
        delayed = delayed.url(),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    db: String,
    config: std::path::PathBuf,
    node: Serving,
    ws: WsUpstream,
    rest: Upstream,
    delayed: Upstream,
    /// Keys of a client on `live` and one on `delayed`.
    live_key: String,
    delayed_key: String,
}

async fn setup() -> Setup {
    let ws = WsUpstream::start().await;
    let rest = Upstream::start().await;
    let delayed = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db").to_str().unwrap().to_owned();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, self::config(&ws, &rest, &delayed)).unwrap();
    cli(&db, &config, &["migrate"]);
    let mut keys = Vec::new();
    for (name, plan) in [("Live", "live"), ("Late", "delayed")] {
        cli(&db, &config, &["client", "create", name, "--plan", plan]);
        let made = cli(&db, &config, &["key", "create", "--client", name]);
        keys.push(made["key"].as_str().unwrap().to_owned());
    }
    let node = start(dir.path(), &db, &config, &rest.url(), "node").await;
    let delayed_key = keys.pop().unwrap();
    let live_key = keys.pop().unwrap();
    Setup {
        _dir: dir,
        db,
        config,
        node,
        ws,
        rest,
        delayed,
        live_key,
        delayed_key,
    }
}

/// Opens a session and returns it with its upstream connection (the `n`th accepted).
async fn open(s: &Setup, key: &str, n: usize) -> (WsClient, Arc<Conn>) {
    let url = format!("ws://{}/v1/stream", s.node.listen);
    let client = keygate_test::ws_connect(&url, key)
        .await
        .expect("the upgrade is accepted");
    let conns = s.ws.wait_connections(n, Duration::from_secs(10)).await;
    assert_eq!(conns.len(), n, "the upstream connection was not opened");
    (client, Arc::clone(&conns[n - 1]))
}

/// The next text message and when it arrived; panics after `limit`.
async fn next_text(c: &mut WsClient, limit: Duration) -> (String, Instant) {
    loop {
        match tokio::time::timeout(limit, c.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return (t.to_string(), Instant::now()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text message within {limit:?}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_session_gets_each_message_after_the_delay_in_order() {
    let s = setup().await;
    let (mut live, live_up) = open(&s, &s.live_key, 1).await;
    let (mut late, late_up) = open(&s, &s.delayed_key, 2).await;
    // The upgrade tells the upstream the delay; a real-time plan's has no such header.
    assert_eq!(late_up.header("x-keygate-delay"), Some("3"));
    assert_eq!(late_up.header("x-keygate-plan"), Some("delayed"));
    assert_eq!(live_up.header("x-keygate-delay"), None);

    let mut sent = Vec::new();
    for i in 0..5 {
        let text = format!("tick {i}");
        sent.push((text.clone(), Instant::now()));
        live_up.push(Message::Text(text.as_str().into()));
        late_up.push(Message::Text(text.as_str().into()));
        // The real-time session gets it at once: well before the delay.
        let (got, at) = next_text(&mut live, DELAY).await;
        assert_eq!(got, text);
        assert!(at.duration_since(sent[i].1) < DELAY, "{:?}", at - sent[i].1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The delayed one: in order, none before it was sent plus the delay (strictly: the
    // gateway saw it after it was sent), none much later.
    for (text, at_upstream) in &sent {
        let (got, at) = next_text(&mut late, DELAY + SLACK).await;
        assert_eq!(&got, text, "order kept");
        let after = at.duration_since(*at_upstream);
        assert!(after >= DELAY, "{text} came {after:?} after it was sent");
        assert!(
            after < DELAY + SLACK,
            "{text} came {after:?} after it was sent"
        );
    }
    // Control frames are not held: a ping from the upstream is answered by the client now
    // (the client's pong reaches the upstream long before the delay).
    let pinged = Instant::now();
    late_up.push(Message::Ping(b"now".to_vec().into()));
    let before = late_up.received().len();
    let recv = late_up.wait_received(before + 1, DELAY + SLACK);
    // The client answers a ping only while it reads: its pong goes out with its next read
    // after the ping, so it reads until the upstream has the pong (or the wait ends).
    let reading = async {
        while let Some(Ok(_)) = late.next().await {}
        std::future::pending::<()>().await;
    };
    let received = tokio::select! {
        received = recv => received,
        () = reading => unreachable!("reading ends only by the select"),
    };
    assert!(
        received
            .iter()
            .any(|r| matches!(r, keygate_test::Received::Pong(p) if p == b"now")),
        "{received:?}"
    );
    assert!(pinged.elapsed() < DELAY + SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_session_past_its_bound_is_closed_with_delay_overflow() {
    let s = setup().await;
    let (mut late, late_up) = open(&s, &s.delayed_key, 1).await;
    for i in 0..=BUFFER_MESSAGES {
        late_up.push(Message::Text(format!("flood {i}").into()));
    }
    // Nothing was due yet: the first thing the client sees is the close.
    match tokio::time::timeout(DELAY, late.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), "Delay buffer full");
        }
        other => panic!("expected the delay_overflow close, got {other:?}"),
    }
    assert!(late_up.wait_closed(Duration::from_secs(10)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_reaches_an_open_session() {
    let s = setup().await;
    let (mut late, late_up) = open(&s, &s.delayed_key, 1).await;
    let held_at = Instant::now();
    late_up.push(Message::Text("held".into()));
    cli(
        &s.db,
        &s.config,
        &["client", "update", "Late", "--plan", "live"],
    );
    // The held message is released when the session learns of the change, not at the end of
    // the delay it was held under, and new messages pass at once.
    let (got, at) = next_text(&mut late, DELAY + SLACK).await;
    assert_eq!(got, "held");
    eprintln!("held message released {:?} after it arrived", at - held_at);
    assert!(at - held_at < DELAY, "{:?}", at - held_at);
    wait_plan(&s, &s.delayed_key, "live").await;
    let now = Instant::now();
    late_up.push(Message::Text("live".into()));
    let (got, at) = next_text(&mut late, DELAY + SLACK).await;
    assert_eq!(got, "live");
    assert!(at - now < DELAY, "{:?}", at - now);

    // And back: new messages are held again.
    cli(
        &s.db,
        &s.config,
        &["client", "update", "Late", "--plan", "delayed"],
    );
    wait_plan(&s, &s.delayed_key, "delayed").await;
    // The session follows within the sweep (250 ms) of the node learning it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent = Instant::now();
    late_up.push(Message::Text("late again".into()));
    let (got, at) = next_text(&mut late, DELAY + SLACK).await;
    assert_eq!(got, "late again");
    assert!(at - sent >= DELAY, "{:?}", at - sent);
}

/// Polls a REST request until the node forwards the key's calls as of `plan`.
async fn wait_plan(s: &Setup, key: &str, plan: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = http_client()
            .get(format!("http://{}/v1/scores", s.node.listen))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = s.rest.last_request().unwrap();
        if seen.header("x-keygate-plan") == Some(plan) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node still forwards the old plan"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(s: &Setup, path: &str, key: &str, forged: Option<&str>) -> u16 {
    let mut req = http_client()
        .get(format!("http://{}{path}", s.node.listen))
        .header("X-API-Key", key);
    if let Some(v) = forged {
        req = req.header("X-Keygate-Delay", v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_requests_of_a_delayed_plan_go_to_the_delayed_upstream_with_the_delay() {
    let s = setup().await;
    // The route's delayed_upstream, told the delay; a forged header is overwritten.
    assert_eq!(get(&s, "/v1/odds", &s.delayed_key, Some("0")).await, 200);
    let seen = s
        .delayed
        .last_request()
        .expect("the delayed upstream served it");
    assert_eq!(seen.header_all("x-keygate-delay"), vec!["3"]);
    assert_eq!(s.rest.request_count(), 0);

    // A real-time caller goes to the route's upstream; its forged delay header never arrives.
    assert_eq!(get(&s, "/v1/odds", &s.live_key, Some("60")).await, 200);
    let seen = s.rest.last_request().unwrap();
    assert_eq!(seen.header("x-keygate-plan"), Some("live"));
    assert!(seen.header_all("x-keygate-delay").is_empty(), "{seen:?}");
    assert_eq!(s.delayed.request_count(), 1);

    // A route without delayed_upstream: the delayed caller reaches its upstream, which is
    // told the delay so that it can answer from delayed data itself.
    assert_eq!(get(&s, "/v1/scores", &s.delayed_key, None).await, 200);
    let seen = s.rest.last_request().unwrap();
    assert_eq!(seen.header("x-keygate-delay"), Some("3"));
    assert_eq!(s.delayed.request_count(), 1);

    // Without a key, a forged header goes like every identity header.
    let resp = http_client()
        .get(format!("http://{}/v1/scores", s.node.listen))
        .header("X-Keygate-Delay", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn the_configuration_refuses_bad_delays_and_delayed_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
[upstreams.default]
url = "http://127.0.0.1:9"

[plans.zero]
delay = "0s"

[plans.long]
delay = "2h"

[plans.garbled]
delay = "soon"

[profile.ws]
delay_buffer_bytes = 0
delay_buffer_messages = 20000000

[[routes]]
name = "odds"
path = "/v1/odds"
delayed_upstream = "nowhere"

[[routes]]
name = "open"
path = "/v1/open"
public = true
delayed_upstream = "default"
"#;
    let (ok, said) = check_config(dir.path(), bad);
    assert!(!ok, "{said}");
    for expected in [
        "bad.toml:6: plans.zero.delay must be longer than 0s",
        "bad.toml:9: plans.long.delay: 7200s is longer than the longest delay, 3600s",
        "bad.toml:12: plans.garbled.delay: ",
        "profile.ws.delay_buffer_bytes: 0 is not a positive whole number",
        "profile.ws.delay_buffer_messages: 20000000 is more than the most a session may hold, 10000000",
        "route `odds`: unknown delayed_upstream `nowhere`",
        "route `open`: a public route has no caller whose plan could be delayed",
    ] {
        assert!(said.contains(expected), "missing {expected:?} in:\n{said}");
    }
    let good = "[upstreams.default]\nurl = \"http://127.0.0.1:9\"\n[plans.late]\ndelay = \"60s\"\n";
    let (ok, said) = check_config(dir.path(), good);
    assert!(ok, "{said}");
}
