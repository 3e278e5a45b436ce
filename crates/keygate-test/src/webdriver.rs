//! A small W3C WebDriver client for browser tests: Debian's `chromedriver` driving headless
//! `chromium`. The protocol is a handful of JSON calls, spoken here with the harness's own
//! reqwest rather than a WebDriver crate (the Rust ones pull an MPL-licensed dependency, which
//! the project's licence policy keeps out).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::Proc;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A page element, by its WebDriver reference.
#[derive(Clone, Debug)]
pub struct Element(String);

/// A browser session on a chromedriver the test started; both end when it is dropped.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: String,
    _process: Proc,
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a headless `chromium` session.
    ///
    /// # Panics
    /// When the driver does not come up or refuses the session (which fails the test).
    pub async fn start(chromium: &Path, chromedriver: &Path, log_dir: &Path) -> Browser {
        let port = crate::free_port();
        let process = Proc::spawn(
            &chromedriver.display().to_string(),
            &[&format!("--port={port}"), "--allowed-ips=127.0.0.1"],
            &[],
            log_dir,
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            crate::wait_for_status(addr, "/status", 200, Duration::from_secs(20)).await,
            "chromedriver did not start: {}",
            process.stderr()
        );
        let http = crate::http_client();
        let driver = format!("http://{addr}");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,900"],
            },
        }}});
        let resp: Value = http
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {resp}"))
            .to_owned();
        Browser {
            http,
            session,
            driver,
            _process: process,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver, self.session);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp: Value = req
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        if resp["value"]["error"].is_string() {
            panic!("WebDriver {path}: {}", resp["value"]);
        }
        resp["value"].clone()
    }

    /// Loads `url` and waits for the page.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/source", None).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// The first element matching the CSS selector.
    pub async fn find(&self, css: &str) -> Element {
        self.find_by("css selector", css).await
    }

    /// The first element matching the XPath expression (e.g. a button by its text).
    pub async fn find_xpath(&self, xpath: &str) -> Element {
        self.find_by("xpath", xpath).await
    }

    async fn find_by(&self, using: &str, value: &str) -> Element {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": using, "value": value })),
            )
            .await;
        Element(
            v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {value}: {v}"))
                .to_owned(),
        )
    }

    /// The button whose text is exactly `text`.
    pub async fn button(&self, text: &str) -> Element {
        self.find_xpath(&format!("//button[normalize-space()='{text}']"))
            .await
    }

    /// The link whose text is exactly `text`.
    pub async fn link(&self, text: &str) -> Element {
        self.find_xpath(&format!("//a[normalize-space()='{text}']"))
            .await
    }

    pub async fn click(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await;
    }

    /// Clicks a link or a submit button and waits (up to 10 s) until the next page has loaded:
    /// a click that starts a navigation may return before the new document exists.
    pub async fn click_and_load(&self, e: &Element) {
        self.execute("window.__keygate_old_page = true; return null;")
            .await;
        self.click(e).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self
                .execute("return window.__keygate_old_page === undefined && document.readyState === 'complete';")
                .await;
            if loaded == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new page after the click"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `text` into a field.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The element's rendered text.
    pub async fn text(&self, e: &Element) -> String {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.0),
                None,
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Runs a script in the page; its return value.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver closes Chromium) before `_process` kills the driver;
        // blocking, on a plain socket, since no runtime may be left to run a request.
        use std::io::{Read as _, Write as _};
        let Some(addr) = self.driver.strip_prefix("http://") else {
            return;
        };
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}
