//! A real gateway on 127.0.0.1:0 in front of a real upstream, on a real SQLite file.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use keygate_core::{
    ApiKey, Client, Clock, KeyState, ManualClock, Scope, Slug, SystemClock, Timestamp,
};
use keygate_server::{config, Overrides, Running};
use keygate_store::{Actor, NewClient, NewKey, OpenOptions, Store};
use keygate_test::{reqwest, Upstream};

pub struct Harness {
    pub gateway: Running,
    pub upstream: Upstream,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub issuer: keygate_core::Issuer,
    /// The file the gateway was started from, which a reload reads again.
    pub config_path: std::path::PathBuf,
}

pub fn actor() -> Actor {
    Actor("test:harness".into())
}

impl Harness {
    /// Starts a gateway with `config_text` (`{upstream}` is replaced by the test upstream's URL).
    pub async fn start(config_text: &str) -> Harness {
        Harness::start_on(config_text, None).await
    }

    /// Starts a gateway on the given database URL (a fresh SQLite file when `None`).
    pub async fn start_on(config_text: &str, db_url: Option<String>) -> Harness {
        Harness::start_with(config_text, db_url, None).await
    }

    /// Starts a gateway whose own store handle is opened with `gateway_store` (e.g. a page
    /// ceiling), while the harness's setup handle keeps the defaults.
    pub async fn start_with(
        config_text: &str,
        db_url: Option<String>,
        gateway_store: Option<OpenOptions>,
    ) -> Harness {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db = db_url.unwrap_or_else(|| dir.path().join("keygate.db").display().to_string());
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            portal_listen: Some("127.0.0.1:0".parse().unwrap()),
            db: Some(db),
            upstream: Some(upstream.url()),
            workers: Some(2),
            tooling: false,
            skip_tls_files: false,
        };
        let text = config_text.replace("{upstream}", &upstream.url());
        let config_path = dir.path().join("test.toml");
        std::fs::write(&config_path, &text).unwrap();
        let cfg = config::load(&text, &config_path.display().to_string(), &overrides)
            .unwrap_or_else(|e| panic!("{e}"));
        let issuer = cfg.issuer.clone();
        let store = Store::open_with_clock(&cfg.db, OpenOptions::default(), clock.clone())
            .await
            .unwrap();
        let gateway_store = match gateway_store {
            None => store.clone(),
            Some(options) => Store::open_with_clock(&cfg.db, options, clock.clone())
                .await
                .unwrap(),
        };
        let gateway = keygate_server::start_with_clock(cfg, gateway_store, clock.clone())
            .await
            .unwrap();
        gateway.reload_from(keygate_server::Source {
            path: config_path.clone(),
            overrides,
        });
        let h = Harness {
            gateway,
            upstream,
            store,
            clock,
            http: keygate_test::http_client(),
            dir,
            issuer,
            config_path,
        };
        let ready = if h.gateway.gateway().config.admin_tls.is_some() {
            // The admin listener speaks TLS only (tests/tls.rs): ask the replica itself.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !h.gateway.gateway().replica.is_loaded() && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            h.gateway.gateway().replica.is_loaded()
        } else {
            keygate_test::wait_for_status(
                h.gateway.admin_addr,
                "/ready",
                200,
                Duration::from_secs(5),
            )
            .await
        };
        assert!(ready, "gateway never became ready");
        h
    }

    /// Writes `text` (`{upstream}` replaced as at the start) over the gateway's configuration
    /// file, for a reload to read.
    pub fn rewrite_config(&self, text: &str) {
        let text = text.replace("{upstream}", &self.upstream.url());
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr, path)
    }

    pub async fn client(
        &self,
        name: &str,
        scopes: &[&str],
        sports: &[&str],
        bookmakers: &[&str],
        plan: &str,
    ) -> Client {
        self.store
            .create_client(
                &actor(),
                NewClient {
                    name: name.into(),
                    plan: plan.into(),
                    scopes: scopes.iter().map(|s| Scope::new(s).unwrap()).collect(),
                    sports: sports.iter().map(|s| Slug::new(s).unwrap()).collect(),
                    bookmakers: bookmakers.iter().map(|s| Slug::new(s).unwrap()).collect(),
                    ..NewClient::default()
                },
            )
            .await
            .unwrap()
    }

    /// Issues a key and waits until the gateway's replica has it.
    pub async fn key(&self, client: &str, expires_at: Option<Timestamp>) -> (String, ApiKey) {
        let (secret, material) = self.issuer.issue();
        let key = self
            .store
            .create_key(
                &actor(),
                client,
                NewKey {
                    material,
                    label: "test".into(),
                    expires_at,
                    restrictions: Default::default(),
                },
            )
            .await
            .unwrap();
        self.sync().await;
        (secret.expose().to_owned(), key)
    }

    /// Waits until the replica has caught up with the store: up to 15 s, longer than the
    /// slowest feed poll a test configures (10 s), because on a busy machine the change
    /// listener may connect after the first write and only the poll then sees it.
    pub async fn sync(&self) {
        let target = self.store.version().await.unwrap();
        for _ in 0..1500 {
            if self.gateway.gateway().replica.version() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("replica stuck below version {target}");
    }

    /// The node's `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        let resp = self.http.get(self.admin_url("/status")).send().await;
        let (code, _, doc) = status_json(resp.unwrap()).await;
        assert_eq!(code, 200, "{doc}");
        doc
    }

    /// An admin token for the admin API (read-write), in plaintext.
    pub async fn admin_token(&self) -> String {
        let format = keygate_core::KeyFormat::admin_token();
        let token = format.generate();
        let material = keygate_core::KeyMaterial {
            digest: keygate_core::Digester::plain().digest(token.expose()),
            hint: format.hint(&token),
        };
        self.store
            .create_admin_token(&actor(), "harness", false, material)
            .await
            .unwrap();
        token.expose().to_owned()
    }

    /// Creates a client through the admin API (`POST /v1/clients`) with `body`; the answer.
    pub async fn create_client_via_admin(&self, body: serde_json::Value) -> serde_json::Value {
        let token = self.admin_token().await;
        let resp = self
            .http
            .post(self.admin_url("/v1/clients"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }

    pub async fn set_state(&self, key: &ApiKey, state: KeyState) {
        self.store
            .set_key_state(&actor(), &key.id, state)
            .await
            .unwrap();
        self.sync().await;
    }
}

/// Status and parsed JSON body of a response.
pub async fn status_json(resp: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, ct, json)
}

/// A fresh schema in the test PostgreSQL, or `None` outside CI when none answers.
pub async fn postgres_schema() -> Option<String> {
    keygate_test::postgres_schema("kg_gw").await
}

/// Sends bytes as they are and returns the whole response text (for requests HTTP clients
/// would normalize or refuse to send).
pub async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
