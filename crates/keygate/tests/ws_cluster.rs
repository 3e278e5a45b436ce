//! Two gateway processes on one SQLite file and one Redis, with WebSocket sessions: the
//! connection cap per key holds across nodes, a killed node's leases expire instead of leaking,
//! and a revocation from the CLI closes the sessions of every node within a second.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{free_port, redis_url, wait_for_status, Proc, WsUpstream};
use serde_json::Value;

use keygate_test::WsClient as Client;

fn cli(db: &str, config: &Path, args: &[&str]) -> Value {
    keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--config", config.to_str().unwrap()])
            .args(args)
            .env("KEYGATE_DB", db),
    )
}

async fn node(dir: &Path, db: &str, config: &Path, i: usize) -> (Proc, String) {
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let log_dir = dir.join(format!("node{i}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db,
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
            "--workers",
            "1",
        ],
        &[("RUST_LOG", "warn")],
        &log_dir,
    );
    assert!(
        wait_for_status(
            admin_listen.parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(10)
        )
        .await,
        "node {i} not ready: {}",
        proc.stderr()
    );
    (proc, listen)
}

/// Connects with the key in `X-API-Key`; the HTTP status when refused before the upgrade.
async fn connect(addr: &str, key: &str) -> Result<Client, u16> {
    keygate_test::ws_connect(&format!("ws://{addr}/v1/stream"), key).await
}

async fn close_code(c: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_revocation_span_nodes() {
    let Some(redis) = redis_url() else { return };
    let up = WsUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("keygate.db");
    let db = db_path.to_str().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[limits]
backend = "redis"
redis_url = "{redis}"
timeout = "250ms"

[upstreams.live]
url = "{ws}"

[[routes]]
path = "/v1/stream"
upstream = "live"
ws = {{ mode = "handshake" }}

[profile.ws]
lease_ttl = "1s"

[profile.ws.limits]
connections_per_key = 2

[profile.ws.close.revoked]
code = 4001
reason = "API key revoked"
"#,
            ws = up.url()
        ),
    )
    .unwrap();
    cli(db, &config, &["client", "create", "Acme"]);
    let issued = cli(db, &config, &["key", "create", "--client", "Acme"]);
    let key = issued["key"].as_str().unwrap().to_owned();
    let (mut a, a_addr) = node(dir.path(), db, &config, 0).await;
    let (_b, b_addr) = node(dir.path(), db, &config, 1).await;

    // Seed 000's cap per key, across nodes: one session on each, a third refused on either.
    let _on_a = connect(&a_addr, &key).await.unwrap();
    let mut on_b = connect(&b_addr, &key).await.unwrap();
    assert_eq!(connect(&b_addr, &key).await.err(), Some(429));
    assert_eq!(connect(&a_addr, &key).await.err(), Some(429));

    // Node A dies with its session open: its lease is not released, it expires (TTL 1 s).
    a.kill();
    let died = Instant::now();
    assert_eq!(
        connect(&b_addr, &key).await.err(),
        Some(429),
        "a dead node's lease still counts until it expires"
    );
    let mut replacement = None;
    while died.elapsed() < Duration::from_secs(5) {
        match connect(&b_addr, &key).await {
            Ok(c) => {
                replacement = Some(c);
                break;
            }
            Err(429) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => panic!("unexpected status {s}"),
        }
    }
    let mut replacement = replacement.expect("the dead node's lease expired");
    assert!(
        died.elapsed() >= Duration::from_millis(900),
        "freed after {:?}, before the lease could expire",
        died.elapsed()
    );

    // A revocation written by the CLI closes node B's sessions within a second.
    cli(
        db,
        &config,
        &["key", "revoke", issued["id"].as_str().unwrap()],
    );
    let revoked = Instant::now();
    assert_eq!(close_code(&mut on_b).await, 4001);
    assert_eq!(close_code(&mut replacement).await, 4001);
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
}
