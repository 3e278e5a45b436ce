//! No secret in any output: the real binary with debug logging is driven through success, every
//! kind of refusal, keys in the query string, forward-auth and verify, WebSocket sessions (a
//! key in the upgrade's query, login messages with a good and a wrong key, a close-code refusal,
//! a single-use token), a brute-force cool-down, a handler that panics (injected in debug
//! builds), and admin key creation and rotation; then its logs (stdout and stderr),
//! `/metrics`, `/status` and every response body other than the two that issue a key are
//! scanned for each plaintext key and the admin token. None may appear.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use keygate_test::{free_port, reqwest, wait_for_status, Proc, Upstream, WsUpstream};
use serde_json::{json, Value};

fn cli(db: &Path, args: &[&str], seen: &mut Vec<String>) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("--json")
        .args(args)
        .env("KEYGATE_DB", db)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    // stdout is where a key or token is shown, once; stderr must never have one.
    seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    serde_json::from_slice(&out.stdout).unwrap()
}

const CONFIG: &str = r#"
[upstreams.default]
url = "{upstream}"

[upstreams.slow]
url = "{upstream}"
timeout = "200ms"

[upstreams.dead]
url = "http://127.0.0.1:9"
connect_timeout = "200ms"

[server]
max_body_bytes = 100

[guard]
threshold = 6

[[routes]]
name = "matches"
path = "/{sport}/v1/matches"
methods = ["GET"]
scopes = ["matches:read"]
sport_param = "sport"

[[routes]]
name = "slow"
path = "/slow/{ms}"
upstream = "slow"

[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"

[[routes]]
name = "echo"
path = "/echo/{*rest}"

# The test runs the binary with KEYGATE_DEBUG_PANIC_ROUTE=boom: this route's handler panics.
[[routes]]
name = "boom"
path = "/boom"

[upstreams.live]
url = "{ws_upstream}"

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
ws = { mode = "handshake", credentials = ["header:X-API-Key", "query:api_key"] }

[[routes]]
name = "login"
path = "/ws"
upstream = "live"
ws = { mode = "login_message" }

[[routes]]
name = "game"
path = "/game"
upstream = "live"
ws = { mode = "close_code", credentials = ["bearer"] }

[profile]
credentials = ["header:X-API-Key", "bearer", "query:api_key"]

[profile.ws]
token = { path = "/v1/ws-token", ttl = "30s", param = "token" }
"#;

/// Every text frame and the close frame's reason until the session ends; `logged_in` waits for
/// the login answer and then closes from this side.
async fn ws_until_close(s: &mut WsClient, logged_in: bool) -> String {
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                seen.push_str(&t);
                if logged_in {
                    let _ = s.close(None).await;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                if let Some(f) = f {
                    seen.push_str(&f.reason);
                }
                return seen;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return seen,
            Err(_) => panic!("the session neither answered nor closed: {seen}"),
        }
    }
}

type WsClient = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_or_admin_token_in_logs_metrics_or_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let upstream = Upstream::start().await;
    let mut seen: Vec<String> = Vec::new();

    let token = cli(&db, &["admin-token", "create", "--name", "ops"], &mut seen)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    cli(
        &db,
        &[
            "client",
            "create",
            "Acme",
            "--scopes",
            "matches:read",
            "--sports",
            "cs2",
        ],
        &mut seen,
    );
    let key = cli(&db, &["key", "create", "--client", "Acme"], &mut seen)["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let config = dir.path().join("keygate.toml");
    let ws_upstream = WsUpstream::start().await;
    std::fs::write(
        &config,
        CONFIG
            .replace("{upstream}", &upstream.url())
            .replace("{ws_upstream}", &ws_upstream.url()),
    )
    .unwrap();
    let (port, admin) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let admin_base = format!("http://127.0.0.1:{admin}");
    let mut proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ],
        &[("RUST_LOG", "debug"), ("KEYGATE_DEBUG_PANIC_ROUTE", "boom")],
        dir.path(),
    );
    assert!(
        wait_for_status(
            format!("127.0.0.1:{admin}").parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(10)
        )
        .await,
        "{}",
        proc.stderr()
    );

    let http = keygate_test::http_client();
    let mut bodies: Vec<String> = Vec::new();
    let mut send = async |req: reqwest::RequestBuilder, want: u16| {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, want, "{body}");
        bodies.push(body);
    };
    let get = |path: &str| http.get(format!("{base}{path}"));
    let mut typo = key.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();

    // Success by each credential source, then every refusal the data plane has.
    send(get("/cs2/v1/matches").header("X-API-Key", &key), 200).await;
    send(get("/cs2/v1/matches").bearer_auth(&key), 200).await;
    send(get(&format!("/cs2/v1/matches?api_key={key}")), 200).await;
    send(get(&format!("/echo/q?x=1&api_key={key}")), 200).await;
    send(get("/cs2/v1/matches"), 401).await;
    send(get("/cs2/v1/matches").header("X-API-Key", &typo), 401).await;
    send(
        get("/cs2/v1/matches").header("X-API-Key", format!("{key}x")),
        401,
    )
    .await;
    send(
        get("/cs2/v1/matches")
            .header("X-API-Key", &key)
            .bearer_auth("kg_other"),
        400,
    )
    .await;
    send(get("/dota2/v1/matches").header("X-API-Key", &key), 403).await;
    send(get("/nowhere").header("X-API-Key", &key), 404).await;
    send(
        http.post(format!("{base}/cs2/v1/matches"))
            .header("X-API-Key", &key),
        405,
    )
    .await;
    send(
        get("/cs2/v1/matches")
            .header("X-API-Key", &key)
            .header("Accept", "text/html"),
        406,
    )
    .await;
    send(get("/dead").header("X-API-Key", &key), 502).await;
    send(get("/slow/2000").header("X-API-Key", &key), 504).await;
    send(
        http.post(format!("{base}/echo/x"))
            .header("X-API-Key", &key)
            .body(vec![b'x'; 500]),
        413,
    )
    .await;
    // A handler that panics with the key in scope, presented in a header and in the query:
    // 500 for each, and the connection's next request is served.
    send(get("/boom").header("X-API-Key", &key), 500).await;
    send(get(&format!("/boom?api_key={key}")), 500).await;
    send(get("/v1/whoami").header("X-API-Key", &key), 200).await;
    send(
        http.post(format!("{base}/v1/keys/verify"))
            .json(&json!({ "key": key })),
        200,
    )
    .await;
    send(
        get("/v1/auth/nginx")
            .header("X-Original-URI", "/cs2/v1/matches")
            .header("X-API-Key", &key),
        200,
    )
    .await;
    // WebSocket: a key in the upgrade's query string, a login message, a login with a wrong
    // key, a close-code session with a wrong key, and a single-use token.
    let ws_base = format!("ws://127.0.0.1:{port}");
    let mut extra: Vec<String> = Vec::new();
    let (mut s, _) = connect_async(format!("{ws_base}/v1/stream?api_key={key}"))
        .await
        .expect("handshake session");
    s.send(Message::text("hi")).await.unwrap();
    let _ = s.close(None).await;
    let (mut s, _) = connect_async(format!("{ws_base}/ws")).await.unwrap();
    s.send(Message::text(
        json!({"type": "login", "apiKey": key, "channels": []}).to_string(),
    ))
    .await
    .unwrap();
    extra.push(ws_until_close(&mut s, true).await);
    let (mut s, _) = connect_async(format!("{ws_base}/ws")).await.unwrap();
    s.send(Message::text(
        json!({"type": "login", "apiKey": typo, "channels": []}).to_string(),
    ))
    .await
    .unwrap();
    extra.push(ws_until_close(&mut s, false).await);
    let mut req = format!("{ws_base}/game").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {typo}").parse().unwrap());
    let (mut s, _) = connect_async(req).await.unwrap();
    extra.push(ws_until_close(&mut s, false).await);
    let issued: Value = http
        .post(format!("{base}/v1/ws-token"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_token = issued["token"].as_str().expect("a ws token").to_owned();
    let (mut s, _) = connect_async(format!("{ws_base}/v1/stream?token={ws_token}"))
        .await
        .expect("a token opens one session");
    let _ = s.close(None).await;

    // A brute-force cool-down: failures from this source until it starts (the threshold
    // counts the failures above too), then 429 for failing keys; the valid key is served.
    let mut cooled = false;
    for _ in 0..6 {
        let resp = get("/cs2/v1/matches")
            .header("X-API-Key", &typo)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        extra.push(resp.text().await.unwrap());
        if status == 429 {
            cooled = true;
            break;
        }
        assert_eq!(status, 401);
    }
    assert!(cooled, "the guard never started a cool-down");
    send(get("/cs2/v1/matches").header("X-API-Key", &key), 200).await;

    // The admin API: a wrong token, a bad body, then keys issued and rotated (their two
    // responses are the only places a plaintext may appear).
    let admin_req = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{admin_base}{path}"))
            .bearer_auth(&token)
    };
    send(
        http.get(format!("{admin_base}/v1/clients"))
            .bearer_auth(format!("{token}x")),
        401,
    )
    .await;
    send(
        admin_req(reqwest::Method::POST, "/v1/clients").json(&json!({ "name": "" })),
        422,
    )
    .await;
    let created: Value = admin_req(reqwest::Method::POST, "/v1/keys")
        .json(&json!({ "client": "Acme", "label": "second" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = created["key"].as_str().unwrap().to_owned();
    let second_hint = created["hint"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let rotated: Value = admin_req(reqwest::Method::POST, &format!("/v1/keys/{id}/rotate"))
        .json(&json!({ "grace": "1h" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let third = rotated["key"].as_str().unwrap().to_owned();
    send(admin_req(reqwest::Method::GET, "/v1/keys"), 200).await;
    send(
        admin_req(reqwest::Method::GET, &format!("/v1/keys/{id}")),
        200,
    )
    .await;
    send(admin_req(reqwest::Method::GET, "/v1/audit"), 200).await;
    send(http.get(format!("{admin_base}/metrics")), 200).await;
    send(http.get(format!("{admin_base}/status")), 200).await;

    // Stop cleanly so every log line is written, then scan everything.
    let _ = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status();
    assert!(proc.wait_exit(Duration::from_secs(10)).is_some());
    let logs = format!("{}\n{}", proc.stdout(), proc.stderr());
    assert!(
        logs.contains("keygate::access") && logs.contains("DEBUG"),
        "debug logging was on: {}",
        &logs[..logs.len().min(500)]
    );
    assert_eq!(
        logs.matches("Too many failed authentications").count(),
        1,
        "one log line per incident"
    );
    assert_eq!(
        logs.matches("injected fault: the handler of route boom panicked")
            .count(),
        2,
        "the panic hook logged both panics"
    );
    assert!(bodies.iter().any(|b| b.contains("internal_error")));
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("keygate_handler_panics_total 2")),
        "/metrics counts the panics"
    );
    seen.push(logs);
    seen.extend(bodies);
    seen.extend(extra);
    // The WebSocket token is a bearer secret too (its body was the one place it may appear).
    for secret in [&key, &second, &third, &token, &ws_token] {
        for (i, text) in seen.iter().enumerate() {
            assert!(
                !text.contains(secret.as_str()),
                "a secret appeared in output #{i}"
            );
        }
    }
    // Positive control: the scanned text does include the listings, where keys appear masked.
    assert!(
        ws_upstream.connections().len() >= 3,
        "the WebSocket sessions reached the upstream"
    );
    assert!(seen.iter().any(|t| t.contains(&second_hint)));
}
