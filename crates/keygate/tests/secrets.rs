//! No secret in any output: the real binary with debug logging is driven through success, every
//! kind of refusal, keys in the query string, forward-auth and verify, a brute-force
//! cool-down, and admin key creation and rotation; then its logs (stdout and stderr),
//! `/metrics`, `/status` and every response body other than the two that issue a key are
//! scanned for each plaintext key and the admin token. None may appear.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keygate_test::{free_port, reqwest, wait_for_status, Proc, Upstream};
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

[profile]
credentials = ["header:X-API-Key", "bearer", "query:api_key"]
"#;

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
    std::fs::write(&config, CONFIG.replace("{upstream}", &upstream.url())).unwrap();
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
        &[("RUST_LOG", "debug")],
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
    // A brute-force cool-down: with the three failures above, six; then 429 even for the
    // valid key.
    for _ in 0..3 {
        send(get("/cs2/v1/matches").header("X-API-Key", &typo), 401).await;
    }
    send(get("/cs2/v1/matches").header("X-API-Key", &key), 429).await;

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
    seen.push(logs);
    seen.extend(bodies);
    for secret in [&key, &second, &third, &token] {
        for (i, text) in seen.iter().enumerate() {
            assert!(
                !text.contains(secret.as_str()),
                "a secret appeared in output #{i}"
            );
        }
    }
    // Positive control: the scanned text does include the listings, where keys appear masked.
    assert!(seen.iter().any(|t| t.contains(&second_hint)));
}
