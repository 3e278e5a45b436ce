//! The customer portal's Messaging feed section (issue 21) over HTTP and in a browser: a real
//! node with `[portal]` and `[amqp]`, the machine's RabbitMQ, and a real AMQP client (lapin)
//! using the URL the page showed. Seed 001: "AMQP — Provisioned per tenant on request — see
//! the Messaging Feed page."

mod feeds;

use std::time::Duration;

use feeds::{closed_within_a_second, connect, tag, Node};
use keygate_test::RabbitMq;
use serde_json::Value;

/// A portal visitor over HTTP, as in keygate-server's portal tests: keeps cookies, follows no
/// redirect.
struct Visitor {
    http: keygate_test::reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Visitor {
    async fn send(&mut self, req: keygate_test::reqwest::RequestBuilder) -> (u16, String) {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let resp = req
            .header("cookie", cookie.join("; "))
            .send()
            .await
            .unwrap();
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let pair = v.split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            if val.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Posts with this visitor's CSRF token, read from the page at `from`.
    async fn submit(&mut self, from: &str, path: &str) -> (u16, String) {
        let csrf = field(&self.get(from).await.1, "csrf");
        self.post(path, &[("csrf", &csrf)]).await
    }
}

/// A form field's value in a page (`name="csrf" value="..."`).
fn field(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[start..].split('"').next().unwrap().to_owned()
}

/// The text of `<code id="{id}" ...>...</code>`, if the page shows it (as a browser reads it:
/// the templates escape `/` too).
fn shown(body: &str, id: &str) -> Option<String> {
    let rest = &body[body.find(&format!("id=\"{id}\""))?..];
    let html = &rest[rest.find('>')? + 1..rest.find("</code>")?];
    Some(html.replace("&#x2f;", "/").replace("&amp;", "&"))
}

/// A node with `[portal]` (customers may request feeds when `requests`).
async fn portal_node(mq: RabbitMq, management_url: Option<&str>, requests: bool) -> (Node, String) {
    let port = keygate_test::free_port();
    let extra = format!(
        "\n[portal]\nlisten = \"127.0.0.1:{port}\"\nname = \"TickTock\"\nfeed_requests = {requests}\n"
    );
    let node = Node::start_with(mq, management_url, None, None, &extra).await;
    (node, format!("http://127.0.0.1:{port}"))
}

/// Signs `email` in for `client` with the link the admin API's invitation answers.
async fn portal_visitor(node: &Node, portal: &str, client: &str, email: &str) -> Visitor {
    let path = format!("/v1/clients/{}/portal/invite", client.replace(' ', "%20"));
    let (status, invite) = node
        .call(
            "POST",
            &path,
            &node.token,
            Some(serde_json::json!({ "email": email })),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    let link = invite["link"].as_str().unwrap();
    let mut v = Visitor {
        http: keygate_test::reqwest::Client::builder()
            .no_proxy()
            .redirect(keygate_test::reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: portal.to_owned(),
        cookies: Default::default(),
    };
    let (status, confirm) = v.get(&link[link.find("/sign-in/link").unwrap()..]).await;
    assert_eq!(status, 200, "{confirm}");
    let (csrf, token) = (field(&confirm, "csrf"), field(&confirm, "token"));
    let (status, _) = v
        .post("/sign-in/link", &[("csrf", &csrf), ("token", &token)])
        .await;
    assert_eq!(status, 303);
    v
}

fn password_of(url: &str) -> String {
    let creds = &url["amqp://".len()..url.rfind('@').unwrap()];
    creds.split_once(':').unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_messaging_feed_section_requests_shows_and_rotates_the_feed() {
    let Some(mq) = keygate_test::rabbitmq().await else {
        return;
    };
    let (node, portal) = portal_node(mq.clone(), None, true).await;
    let (acme, other) = (format!("Acme {}", tag()), format!("Other {}", tag()));
    let acme_id = node.json(false, &["client", "create", &acme])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    node.json(false, &["client", "create", &other]);
    let mut ann = portal_visitor(&node, &portal, &acme, &format!("ann-{}@acme.test", tag())).await;
    let mut bob =
        portal_visitor(&node, &portal, &other, &format!("bob-{}@other.test", tag())).await;

    // The nav has the section; without a feed it offers "Request feed".
    let (status, keys) = ann.get("/keys").await;
    assert_eq!(status, 200);
    assert!(
        keys.contains("<a href=\"/feed\">Messaging feed</a>"),
        "{keys}"
    );
    let (status, page) = ann.get("/feed").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1>Messaging feed</h1>") && page.contains(">Request feed</button>"));

    // The request needs the form's CSRF token.
    let (status, _) = ann.post("/feed/request", &[]).await;
    assert_eq!(status, 403);
    assert!(!ann.get("/feed").await.1.contains("id=\"new-feed-url\""));
    let (status, made) = ann.submit("/feed", "/feed/request").await;
    assert_eq!(status, 201, "{made}");
    let url = shown(&made, "new-feed-url").expect("the URL is shown once");
    assert!(
        url.starts_with(&format!("amqp://{}", node.user_prefix)),
        "{url}"
    );
    assert!(
        made.contains("data-copy=\"new-feed-url\""),
        "the Copy button"
    );
    let conn = connect(&url).await.expect("the portal's URL connects");

    // Shown once: the page afterwards has the user, vhost and address, never the password.
    let (_, page) = ann.get("/feed").await;
    assert!(!page.contains(&password_of(&url)));
    assert!(
        page.contains(&node.mq.amqp_address) && page.contains(">active<"),
        "{page}"
    );
    assert!(!page.contains(">Request feed</button>"));

    // Another client's session has no feed to rotate, and cannot reach this one.
    let (status, _) = bob.submit("/feed", "/feed/rotate").await;
    assert_eq!(status, 404);
    let (status, _) = bob.get("/feed/rotate").await;
    assert_eq!(status, 404);
    assert!(
        conn.status().connected(),
        "another client's rotate touched this feed"
    );

    // Rotate: a confirmation, the CSRF token, then the new URL once; the old password stops.
    let (status, confirm) = ann.get("/feed/rotate").await;
    assert_eq!(status, 200);
    assert!(confirm.contains(">Rotate</button>") && confirm.contains("action=\"/feed/rotate\""));
    let (status, _) = ann.post("/feed/rotate", &[("csrf", "forged")]).await;
    assert_eq!(status, 403);
    assert!(conn.status().connected(), "a forged rotate rotated");
    let (status, rotated) = ann.submit("/feed/rotate", "/feed/rotate").await;
    assert_eq!(status, 201, "{rotated}");
    let new_url = shown(&rotated, "new-feed-url").unwrap();
    assert_ne!(new_url, url);
    closed_within_a_second(&conn, "the portal rotated the feed").await;
    assert!(connect(&url).await.is_err(), "the old password still works");
    connect(&new_url).await.expect("the rotated URL connects");
    assert!(!ann.get("/feed").await.1.contains(&password_of(&new_url)));

    // Audited as the portal user; the password is in no audit row.
    let audit = node.json(false, &["audit", "--limit", "100"]).to_string();
    let doc: Value = serde_json::from_str(&audit).unwrap();
    let rows: Vec<&Value> = doc
        .as_array()
        .or_else(|| doc["items"].as_array())
        .unwrap()
        .iter()
        .filter(|e| {
            e["target"] == acme_id.as_str() && e["action"].as_str().unwrap().starts_with("amqp.")
        })
        .collect();
    assert!(
        rows.iter().any(|e| e["action"] == "amqp.rotate"
            && e["actor"].as_str().unwrap().starts_with("portal:ann-")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|e| e["action"] == "amqp.provision"
            && e["actor"].as_str().unwrap().starts_with("portal:ann-")),
        "{rows:?}"
    );
    assert!(!audit.contains(&password_of(&new_url)) && !audit.contains(&password_of(&url)));
    node.json(true, &["amqp", "revoke", &acme]);

    // Without `feed_requests` the page says to ask the provider and the request is refused.
    let (node, portal) = portal_node(mq.clone(), None, false).await;
    let name = format!("Ask {}", tag());
    node.json(false, &["client", "create", &name]);
    let mut cy = portal_visitor(&node, &portal, &name, &format!("cy-{}@ask.test", tag())).await;
    let (status, page) = cy.get("/feed").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("ask TickTock to provision one") && !page.contains("Request feed"),
        "{page}"
    );
    let (status, body) = cy.submit("/feed", "/feed/request").await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = node
        .call(
            "GET",
            &format!("/v1/clients/{}/amqp", name.replace(' ', "%20")),
            &node.token,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The broker down: a clear error page, nothing made.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let (node, portal) = portal_node(mq, Some(&dead_url), true).await;
    let name = format!("Down {}", tag());
    node.json(false, &["client", "create", &name]);
    let mut di = portal_visitor(&node, &portal, &name, &format!("di-{}@down.test", tag())).await;
    let (status, body) = di.submit("/feed", "/feed/request").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("unavailable right now and nothing was changed"),
        "{body}"
    );
    assert!(
        !body.contains(&dead_url),
        "the operator's broker address is not shown"
    );
    let (status, shown_feed) = node
        .call(
            "GET",
            &format!("/v1/clients/{}/amqp", name.replace(' ', "%20")),
            &node.token,
            None,
        )
        .await;
    assert_eq!(
        (status, shown_feed["code"].as_str()),
        (404, Some("feed_not_provisioned"))
    );
}

/// Saves a screenshot when `KEYGATE_PORTAL_SCREENSHOTS` names a directory (as the portal's
/// browser test does; `docs/portal/feed.png` is made so).
async fn shot(b: &keygate_test::webdriver::Browser, name: &str) {
    if let Some(dir) = std::env::var_os("KEYGATE_PORTAL_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        b.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messaging_feed_section_in_a_browser() {
    use std::path::Path;
    let Some(chromium) = keygate_test::program("chromium", &[Path::new("/usr/bin")]) else {
        return;
    };
    let Some(driver) = keygate_test::program("chromedriver", &[Path::new("/usr/bin")]) else {
        return;
    };
    let Some(mq) = keygate_test::rabbitmq().await else {
        return;
    };
    let (node, portal) = portal_node(mq, None, true).await;
    let name = format!("Acme Sportsbook {}", tag());
    node.json(false, &["client", "create", &name]);
    let path = format!("/v1/clients/{}/portal/invite", name.replace(' ', "%20"));
    let (status, invite) = node
        .call(
            "POST",
            &path,
            &node.token,
            Some(serde_json::json!({ "email": "ann@acme.test" })),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    let link = invite["link"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = keygate_test::webdriver::Browser::start(&chromium, &driver, dir.path()).await;
    b.goto(&format!(
        "{portal}{}",
        &link[link.find("/sign-in/link").unwrap()..]
    ))
    .await;
    b.click_and_load(&b.button("Sign in").await).await;

    // The nav entry, then "Request feed": the URL once, with Copy.
    b.click_and_load(&b.link("Messaging feed").await).await;
    assert_eq!(b.text(&b.find("h1").await).await, "Messaging feed");
    b.click_and_load(&b.button("Request feed").await).await;
    let url = b
        .text(&b.find("#new-feed-url").await)
        .await
        .trim()
        .to_owned();
    assert!(url.starts_with("amqp://"), "{url}");
    shot(&b, "feed").await;
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
    let conn = connect(&url).await.expect("the URL from the page connects");

    // Rotate, after the confirmation page.
    b.click_and_load(&b.link("Rotate").await).await;
    b.click_and_load(&b.button("Rotate").await).await;
    let rotated = b
        .text(&b.find("#new-feed-url").await)
        .await
        .trim()
        .to_owned();
    assert_ne!(rotated, url);
    closed_within_a_second(&conn, "the browser rotated the feed").await;
    connect(&rotated).await.expect("the rotated URL connects");
    node.json(true, &["amqp", "revoke", &name]);
}
