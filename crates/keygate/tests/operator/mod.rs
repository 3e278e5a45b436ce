//! What the operator-control tests (suspensions, key restrictions, quota controls, key sharing)
//! share: the real `keygate` binary run on a database or through a node's admin API, a node
//! started and ready, and requests polled on every node until they answer as expected.
#![allow(dead_code)] // each test crate uses some of these

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_test::{http_client, Serving};
use serde_json::Value;

/// The CLI on the database `db` with `--json`; its output, whatever the exit.
pub(crate) fn run(db: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--json", "--config", config.to_str().unwrap(), "--db", db])
        .args(args)
        .env_remove("KEYGATE_DB")
        .env_remove("KEYGATE_ADMIN_URL")
        .output()
        .unwrap()
}

/// [`run`], which must succeed; its JSON answer.
pub(crate) fn cli(db: &str, config: &Path, args: &[&str]) -> Value {
    answer(&run(db, config, args), args)
}

/// The CLI through the admin API at `admin` (`127.0.0.1:PORT`) with `token`; its JSON answer.
pub(crate) fn remote(admin: &str, token: &str, config: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--json", "--config", config.to_str().unwrap()])
        .args(["--admin-url", &format!("http://{admin}")])
        .env("KEYGATE_ADMIN_TOKEN", token)
        .env_remove("KEYGATE_DB")
        .args(args)
        .output()
        .unwrap();
    answer(&out, args)
}

fn answer(out: &Output, args: &[&str]) -> Value {
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A node on `db` and `config` before `upstream`, logging at `warn` into `dir/name`; ready.
pub(crate) async fn start(
    dir: &Path,
    db: &str,
    config: &Path,
    upstream: &str,
    name: &str,
) -> Serving {
    start_logging(dir, db, config, upstream, name, "warn").await
}

/// [`start`] with the log level `level` (`info` where a test reads the log for what must not
/// be in it).
pub(crate) async fn start_logging(
    dir: &Path,
    db: &str,
    config: &Path,
    upstream: &str,
    name: &str,
    level: &str,
) -> Serving {
    let log_dir = dir.join(name);
    std::fs::create_dir_all(&log_dir).unwrap();
    keygate_test::serve_ready(
        env!("CARGO_BIN_EXE_keygate"),
        (db, config),
        upstream,
        &[("RUST_LOG", level)],
        &log_dir,
    )
    .await
}

/// A new admin token named `name` (read-only when asked), made with the CLI on `db`.
pub(crate) fn admin_token(db: &str, config: &Path, name: &str, read_only: bool) -> String {
    let mut args = vec!["admin-token", "create", "--name", name];
    if read_only {
        args.push("--read-only");
    }
    cli(db, config, &args)["token"].as_str().unwrap().to_owned()
}

/// One request: its status and JSON body (null when not JSON).
pub(crate) async fn get(listen: &str, path: &str, key: &str) -> (u16, Value) {
    let resp = http_client()
        .get(format!("http://{listen}{path}"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `path` on every node until each answers `status`; fails after `limit`. Returns how
/// long the slowest took.
pub(crate) async fn until_every_node(
    nodes: &[&Serving],
    path: &str,
    key: &str,
    status: u16,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    for node in nodes {
        loop {
            let (s, _) = get(&node.listen, path, key).await;
            if s == status {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "{path} on {} still answers {s}, not {status}, after {limit:?}",
                node.listen
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

/// Asserts every node answers `path` with `status` now.
pub(crate) async fn every_node_answers(nodes: &[&Serving], path: &str, key: &str, status: u16) {
    for node in nodes {
        let (s, body) = get(&node.listen, path, key).await;
        assert_eq!(s, status, "{path} on {}: {body}", node.listen);
    }
}
