//! The remote CLI: every command through a running node's admin API (`--admin-url` with
//! `KEYGATE_ADMIN_TOKEN`) prints what the same command prints against the database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use keygate_test::{http_client, wait_for_status, Proc, Serving, Upstream};
use serde_json::Value;

const CONFIG: &str = r#"
[plans.free]
limits = { per_day = 200 }

[plans.pro]
features = ["live"]
limits = { per_hour = 5500 }

[[routes]]
name = "all"
path = "/{*rest}"
"#;

struct Node {
    dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    admin: String,
    base: String,
    proc: Proc,
    token: String,
    viewer: String,
}

/// Runs the CLI: against the database when `remote` is `None`, else through the admin API with
/// that token.
fn run(node: &Node, remote: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("--config").arg(&node.config);
    match remote {
        None => {
            cmd.arg("--db").arg(&node.db);
        }
        Some(token) => {
            cmd.args(["--admin-url", &node.admin])
                .env("KEYGATE_ADMIN_TOKEN", token);
        }
    }
    cmd.args(args)
        .env_remove("KEYGATE_DB")
        .env("USER", "ops-alice")
        .output()
        .unwrap()
}

fn ok(node: &Node, remote: Option<&str>, args: &[&str]) -> String {
    let out = run(node, remote, args);
    assert!(
        out.status.success(),
        "{args:?} ({}) failed: {}",
        if remote.is_some() { "remote" } else { "local" },
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(node: &Node, remote: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(node, remote, &all)).unwrap()
}

/// The `--json` error document of a failing command.
fn error(node: &Node, remote: Option<&str>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(node, remote, &all);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    serde_json::from_str(&err).unwrap_or_else(|_| panic!("not one JSON error: {err}"))
}

async fn start() -> (Node, Upstream) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keygate.db");
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let cli = |args: &[&str]| {
        keygate_test::json_output(
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .arg("--db")
                .arg(&db)
                .args(args),
        )
    };
    let token = cli(&["--json", "admin-token", "create", "--name", "ops"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = cli(&[
        "--json",
        "admin-token",
        "create",
        "--name",
        "viewer",
        "--read-only",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let Serving {
        proc,
        listen,
        admin: admin_listen,
    } = keygate_test::serve(
        env!("CARGO_BIN_EXE_keygate"),
        (db.to_str().unwrap(), &config),
        &upstream.url(),
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    let ready = wait_for_status(
        admin_listen.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(ready, "gateway did not become ready: {}", proc.stderr());
    let node = Node {
        db,
        config,
        admin: format!("http://{admin_listen}"),
        base: format!("http://{listen}"),
        proc,
        token,
        viewer,
        dir,
    };
    (node, upstream)
}

/// Both forms of a read command, asserted equal between the database and the admin API.
fn same(node: &Node, args: &[&str]) {
    let local = ok(node, None, args);
    let remote = ok(node, Some(&node.token), args);
    assert_eq!(remote, local, "{args:?}: text output differs");
    let local = json(node, None, args);
    let remote = json(node, Some(&node.viewer), args);
    assert_eq!(remote, local, "{args:?}: JSON output differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_remotely_with_the_same_output() {
    let (node, _upstream) = start().await;
    let t = Some(node.token.as_str());

    // Writes through the admin API, each read back from the database.
    let acme = json(
        &node,
        t,
        &[
            "client",
            "create",
            "Acme Odds",
            "--plan",
            "pro",
            "--scopes",
            "odds:read,live",
            "--sports",
            "cs2",
            "--rps",
            "50",
        ],
    );
    assert_eq!(acme, json(&node, None, &["client", "show", "Acme Odds"]));
    json(&node, None, &["client", "create", "Beta", "--plan", "free"]);
    let updated = json(
        &node,
        t,
        &[
            "client",
            "update",
            "Beta",
            "--scopes",
            "odds:read",
            "--bookmakers",
            "pinnacle",
            "--per-day",
            "150",
            "--rps",
            "default",
        ],
    );
    assert_eq!(updated, json(&node, None, &["client", "show", "Beta"]));
    assert_eq!(updated["limits"]["per_day"], 150);
    let disabled = json(&node, t, &["client", "disable", "Beta"]);
    assert_eq!(disabled["active"], false);
    json(&node, t, &["client", "enable", "Beta"]);

    let issued = json(
        &node,
        t,
        &["key", "create", "--client", "Acme Odds", "--label", "prod"],
    );
    let id = issued["id"].as_str().unwrap().to_owned();
    let plaintext = issued["key"].as_str().unwrap().to_owned();
    assert_eq!(issued["client"], "Acme Odds");
    let shown = json(&node, None, &["key", "show", &id]);
    assert_eq!(shown["hint"], issued["hint"]);
    let http = http_client();
    let status = |key: String| {
        let http = http.clone();
        let url = format!("{}/anything", node.base);
        async move {
            http.get(url)
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut answered = 0;
    for _ in 0..100 {
        answered = status(plaintext.clone()).await;
        if answered == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered, 200, "a remotely issued key works at the gateway");

    let rotated = json(&node, t, &["key", "rotate", &id, "--grace", "1h"]);
    assert_eq!(rotated["replaces"], id.as_str());
    assert!(rotated["old_key_valid_until"].is_string());
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    for (verb, state) in [("disable", "disabled"), ("enable", "active")] {
        let k = json(&node, t, &["key", verb, &new_id]);
        assert_eq!(k["state"], state);
        assert_eq!(k, json(&node, None, &["key", "show", &new_id]));
    }
    let expiring = json(&node, t, &["key", "expire", &new_id, "--in", "30d"]);
    assert!(expiring["expires_at"].is_string());
    let never = json(&node, t, &["key", "expire", &new_id, "--never"]);
    assert!(never["expires_at"].is_null());
    let revoked = json(&node, t, &["key", "revoke", &id]);
    assert_eq!(revoked["state"], "revoked");

    // The text forms of a create and a rotation carry the plaintext the same way.
    let text = ok(&node, t, &["key", "create", "--client", "Beta"]);
    assert!(text.starts_with("Created key key_"), "{text}");
    assert!(
        text.contains("Store this key now; it is shown only once:"),
        "{text}"
    );
    let text = ok(&node, t, &["key", "rotate", &new_id]);
    assert!(
        text.contains(&format!("Rotated key {new_id} into key_")),
        "{text}"
    );

    // Emergency mode, through the API, reaches the gateway.
    let on = json(
        &node,
        t,
        &["emergency", "on", "--message", "Back at 14:00 UTC."],
    );
    assert_eq!(
        (on["on"].clone(), on["changed_by"].clone()),
        (Value::Bool(true), "admin:ops".into())
    );
    same(&node, &["emergency", "status"]);
    let fresh = json(&node, None, &["key", "create", "--client", "Beta"]);
    let fresh = fresh["key"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        answered = status(fresh.clone()).await;
        if answered == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answered, 503);
    json(&node, t, &["emergency", "off"]);

    // Reads print the same either way, text and JSON.
    for args in [
        &["client", "list"][..],
        &["client", "list", "--plan", "pro"],
        &["client", "list", "--active", "--limit", "1"],
        &["client", "show", "Acme Odds"],
        &["key", "list"],
        &["key", "list", "--client", "Acme Odds", "--state", "revoked"],
        &["key", "show", &new_id],
        &["audit", "--limit", "20"],
        &["audit", "--action", "key.", "--actor", "admin:ops"],
        &["plan", "list"],
        &["plan", "show", "pro"],
        &["emergency", "status"],
        &[
            "client",
            "usage",
            "Acme Odds",
            "--from",
            "2026-01-01",
            "--to",
            "2026-12-31",
        ],
    ] {
        same(&node, args);
    }

    // Every remote change is audited under the token's name.
    let audit = json(
        &node,
        None,
        &["audit", "--actor", "admin:ops", "--limit", "100"],
    );
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "client.create",
        "client.update",
        "key.create",
        "key.rotate",
        "key.revoke",
        "emergency.on",
        "emergency.off",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(
        !node.proc.stderr().contains(&node.token),
        "the admin token is logged"
    );
    assert!(!node.proc.stderr().contains(&plaintext), "a key is logged");
    drop(node.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_failures_carry_the_same_codes_and_say_what_to_do() {
    let (node, _upstream) = start().await;
    let t = Some(node.token.as_str());
    for args in [
        &["client", "show", "Nobody"][..],
        &["key", "show", "key_0000000000000000"],
        &["client", "create", "x", "--plan", "pro plan"],
    ] {
        let local = error(&node, None, args);
        let remote = error(&node, t, args);
        assert_eq!(
            remote["error"]["code"], local["error"]["code"],
            "{args:?}: {remote} vs {local}"
        );
    }
    json(&node, None, &["client", "create", "Acme"]);
    assert_eq!(
        error(&node, t, &["client", "create", "Acme"])["error"]["code"],
        "duplicate_client"
    );
    assert_eq!(
        error(&node, Some(&node.viewer), &["client", "create", "New"])["error"]["code"],
        "read_only_token"
    );
    let unknown = "kgadm_".to_owned() + &node.token[6..].chars().rev().collect::<String>();
    let e = error(&node, Some(&unknown), &["client", "list"]);
    assert!(
        ["unknown_token", "error"].contains(&e["error"]["code"].as_str().unwrap()),
        "{e}"
    );
    let e = error(&node, Some("not-a-token"), &["client", "list"]);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("KEYGATE_ADMIN_TOKEN"),
        "{e}"
    );
    let e = error(&node, t, &["admin-token", "list"]);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("--db"),
        "{e}"
    );
    let e = error(&node, t, &["migrate"]);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("--db"),
        "{e}"
    );

    // A missing token, a URL that is not http, both targets at once, a node that is down.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--json", "--admin-url", &node.admin, "client", "list"])
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .env_remove("KEYGATE_DB")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYGATE_ADMIN_TOKEN"));
    for (url, db, needle) in [
        ("ftp://127.0.0.1:1", None, "http:// or https://"),
        ("not a url", None, "not a URL"),
        (node.admin.as_str(), Some(node.db.as_path()), "not both"),
        ("http://127.0.0.1:9", None, "cannot reach"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(["--admin-url", url, "client", "list"])
            .env("KEYGATE_ADMIN_TOKEN", &node.token)
            .env_remove("KEYGATE_DB");
        if let Some(db) = db {
            cmd.arg("--db").arg(db as &Path);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{url}: {err}"
        );
        assert!(!err.contains(&node.token), "the token is echoed: {err}");
    }
}

/// An admin listener with `[server.admin_tls]` and `client_ca`: the CLI reaches it over
/// https:// with the CA and a client certificate (flags or environment), and is refused
/// without the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_cli_speaks_https_with_a_client_certificate() {
    use keygate_test::tls::TestCa;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ops CA");
    ca.write_ca(dir.path());
    ca.issue(&["127.0.0.1"]).write(dir.path(), "admin");
    let (op_cert, op_key) = ca.issue(&["operator"]).write(dir.path(), "operator");
    let db = dir.path().join("keygate.db");
    let config = dir.path().join("keygate.toml");
    // Relative paths: from the configuration file's directory.
    let tls = "\n[server.admin_tls]\ncert = \"admin.pem\"\nkey = \"admin-key.pem\"\nclient_ca = \"ca.pem\"\n";
    std::fs::write(&config, format!("{tls}{CONFIG}")).unwrap();
    let token = keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .arg("--db")
            .arg(&db)
            .args(["--json", "admin-token", "create", "--name", "ops"]),
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let Serving {
        proc,
        listen,
        admin: admin_listen,
    } = keygate_test::serve(
        env!("CARGO_BIN_EXE_keygate"),
        (db.to_str().unwrap(), &config),
        &upstream.url(),
        &[("RUST_LOG", "info")],
        dir.path(),
    );
    let up = wait_for_status(
        listen.parse().unwrap(),
        "/health",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(up, "gateway did not start: {}", proc.stderr());
    let url = format!("https://{admin_listen}");
    let cli = |extra: &[&str], env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.args(["--json", "--admin-url", &url])
            .args(extra)
            .args(["client", "create", "Acme"])
            .env("KEYGATE_ADMIN_TOKEN", &token)
            .env_remove("KEYGATE_DB");
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output().unwrap()
    };
    let ca_path = dir.path().join("ca.pem");
    let out = cli(
        &[
            "--admin-ca",
            ca_path.to_str().unwrap(),
            "--admin-cert",
            op_cert.to_str().unwrap(),
            "--admin-key",
            op_key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["name"], "Acme", "{created}");

    // The same through the environment; the client exists now, so the node answers 409.
    let out = cli(
        &[],
        &[
            ("KEYGATE_ADMIN_CA", &ca_path),
            ("KEYGATE_ADMIN_CERT", &op_cert),
            ("KEYGATE_ADMIN_KEY", &op_key),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exists"), "{err}");

    // No client certificate: the handshake is refused, and the CLI says it cannot reach it.
    let out = cli(&["--admin-ca", ca_path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach"),
        "{err}"
    );
    assert!(!err.contains(&token), "the token is echoed: {err}");
    // Without the CA the node's certificate is not trusted.
    let out = cli(&[], &[]);
    assert!(!out.status.success());
}
