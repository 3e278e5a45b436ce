//! End-to-end CLI tests: the real binary against a real SQLite file in a temp dir.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

struct Db {
    dir: tempfile::TempDir,
}

impl Db {
    fn new() -> Self {
        Db {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("keygate.db")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .env("KEYGATE_DB", self.path())
            .env("USER", "ops-alice")
            .output()
            .unwrap()
    }

    /// Runs with `--json`, expects success, returns the document.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no single JSON document ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs, expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        err
    }

    /// Everything the store holds, as the CLI sees it.
    fn state(&self) -> Value {
        serde_json::json!({
            "clients": self.json(&["client", "list"]),
            "keys": self.json(&["key", "list"]),
            "audit": self.json(&["audit", "--limit", "100000"]),
        })
    }
}

fn seed(db: &Db) -> (String, String) {
    db.json(&[
        "client",
        "create",
        "Acme Sportsbook",
        "--plan",
        "pro",
        "--scopes",
        "cs2:matches:read,cs2:matches:list",
        "--sports",
        "cs2",
        "--rps",
        "100",
    ]);
    let k = db.json(&[
        "key",
        "create",
        "--client",
        "Acme Sportsbook",
        "--label",
        "production",
        "--expires-in",
        "30d",
    ]);
    (
        k["id"].as_str().unwrap().to_owned(),
        k["key"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn create_show_list_and_the_plaintext_appears_once() {
    let db = Db::new();
    let (id, plain) = seed(&db);
    assert!(plain.starts_with("kg_") && plain.len() == 39, "{plain}");

    let created = db.json(&["key", "show", &id]);
    for field in [
        "id",
        "hint",
        "client",
        "label",
        "state",
        "expires_at",
        "created_at",
    ] {
        assert!(
            created.get(field).is_some(),
            "key show lacks {field}: {created}"
        );
    }
    assert_eq!(created["client"], "Acme Sportsbook");
    assert_eq!(created["state"], "active");
    assert!(created["hint"]
        .as_str()
        .unwrap()
        .ends_with(&plain[plain.len() - 4..]));

    // Nowhere but the create output: not in listings, not in the audit log, not in the file.
    let everything = db.state().to_string();
    assert!(!everything.contains(&plain));
    assert!(!everything.contains(&plain[3..20]));
    let human = db.run(&["key", "list"]);
    let listing = String::from_utf8_lossy(&human.stdout);
    assert!(!listing.contains(&plain));
    // A key no gateway has seen yet: its last use says so.
    assert!(created["last_used_at"].is_null(), "{created}");
    assert!(
        listing.contains("LAST USED") && listing.contains("never"),
        "{listing}"
    );
    let shown = String::from_utf8_lossy(&db.run(&["key", "show", &id]).stdout).into_owned();
    assert!(
        shown.contains("last used") && shown.contains("never"),
        "{shown}"
    );
    let bytes = std::fs::read(db.path()).unwrap();
    let wal = std::fs::read(db.dir.path().join("keygate.db-wal")).unwrap_or_default();
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "plaintext key stored at rest"
        );
    }

    let client = db.json(&["client", "show", "Acme Sportsbook"]);
    assert_eq!(client["plan"], "pro");
    assert_eq!(client["limits"]["rps"], 100);
    assert_eq!(client["sports"], serde_json::json!(["cs2"]));
    assert_eq!(client["bookmakers"], serde_json::json!([]));

    let human = String::from_utf8(db.run(&["client", "list"]).stdout).unwrap();
    assert!(human.starts_with("NAME"), "{human}");
    assert!(human.contains("Acme Sportsbook"));
}

#[test]
fn rotation_revocation_and_states() {
    let db = Db::new();
    let (id, plain) = seed(&db);
    let r = db.json(&["key", "rotate", &id]);
    for field in ["id", "key", "hint", "client", "expires_at"] {
        assert!(r.get(field).is_some(), "rotate --json lacks {field}: {r}");
    }
    assert_ne!(r["key"], plain);
    assert_eq!(r["replaces"], id.as_str());
    assert_eq!(db.json(&["key", "show", &id])["state"], "revoked");
    let new_id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(db.json(&["key", "show", &new_id])["label"], "production");

    let graced = db.json(&["key", "rotate", &new_id, "--grace", "1h"]);
    let old = db.json(&["key", "show", &new_id]);
    assert_eq!(old["state"], "active");
    assert_eq!(old["expires_at"], graced["old_key_valid_until"]);

    let newest = graced["id"].as_str().unwrap().to_owned();
    assert_eq!(db.json(&["key", "disable", &newest])["state"], "disabled");
    assert_eq!(db.json(&["key", "enable", &newest])["state"], "active");
    assert_eq!(
        db.json(&["key", "expire", &newest, "--at", "2099-01-01T00:00:00Z"])["expires_at"],
        "2099-01-01T00:00:00Z"
    );
    assert_eq!(
        db.json(&["key", "expire", &newest, "--never"])["expires_at"],
        Value::Null
    );
    assert_eq!(db.json(&["key", "revoke", &newest])["state"], "revoked");
    let err = db.fails(&["key", "enable", &newest]);
    assert!(err.contains("revoked"), "{err}");

    let audit = db.json(&["audit", "--limit", "3"]);
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["key.revoke", "key.expire", "key.expire"]);
    assert_eq!(audit[0]["actor"], "cli:ops-alice");
    // The first key (rotated without grace) and the last one; the graced key is still active.
    assert_eq!(
        db.json(&["key", "list", "--state", "revoked"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bad_input_gets_one_sentence_and_changes_nothing() {
    let db = Db::new();
    let (id, _) = seed(&db);
    db.json(&["client", "create", "Other"]);
    let before = db.state();
    let cases: &[(&[&str], &str)] = &[
        (&["client", "create", "Acme Sportsbook"], "already exists"),
        (
            &["client", "create", "x", "--scopes", "cs2::read"],
            "is not a scope",
        ),
        (
            &["client", "create", "x", "--scopes", "Live Scores"],
            "is not a scope",
        ),
        (
            &["client", "create", "x", "--sports", "CS2"],
            "is not a slug",
        ),
        (&["client", "create", "x", "--rps", "0"], "limit of 0"),
        (
            &["client", "update", "Acme Sportsbook", "--per-day", "-5"],
            "not a positive whole number",
        ),
        (
            &["client", "update", "Acme Sportsbook", "--rps", "lots"],
            "not a positive whole number",
        ),
        (
            &["client", "create", "x", "--per-minute", "-1"],
            "not a positive whole number",
        ),
        (
            &["client", "update", "Acme Sportsbook", "--name", "Other"],
            "already exists",
        ),
        (
            &["client", "update", "Nobody", "--plan", "pro"],
            "no client named",
        ),
        (&["client", "show", "Nobody"], "no client named"),
        (&["client", "disable", "Nobody"], "no client named"),
        (&["key", "create", "--client", "Nobody"], "no client named"),
        (
            &[
                "key",
                "create",
                "--client",
                "Acme Sportsbook",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "in the past",
        ),
        (
            &[
                "key",
                "create",
                "--client",
                "Acme Sportsbook",
                "--expires-at",
                "next week",
            ],
            "not an RFC 3339 instant",
        ),
        (
            &[
                "key",
                "create",
                "--client",
                "Acme Sportsbook",
                "--expires-in",
                "30",
            ],
            "not a duration",
        ),
        (
            &[
                "key",
                "create",
                "--client",
                "Acme Sportsbook",
                "--label",
                "bad\nlabel",
            ],
            "label",
        ),
        (&["key", "rotate", &id, "--grace", "soon"], "not a duration"),
        (&["key", "show", "key_0000000000000000"], "no key"),
        (&["key", "show", "12345"], "is not a key id"),
        (&["key", "revoke", "key_0000000000000000"], "no key"),
        (
            &["key", "expire", &id, "--at", "2001-01-01T00:00:00Z"],
            "in the past",
        ),
        (&["key", "list", "--client", "Nobody"], "no client named"),
        (&["key", "frobnicate"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let err = db.fails(args);
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in: {err}"
        );
        assert!(
            err.lines().next().unwrap().starts_with("error: "),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        db.state(),
        before,
        "a refused command must leave the store as it was"
    );

    let json_err = db.run(&["--json", "client", "show", "Nobody"]);
    let doc: Value = serde_json::from_slice(&json_err.stderr).unwrap();
    assert_eq!(doc["error"]["code"], "client_not_found");
}

#[test]
fn unusable_databases_are_named() {
    let db = Db::new();
    let missing_dir = db.dir.path().join("no/such/dir/k.db");
    let err = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["--db", missing_dir.to_str().unwrap(), "client", "list"])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(
        err.contains("cannot open database") && err.contains("does not exist"),
        "{err}"
    );

    seed(&db);
    bump_schema(&db.path());
    let err = db.fails(&["client", "list"]);
    assert!(err.contains("schema version 42, newer than"), "{err}");

    let garbage = db.dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["--db", garbage.to_str().unwrap(), "key", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("garbage.db"), "{err}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![7u8; 4096],
        "a foreign file is left untouched"
    );
}

/// Pretends a newer keygate migrated this file.
fn bump_schema(path: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (42, 'future', TRUE, x'00', 0)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

#[test]
fn migrate_reports_the_schema() {
    let db = Db::new();
    let doc = db.json(&["migrate"]);
    assert_eq!(
        doc["schema_version"],
        keygate_store::latest_version(keygate_store::Backend::Sqlite)
    );
}

#[test]
fn admin_tokens_are_shown_once_and_can_be_revoked() {
    let db = Db::new();
    let created = db.json(&["admin-token", "create", "--name", "billing"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with("kgadm_") && token.len() == 6 + 32 + 6,
        "{token}"
    );
    assert_eq!(created["read_only"], false);
    let ro = db.json(&[
        "admin-token",
        "create",
        "--name",
        "dashboard",
        "--read-only",
    ]);
    assert_eq!(ro["read_only"], true);

    let listed = db.json(&["admin-token", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&token),
        "the list never shows a token"
    );
    assert!(
        !db.state().to_string().contains(&token),
        "nor the audit log"
    );

    let err = db.fails(&["admin-token", "create", "--name", "billing"]);
    assert!(err.contains("already exists"), "{err}");
    let revoked = db.json(&["admin-token", "revoke", "billing"]);
    assert!(revoked["revoked_at"].is_string());
    let err = db.fails(&["admin-token", "revoke", "nobody"]);
    assert!(err.contains("no admin token named `nobody`"), "{err}");
    let audit = db.json(&["audit", "--action", "admin_token."]);
    assert_eq!(audit.as_array().unwrap().len(), 3);
}

/// `--config` makes the CLI speak a deployment's contract: its key format and its plans.
#[test]
fn a_profile_gives_the_key_format_and_the_plans() {
    let db = Db::new();
    let profile = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../profiles/oddsstream.toml"
    );
    db.json(&[
        "--config", profile, "client", "create", "acme", "--plan", "pro",
    ]);
    let key = db.json(&["--config", profile, "key", "create", "--client", "acme"]);
    let key = key["key"].as_str().unwrap();
    let body = key
        .strip_prefix("os_live_")
        .unwrap_or_else(|| panic!("{key}"));
    assert_eq!(body.len(), 32, "{key}");
    assert!(body
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));

    let err = db.fails(&[
        "--config", profile, "client", "create", "beta", "--plan", "nosuch",
    ]);
    assert!(
        err.contains("plan `nosuch` is not one of this configuration's plans (free, pro, pro_plus_live, pro_plus_rt)"),
        "{err}"
    );
    let err = db.fails(&[
        "--config", profile, "client", "update", "acme", "--plan", "nosuch",
    ]);
    assert!(err.contains("plan `nosuch`"), "{err}");
    // Free: "one selected bookmaker".
    let err = db.fails(&[
        "--config",
        profile,
        "client",
        "create",
        "gamma",
        "--plan",
        "free",
        "--bookmakers",
        "bet365,pinnacle",
    ]);
    assert!(
        err.contains("lets a client pick 1 bookmaker(s); 2 were given"),
        "{err}"
    );
    db.json(&[
        "--config",
        profile,
        "client",
        "create",
        "gamma",
        "--plan",
        "free",
        "--bookmakers",
        "bet365",
    ]);
    let err = db.fails(&[
        "--config",
        profile,
        "client",
        "update",
        "acme",
        "--plan",
        "free",
        "--bookmakers",
        "a,b",
    ]);
    assert!(err.contains("2 were given"), "{err}");
    // Nothing was written by the refusals.
    let clients = db.json(&["client", "list"]);
    assert_eq!(clients.as_array().unwrap().len(), 2);
    // Issue 17 (16), seed 003: "A free account gives you immediate access": without --plan a
    // client starts on the profile's `default_plan` (Free), checked like a named plan.
    let signup = db.json(&["--config", profile, "client", "create", "signup"]);
    assert_eq!(signup["plan"], "free", "{signup}");
    let err = db.fails(&[
        "--config",
        profile,
        "client",
        "create",
        "greedy",
        "--bookmakers",
        "a,b",
    ]);
    assert!(err.contains("2 were given"), "{err}");
    // Without a configuration, `default` as before.
    assert_eq!(db.json(&["client", "create", "plain"])["plan"], "default");
}

#[test]
fn the_openpoker_profile_issues_op_live_keys_and_child_accounts() {
    // Seed 002: keys look like `op_live_…`; portfolio bots are child accounts of a parent.
    let db = Db::new();
    let profile = concat!(env!("CARGO_MANIFEST_DIR"), "/../../profiles/openpoker.toml");
    db.json(&["client", "create", "Pro Player", "--plan", "free"]);
    let child = db.json(&[
        "client",
        "create",
        "Pro Player bot 1",
        "--plan",
        "free",
        "--parent",
        "Pro Player",
    ]);
    let parent = db.json(&["client", "show", "Pro Player"]);
    assert_eq!(child["parent"], parent["id"]);
    let issued = db.json(&[
        "--config",
        profile,
        "key",
        "create",
        "--client",
        "Pro Player",
    ]);
    let key = issued["key"].as_str().unwrap();
    assert!(key.starts_with("op_live_") && key.len() > 40, "{key}");
    assert!(issued["hint"].as_str().unwrap().starts_with("op_live_"));
    let err = db.fails(&[
        "client",
        "create",
        "Grandchild",
        "--plan",
        "free",
        "--parent",
        "Pro Player bot 1",
    ]);
    assert!(err.contains("is itself a child account"), "{err}");
}

/// `keygate portal invite CLIENT --email ADDR --json` prints `{"link": …}` and mails the same
/// link through `[portal.smtp]` (a test SMTP server here); the link signs in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_invite_mails_and_prints_the_link() {
    let smtp = keygate_test::SmtpServer::start().await;
    let db = Db::new();
    let config = db.dir.path().join("portal.toml");
    std::fs::write(
        &config,
        format!(
            "[portal]\nlisten = \"127.0.0.1:8082\"\nbase_url = \"https://portal.example.test\"\nname = \"Acme API\"\n\n[portal.smtp]\nurl = \"{}\"\nfrom = \"Acme API <no-reply@acme.test>\"\n",
            smtp.url()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let run = |args: Vec<String>| {
        let db = db.path();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(&args)
                .env("KEYGATE_DB", db)
                .env("USER", "ops-alice")
                .output()
                .unwrap()
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = run(args(&["client", "create", "acme"])).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(args(&[
        "--config",
        &config,
        "--json",
        "portal",
        "invite",
        "acme",
        "--email",
        "Ann@Acme.test",
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = doc["link"].as_str().unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
    assert!(
        link.starts_with("https://portal.example.test/sign-in/link?token="),
        "{link}"
    );
    let mail = smtp
        .wait_for(1, std::time::Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(mail.to, vec!["<ann@acme.test>".to_owned()]);
    assert_eq!(mail.link().as_deref(), Some(link));

    // Without --json the link is printed for people; an unknown client is an error.
    let out = run(args(&[
        "--config",
        &config,
        "portal",
        "invite",
        "acme",
        "--email",
        "bob@acme.test",
    ]))
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Mailed a sign-in link to bob@acme.test."),
        "{text}"
    );
    let out = run(args(&[
        "--config",
        &config,
        "portal",
        "invite",
        "nosuch",
        "--email",
        "c@acme.test",
    ]))
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
    // The operator lists and disables the client's people.
    let out = run(args(&["--json", "portal", "users", "acme"]))
        .await
        .unwrap();
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    let emails: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ann@acme.test", "bob@acme.test"]);
    let out = run(args(&["--json", "portal", "disable", "bob@acme.test"]))
        .await
        .unwrap();
    let bob: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bob[0]["disabled"], true, "{bob}");

    // Without a [portal] the command says what is missing.
    let out = run(args(&[
        "portal",
        "invite",
        "acme",
        "--email",
        "d@acme.test",
    ]))
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[portal]"));
}
