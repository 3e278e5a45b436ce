//! Leak reports from GitHub's secret-scanning partner program against the real binary: a report
//! signed by a key of GitHub's document revokes (or flags) the key it names before the answer
//! leaves, answers each token's label by hash, and anything not signed by a listed key changes
//! nothing.
//!
//! GitHub's program: "GitHub will send an HTTP POST message to your endpoint … The message body
//! is a JSON array that contains one or more objects … token, type, url, source", with the
//! headers `Github-Public-Key-Identifier` and `Github-Public-Key-Signature` (an ECDSA signature
//! of the body by the key GitHub publishes under that identifier).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use keygate_test::{http_client, wait_for_status, Serving, Upstream};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const PATH: &str = "/_keygate/secret-scanning";

/// A P-256 key pair standing in for GitHub's, and its entry in the keys document.
struct Scanner {
    id: String,
    pair: EcdsaKeyPair,
    pem: String,
}

impl Scanner {
    fn new(id: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pem = rcgen::KeyPair::try_from(pkcs8.as_ref())
            .unwrap()
            .public_key_pem();
        Scanner {
            id: id.to_owned(),
            pair,
            pem,
        }
    }

    fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

fn keys_document(scanners: &[&Scanner]) -> String {
    let keys: Vec<Value> = scanners
        .iter()
        .map(|s| json!({"key_identifier": s.id, "key": s.pem, "is_current": true}))
        .collect();
    json!({ "public_keys": keys }).to_string()
}

fn cli(db: &Path, config: &Path, args: &[&str]) -> Value {
    keygate_test::json_output(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--json", "--config", config.to_str().unwrap()])
            .args(args)
            .env("KEYGATE_DB", db),
    )
}

struct Node {
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    config: std::path::PathBuf,
    serving: Serving,
    _upstream: Upstream,
}

impl Node {
    /// A node with `[leak_reports]` written as `table` (after the header), GitHub's document
    /// listing `scanners`, and clients `Acme` and `Globex` with a key each.
    async fn start(table: &str, scanners: &[&Scanner]) -> (Node, String, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("github-keys.json"), keys_document(scanners)).unwrap();
        let config = dir.path().join("keygate.toml");
        std::fs::write(
            &config,
            format!(
                "[plans.free]\nlimits = {{ per_minute = 1000 }}\n\n\
                 [leak_reports]\npublic_keys_file = \"github-keys.json\"\n{table}\n"
            ),
        )
        .unwrap();
        let db = dir.path().join("keygate.db");
        let mut keys = Vec::new();
        for client in ["Acme", "Globex"] {
            cli(
                &db,
                &config,
                &["client", "create", client, "--plan", "free"],
            );
            let issued = cli(&db, &config, &["key", "create", "--client", client]);
            keys.push(issued["key"].as_str().unwrap().to_owned());
        }
        let upstream = Upstream::start().await;
        let serving = keygate_test::serve(
            env!("CARGO_BIN_EXE_keygate"),
            (db.to_str().unwrap(), &config),
            &upstream.url(),
            &[("RUST_LOG", "info")],
            dir.path(),
        );
        let ready = wait_for_status(
            serving.admin.parse().unwrap(),
            "/ready",
            200,
            Duration::from_secs(20),
        )
        .await;
        assert!(ready, "did not start: {}", serving.proc.stderr());
        let node = Node {
            dir,
            db,
            config,
            serving,
            _upstream: upstream,
        };
        let globex = keys.pop().unwrap();
        let acme = keys.pop().unwrap();
        (node, acme, globex)
    }

    async fn status_with(&self, key: &str) -> u16 {
        http_client()
            .get(format!("http://{}/odds", self.serving.listen))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// POSTs `body` to the report endpoint with the given headers.
    async fn report(&self, body: &[u8], key_id: Option<&str>, sig: Option<&str>) -> (u16, String) {
        let mut req = http_client()
            .post(format!("http://{}{PATH}", self.serving.listen))
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(id) = key_id {
            req = req.header("Github-Public-Key-Identifier", id);
        }
        if let Some(sig) = sig {
            req = req.header("Github-Public-Key-Signature", sig);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn signed(&self, scanner: &Scanner, body: &[u8]) -> (u16, String) {
        self.report(body, Some(&scanner.id), Some(&scanner.sign(body)))
            .await
    }

    fn audit(&self, action: &str) -> Vec<Value> {
        let out = cli(&self.db, &self.config, &["audit", "--action", action]);
        out.as_array()
            .cloned()
            .expect("audit --json prints an array")
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn report_of(tokens: &[&str]) -> Vec<u8> {
    let list: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "token": t,
                "type": "keygate_api_key",
                "url": "https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/.env",
                "source": "content",
            })
        })
        .collect();
    serde_json::to_vec(&list).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_report_revokes_the_key_at_once_and_labels_every_token_by_hash() {
    let github = Scanner::new("f9525bf080f75b3506ca1ead061add62b8633a346606dc5fe544e29231c6ee0d");
    let receiver = keygate_test::WebhookReceiver::start("a-webhook-secret-of-32-bytes-long").await;
    let webhook = format!(
        "\n[[webhooks]]\nurl = \"{}\"\nsecret = \"a-webhook-secret-of-32-bytes-long\"\n\
         events = [\"leak.reported\", \"key.revoked\"]\n\n[outbox]\npoll = \"100ms\"\n",
        receiver.url()
    );
    let (node, acme, globex) = Node::start(&webhook, &[&github]).await;
    assert_eq!(node.status_with(&acme).await, 200);

    let made_up = "kg_thisIsNoKeyOfOursButLooksLikeOne123456";
    let body = report_of(&[&acme, made_up]);
    let (status, answer) = node.signed(&github, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains(&acme), "the answer echoes the token");
    let labels: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        labels,
        json!([
            {"token_hash": hash(&acme), "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_hash": hash(made_up), "token_type": "keygate_api_key", "label": "false_positive"},
        ])
    );
    // Refused on this node as soon as the answer is out; the other client's key still works.
    assert_eq!(node.status_with(&acme).await, 401);
    assert_eq!(node.status_with(&globex).await, 200);

    let reported = node.audit("key.leak_reported");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["actor"], "secret-scanning");
    assert_eq!(reported[0]["detail"]["action"], "revoked");
    assert_eq!(reported[0]["detail"]["source"], "content");
    assert!(reported[0]["detail"]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://github.com/octocat/"));
    let revoked = node.audit("key.revoke");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["actor"], "secret-scanning");

    // The provider's systems hear of it: `leak.reported` and `key.revoked`, signed, with the
    // report's facts and never the token.
    let delivered = receiver
        .wait_for(Duration::from_secs(20), |d| d.len() >= 2)
        .await;
    let mut types: Vec<&str> = delivered.iter().map(|d| d.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["key.revoked", "leak.reported"], "{delivered:?}");
    for d in &delivered {
        assert!(d.signature_valid, "{d:?}");
        let body = String::from_utf8_lossy(&d.body);
        assert!(!body.contains(&acme), "a webhook body holds the token");
    }
    let leak = delivered
        .iter()
        .find(|d| d.event_type == "leak.reported")
        .unwrap()
        .json();
    assert!(leak.to_string().contains("github.com/octocat"), "{leak}");

    // GitHub retries and rescans: the same token again is still ours, already revoked.
    let (status, answer) = node.signed(&github, &report_of(&[&acme])).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("true_positive"), "{answer}");
    let reported = node.audit("key.leak_reported");
    assert_eq!(reported[0]["detail"]["action"], "already_revoked");

    let metrics = http_client()
        .get(format!("http://{}/metrics", node.serving.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "keygate_leak_report_tokens_total{kind=\"reported\"} 3",
        "keygate_leak_report_tokens_total{kind=\"ours\"} 2",
        "keygate_leak_report_tokens_total{kind=\"revoked\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let logs = format!(
        "{}{}",
        node.serving.proc.stderr(),
        node.serving.proc.stdout()
    );
    assert!(logs.contains("reported leaked"), "{logs}");
    for secret in [acme.as_str(), globex.as_str(), made_up] {
        assert!(!logs.contains(secret), "a token reached the log");
    }
    drop(node.dir);
}

/// What an attacker who knows the endpoint (and GitHub's public key identifier) can send: none
/// of it revokes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_forged_or_oversized_report_changes_nothing() {
    let github = Scanner::new("github-current");
    let attacker = Scanner::new("github-current");
    let (node, acme, _) = Node::start("max_body_bytes = 4096", &[&github]).await;
    let body = report_of(&[&acme]);

    // No headers; a listed identifier with the attacker's signature; an unlisted identifier;
    // GitHub's signature over another body; garbage in the signature header.
    assert_eq!(node.report(&body, None, None).await.0, 401);
    assert_eq!(node.signed(&attacker, &body).await.0, 401);
    let (status, answer) = node
        .report(&body, Some("another-id"), Some(&github.sign(&body)))
        .await;
    assert_eq!(status, 401, "{answer}");
    let other = report_of(&["kg_somethingElse"]);
    assert_eq!(
        node.report(&body, Some(&github.id), Some(&github.sign(&other)))
            .await
            .0,
        401
    );
    assert_eq!(
        node.report(&body, Some(&github.id), Some("not base64 !!"))
            .await
            .0,
        401
    );
    assert_eq!(
        node.status_with(&acme).await,
        200,
        "a forged report revoked"
    );

    // Past the bound, declared or not; signed but not the program's JSON; not a POST.
    let huge = report_of(&vec![acme.as_str(); 100]);
    assert!(huge.len() > 4096);
    assert_eq!(node.signed(&github, &huge).await.0, 413);
    let (status, answer) = node.signed(&github, b"{\"token\": 1}").await;
    assert_eq!(status, 400, "{answer}");
    let get = http_client()
        .get(format!("http://{}{PATH}", node.serving.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(node.status_with(&acme).await, 200);
    assert!(node.audit("key.leak_reported").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_action_flag_the_key_keeps_working_and_the_report_is_recorded() {
    let github = Scanner::new("k1");
    let (node, acme, _) = Node::start("action = \"flag\"", &[&github]).await;
    let (status, answer) = node.signed(&github, &report_of(&[&acme])).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("true_positive"), "{answer}");
    assert_eq!(node.status_with(&acme).await, 200);
    let reported = node.audit("key.leak_reported");
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0]["detail"]["action"], "flagged");
    assert!(node.audit("key.revoke").is_empty());
}

#[test]
fn a_bad_keys_document_or_path_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.json"), "{\"public_keys\": []}").unwrap();
    let config = dir.path().join("keygate.toml");
    for (table, expect) in [
        (
            "public_keys_file = \"keys.json\"",
            "the document lists no keys",
        ),
        ("public_keys_file = \"missing.json\"", "cannot read"),
        (
            "path = \"/health\"\npublic_keys_file = \"keys.json\"",
            "already another endpoint's",
        ),
        (
            "action = \"delete\"\npublic_keys_file = \"keys.json\"",
            "`revoke` or `flag`",
        ),
        ("path = \"/x\"", "needs `public_keys_file`"),
    ] {
        std::fs::write(&config, format!("[leak_reports]\n{table}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: accepted");
        assert!(err.contains(expect), "{table}: {err}");
    }
}
