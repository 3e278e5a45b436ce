//! Live changes across processes: a gateway process and the CLI in another process on the same
//! SQLite file. A revocation or rotation must take effect within one second.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_test::{free_port, http_client, wait_for_status, Proc, Upstream};
use serde_json::Value;

fn cli(db: &Path, args: &[&str]) -> Value {
    keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("--json")
            .args(args)
            .env("KEYGATE_DB", db),
    )
}

struct Gateway {
    proc: Proc,
    base: String,
}

async fn serve(dir: &Path, db: &Path, upstream: &str) -> Gateway {
    let (port, admin) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--upstream",
            upstream,
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
        ],
        &[("RUST_LOG", "info")],
        dir,
    );
    let ready = wait_for_status(
        admin_listen.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(ready, "gateway did not become ready: {}", proc.stderr());
    Gateway {
        proc,
        base: format!("http://{listen}"),
    }
}

/// Polls until `key` gets `status`; returns how long that took.
async fn until_status(g: &Gateway, key: &str, status: u16) -> Duration {
    let http = http_client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let s = http
            .get(format!("{}/anything", g.base))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status();
        if s.as_u16() == status {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "key never answered {status}; gateway log:\n{}",
        g.proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revocation_and_rotation_reach_a_running_gateway_within_a_second() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    cli(&db, &["client", "create", "Acme"]);
    let first = cli(&db, &["key", "create", "--client", "Acme"]);
    let key = first["key"].as_str().unwrap().to_owned();
    let g = serve(dir.path(), &db, &upstream.url()).await;
    until_status(&g, &key, 200).await;

    // A key created after start is picked up too.
    let second = cli(&db, &["key", "create", "--client", "Acme"]);
    let key2 = second["key"].as_str().unwrap().to_owned();
    assert!(until_status(&g, &key2, 200).await < Duration::from_secs(1));

    cli(&db, &["key", "revoke", first["id"].as_str().unwrap()]);
    let took = until_status(&g, &key, 401).await;
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    let rotated = cli(&db, &["key", "rotate", second["id"].as_str().unwrap()]);
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let took = until_status(&g, &key2, 401).await;
    assert!(took < Duration::from_secs(1), "rotation took {took:?}");
    until_status(&g, &new_key, 200).await;

    cli(&db, &["client", "disable", "Acme"]);
    assert!(until_status(&g, &new_key, 401).await < Duration::from_secs(1));

    // The log names keys by id only; the plaintext never appears.
    let log = g.proc.stderr();
    for secret in [&key, &key2, &new_key] {
        assert!(
            !log.contains(secret.as_str()),
            "plaintext key in the gateway log"
        );
    }
    assert!(log.contains("keygate::access"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"nowhere\"\n\n[[routes]]\npath = \"/x\"\nupstream = \"missing\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "--db",
            dir.path().join("k.db").to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: listen `nowhere`"), "{err}");
    assert!(
        err.contains("bad.toml:4: route `/x`: unknown upstream `missing`"),
        "{err}"
    );

    let check = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert_eq!(
        String::from_utf8_lossy(&check.stderr),
        err,
        "check-config reports the same"
    );

    let no_upstream = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--db", dir.path().join("k.db").to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&no_upstream.stderr);
    assert!(err.contains("no upstream `default` is configured"), "{err}");
}
