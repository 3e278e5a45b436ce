//! `keygate amqp …` end to end: the real binary, a SQLite file, the machine's RabbitMQ, and a
//! real AMQP client (lapin) using the URL the command printed. Seed 001: "AMQP — Provisioned
//! per tenant on request … `amqp://op-<slug>:<password>@mq.ticktock.bet:5672/<slug>`".

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_test::RabbitMq;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

struct Cli {
    dir: tempfile::TempDir,
    mq: RabbitMq,
}

impl Cli {
    async fn new() -> Option<Cli> {
        let mq = keygate_test::rabbitmq().await?;
        let cli = Cli {
            dir: tempfile::tempdir().unwrap(),
            mq,
        };
        cli.write_config(&cli.mq.management_url.clone());
        Some(cli)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    fn write_config(&self, management_url: &str) {
        let text = format!(
            "[amqp]\nmanagement_url = \"{management_url}\"\npublic_address = \"{}\"\ntimeout = \"3s\"\n",
            self.mq.amqp_address
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--config"])
            .arg(self.config())
            .args(args)
            .env("KEYGATE_DB", self.dir.path().join("keygate.db"))
            .env("KEYGATE_AMQP_USER", &self.mq.user)
            .env("KEYGATE_AMQP_PASSWORD", &self.mq.password)
            .env("USER", "ops-alice")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Expects failure; returns the JSON error's code and message.
    fn error(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let doc: Value = serde_json::from_slice(&out.stderr).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (
            doc["error"]["code"].as_str().unwrap().to_owned(),
            doc["error"]["message"].as_str().unwrap().to_owned(),
        )
    }
}

async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connecting answers within 10 s")
}

fn tag() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn amqp_provision_show_rotate_revoke_through_the_cli() {
    let Some(cli) = Cli::new().await else { return };
    let name = format!("Acme Sportsbook {}", tag());
    cli.json(&["client", "create", &name]);

    let issued = cli.json(&["amqp", "provision", &name]);
    let slug = issued["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("acme-sportsbook-"), "{issued}");
    let url = issued["url"].as_str().unwrap().to_owned();
    let prefix = format!("amqp://op-{slug}:");
    assert!(url.starts_with(&prefix), "{url}");
    assert!(
        url.ends_with(&format!("@{}/{slug}", cli.mq.amqp_address)),
        "{url}"
    );
    let password = url[prefix.len()..url.rfind('@').unwrap()].to_owned();

    let conn = connect(&url).await.expect("the printed URL connects");
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            "cli".into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("the tenant declares a queue in its vhost");

    // `show` never prints the password; the audit log names each step without it.
    let shown = cli.json(&["amqp", "show", &name]);
    assert_eq!(shown["state"], "active");
    assert_eq!(shown["user"], format!("op-{slug}"));
    assert!(!shown.to_string().contains(&password));
    let audit = cli.run(&["audit"]);
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(audit.contains("amqp.provision"), "{audit}");
    assert!(!audit.contains(&password));

    // Rotate: the old password and its connection stop; the new one works.
    let rotated = cli.json(&["amqp", "rotate", &name]);
    let new_url = rotated["url"].as_str().unwrap().to_owned();
    assert_ne!(new_url, url);
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "old connection still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connect(&url).await.is_err(), "the old password still works");
    let conn = connect(&new_url).await.expect("the rotated URL connects");

    // Revoke: closed within a second, refused afterwards; `show` says revoked.
    let revoked = cli.json(&["amqp", "revoke", &name]);
    assert_eq!(revoked["state"], "revoked");
    let start = Instant::now();
    while conn.status().connected() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "connection open after revoke"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connect(&new_url).await.is_err());
    assert_eq!(cli.json(&["amqp", "show", &name])["state"], "revoked");
}

#[tokio::test]
async fn amqp_errors_have_codes_and_a_broker_outage_changes_nothing() {
    let Some(cli) = Cli::new().await else { return };
    let name = format!("Outage {}", tag());
    cli.json(&["client", "create", &name]);
    assert_eq!(
        cli.error(&["amqp", "show", &name]).0,
        "feed_not_provisioned"
    );
    assert_eq!(
        cli.error(&["amqp", "show", "no such client"]).0,
        "client_not_found"
    );
    let (code, message) = cli.error(&["amqp", "provision", &name, "--slug", "../x"]);
    assert_eq!(code, "invalid_slug", "{message}");

    // The broker's management API is down: a precise 503-class error, nothing stored.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    cli.write_config(&dead_url);
    let (code, message) = cli.error(&["amqp", "provision", &name]);
    assert_eq!(code, "broker_unavailable", "{message}");
    assert!(message.contains(&dead_url), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    cli.write_config(&cli.mq.management_url.clone());
    assert_eq!(
        cli.error(&["amqp", "show", &name]).0,
        "feed_not_provisioned"
    );

    // Without the operator's credentials the command says which variable is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--config"])
        .arg(cli.config())
        .args(["amqp", "show", &name])
        .env("KEYGATE_DB", cli.dir.path().join("keygate.db"))
        .env_remove("KEYGATE_AMQP_USER")
        .env_remove("KEYGATE_AMQP_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KEYGATE_AMQP_USER"), "{err}");

    // Without [amqp] at all.
    std::fs::write(cli.config(), "").unwrap();
    assert_eq!(cli.error(&["amqp", "show", &name]).0, "amqp_not_configured");
}
