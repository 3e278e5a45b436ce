//! One exit per request: every kind of exit of the gateway (infra, 406, emergency, whoami,
//! verify, forward-auth, the WebSocket token endpoint, proxying and each of its refusals, a
//! WebSocket upgrade and its login) writes exactly one access-log line and one metrics record.
//!
//! Its own test binary: the access log is read through a global tracing subscriber, and one
//! test at a time owns it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Harness;
use futures_util::{SinkExt, StreamExt};
use keygate_core::decision::Reason;
use keygate_server::metrics::Outcome;
use keygate_test::tokio_tungstenite::tungstenite::client::IntoClientRequest;
use keygate_test::tokio_tungstenite::tungstenite::Message;
use keygate_test::{tokio_tungstenite, WsUpstream};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One access-log line: its status and reason fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Line {
    status: u64,
    reason: String,
    route: String,
}

impl Visit for Line {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "status" {
            self.status = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "reason" => self.reason = value.to_owned(),
            "route" => self.route = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// Collects the `keygate::access` events.
#[derive(Clone, Default)]
struct AccessLog(Arc<Mutex<Vec<Line>>>);

impl<S: tracing::Subscriber> Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "keygate::access" {
            let mut line = Line::default();
            event.record(&mut line);
            self.0.lock().unwrap().push(line);
        }
    }
}

impl AccessLog {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn since(&self, n: usize) -> Vec<Line> {
        self.0.lock().unwrap()[n..].to_vec()
    }
}

const CONFIG: &str = r#"
[upstreams.live]
url = "{ws}"

[upstreams.dead]
url = "http://127.0.0.1:9"
connect_timeout = "300ms"
breaker = { failures = 1, window = "60s", open_for = "60s" }

[plans.pro]
features = ["websocket"]
limits = { per_minute = 1000 }

[[routes]]
name = "stream"
path = "/v1/stream"
upstream = "live"
ws = { mode = "handshake" }

[[routes]]
name = "login"
path = "/ws"
upstream = "live"
ws = { mode = "login_message" }

[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"

[[routes]]
name = "open"
path = "/open"
public = true

[[routes]]
name = "admin-only"
path = "/admin-only"
scopes = ["admin"]

[[routes]]
name = "tight"
path = "/tight"
limits = { per_minute = 1, by = "key" }

[[routes]]
name = "rest"
path = "/v1/{*rest}"

[profile.ws]
login_deadline = "300ms"
token = { path = "/v1/ws-token", ttl = "30s", param = "token" }
"#;

/// Every request counted in the metrics, whatever its route and outcome.
fn records(h: &Harness) -> u64 {
    let m = &h.gateway.gateway().metrics;
    let mut n = m.count(Outcome::Forwarded) + m.count(Outcome::Public) + m.count(Outcome::Local);
    for r in Reason::ALL {
        n += m.count(Outcome::Denied(r));
    }
    n
}

/// Runs one exit and checks that it wrote one access-log line (with `status` and `reason`)
/// and one metrics record. The exit's work is done when `exit` returns (an HTTP answer is
/// written after its record; a WebSocket refusal is closed after it).
async fn exactly_once<F, Fut>(
    h: &Harness,
    log: &AccessLog,
    what: &str,
    status: u16,
    reason: &str,
    exit: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (lines, counted) = (log.len(), records(h));
    exit().await;
    // A session's record may land just after the client saw its message; wait for it, then
    // make sure no second one follows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while log.len() == lines && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let new = log.since(lines);
    assert_eq!(new.len(), 1, "{what}: access-log lines {new:?}");
    assert_eq!(
        (new[0].status, new[0].reason.as_str()),
        (u64::from(status), reason),
        "{what}: {new:?}"
    );
    assert_eq!(records(h) - counted, 1, "{what}: metrics records");
}

async fn status_of(resp: reqwest::Response) -> u16 {
    let s = resp.status().as_u16();
    let _ = resp.bytes().await;
    s
}

use keygate_test::reqwest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_writes_one_access_line_and_one_metrics_record() {
    let log = AccessLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let up = WsUpstream::start().await;
    let h = Harness::start(&CONFIG.replace("{ws}", &up.url())).await;
    h.client("Acme", &["live"], &[], &[], "pro").await;
    let (key, _) = h.key("Acme", None).await;
    let http = &h.http;
    let get = |path: &str| http.get(h.url(path));
    let keyed = |path: &str| http.get(h.url(path)).header("X-API-Key", key.as_str());
    // Well-formed, never issued.
    let bogus = h.issuer.issue().0.expose().to_owned();

    exactly_once(&h, &log, "public infra", 200, "-", || async {
        assert_eq!(status_of(get("/health").send().await.unwrap()).await, 200);
    })
    .await;
    exactly_once(&h, &log, "406", 406, "not_acceptable", || async {
        let r = keyed("/v1/x")
            .header("Accept", "image/png")
            .send()
            .await
            .unwrap();
        assert_eq!(status_of(r).await, 406);
    })
    .await;
    exactly_once(&h, &log, "whoami", 200, "-", || async {
        assert_eq!(
            status_of(keyed("/v1/whoami").send().await.unwrap()).await,
            200
        );
    })
    .await;
    exactly_once(&h, &log, "whoami refused", 401, "missing_key", || async {
        assert_eq!(
            status_of(get("/v1/whoami").send().await.unwrap()).await,
            401
        );
    })
    .await;
    exactly_once(&h, &log, "verify", 200, "-", || async {
        let body = serde_json::json!({ "key": key, "path": "/admin-only" });
        let r = http
            .post(h.url("/v1/keys/verify"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let doc: serde_json::Value = r.json().await.unwrap();
        assert_eq!(doc["reason"], "scope_missing");
    })
    .await;
    exactly_once(
        &h,
        &log,
        "verify, not a question",
        400,
        "bad_request",
        || async {
            let r = http
                .post(h.url("/v1/keys/verify"))
                .body("{")
                .send()
                .await
                .unwrap();
            assert_eq!(status_of(r).await, 400);
        },
    )
    .await;
    exactly_once(
        &h,
        &log,
        "verify, wrong method",
        405,
        "method_not_allowed",
        || async {
            assert_eq!(
                status_of(get("/v1/keys/verify").send().await.unwrap()).await,
                405
            );
        },
    )
    .await;
    exactly_once(&h, &log, "forward-auth pass", 200, "-", || async {
        let r = http
            .get(h.url("/v1/auth/nginx"))
            .header("X-Original-URI", "/v1/anything")
            .header("X-API-Key", key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(status_of(r).await, 200);
    })
    .await;
    exactly_once(
        &h,
        &log,
        "forward-auth refusal",
        403,
        "scope_missing",
        || async {
            let r = http
                .get(h.url("/v1/auth/nginx"))
                .header("X-Original-URI", "/admin-only")
                .header("X-API-Key", key.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(status_of(r).await, 403);
        },
    )
    .await;
    exactly_once(&h, &log, "token", 200, "-", || async {
        let r = http
            .post(h.url("/v1/ws-token"))
            .header("X-API-Key", key.as_str());
        assert_eq!(status_of(r.send().await.unwrap()).await, 200);
    })
    .await;
    exactly_once(
        &h,
        &log,
        "token refused",
        405,
        "method_not_allowed",
        || async {
            assert_eq!(
                status_of(keyed("/v1/ws-token").send().await.unwrap()).await,
                405
            );
        },
    )
    .await;
    exactly_once(&h, &log, "forwarded", 200, "-", || async {
        assert_eq!(
            status_of(keyed("/v1/anything").send().await.unwrap()).await,
            200
        );
    })
    .await;
    exactly_once(&h, &log, "public route", 200, "-", || async {
        assert_eq!(status_of(get("/open").send().await.unwrap()).await, 200);
    })
    .await;
    exactly_once(&h, &log, "not found", 404, "not_found", || async {
        assert_eq!(status_of(get("/nowhere").send().await.unwrap()).await, 404);
    })
    .await;
    exactly_once(&h, &log, "dot segments", 400, "bad_request", || async {
        let r = common::raw_request(
            h.gateway.addr,
            "GET /v1/%2e%2e/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    })
    .await;
    exactly_once(&h, &log, "unknown key", 401, "unknown_key", || async {
        let r = get("/v1/x")
            .header("X-API-Key", &bogus)
            .send()
            .await
            .unwrap();
        assert_eq!(status_of(r).await, 401);
    })
    .await;
    exactly_once(&h, &log, "scope", 403, "scope_missing", || async {
        assert_eq!(
            status_of(keyed("/admin-only").send().await.unwrap()).await,
            403
        );
    })
    .await;
    exactly_once(
        &h,
        &log,
        "body too large",
        413,
        "payload_too_large",
        || async {
            let r = common::raw_request(
                h.gateway.addr,
                &format!(
                    "POST /v1/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
                 Content-Length: 999999999999\r\nConnection: close\r\n\r\n"
                ),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        },
    )
    .await;
    exactly_once(&h, &log, "limit passes", 200, "-", || async {
        assert_eq!(status_of(keyed("/tight").send().await.unwrap()).await, 200);
    })
    .await;
    exactly_once(&h, &log, "limited", 429, "rate_limited", || async {
        assert_eq!(status_of(keyed("/tight").send().await.unwrap()).await, 429);
    })
    .await;
    exactly_once(
        &h,
        &log,
        "upstream down",
        502,
        "upstream_unavailable",
        || async {
            assert_eq!(status_of(keyed("/dead").send().await.unwrap()).await, 502);
        },
    )
    .await;
    exactly_once(
        &h,
        &log,
        "breaker open",
        503,
        "upstream_unavailable",
        || async {
            assert_eq!(status_of(keyed("/dead").send().await.unwrap()).await, 503);
        },
    )
    .await;

    // WebSocket: a handshake-mode upgrade and its refusals are HTTP exits...
    let ws_url = |path: &str| format!("ws://{}{path}", h.gateway.addr);
    exactly_once(&h, &log, "upgrade", 101, "-", || async {
        let mut req = ws_url("/v1/stream").into_client_request().unwrap();
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
        let (mut c, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        c.close(None).await.unwrap();
    })
    .await;
    exactly_once(&h, &log, "upgrade refused", 401, "missing_key", || async {
        let err = tokio_tungstenite::connect_async(ws_url("/v1/stream"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
    })
    .await;
    exactly_once(&h, &log, "bad handshake", 426, "upgrade_required", || async {
        let r = common::raw_request(
            h.gateway.addr,
            &format!(
                "GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\
                 X-API-Key: {key}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    })
    .await;
    // ... a login-mode session's exit is its login's outcome, recorded once after the 101.
    exactly_once(&h, &log, "login", 101, "-", || async {
        let (mut c, _) = tokio_tungstenite::connect_async(ws_url("/ws"))
            .await
            .unwrap();
        let login = format!(r#"{{"type":"login","apiKey":"{key}"}}"#);
        c.send(Message::Text(login.into())).await.unwrap();
        let ok = c.next().await.unwrap().unwrap();
        assert!(ok.to_text().unwrap().contains("ok"), "{ok:?}");
        c.close(None).await.unwrap();
    })
    .await;
    exactly_once(&h, &log, "login refused", 101, "unknown_key", || async {
        let (mut c, _) = tokio_tungstenite::connect_async(ws_url("/ws"))
            .await
            .unwrap();
        let login = format!(r#"{{"type":"login","apiKey":"{bogus}"}}"#);
        c.send(Message::Text(login.into())).await.unwrap();
        while let Some(Ok(m)) = c.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    exactly_once(&h, &log, "login timeout", 101, "login_timeout", || async {
        let (mut c, _) = tokio_tungstenite::connect_async(ws_url("/ws"))
            .await
            .unwrap();
        let m = c.next().await.unwrap().unwrap();
        assert!(m.to_text().unwrap().contains("login_timeout"), "{m:?}");
    })
    .await;

    // Emergency mode refuses before anything else, once.
    h.store
        .set_emergency(&common::actor(), true, Some("maintenance"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !h.gateway.gateway().emergency.is_on() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exactly_once(&h, &log, "emergency", 503, "emergency", || async {
        assert_eq!(
            status_of(keyed("/v1/anything").send().await.unwrap()).await,
            503
        );
    })
    .await;
}
