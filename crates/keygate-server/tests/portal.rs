//! The customer portal over real TCP: a gateway with `[portal]`, a test SMTP server receiving
//! the sign-in mail, and a cookie-keeping HTTP client that follows no redirect by itself.
//!
//! The seeds, in their words: 002 "Sign in at openpoker.ai with your email. You'll receive a
//! magic link — no password needed"; 003 "The key is shown once in full — after that it's
//! masked in the dashboard"; 001 "Rotate — issue a fresh secret, keep the same scopes. Old key
//! invalidated immediately. Revoke — disable the key."

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Harness;
use keygate_core::Clock;
use keygate_test::{reqwest, SmtpServer};

const PLANS: &str = r#"
[plans.free]
features = []
limits = { per_day = 200, per_minute = 60 }
bookmaker_selection = 1

[plans.pro]
features = ["live"]
limits = { per_hour = 5500 }
"#;

fn config(smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "{PLANS}\n[profile]\ndefault_plan = \"free\"\n\n[portal]\nlisten = \"127.0.0.1:8082\"\nname = \"OddsStream\"\nrotate_grace = \"1h\"\n{extra}\n[portal.smtp]\nurl = \"{}\"\nfrom = \"OddsStream <no-reply@oddsstream.test>\"\n",
        smtp.url()
    )
}

/// A visitor: keeps cookies, follows no redirect.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
    /// Every `Set-Cookie` seen, for attribute checks.
    set_cookies: Vec<String>,
}

#[derive(Debug)]
struct Page {
    status: u16,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// The value of the form field `name` (`name="csrf" value="..."`).
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }

    /// The key shown in full (`<code id="new-key" ...>KEY</code>`), if any.
    fn shown_key(&self) -> Option<String> {
        let start = self.body.find("id=\"new-key\"")?;
        let rest = &self.body[start..];
        let open = rest.find('>')? + 1;
        let close = rest.find("</code>")?;
        Some(rest[open..close].to_owned())
    }
}

impl Browser {
    fn new(h: &Harness) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: format!(
                "http://{}",
                h.gateway.portal_addr.expect("the portal listens")
            ),
            cookies: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let req = if cookie.is_empty() {
            req
        } else {
            req.header("cookie", cookie.join("; "))
        };
        let resp = req.send().await.unwrap();
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap().to_owned();
            let (pair, _) = v.split_once(';').unwrap_or((&v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
            self.set_cookies.push(v);
        }
        Page {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Posts a form with this visitor's CSRF token (taken from `from`, a page with a form).
    async fn submit(&mut self, from: &str, path: &str, form: &[(&str, &str)]) -> Page {
        let csrf = self.get(from).await.field("csrf");
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend_from_slice(form);
        self.post(path, &fields).await
    }

    /// Opens a mailed link (any origin: the path and query are this portal's) and presses
    /// "Sign in".
    async fn follow_link(&mut self, link: &str) -> Page {
        let path = &link[link.find("/sign-in/link").expect("a sign-in link")..];
        let confirm = self.get(path).await;
        if confirm.status != 200 {
            // A used, expired or forged link is refused before its button.
            return confirm;
        }
        assert!(confirm
            .body
            .contains("<button type=\"submit\">Sign in</button>"));
        let (csrf, token) = (confirm.field("csrf"), confirm.field("token"));
        self.post("/sign-in/link", &[("csrf", &csrf), ("token", &token)])
            .await
    }
}

async fn start(extra: &str) -> (Harness, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let h = Harness::start(&config(&smtp, extra)).await;
    (h, smtp)
}

/// A read-write admin token with a name of its own (a harness makes one named `harness`).
async fn admin_token(h: &Harness) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let format = keygate_core::KeyFormat::admin_token();
    let token = format.generate();
    let material = keygate_core::KeyMaterial {
        digest: keygate_core::Digester::plain().digest(token.expose()),
        hint: format.hint(&token),
    };
    h.store
        .create_admin_token(&common::actor(), &format!("portal-{n}"), false, material)
        .await
        .unwrap();
    token.expose().to_owned()
}

/// Invites `email` for `client` through the admin API; the link it answers.
async fn invite(h: &Harness, client: &str, email: &str) -> (u16, serde_json::Value) {
    let token = admin_token(h).await;
    let resp = h
        .http
        .post(h.admin_url(&format!("/v1/clients/{client}/portal/invite")))
        .bearer_auth(token)
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Signs `email` (a user of `client`) in through the mailed link.
async fn signed_in(h: &Harness, smtp: &SmtpServer, client: &str, email: &str) -> Browser {
    let before = smtp.mails().len();
    let (status, doc) = invite(h, client, email).await;
    assert_eq!(status, 201, "{doc}");
    let mails = smtp.wait_for(before + 1, Duration::from_secs(5)).await;
    let mail = mails.last().expect("the invitation was mailed");
    assert_eq!(
        mail.link().as_deref(),
        doc["link"].as_str(),
        "the mailed link is the answered one"
    );
    let mut b = Browser::new(h);
    let signed = b.follow_link(&mail.link().unwrap()).await;
    assert_eq!(
        (signed.status, signed.location.as_deref()),
        (303, Some("/keys"))
    );
    b
}

/// Asks for a sign-in link for `email`: the usual page, and no mail within half a second.
async fn no_mail_for(b: &mut Browser, smtp: &SmtpServer, email: &str) {
    let before = smtp.mails().len();
    let sent = b.submit("/sign-in", "/sign-in", &[("email", email)]).await;
    assert_eq!(sent.status, 200);
    assert_eq!(
        smtp.wait_for(before + 1, Duration::from_millis(500))
            .await
            .len(),
        before
    );
}

async fn gateway_status(h: &Harness, key: &str) -> u16 {
    h.sync().await;
    h.http
        .get(h.url("/odds"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_by_mailed_link_then_create_rotate_and_revoke_keys() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;

    // 002: "Sign in [...] with your email. You'll receive a magic link — no password needed."
    let mut b = Browser::new(&h);
    let form = b.get("/sign-in").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("<h1>Sign in</h1>") && form.body.contains("<label for=\"email\">"));
    let (status, _) = invite(&h, "Acme", "Ann@Acme.test").await;
    assert_eq!(status, 201);
    let mail = smtp.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(mail.to, vec!["<ann@acme.test>".to_owned()]);
    assert_eq!(
        mail.header("subject").as_deref(),
        Some("Sign in to OddsStream")
    );
    // Asking again from the form mails a second link to the now known address.
    let sent = b
        .submit("/sign-in", "/sign-in", &[("email", "ann@acme.test")])
        .await;
    assert_eq!(sent.status, 200);
    assert!(sent.body.contains("If this address has an account"));
    let mails = smtp.wait_for(2, Duration::from_secs(5)).await;
    let link = mails[1].link().unwrap();
    assert!(
        link.contains(&format!("{}/sign-in/link?token=", b.base)),
        "{link}"
    );
    let signed = b.follow_link(&link).await;
    assert_eq!(
        (signed.status, signed.location.as_deref()),
        (303, Some("/keys"))
    );
    let session = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    assert!(
        !session.contains("Secure"),
        "plain http base_url: no Secure"
    );

    // Keys, masked; Create key shows the key once in full.
    let keys = b.get("/keys").await;
    assert_eq!(keys.status, 200);
    for text in [
        "<h1>Keys</h1>",
        "<h2>Create key</h2>",
        ">Create key</button>",
        "No keys yet.",
        ">Sign out</button>",
        ">Usage</a>",
    ] {
        assert!(keys.body.contains(text), "{text} missing");
    }
    let created = b
        .submit(
            "/keys",
            "/keys",
            &[("label", "production"), ("expires", "")],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.shown_key().expect("the new key is shown");
    assert_eq!(
        created.body.matches(&key).count(),
        1,
        "shown once in the page's text"
    );
    assert!(created.body.contains(">Copy</button>"));
    assert_eq!(gateway_status(&h, &key).await, 200);
    // 003: "after that it's masked in the dashboard".
    let again = b.get("/keys").await;
    assert!(!again.body.contains(&key));
    let stored = h.store.list_keys(&Default::default()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(again.body.contains(&stored[0].hint) && again.body.contains("production"));
    let audit = h.store.audit(&Default::default()).await.unwrap();
    let create = audit
        .iter()
        .find(|e| e.action == "key.create")
        .expect("audited");
    assert!(
        create.actor.starts_with("portal:ann@acme.test"),
        "{}",
        create.actor
    );

    // 001: "Rotate — issue a fresh secret, keep the same scopes. Old key invalidated immediately."
    let id = stored[0].id.as_str().to_owned();
    let confirm = b.get(&format!("/keys/{id}/rotate")).await;
    assert!(
        confirm.body.contains("<h1>Rotate</h1>") && confirm.body.contains("Rotate with 1h grace")
    );
    let rotated = b
        .submit(
            &format!("/keys/{id}/rotate"),
            &format!("/keys/{id}/rotate"),
            &[("mode", "now")],
        )
        .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let new_key = rotated.shown_key().unwrap();
    assert_ne!(new_key, key);
    assert_eq!(gateway_status(&h, &key).await, 401);
    assert_eq!(gateway_status(&h, &new_key).await, 200);

    // Rotation with the operator's grace: the old key keeps working.
    let new_id = h
        .store
        .list_keys(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state == keygate_core::KeyState::Active)
        .unwrap()
        .id;
    let path = format!("/keys/{new_id}/rotate");
    let graced = b.submit(&path, &path, &[("mode", "grace")]).await;
    assert_eq!(graced.status, 201);
    assert!(graced.body.contains("the old key works until"));
    let third = graced.shown_key().unwrap();
    assert_eq!(gateway_status(&h, &new_key).await, 200);
    assert_eq!(gateway_status(&h, &third).await, 200);

    // "Revoke — disable the key." After a confirmation page.
    let third_id = h
        .store
        .list_keys(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state == keygate_core::KeyState::Active && k.replaced_by.is_none())
        .unwrap()
        .id;
    let path = format!("/keys/{third_id}/revoke");
    let confirm = b.get(&path).await;
    assert!(confirm.body.contains("<h1>Revoke</h1>") && confirm.body.contains(">Revoke</button>"));
    let revoked = b.submit(&path, &path, &[]).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(gateway_status(&h, &third).await, 401);

    // Sign out: the session ends in the store, not just in this browser.
    let cookie = b.cookies.get("session").unwrap().clone();
    let out = b.submit("/keys", "/sign-out", &[]).await;
    assert_eq!(
        (out.status, out.location.as_deref()),
        (303, Some("/sign-in"))
    );
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));
    b.cookies.insert("session".into(), cookie);
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_csrf_token_are_refused() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;
    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    for csrf in [None, Some(String::new()), Some("0".repeat(64))] {
        let mut form = vec![("label", "x".to_owned())];
        if let Some(c) = &csrf {
            form.push(("csrf", c.clone()));
        }
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = b.post("/keys", &form).await;
        assert_eq!(refused.status, 403, "{csrf:?}");
        assert!(refused.body.contains("not sent from this site"));
    }
    assert!(h
        .store
        .list_keys(&Default::default())
        .await
        .unwrap()
        .is_empty());
    // Another site's form carries the victim's cookies but not the token: sign-out and
    // sign-in requests are refused too.
    assert_eq!(b.post("/sign-out", &[]).await.status, 403);
    assert_eq!(
        b.post("/sign-in", &[("email", "ann@acme.test")])
            .await
            .status,
        403
    );
    assert_eq!(b.get("/keys").await.status, 200, "still signed in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_work_once_and_for_fifteen_minutes() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;
    let (_, doc) = invite(&h, "Acme", "ann@acme.test").await;
    let link = doc["link"].as_str().unwrap().to_owned();
    let mut first = Browser::new(&h);
    assert_eq!(first.follow_link(&link).await.status, 303);
    // Reused, from another browser: refused, no session.
    let mut second = Browser::new(&h);
    let reused = second.follow_link(&link).await;
    assert_eq!(reused.status, 422);
    assert!(reused.body.contains("used, expired or not valid"));
    assert!(!second.cookies.contains_key("session"));

    // Expired: 15 minutes later.
    let (_, doc) = invite(&h, "Acme", "ann@acme.test").await;
    let link = doc["link"].as_str().unwrap().to_owned();
    h.clock.advance(Duration::from_secs(15 * 60));
    let mut late = Browser::new(&h);
    let expired = late.follow_link(&link).await;
    assert_eq!(expired.status, 422);
    assert_eq!(
        expired.body, reused.body,
        "one answer for every refused link"
    );
    // A forged token is the same refusal.
    let forged = format!("{}/sign-in/link?token={}", late.base, "ab".repeat(32));
    assert_eq!(late.follow_link(&forged).await.body, reused.body);
    assert_eq!(smtp.wait_for(2, Duration::from_secs(5)).await.len(), 2);
}

/// Login CSRF: someone who sends a victim their own sign-in link would sign the victim in to
/// the sender's account, where the victim might then type their own secrets. The link's page
/// names the account, and warns when this browser did not ask for that address's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_names_its_account_and_warns_when_this_browser_did_not_ask_for_it() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;
    h.client("Mallory", &[], &[], &[], "free").await;
    for (client, email) in [("Acme", "ann@acme.test"), ("Mallory", "mal@evil.test")] {
        h.store
            .ensure_portal_user(&common::actor(), client, email)
            .await
            .unwrap();
    }
    let link_path = |link: String| link[link.find("/sign-in/link").unwrap()..].to_owned();

    // Ann asks for her link and opens it in the same browser: no warning.
    let mut ann = Browser::new(&h);
    let asked = ann
        .submit("/sign-in", "/sign-in", &[("email", " Ann@Acme.test ")])
        .await;
    assert_eq!(asked.status, 200);
    assert!(
        ann.set_cookies.iter().any(|c| c.starts_with("asked=")
            && c.contains("HttpOnly")
            && c.contains("Max-Age=900")),
        "{:?}",
        ann.set_cookies
    );
    let mails = smtp.wait_for(1, Duration::from_secs(5)).await;
    let ann_link = link_path(mails[0].link().unwrap());
    let page = ann.get(&ann_link).await;
    assert_eq!(page.status, 200);
    assert!(page
        .body
        .contains("<strong id=\"link-account\">ann@acme.test</strong>"));
    assert!(!page.body.contains("not-asked-here"), "{}", page.body);

    // Mallory asks for his own link and sends it to Ann: Ann's browser asked for another
    // address, so the page names Mallory's account and warns.
    let mut mallory = Browser::new(&h);
    mallory
        .submit("/sign-in", "/sign-in", &[("email", "mal@evil.test")])
        .await;
    let mails = smtp.wait_for(2, Duration::from_secs(5)).await;
    let mal_link = link_path(mails[1].link().unwrap());
    let lured = ann.get(&mal_link).await;
    assert_eq!(lured.status, 200);
    assert!(lured
        .body
        .contains("<strong id=\"link-account\">mal@evil.test</strong>"));
    assert!(
        lured.body.contains("id=\"not-asked-here\""),
        "{}",
        lured.body
    );
    assert!(lured
        .body
        .contains("someone may be trying to sign you in to their account"));
    // So does a browser that asked for nothing (an invitation looks the same, and still works).
    let mut fresh = Browser::new(&h);
    assert!(fresh.get(&ann_link).await.body.contains("not-asked-here"));
    // Opening the page spends nothing: Ann still signs in with her link.
    let signed = ann.follow_link(&ann_link).await;
    assert_eq!(
        (signed.status, signed.location.as_deref()),
        (303, Some("/keys"))
    );

    // A cookie value made up by hand for Mallory's address is only the attacker's own browser
    // lying to itself; another site cannot set it (SameSite, HttpOnly, and `__Host-` under
    // HTTPS), and a sign-in form posted from elsewhere is refused before it sets anything.
    let mut forged = Browser::new(&h);
    let refused = forged.post("/sign-in", &[("email", "mal@evil.test")]).await;
    assert_eq!(refused.status, 403);
    assert!(!forged.set_cookies.iter().any(|c| c.starts_with("asked=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_address_gets_the_same_answer_and_no_mail() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;
    h.store
        .ensure_portal_user(&common::actor(), "Acme", "ann@acme.test")
        .await
        .unwrap();
    let mut b = Browser::new(&h);
    let known = b
        .submit("/sign-in", "/sign-in", &[("email", "ann@acme.test")])
        .await;
    let unknown = b
        .submit("/sign-in", "/sign-in", &[("email", "bob@acme.test")])
        .await;
    assert_eq!(known.status, unknown.status);
    assert_eq!(known.body, unknown.body);
    let mails = smtp.wait_for(2, Duration::from_millis(700)).await;
    assert_eq!(mails.len(), 1, "only the known address gets mail");
    assert_eq!(mails[0].to, vec!["<ann@acme.test>".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_requests_are_rate_limited_per_address_and_per_source() {
    let (h, _smtp) = start("sign_in_per_address = 3\nsign_in_per_source = 5\n").await;
    let mut b = Browser::new(&h);
    for _ in 0..3 {
        let ok = b
            .submit("/sign-in", "/sign-in", &[("email", "ann@acme.test")])
            .await;
        assert_eq!(ok.status, 200);
    }
    let limited = b
        .submit("/sign-in", "/sign-in", &[("email", "ANN@acme.test")])
        .await;
    assert_eq!(limited.status, 429, "per address, whatever its case");
    // A refused request counts against neither limit (all or nothing), so the source has made
    // 3 of its 5: two more addresses, then the source is limited whatever the address.
    for email in ["bob@acme.test", "cy@acme.test"] {
        assert_eq!(
            b.submit("/sign-in", "/sign-in", &[("email", email)])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        b.submit("/sign-in", "/sign-in", &[("email", "dan@acme.test")])
            .await
            .status,
        429
    );
    // The window passes.
    h.clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(
        b.submit("/sign-in", "/sign-in", &[("email", "ann@acme.test")])
            .await
            .status,
        200
    );
}

/// Any page, per source address: past `requests_per_source` in a minute, a 429 with
/// `Retry-After` before a session is looked up or a page rendered. An attacker's own
/// `X-Forwarded-For` does not make it a new source; a trusted proxy's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_is_rate_limited_per_source_and_a_forged_forwarded_for_does_not_escape_it() {
    let (h, _smtp) = start("requests_per_source = 5\n").await;
    let mut b = Browser::new(&h);
    for path in [
        "/sign-in",
        "/keys",
        "/assets/portal.css",
        "/nowhere",
        "/sign-in",
    ] {
        assert_ne!(b.get(path).await.status, 429, "{path} is within the limit");
    }
    let limited = b.get("/sign-in").await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        limited.body.contains("Too many requests"),
        "{}",
        limited.body
    );
    assert!(limited.headers.contains_key("content-security-policy"));
    // The caller's own X-Forwarded-For is not believed from an untrusted peer.
    for forged in ["203.0.113.7", "198.51.100.1, 203.0.113.8"] {
        let page = b
            .send(
                b.http
                    .get(format!("{}/sign-in", b.base))
                    .header("x-forwarded-for", forged),
            )
            .await;
        assert_eq!(page.status, 429, "forged {forged}");
    }
    // Posting a form is a request like any other.
    let post = b
        .send(
            b.http
                .post(format!("{}/sign-in", b.base))
                .form(&[("email", "ann@acme.test")]),
        )
        .await;
    assert_eq!(post.status, 429);
    // The minute passes.
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(b.get("/sign-in").await.status, 200);

    // Behind a trusted proxy each forwarded client is its own source.
    let (h, _smtp) =
        start("requests_per_source = 2\n[guard]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let mut b = Browser::new(&h);
    let from = |b: &Browser, ip: &str| {
        b.http
            .get(format!("{}/sign-in", b.base))
            .header("x-forwarded-for", ip.to_owned())
    };
    for _ in 0..2 {
        let req = from(&b, "203.0.113.7");
        assert_eq!(b.send(req).await.status, 200);
    }
    let req = from(&b, "203.0.113.7");
    assert_eq!(b.send(req).await.status, 429);
    let req = from(&b, "203.0.113.9");
    assert_eq!(
        b.send(req).await.status,
        200,
        "another client behind the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_end_when_the_user_or_client_is_disabled() {
    let (h, smtp) = start("session_lifetime = \"1h\"\n").await;
    h.client("Acme", &[], &[], &[], "free").await;
    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    assert_eq!(b.get("/keys").await.status, 200);
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));

    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    h.store
        .set_client_active(&common::actor(), "Acme", false)
        .await
        .unwrap();
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));
    h.store
        .set_client_active(&common::actor(), "Acme", true)
        .await
        .unwrap();

    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    h.store
        .set_portal_user_disabled(&common::actor(), "ann@acme.test", true)
        .await
        .unwrap();
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));
    // A disabled user asking for a link gets the same page and no mail.
    no_mail_for(&mut b, &smtp, "ann@acme.test").await;
}

/// Another node on the same store: what its portal keeps of a session and a key listing is
/// dropped when anything is written, so a sign-out and a new key on this node reach it within
/// the change feed's delay, as a revoked key reaches every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_sees_a_sign_out_and_a_new_key_within_the_feed_delay() {
    let (a, smtp) = start("").await;
    a.client("Acme", &[], &[], &[], "free").await;
    let db = a.dir.path().join("keygate.db").display().to_string();
    let b = Harness::start_on(&config(&smtp, ""), Some(db)).await;
    let mut on_a = signed_in(&a, &smtp, "Acme", "ann@acme.test").await;
    let mut on_b = Browser::new(&b);
    on_b.cookies = on_a.cookies.clone();
    // Read from the store, then (nothing written since) as kept.
    for _ in 0..2 {
        let page = on_b.get("/keys").await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains("made-on-a"));
    }

    let made = on_a
        .submit("/keys", "/keys", &[("label", "made-on-a"), ("expires", "")])
        .await;
    assert!(made.shown_key().is_some(), "{}", made.body);
    eventually(&mut on_b, |p| {
        p.status == 200 && p.body.contains("made-on-a")
    })
    .await;

    let out = on_a.submit("/keys", "/sign-out", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(
        on_a.get("/keys").await.location.as_deref(),
        Some("/sign-in")
    );
    eventually(&mut on_b, |p| p.location.as_deref() == Some("/sign-in")).await;
}

/// Asks for `/keys` until `done` holds of the answer; fails after the harness's replica wait.
async fn eventually(b: &mut Browser, done: impl Fn(&Page) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = b.get("/keys").await;
        if done(&page) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other node never caught up: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;

    // Header injection through the address: the admin API refuses it, the sign-in form gives
    // its usual answer and sends nothing.
    let (status, doc) = invite(&h, "Acme", "ann@acme.test\r\nBcc: eve@evil.test").await;
    assert_eq!(status, 422, "{doc}");
    let mut anon = Browser::new(&h);
    let sent = anon
        .submit(
            "/sign-in",
            "/sign-in",
            &[("email", "ann@acme.test\r\nBcc: eve@evil.test")],
        )
        .await;
    assert_eq!(sent.status, 200);
    assert!(smtp
        .wait_for(1, Duration::from_millis(500))
        .await
        .is_empty());

    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    let mail = &smtp.mails()[0];
    assert_eq!(
        mail.header_names().iter().filter(|n| *n == "bcc").count(),
        0
    );

    // An oversized form is refused before it is read: the answer comes after the head alone.
    // (Over its own connection: a client still sending a body the server closed on may see a
    // reset instead of the answer.)
    let csrf = b.get("/keys").await.field("csrf");
    let cookie: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let big = common::raw_request(
        h.gateway.portal_addr.unwrap(),
        &format!(
            "POST /keys HTTP/1.1\r\nHost: portal\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\ncsrf={csrf}&label=",
            cookie.join("; "),
            64 * 1024
        ),
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 413 "), "{big}");
    assert!(
        big.to_ascii_lowercase().contains("connection: close"),
        "{big}"
    );

    // A label with markup is shown as text.
    let xss = "<script>alert(1)</script>";
    let created = b.post("/keys", &[("csrf", &csrf), ("label", xss)]).await;
    assert_eq!(created.status, 201);
    for page in [created, b.get("/keys").await] {
        assert!(!page.body.contains(xss));
        assert!(
            page.body
                .contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{}",
            page.body
        );
    }

    // Every page carries the strict policy; the script is an embedded file, never inline.
    let keys = b.get("/keys").await;
    let csp = keys.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert!(
        !keys.body.contains("<script>")
            && keys
                .body
                .contains("<script src=\"/assets/copy.js\" defer></script>")
    );
    assert_eq!(b.get("/assets/copy.js").await.status, 200);

    // No open redirect: the portal only ever redirects to its own paths.
    let (_, doc) = invite(&h, "Acme", "ann@acme.test").await;
    let link = format!(
        "{}&next=https://evil.test/&redirect=//evil.test",
        doc["link"].as_str().unwrap()
    );
    let mut c = Browser::new(&h);
    let signed = c.follow_link(&link).await;
    assert_eq!(signed.location.as_deref(), Some("/keys"));
    for path in [
        "//evil.test/",
        "/\\evil.test",
        "/sign-in?next=https://evil.test",
    ] {
        let p = c.get(path).await;
        assert!(
            p.location
                .as_deref()
                .is_none_or(|l| l.starts_with('/') && !l.starts_with("//")),
            "{path}: {:?}",
            p.location
        );
    }

    // A flood on the portal counts against its own connection cap, not the admin listener's.
    let metrics = h
        .http
        .get(h.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keygate_connections_open{listener=\"portal\"}"),
        "{metrics}"
    );

    // Another client's key cannot be reached by id.
    h.client("Other", &[], &[], &[], "free").await;
    let (_, other) = h.key("Other", None).await;
    let foreign = format!("/keys/{}/revoke", other.id);
    assert_eq!(b.get(&foreign).await.status, 404);
    assert_eq!(b.submit("/keys", &foreign, &[]).await.status, 404);
    assert_eq!(
        h.store.key(&other.id).await.unwrap().state,
        keygate_core::KeyState::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_usage_and_bookmaker_selection() {
    let (h, smtp) =
        start("bookmaker_selection = true\nbookmakers = [\"bet365\", \"pinnacle\"]\n").await;
    h.client("Acme", &["odds:read"], &["soccer"], &[], "free")
        .await;
    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    let account = b.get("/account").await;
    assert_eq!(account.status, 200);
    for text in [
        "<dd>free</dd>",
        "rate_limit_rpm</dt><dd>60</dd>",
        "<code>odds:read</code>",
        "soccer",
    ] {
        assert!(
            account.body.contains(text),
            "{text} missing from {}",
            account.body
        );
    }

    // Usage: today's count against the plan's 200 a day, the chart and the CSV.
    let client = h.store.client("Acme").await.unwrap();
    let today = h.clock.now().utc_day();
    h.store
        .add_usage(&[
            keygate_store::UsageRow {
                client_id: client.id.to_string(),
                day: today.clone(),
                status: 200,
                requests: 7,
            },
            keygate_store::UsageRow {
                client_id: client.id.to_string(),
                day: today.clone(),
                status: 429,
                requests: 2,
            },
        ])
        .await
        .unwrap();
    let usage = b.get("/usage").await;
    assert!(usage.body.contains("<h1>Usage</h1>"));
    assert!(
        usage
            .body
            .contains("<strong>9</strong> requests of your 200 a day"),
        "{}",
        usage.body
    );
    assert!(usage.body.contains("<svg") && usage.body.contains(&format!("{today}: 7")));
    // The table has a column per status answered, and today's row counts each.
    assert!(
        usage.body.contains(
            "<th scope=\"col\">Requests</th><th scope=\"col\">WebSocket messages</th><th scope=\"col\">WebSocket bytes</th><th scope=\"col\">200</th><th scope=\"col\">429</th></tr>"
        ),
        "{}",
        usage.body
    );
    assert!(usage.body.contains(&format!(
        "<tr><td>{today}</td><td>9</td><td>0</td><td>0</td><td>7</td><td>2</td></tr>"
    )));
    let csv = b.get("/usage.csv").await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.body,
        format!("day,requests,ws_messages,ws_bytes,200,429\n{today},9,0,0,7,2\n")
    );

    // 003: "Visit Dashboard → Billing to pick one": the pick is the allowlist at once.
    let page = b.get("/bookmakers").await;
    assert!(
        page.body.contains("type=\"radio\""),
        "a free plan picks one"
    );
    let saved = b
        .submit("/bookmakers", "/bookmakers", &[("bookmaker", "pinnacle")])
        .await;
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert_eq!(
        h.store.client("Acme").await.unwrap().bookmakers[0].as_str(),
        "pinnacle"
    );
    let two = b
        .submit(
            "/bookmakers",
            "/bookmakers",
            &[("bookmaker", "pinnacle"), ("bookmaker", "bet365")],
        )
        .await;
    assert_eq!(two.status, 422);
    let unknown = b
        .submit("/bookmakers", "/bookmakers", &[("bookmaker", "evilbook")])
        .await;
    assert_eq!(unknown.status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_where_the_profile_allows_it() {
    // Off unless the profile turns it on.
    let (h, _smtp) = start("").await;
    let mut b = Browser::new(&h);
    assert_eq!(b.get("/sign-up").await.status, 404);
    drop(h);

    // 003: "Sign up at oddsstream.io/signup. A free account gives you immediate access."
    let (h, smtp) = start("sign_up = true\n").await;
    let mut b = Browser::new(&h);
    let form = b.get("/sign-up").await;
    assert!(form
        .body
        .contains("A free account gives you immediate access"));
    let sent = b
        .submit(
            "/sign-up",
            "/sign-up",
            &[("name", "Newco"), ("email", "dev@newco.test")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let mail = smtp.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(
        b.follow_link(&mail.link().unwrap())
            .await
            .location
            .as_deref(),
        Some("/keys")
    );
    let client = h.store.client("Newco").await.unwrap();
    assert_eq!(client.plan, "free", "the profile's default plan");
    let created = b
        .submit("/keys", "/keys", &[("label", "development")])
        .await;
    let key = created.shown_key().unwrap();
    assert_eq!(gateway_status(&h, &key).await, 200, "immediate access");

    // Signing up again with the address gives the same page and a sign-in link, no account.
    let again = Browser::new(&h)
        .submit(
            "/sign-up",
            "/sign-up",
            &[("name", "Newco 2"), ("email", "dev@newco.test")],
        )
        .await;
    assert_eq!(again.body, sent.body);
    assert_eq!(smtp.wait_for(2, Duration::from_secs(5)).await.len(), 2);
    assert!(h.store.client("Newco 2").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_client_ends_its_sessions_and_portal_users() {
    let (h, smtp) = start("").await;
    h.client("Acme", &[], &[], &[], "free").await;
    h.client("Other", &[], &[], &[], "free").await;
    let mut b = signed_in(&h, &smtp, "Acme", "ann@acme.test").await;
    let created = b
        .submit("/keys", "/keys", &[("label", "prod"), ("expires", "")])
        .await;
    let key = created.shown_key().unwrap();
    assert_eq!(gateway_status(&h, &key).await, 200);

    let resp = h
        .http
        .delete(h.admin_url("/v1/clients/Acme"))
        .bearer_auth(admin_token(&h).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (doc["portal_users"].as_u64(), doc["keys_revoked"].as_u64()),
        (Some(1), Some(1)),
        "{doc}"
    );

    // The session ended, the key is refused, a sign-in request mails nothing.
    assert_eq!(b.get("/keys").await.location.as_deref(), Some("/sign-in"));
    assert_eq!(gateway_status(&h, &key).await, 401);
    no_mail_for(&mut b, &smtp, "ann@acme.test").await;
    // The address is free for another client.
    let (status, doc) = invite(&h, "Other", "ann@acme.test").await;
    assert_eq!(status, 201, "{doc}");
}
