//! Scoped suspensions against real `keygate serve` processes: two nodes on PostgreSQL and
//! Redis hold what a suspension names within a second and nothing else, and serve it again
//! on `keygate resume` and at `--until`; WebSocket sessions are told or closed per
//! `[profile.ws] on_suspend`; the CLI's JSON interface; and an attacker's view of the admin API.

use std::process::Command;
use std::time::{Duration, Instant};

mod operator;

use futures_util::StreamExt;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{http_client, postgres_schema, redis_url};
use operator::{admin_token, cli, every_node_answers, get, remote, run, start, until_every_node};
use serde_json::{json, Value};

use keygate_test::WsClient;

/// The routes every test serves: a sport namespace with templated scopes, a bookmaker read
/// from the query, and a WebSocket stream per sport.
const ROUTES: &str = r#"
[guard]
threshold = 100000
prefix_threshold = 100000

[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
sport_param = "sport"
scopes = ["{sport}:matches:list"]

[[routes]]
name = "odds"
path = "/v1/odds"
bookmaker = "query:bookmaker"

[[routes]]
name = "rest"
path = "/v1/{*rest}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_hold_what_a_suspension_names_within_a_second() {
    let (Some(redis), Some(db)) = (redis_url(), postgres_schema("kg_suspend").await) else {
        return;
    };
    let upstream = keygate_test::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!("[limits]\nbackend = \"redis\"\nredis_url = \"{redis}\"\n{ROUTES}"),
    )
    .unwrap();
    cli(&db, &config, &["migrate"]);
    let scopes = "cs2:matches:list,dota2:matches:list";
    let sports = "cs2,dota2";
    for name in ["Acme", "Other"] {
        let args = [
            "client", "create", name, "--scopes", scopes, "--sports", sports,
        ];
        cli(&db, &config, &args);
    }
    let acme = cli(&db, &config, &["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = cli(&db, &config, &["key", "create", "--client", "Other"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = admin_token(&db, &config, "ops", false);
    let a = start(dir.path(), &db, &config, &upstream.url(), "a").await;
    let b = start(dir.path(), &db, &config, &upstream.url(), "b").await;
    let nodes = [&a, &b];
    let second = Duration::from_secs(1);
    for path in [
        "/cs2/v1/matches",
        "/dota2/v1/matches",
        "/v1/odds?bookmaker=bet365",
    ] {
        every_node_answers(&nodes, path, &acme, 200).await;
    }

    // A sport: held on both nodes within a second, with the profile's `suspended` answer and
    // the operator's message; the other sport and the other routes are served.
    let made = cli(
        &db,
        &config,
        &[
            "suspend",
            "--sport",
            "cs2",
            "--message",
            "Integrity hold on match 42.",
        ],
    );
    let id = made["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sus_"), "{made}");
    let took = until_every_node(&nodes, "/cs2/v1/matches", &acme, 503, second).await;
    eprintln!("a sport suspension reached both nodes in {took:?}");
    for node in nodes {
        let (status, body) = get(&node.listen, "/cs2/v1/matches", &other).await;
        assert_eq!(status, 503);
        assert_eq!(body["code"], "suspended", "{body}");
        assert_eq!(body["detail"], "Integrity hold on match 42.", "{body}");
    }
    every_node_answers(&nodes, "/dota2/v1/matches", &acme, 200).await;
    every_node_answers(&nodes, "/v1/odds?bookmaker=bet365", &acme, 200).await;
    let listed = cli(&db, &config, &["suspensions"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["sport"], "cs2");
    // A caller without the scope learns nothing of the suspension: its own refusal first.
    let unscoped = cli(
        &db,
        &config,
        &["client", "create", "Narrow", "--sports", sports],
    );
    assert_eq!(unscoped["scopes"], json!([]));
    let narrow = cli(&db, &config, &["key", "create", "--client", "Narrow"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    until_every_node(&nodes, "/cs2/v1/matches", &narrow, 403, second).await;

    cli(&db, &config, &["resume", &id]);
    let took = until_every_node(&nodes, "/cs2/v1/matches", &acme, 200, second).await;
    eprintln!("the resume reached both nodes in {took:?}");
    assert_eq!(cli(&db, &config, &["suspensions"]), json!([]));

    // A bookmaker for one client, through the admin API: that client's requests naming it are
    // held, the other bookmaker and the other client are served.
    let made = remote(
        &a.admin,
        &token,
        &config,
        &["suspend", "--bookmaker", "bet365", "--client", "Acme"],
    );
    let id = made["id"].as_str().unwrap().to_owned();
    until_every_node(&nodes, "/v1/odds?bookmaker=bet365", &acme, 503, second).await;
    every_node_answers(&nodes, "/v1/odds?bookmaker=pinnacle", &acme, 200).await;
    every_node_answers(&nodes, "/v1/odds?bookmaker=bet365", &other, 200).await;
    let lifted = remote(&a.admin, &token, &config, &["resume", &id]);
    assert!(lifted["lifted_at"].is_string(), "{lifted}");
    until_every_node(&nodes, "/v1/odds?bookmaker=bet365", &acme, 200, second).await;

    // A templated scope: held for the sport it resolves to only.
    let made = cli(&db, &config, &["suspend", "--scope", "cs2:matches:list"]);
    until_every_node(&nodes, "/cs2/v1/matches", &other, 503, second).await;
    every_node_answers(&nodes, "/dota2/v1/matches", &other, 200).await;
    cli(&db, &config, &["resume", made["id"].as_str().unwrap()]);
    until_every_node(&nodes, "/cs2/v1/matches", &other, 200, second).await;

    // A route until an instant: held, then served again by the clock alone, with no write.
    let until = 2;
    let made = cli(
        &db,
        &config,
        &[
            "suspend",
            "--route",
            "odds",
            "--until",
            &format!("{until}s"),
        ],
    );
    let made_at = Instant::now();
    until_every_node(&nodes, "/v1/odds?bookmaker=x", &acme, 503, second).await;
    // The operator said when it ends: the 503 says so in `Retry-After` (RFC 9110 §10.2.3),
    // whole seconds rounded up (the instant to its second, then the wait), so never before
    // the `until` and at most a second after.
    let held = http_client()
        .get(format!("http://{}/v1/odds?bookmaker=x", nodes[0].listen))
        .header("X-API-Key", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 503);
    let wait: u64 = held.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=until + 1).contains(&wait), "Retry-After: {wait}");
    every_node_answers(&nodes, "/dota2/v1/matches", &acme, 200).await;
    until_every_node(
        &nodes,
        "/v1/odds?bookmaker=x",
        &acme,
        200,
        Duration::from_secs(until + 2),
    )
    .await;
    assert!(
        made_at.elapsed() >= Duration::from_millis(until * 1000 - 1000),
        "lifted after {:?}, before its --until",
        made_at.elapsed()
    );
    assert_eq!(cli(&db, &config, &["suspensions"]), json!([]));
    let all = cli(&db, &config, &["suspensions", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    assert_eq!(all[0]["id"], made["id"]);
    assert!(all[0]["lifted_at"].is_null(), "ran out, not lifted: {all}");
    // The table names the two ends apart.
    let table = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config", config.to_str().unwrap(), "--db", &db])
        .args(["suspensions", "--all"])
        .env_remove("KEYGATE_DB")
        .env_remove("KEYGATE_ADMIN_URL")
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    let state_of = |id: &Value| {
        let id = id.as_str().unwrap();
        let line = table.lines().find(|l| l.contains(id)).unwrap();
        if line.contains("ran out") {
            "ran out"
        } else if line.contains("lifted") {
            "lifted"
        } else {
            "other"
        }
    };
    assert_eq!(state_of(&made["id"]), "ran out", "{table}");
    assert_eq!(state_of(&all[1]["id"]), "lifted", "{table}");

    // Audited: who made and lifted each.
    let audit = cli(&db, &config, &["audit", "--limit", "100"]);
    let items = audit
        .as_array()
        .cloned()
        .or_else(|| audit["items"].as_array().cloned())
        .unwrap();
    let count = |action: &str| items.iter().filter(|e| e["action"] == action).count();
    assert_eq!(count("suspension.create"), 4, "{audit}");
    assert_eq!(count("suspension.lift"), 3, "{audit}");
    assert!(items
        .iter()
        .any(|e| e["action"] == "suspension.create" && e["actor"] == "admin:ops"));
}

/// Connects to `/{sport}/v1/stream` with the key in `X-API-Key`; the HTTP status when refused
/// before the upgrade.
async fn connect(listen: &str, sport: &str, key: &str) -> Result<WsClient, u16> {
    keygate_test::ws_connect(&format!("ws://{listen}/{sport}/v1/stream"), key).await
}

/// The next text message or close frame within `limit`.
async fn next_event(c: &mut WsClient, limit: Duration) -> Option<Message> {
    loop {
        match tokio::time::timeout(limit, c.next()).await {
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Close(_))))) => return Some(m),
            Ok(Some(Ok(_))) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_are_told_or_closed_and_new_ones_refused() {
    let up = keygate_test::WsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let routes = format!(
        r#"
[server]
feed_poll = "100ms"

[upstreams.live]
url = "{ws}"

[[routes]]
name = "stream"
path = "/{{sport}}/v1/stream"
sport_param = "sport"
upstream = "live"
ws = {{ mode = "handshake" }}
"#,
        ws = up.url()
    );
    // Two nodes on one SQLite file: one tells its sessions, one closes them.
    let notify = dir.path().join("notify.toml");
    std::fs::write(
        &notify,
        format!("{routes}\n[profile.ws]\non_suspend = \"notify\"\n"),
    )
    .unwrap();
    let close = dir.path().join("close.toml");
    std::fs::write(
        &close,
        format!("{routes}\n[profile.ws.close.suspended]\ncode = 4503\nreason = \"Suspended\"\n"),
    )
    .unwrap();
    cli(
        db,
        &notify,
        &["client", "create", "Acme", "--sports", "cs2,dota2"],
    );
    let key = cli(db, &notify, &["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let told = start(dir.path(), db, &notify, &up.url(), "notify").await;
    let closed = start(dir.path(), db, &close, &up.url(), "close").await;

    let mut cs2_told = connect(&told.listen, "cs2", &key).await.unwrap();
    let mut cs2_closed = connect(&closed.listen, "cs2", &key).await.unwrap();
    let mut dota_closed = connect(&closed.listen, "dota2", &key).await.unwrap();

    let made = cli(
        db,
        &notify,
        &["suspend", "--sport", "cs2", "--message", "Integrity hold."],
    );
    let id = made["id"].as_str().unwrap();
    let written = Instant::now();

    // `notify`: the profile's `suspended` message, and the session goes on.
    match next_event(&mut cs2_told, Duration::from_secs(1)).await {
        Some(Message::Text(t)) => {
            let m: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(m["type"], "suspended", "{m}");
            assert_eq!(m["code"], "suspended");
            assert_eq!(m["detail"], "Integrity hold.");
            assert_eq!(m["id"], id);
        }
        other => panic!("expected the suspended message, got {other:?}"),
    }
    // `close`: the profile's close frame for `suspended`.
    match next_event(&mut cs2_closed, Duration::from_secs(1)).await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4503),
        other => panic!("expected the suspended close frame, got {other:?}"),
    }
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "sessions held after {took:?}"
    );
    eprintln!("open sessions told and closed {took:?} after the write");

    // The other sport's session is neither told nor closed; new handshakes the suspension
    // holds are refused with its answer, on both nodes.
    assert!(next_event(&mut dota_closed, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(connect(&told.listen, "cs2", &key).await.err(), Some(503));
    assert_eq!(connect(&closed.listen, "cs2", &key).await.err(), Some(503));
    assert!(connect(&closed.listen, "dota2", &key).await.is_ok());

    // The told session still relays: the upstream's pushes reach it.
    up.push_all(r#"{"type":"tick"}"#);
    match next_event(&mut cs2_told, Duration::from_secs(2)).await {
        Some(Message::Text(t)) => assert!(t.as_str().contains("tick"), "{t}"),
        other => panic!("the told session stopped relaying: {other:?}"),
    }

    cli(db, &notify, &["resume", id]);
    let resumed = Instant::now();
    loop {
        if connect(&closed.listen, "cs2", &key).await.is_ok() {
            break;
        }
        assert!(resumed.elapsed() < Duration::from_secs(1), "still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The session that was told of the hold hears of its end, in the profile's `resumed`
    // message; the one never held hears nothing.
    match next_event(&mut cs2_told, Duration::from_secs(2)).await {
        Some(Message::Text(t)) => {
            let m: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(m, json!({"type": "resumed", "code": "resumed", "id": id}));
        }
        other => panic!("expected the resumed message, got {other:?}"),
    }
    // (It got the upstream's tick; nothing of the gateway's own.)
    while let Some(m) = next_event(&mut dota_closed, Duration::from_millis(300)).await {
        assert!(
            matches!(&m, Message::Text(t) if t.as_str().contains("tick")),
            "{m:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_interface_and_an_attackers_view_of_the_admin_api() {
    let upstream = keygate_test::Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, ROUTES).unwrap();
    cli(db, &config, &["client", "create", "Acme"]);
    let token = admin_token(db, &config, "ops", false);
    let viewer = admin_token(db, &config, "viewer", true);

    // The interface scripts depend on: `suspend --sport S --message M --json` prints the
    // document with its `id`; `resume ID` lifts it.
    let made = cli(
        db,
        &config,
        &["suspend", "--sport", "cs2", "--message", "Hold."],
    );
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(made["sport"], "cs2");
    assert_eq!(made["message"], "Hold.");
    let lifted = cli(db, &config, &["resume", &id]);
    assert_eq!(lifted["id"], id.as_str());
    assert!(lifted["lifted_by"].as_str().unwrap().starts_with("cli:"));
    // Refused on the command line: no target, two targets, a bad slug, an unknown id, a past
    // instant, a message with a control character.
    for (args, want) in [
        (vec!["suspend"], "required"),
        (
            vec!["suspend", "--sport", "cs2", "--bookmaker", "bet365"],
            "cannot be used with",
        ),
        (vec!["suspend", "--sport", "CS2"], "not a slug"),
        (
            vec!["resume", "sus_0000000000000000"],
            "suspension_not_found",
        ),
        (
            vec![
                "suspend",
                "--sport",
                "cs2",
                "--until",
                "2001-01-01T00:00:00Z",
            ],
            "until_in_past",
        ),
        (
            vec!["suspend", "--sport", "cs2", "--message", "a\u{7}b"],
            "invalid_value",
        ),
        (
            vec!["suspend", "--sport", "cs2", "--client", "Nobody"],
            "client_not_found",
        ),
    ] {
        let out = run(db, &config, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(cli(db, &config, &["suspensions"]), json!([]));

    let node = start(dir.path(), db, &config, &upstream.url(), "node").await;
    let admin = format!("http://{}", node.admin);
    let http = http_client();
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        let mut req = http.request(method.parse().unwrap(), format!("{admin}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let hold = json!({"sport": "cs2"});

    // Without a token, or with a read-only one, nothing is suspended.
    let (s, body) = call("POST", "/v1/suspensions", None, Some(hold.clone())).await;
    assert_eq!((s, body["code"].as_str()), (401, Some("missing_token")));
    let (s, body) = call("POST", "/v1/suspensions", Some(&viewer), Some(hold.clone())).await;
    assert_eq!((s, body["code"].as_str()), (403, Some("read_only_token")));
    let (s, _) = call("GET", "/v1/suspensions", Some(&viewer), None).await;
    assert_eq!(s, 200);
    // The public listener has no admin API.
    let (s, _) = get(&node.listen, "/v1/suspensions", "x").await;
    assert_ne!(s, 200);

    // Huge and odd bodies are refused before the store is asked.
    let huge = "x".repeat(100 * 1024);
    for (body, status) in [
        (json!({}), 422),
        (json!({"sport": "cs2", "route": "odds"}), 422),
        (json!({"sport": "../etc"}), 422),
        (json!({"scope": "a b"}), 422),
        (json!({"route": "r".repeat(201)}), 422),
        (json!({"route": "odds\r\nX-Injected: 1"}), 422),
        (json!({"sport": "cs2", "message": ""}), 422),
        (json!({"sport": "cs2", "message": "m".repeat(501)}), 422),
        (json!({"sport": "cs2", "until": "yesterday"}), 422),
        (
            json!({"sport": "cs2", "until": "2001-01-01T00:00:00Z"}),
            422,
        ),
        (json!({"sport": "cs2", "client": "c".repeat(10_000)}), 422),
        (json!({"sport": "cs2", "client": "Nobody"}), 404),
        (json!({"sport": "cs2", "admin": true}), 422),
        (json!({"sport": ["cs2"]}), 422),
        (json!({"sport": huge}), 413),
    ] {
        let (s, answer) = call("POST", "/v1/suspensions", Some(&token), Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {answer}");
        assert!(answer["code"].is_string(), "{answer}");
    }
    for (path, status) in [
        ("/v1/suspensions/nope", 400),
        ("/v1/suspensions/sus_0000000000000000", 404),
        ("/v1/suspensions/sus_%00%00", 400),
    ] {
        let (s, _) = call("DELETE", path, Some(&token), None).await;
        assert_eq!(s, status, "{path}");
    }
    assert_eq!(cli(db, &config, &["suspensions"]), json!([]));

    // The cap on suspensions in force: a runaway script cannot make the hot path long.
    for i in 0..keygate_store::MAX_ACTIVE_SUSPENSIONS {
        let body = json!({"bookmaker": format!("b{i}")});
        let (s, answer) = call("POST", "/v1/suspensions", Some(&token), Some(body)).await;
        assert_eq!(s, 201, "{answer}");
    }
    let (s, answer) = call("POST", "/v1/suspensions", Some(&token), Some(hold)).await;
    assert_eq!(s, 409, "{answer}");
}
