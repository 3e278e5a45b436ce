//! The customer portal in a real browser: headless Chromium through chromedriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them), the sign-in link read from the
//! mail a test SMTP server received, and every key checked against the gateway.
//!
//! Seed 003: "Click Copy. The key is shown once in full — after that it's masked in the
//! dashboard. If you lose it, rotate it to get a new one." Seed 002: "Pro child-bot keys are
//! rotated [...] after selecting that portfolio bot."
//!
//! With `KEYGATE_PORTAL_SCREENSHOTS=DIR` the test saves a PNG of each page there (how
//! `docs/portal/` is made).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Harness;
use keygate_store::NewClient;
use keygate_test::webdriver::Browser;
use keygate_test::SmtpServer;

fn config(smtp: &SmtpServer) -> String {
    format!(
        r##"
[plans.free]
features = []
limits = {{ per_day = 200, per_minute = 60 }}
bookmaker_selection = 1

[profile]
default_plan = "free"

[[routes]]
name = "me"
path = "/me"

[[routes]]
name = "odds"
path = "/odds"
bookmaker = "query:bookmaker"

[portal]
listen = "127.0.0.1:8082"
name = "OddsStream Dashboard"
colors = {{ primary = "#6a35c9" }}
sign_up = true
bookmaker_selection = true
bookmakers = ["bet365", "pinnacle", "betfair"]
child_bots = true

[portal.smtp]
url = "{}"
from = "OddsStream <no-reply@oddsstream.test>"
"##,
        smtp.url()
    )
}

async fn status(h: &Harness, path: &str, key: &str) -> u16 {
    h.sync().await;
    h.http
        .get(h.url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Saves a screenshot when `KEYGATE_PORTAL_SCREENSHOTS` names a directory.
async fn shot(b: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("KEYGATE_PORTAL_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

/// The key shown once on the page.
async fn shown_key(b: &Browser) -> String {
    b.text(&b.find("#new-key").await).await.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_signs_in_and_manages_keys_bookmakers_and_bots_in_a_browser() {
    let Some(chromium) = keygate_test::program("chromium", &[Path::new("/usr/bin")]) else {
        return;
    };
    let Some(driver) = keygate_test::program("chromedriver", &[Path::new("/usr/bin")]) else {
        return;
    };
    let smtp = SmtpServer::start().await;
    let h = Harness::start(&config(&smtp)).await;
    let acme = h.client("Acme", &[], &[], &[], "free").await;
    let bot = h
        .store
        .create_client(
            &common::actor(),
            NewClient {
                name: "Acme bot 1".into(),
                plan: "free".into(),
                parent: Some(acme.id.to_string()),
                ..NewClient::default()
            },
        )
        .await
        .unwrap();
    let (bot_key, _) = h.key("Acme bot 1", None).await;
    h.store
        .ensure_portal_user(&common::actor(), "Acme", "ann@acme.test")
        .await
        .unwrap();
    let portal = format!("http://{}", h.gateway.portal_addr.unwrap());
    let b = Browser::start(&chromium, &driver, h.dir.path()).await;

    // Sign in: the form, then the link from the mail.
    b.goto(&format!("{portal}/sign-in")).await;
    shot(&b, "sign-in").await;
    b.type_into(&b.find("#email").await, "ann@acme.test").await;
    b.click_and_load(&b.button("Sign in").await).await;
    assert!(b.source().await.contains("Check your mail"));
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await.remove(0);
    let link = mail.link().expect("a link in the mail");
    assert!(link.starts_with(&portal), "{link}");
    b.goto(&link).await;
    b.click_and_load(&b.button("Sign in").await).await;
    assert!(b.url().await.ends_with("/keys"), "{}", b.url().await);
    assert_eq!(b.text(&b.find("h1").await).await, "Keys");
    shot(&b, "keys").await;

    // Create key: shown once, in full, with Copy; it works at the gateway.
    b.type_into(&b.find("#label").await, "production").await;
    b.click_and_load(&b.button("Create key").await).await;
    let key = shown_key(&b).await;
    assert!(key.starts_with("kg_"), "{key}");
    assert_eq!(b.source().await.matches(&key).count(), 1);
    shot(&b, "key-created").await;
    // Copy: the clipboard (or, where the browser refuses it, the selected key) gets the key and
    // the button says so; the clipboard's answer is asynchronous, hence the wait.
    let copy = b.button("Copy").await;
    b.click(&copy).await;
    let mut said = String::new();
    for _ in 0..100 {
        said = b.text(&copy).await;
        if said == "Copied" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(said, "Copied");
    assert_eq!(status(&h, "/me", &key).await, 200);
    b.goto(&format!("{portal}/keys")).await;
    assert!(!b.source().await.contains(&key), "masked after that");

    // Rotate: the old key stops at once, the new one works.
    b.click_and_load(&b.link("Rotate").await).await;
    shot(&b, "rotate").await;
    b.click_and_load(&b.button("Rotate").await).await;
    let rotated = shown_key(&b).await;
    assert_ne!(rotated, key);
    assert_eq!(status(&h, "/me", &key).await, 401);
    assert_eq!(status(&h, "/me", &rotated).await, 200);

    // Revoke, after the confirmation page.
    b.goto(&format!("{portal}/keys")).await;
    b.click_and_load(&b.link("Revoke").await).await;
    shot(&b, "revoke").await;
    b.click_and_load(&b.button("Revoke").await).await;
    assert_eq!(b.text(&b.find("h1").await).await, "Keys");
    let listed = b.source().await;
    assert!(listed.contains("<td>revoked</td>") && !listed.contains(">Revoke</a>"));
    assert_eq!(status(&h, "/me", &rotated).await, 401);

    // Bookmakers: the free plan picks one; the pick is the allowlist at once.
    let (key, _) = h.key("Acme", None).await;
    b.goto(&format!("{portal}/bookmakers")).await;
    b.click(&b.find("label[for=bm-pinnacle]").await).await;
    b.click_and_load(&b.button("Save").await).await;
    assert!(b.source().await.contains("Saved"));
    shot(&b, "bookmakers").await;
    assert_eq!(status(&h, "/odds?bookmaker=pinnacle", &key).await, 200);
    assert_eq!(status(&h, "/odds?bookmaker=bet365", &key).await, 403);

    // Account and usage pages render for the signed-in customer.
    b.goto(&format!("{portal}/account")).await;
    assert!(b.source().await.contains("pinnacle"));
    shot(&b, "account").await;
    let now = keygate_core::Clock::now(&*h.clock).as_millis();
    let acme_id = acme.id.to_string();
    let rows: Vec<keygate_store::UsageRow> = (0..12)
        .flat_map(|back: i64| {
            let acme_id = acme_id.clone();
            let day = keygate_core::Timestamp::from_millis(now - back * 86_400_000).utc_day();
            let ok = 40 + (back * 37 % 90) as u64;
            [
                (200, ok),
                (429, (back % 4) as u64 * 6),
                (503, u64::from(back == 5) * 9),
            ]
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(move |(status, requests)| keygate_store::UsageRow {
                client_id: acme_id.clone(),
                day: day.clone(),
                status,
                requests,
            })
        })
        .collect();
    h.store.add_usage(&rows).await.unwrap();
    b.goto(&format!("{portal}/usage")).await;
    assert_eq!(b.text(&b.find("h1").await).await, "Usage");
    assert!(b.source().await.contains("<rect"), "the chart has bars");
    shot(&b, "usage").await;

    // Child bots: regenerate the bot's key; its old key stops, the new one works.
    b.goto(&format!("{portal}/bots")).await;
    assert!(b.source().await.contains("Acme bot 1"));
    b.click_and_load(
        &b.find_xpath("//button[@aria-label='Regenerate key of Acme bot 1']")
            .await,
    )
    .await;
    let new_bot_key = shown_key(&b).await;
    shot(&b, "bots").await;
    assert_eq!(status(&h, "/me", &bot_key).await, 401);
    assert_eq!(status(&h, "/me", &new_bot_key).await, 200);
    let bot_keys = h
        .store
        .list_keys(&keygate_store::KeyFilter {
            client: Some(bot.id.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bot_keys.len(), 2);

    // Sign out.
    b.click_and_load(&b.button("Sign out").await).await;
    assert!(b.url().await.ends_with("/sign-in"));
    b.goto(&format!("{portal}/keys")).await;
    assert!(b.url().await.ends_with("/sign-in"), "signed out");
}
