//! Reload of the real binary: SIGHUP and `keygate reload` read the configuration file again,
//! keep the process (and its connections) and refuse a broken file with every error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keygate_test::{free_port, http_client, json_output, wait_for_status, Proc, Upstream};

struct Node {
    proc: Proc,
    listen: String,
    admin: String,
    config: PathBuf,
    db: PathBuf,
}

fn config_text(upstream: &str, extra_route: &str) -> String {
    format!(
        "[upstreams.default]\nurl = \"{upstream}\"\n\n{extra_route}\n[[routes]]\nname = \"scores\"\npath = \"/v1/scores\"\n"
    )
}

const FIXTURES: &str = "[[routes]]\nname = \"fixtures\"\npath = \"/v2/fixtures\"\n\n";

async fn serve(dir: &Path, text: &str) -> Node {
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = dir.join("keygate.toml");
    std::fs::write(&config, text).unwrap();
    // The admin address lives in the file too, so `keygate reload --config` finds the node.
    let mut with_admin = format!("[server]\nadmin_listen = \"{admin}\"\n\n{text}");
    with_admin.push('\n');
    std::fs::write(&config, &with_admin).unwrap();
    let db = dir.join("keygate.db");
    let proc = Proc::spawn(
        env!("CARGO_BIN_EXE_keygate"),
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        &[("RUST_LOG", "info")],
        dir,
    );
    let ready = wait_for_status(
        admin.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(ready, "gateway did not become ready: {}", proc.stderr());
    Node {
        proc,
        listen,
        admin,
        config,
        db,
    }
}

impl Node {
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        json_output(
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["--json", "--db", self.db.to_str().unwrap()])
                .args(args),
        )
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(
            &self.config,
            format!("[server]\nadmin_listen = \"{}\"\n\n{text}\n", self.admin),
        )
        .unwrap();
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn config_version(&self) -> u64 {
        let status: serde_json::Value = http_client()
            .get(format!("http://{}/status", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["config"]["version"].as_u64().unwrap()
    }

    async fn wait_version(&self, version: u64) {
        let start = Instant::now();
        while self.config_version().await != version {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never reached version {version}: {}",
                self.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, key: &str, path: &str) -> u16 {
        http_client()
            .get(format!("http://{}{path}", self.listen))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_a_broken_one_is_logged_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let node = serve(dir.path(), &config_text(&upstream.url(), "")).await;
    node.cli(&["client", "create", "Acme"]);
    let key = node.cli(&["key", "create", "--client", "Acme"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let start = Instant::now();
    while node.get(&key, "/v1/scores").await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "key never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.get(&key, "/v2/fixtures").await, 404);

    node.rewrite(&config_text(&upstream.url(), FIXTURES));
    node.hangup();
    node.wait_version(2).await;
    assert_eq!(node.get(&key, "/v2/fixtures").await, 200);

    // A broken file: the process lives, logs every error with its line, serves the old one.
    node.rewrite("[[routes]]\npath = \"no-slash\"\n");
    node.hangup();
    let start = Instant::now();
    while !node.proc.stderr().contains("Configuration reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            node.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = node.proc.stderr();
    assert!(
        log.contains(&format!("{}:4: route", node.config.display())),
        "{log}"
    );
    assert_eq!(node.config_version().await, 2);
    assert_eq!(node.get(&key, "/v2/fixtures").await, 200);
    assert!(!log.contains(&key), "the key reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygate_reload_checks_the_file_then_reloads_the_node_through_its_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let node = serve(dir.path(), &config_text(&upstream.url(), "")).await;
    let token = node.cli(&["admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reload = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--config", node.config.to_str().unwrap()])
            .args(extra)
            .arg("reload")
            .env("KEYGATE_ADMIN_TOKEN", &token)
            .output()
            .unwrap()
    };

    node.rewrite(&config_text(&upstream.url(), FIXTURES));
    let out = reload(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["changed"], true);
    // The remote form: the same through --admin-url.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--admin-url", &format!("http://{}", node.admin), "reload"])
        .env("KEYGATE_ADMIN_TOKEN", &token)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("version 3") && printed.contains("(unchanged)"),
        "{printed}"
    );

    // A broken file is refused here, with its lines, before the node is asked.
    node.rewrite("[[routes]]\npath = \"no-slash\"\n");
    let out = reload(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4: route", node.config.display())),
        "{err}"
    );
    assert_eq!(node.config_version().await, 3);
}
