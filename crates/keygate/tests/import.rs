//! `keygate import`: the real binary on real files (JSON lines and CSV, plaintext keys and
//! SHA-256 digests), then a real `keygate serve` authenticating what was imported.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use keygate_core::{Alphabet, KeyFormat};
use keygate_test::{http_client, wait_for_status, Serving, Upstream};
use serde_json::Value;

const SECRET_VAR: &str = "KEYGATE_TEST_IMPORT_DIGEST_SECRET";
const SECRET: &str = "an-import-test-digest-secret";

/// The deployment's own keys (`kg_`, checksum) and a legacy shape (`sk_live_` + 24 base62).
fn config(keyed: bool) -> String {
    let secret = if keyed {
        format!("digest_secret_env = \"{SECRET_VAR}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"
[keys]
prefix = "kg_"
length = 30
checksum = true
{secret}
[[keys.legacy]]
prefix = "sk_live_"
alphabet = "base62"
length = 24

[[routes]]
name = "all"
path = "/{{*rest}}"
"#
    )
}

struct Site {
    dir: tempfile::TempDir,
    keyed: bool,
}

impl Site {
    fn new(keyed: bool) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keygate.toml"), config(keyed)).unwrap();
        let site = Site { dir, keyed };
        for client in ["acme", "beta"] {
            site.json(&["client", "create", client]);
        }
        site
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("keygate.db")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("keygate.toml")
    }

    fn file(&self, name: &str, body: impl AsRef<[u8]>) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
        cmd.arg("--db")
            .arg(self.db())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("KEYGATE_DB")
            .env("USER", "ops-alice");
        if self.keyed {
            cmd.env(SECRET_VAR, SECRET);
        }
        cmd.output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A failing `import --json`: the report (stdout) and the error line (stderr).
    fn refused(&self, args: &[&str]) -> (Value, String) {
        let mut all = vec!["--json", "import"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{stderr}");
        (serde_json::from_slice(&out.stdout).unwrap(), stderr)
    }

    fn keys(&self) -> Vec<Value> {
        self.json(&["key", "list"]).as_array().unwrap().clone()
    }
}

fn own_key() -> String {
    KeyFormat::default().generate().expose().to_owned()
}

/// A key of the legacy shape, as the old system issued them.
fn legacy_key() -> String {
    KeyFormat::new("sk_live_", Alphabet::Base62, 24, false)
        .unwrap()
        .generate()
        .expose()
        .to_owned()
}

/// What the old system stored: the key's plain SHA-256, in hex.
fn sha256_hex(key: &str) -> String {
    keygate_core::Digester::plain().digest(key).to_hex()
}

/// Every problem as `(line, code)`.
fn problems(report: &Value) -> Vec<(u64, String)> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn json_lines_and_csv_import_once_and_a_rerun_changes_nothing() {
    let site = Site::new(false);
    let (own, legacy, by_digest) = (own_key(), legacy_key(), legacy_key());
    let jsonl = site.file(
        "keys.jsonl",
        format!(
            "{{\"client\": \"acme\", \"key\": \"{own}\", \"label\": \"production\"}}\n\
             \n\
             {{\"client\": \"acme\", \"key\": \"{legacy}\", \"expires_at\": \"2099-01-01T00:00:00Z\"}}\n\
             {{\"client\": \"beta\", \"sha256\": \"{}\", \"hint\": \"sk_live_...{}\"}}\n",
            sha256_hex(&by_digest),
            &by_digest[by_digest.len() - 4..]
        ),
    );
    let first = site.json(&["import", &jsonl]);
    assert_eq!(
        (
            &first["imported"],
            &first["unchanged"],
            &first["error_count"]
        ),
        (&Value::from(3), &Value::from(0), &Value::from(0)),
        "{first}"
    );
    let keys = site.keys();
    let mut hints: Vec<&str> = keys.iter().map(|k| k["hint"].as_str().unwrap()).collect();
    hints.sort_unstable();
    let mut want = vec![
        format!("kg_...{}", &own[own.len() - 4..]),
        format!("sk_live_...{}", &legacy[legacy.len() - 4..]),
        format!("sk_live_...{}", &by_digest[by_digest.len() - 4..]),
    ];
    want.sort_unstable();
    assert_eq!(hints, want);
    let labelled = keys.iter().find(|k| k["label"] == "production").unwrap();
    assert_eq!(labelled["client"], "acme");

    // The same file again: nothing new, nothing duplicated, no error.
    let again = site.json(&["import", &jsonl]);
    assert_eq!(
        (&again["imported"], &again["unchanged"]),
        (&Value::from(0), &Value::from(3))
    );
    assert_eq!(site.keys().len(), 3);

    // CSV with a header, quotes and a spreadsheet's byte-order mark; one key already there.
    let csv_key = legacy_key();
    let csv = site.file(
        "keys.csv",
        format!(
            "\u{feff}client,key,sha256,label,expires_at\r\n\
             \"acme\",{csv_key},,\"odds, live\",\r\n\
             beta,,{},,\r\n",
            sha256_hex(&by_digest)
        ),
    );
    let from_csv = site.json(&["import", &csv]);
    assert_eq!(
        (&from_csv["imported"], &from_csv["unchanged"]),
        (&Value::from(1), &Value::from(1))
    );
    assert!(site.keys().iter().any(|k| k["label"] == "odds, live"));

    // One audit entry per import that wrote something, with its counts; never a key.
    let audit = site.json(&["audit", "--limit", "100"]);
    let imports: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "key.import")
        .collect();
    assert_eq!(imports.len(), 2, "{audit}");
    assert_eq!(imports[1]["detail"]["imported"], 3);
    assert_eq!(imports[1]["actor"], "cli:ops-alice");
    let text = audit.to_string();
    for secret in [&own, &legacy, &csv_key] {
        assert!(!text.contains(secret.as_str()));
    }
}

#[test]
fn a_dry_run_checks_everything_and_writes_nothing() {
    let site = Site::new(false);
    let key = legacy_key();
    let file = site.file(
        "keys.jsonl",
        format!("{{\"client\": \"acme\", \"key\": \"{key}\"}}\n"),
    );
    let report = site.json(&["import", "--dry-run", &file]);
    assert_eq!(
        (&report["imported"], &report["written"]),
        (&Value::from(1), &Value::Bool(false))
    );
    assert!(site.keys().is_empty());
    assert!(site
        .json(&["audit"])
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] != "key.import"));
    // Text output says what would happen.
    let out = site.run(&["import", "--dry-run", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Dry run: 1 keys would be imported"), "{text}");
    assert!(!text.contains(&key));
}

#[test]
fn every_bad_line_is_reported_with_its_number_and_nothing_is_imported() {
    let site = Site::new(false);
    let taken = legacy_key();
    site.json(&[
        "import",
        &site.file(
            "beta.jsonl",
            format!("{{\"client\": \"beta\", \"key\": \"{taken}\"}}\n"),
        ),
    ]);
    let (good, twice) = (legacy_key(), legacy_key());
    let lines = [
        format!(r#"{{"client": "acme", "key": "{good}"}}"#),
        format!(r#"{{"client": "nobody", "key": "{}"}}"#, legacy_key()),
        format!(
            r#"{{"client": "acme", "sha256": "{}"}}"#,
            &sha256_hex(&good)[..62]
        ),
        format!(r#"{{"client": "acme", "key": "{taken}"}}"#),
        format!(r#"{{"client": "acme", "key": "{twice}"}}"#),
        format!(r#"{{"client": "beta", "key": "{twice}"}}"#),
        format!(r#"{{"client": "acme", "key": "{}x"}}"#, legacy_key()),
        format!(
            r#"{{"client": "acme", "key": "{}", "scopes": ["cs2:read"]}}"#,
            legacy_key()
        ),
        format!(
            r#"{{"client": "acme", "key": "{}", "expires_at": "2001-01-01T00:00:00Z"}}"#,
            legacy_key()
        ),
    ];
    let file = site.file("bad.jsonl", lines.join("\n"));
    let (report, stderr) = site.refused(&[&file]);
    assert_eq!(
        problems(&report),
        vec![
            (2, "client_not_found".to_owned()),
            (3, "bad_sha256".to_owned()),
            (4, "key_of_another_client".to_owned()),
            (6, "duplicate_in_file".to_owned()),
            (7, "key_shape".to_owned()),
            (8, "scopes_not_per_key".to_owned()),
            (9, "expiry_in_past".to_owned()),
        ]
    );
    assert_eq!(
        (&report["imported"], &report["written"]),
        (&Value::from(0), &Value::Bool(false))
    );
    assert!(stderr.contains("nothing was imported: 7 lines"), "{stderr}");
    assert_eq!(site.keys().len(), 1, "only beta's earlier key");
    let shown = format!("{report}{stderr}");
    for secret in [&good, &taken, &twice] {
        assert!(
            !shown.contains(secret.as_str()),
            "a key was echoed: {shown}"
        );
    }
    // In text, `FILE:LINE: problem`.
    let out = site.run(&["import", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.jsonl:2: `client`: no such client"),
        "{text}"
    );
    assert!(
        text.contains("bad.jsonl:6: the same key is on line 5 for another client"),
        "{text}"
    );
}

#[test]
fn hostile_files_get_bounded_precise_answers() {
    let site = Site::new(false);
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("{{\"client\": \"acme\", \"key\": \"{}\"}}\n", legacy_key()).as_bytes(),
    );
    body.extend_from_slice(b"{\"client\": \"acme\", \"key\": \"");
    body.extend(std::iter::repeat_n(b'a', 8 << 20)); // an 8 MiB line
    body.extend_from_slice(b"\"}\n");
    body.extend_from_slice(b"{\"client\": \"\xff\xfe\", \"key\": \"x\"}\n");
    body.extend_from_slice(
        format!(
            "{{\"client\": \"acme\", \"sha256\": \"{}\"}}\n",
            "ab".repeat(33)
        )
        .as_bytes(),
    );
    body.extend_from_slice(b"\x1b[2J\x1b]0;owned\x07\n");
    let file = site.file("hostile.jsonl", &body);
    let (report, _) = site.refused(&[&file]);
    assert_eq!(
        problems(&report),
        vec![
            (2, "line_too_long".to_owned()),
            (3, "not_utf8".to_owned()),
            (4, "bad_sha256".to_owned()),
            (5, "not_json".to_owned()),
        ]
    );

    // Spreadsheet formulas and terminal escapes are data: a client named so is just not found,
    // and nothing of the line reaches the output.
    let csv = site.file(
        "formula.csv",
        format!(
            "client,key,label\n\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",{},\n@SUM(1+1),{},\"\u{1b}[31m\"\n",
            legacy_key(),
            legacy_key()
        ),
    );
    let out = site.run(&["import", &csv]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("formula.csv:2: `client`: no such client"),
        "{text}"
    );
    assert!(text.contains("formula.csv:3:"), "{text}");
    assert!(!text.contains("HYPERLINK") && !text.contains("SUM") && !text.contains('\u{1b}'));

    // 100,000 bad lines: every one counted, a hundred shown, quickly.
    let many = "not json\n".repeat(100_000);
    let file = site.file("many.jsonl", many);
    let started = Instant::now();
    let (report, _) = site.refused(&[&file]);
    assert_eq!(report["error_count"], 100_000);
    assert_eq!(report["errors"].as_array().unwrap().len(), 100);
    let out = site.run(&["import", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        101,
        "a hundred problems and one line for the rest"
    );
    assert!(
        text.ends_with("… and 99900 more lines with problems.\n"),
        "{}",
        &text[text.len() - 80..]
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(site.keys().is_empty());
}

#[test]
fn a_keyed_digest_imports_sha256_only_with_a_legacy_shape() {
    let site = Site::new(true);
    let key = legacy_key();
    let file = site.file(
        "keys.jsonl",
        format!(
            "{{\"client\": \"acme\", \"sha256\": \"{}\"}}\n",
            sha256_hex(&key)
        ),
    );
    let report = site.json(&["import", &file]);
    assert_eq!(report["imported"], 1);
    assert_eq!(site.keys()[0]["hint"], "sk_live_...");

    // Without a legacy shape, a keyed deployment cannot use a bare SHA-256.
    std::fs::write(
        site.config(),
        config(true).replace(
            "[[keys.legacy]]\nprefix = \"sk_live_\"\nalphabet = \"base62\"\nlength = 24\n",
            "",
        ),
    )
    .unwrap();
    let (report, _) = site.refused(&[&file]);
    assert_eq!(problems(&report), vec![(1, "sha256_refused".to_owned())]);
}

#[test]
fn import_is_local_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--admin-url", "http://127.0.0.1:9", "import", "keys.jsonl"])
        .env(
            "KEYGATE_ADMIN_TOKEN",
            KeyFormat::admin_token().generate().expose(),
        )
        .env_remove("KEYGATE_DB")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`keygate import` works on a database"),
        "{err}"
    );
}

/// What the gateway answers a key: the status and the problem's code.
async fn answer(base: &str, key: &str) -> (u16, String) {
    let resp = http_client()
        .get(format!("{base}/v1/anything"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn imported_keys_authenticate_at_a_running_gateway() {
    let site = Site::new(true);
    let (own, legacy) = (own_key(), legacy_key());
    site.json(&[
        "import",
        &site.file(
            "first.jsonl",
            format!(
                "{{\"client\": \"acme\", \"key\": \"{own}\"}}\n{{\"client\": \"beta\", \"sha256\": \"{}\"}}\n",
                sha256_hex(&legacy)
            ),
        ),
    ]);
    let upstream = Upstream::start().await;
    let Serving {
        proc,
        listen,
        admin,
    } = keygate_test::serve(
        env!("CARGO_BIN_EXE_keygate"),
        (site.db().to_str().unwrap(), &site.config()),
        &upstream.url(),
        &[(SECRET_VAR, SECRET), ("RUST_LOG", "info")],
        site.dir.path(),
    );
    let ready = wait_for_status(
        admin.parse().unwrap(),
        "/ready",
        200,
        Duration::from_secs(10),
    )
    .await;
    assert!(ready, "gateway did not become ready: {}", proc.stderr());
    let base = format!("http://{listen}");

    assert_eq!(answer(&base, &own).await.0, 200);
    assert_eq!(
        answer(&base, &legacy).await.0,
        200,
        "a legacy key imported by its SHA-256"
    );
    // A random key of the legacy shape is looked up and not found; neither shape is not looked up.
    assert_eq!(
        answer(&base, &legacy_key()).await,
        (401, "unknown_key".to_owned())
    );
    assert_eq!(
        answer(&base, "sk_test_4eC39HqLyjWDarjtT1zdp7dc").await,
        (401, "malformed_key".to_owned())
    );

    // Imported while the node runs: the change feed brings it to the replica.
    let later = legacy_key();
    site.json(&[
        "import",
        &site.file(
            "later.jsonl",
            format!("{{\"client\": \"acme\", \"key\": \"{later}\"}}\n"),
        ),
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while answer(&base, &later).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the imported key never authenticated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = proc.stderr();
    for secret in [&own, &legacy, &later] {
        assert!(!logs.contains(secret.as_str()), "a key was logged");
    }
}
