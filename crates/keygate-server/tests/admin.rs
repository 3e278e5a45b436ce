//! The admin API end to end: the real router on 127.0.0.1:0, a real SQLite store, real HTTP.

mod common;

use std::sync::Arc;

use common::status_json;
use keygate_core::{Digester, Issuer, KeyFormat, KeyId, KeyMaterial, SystemClock, Timestamp};
use keygate_server::admin::{router, AdminState, STORE_UNAVAILABLE_DETAIL};
use keygate_server::gateway::Gateway;
use keygate_server::replica::Replica;
use keygate_server::Overrides;
use keygate_store::{Actor, OpenOptions, Store};
use keygate_test::reqwest::{self, Method};
use serde_json::{json, Value};

const FUTURE: &str = "2999-01-01T00:00:00Z";
/// The plans of the test deployment.
const PLANS: &str = r#"
[plans.free]
features = []
limits = { per_day = 200 }

[plans.pro]
features = ["live", "websocket"]
limits = { per_hour = 5500, burst = 50, by = "key" }

[plans.tiered]
features = ["live"]
limits = { per_day = 1000 }
bookmaker_selection = 1
delay = "90s"

[plans.tiered.sharing]
networks_per_hour = 5
action = "disable"
"#;
/// No body.
const NO: Value = Value::Null;

struct Admin {
    base: String,
    http: reqwest::Client,
    store: Store,
    issuer: Issuer,
    /// A full token named `ops`, and a read-only one named `viewer`.
    ops: String,
    viewer: String,
    _dir: tempfile::TempDir,
}

/// What a request may carry as its body.
enum Body {
    None,
    Json(Value),
    Raw(Option<&'static str>, Vec<u8>),
}

async fn admin_token(store: &Store, name: &str, read_only: bool) -> String {
    let format = KeyFormat::admin_token();
    let secret = format.generate();
    let material = KeyMaterial {
        digest: Digester::plain().digest(secret.expose()),
        hint: format.hint(&secret),
    };
    let actor = Actor("test:setup".into());
    store
        .create_admin_token(&actor, name, read_only, material)
        .await
        .unwrap();
    secret.expose().to_owned()
}

impl Admin {
    async fn start() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keygate.db").display().to_string();
        let store = Store::open(&db, OpenOptions::default()).await.unwrap();
        let overrides = Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let config = keygate_server::config::load(PLANS, "admin-test.toml", &overrides).unwrap();
        let issuer = config.issuer.clone();
        let gateway = Arc::new(Gateway::new(
            config,
            Arc::new(Replica::new()),
            keygate_limits::Limits::local(),
            Arc::new(SystemClock),
        ));
        let app = router(AdminState {
            live: keygate_server::gateway::Live::new(gateway),
            store: store.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Admin {
            base: format!("http://{addr}"),
            http: keygate_test::http_client(),
            ops: admin_token(&store, "ops", false).await,
            viewer: admin_token(&store, "viewer", true).await,
            store,
            issuer,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> (u16, String, Value) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(Some(ct), bytes) => req.header("content-type", ct).body(bytes),
            Body::Raw(None, bytes) => req.body(bytes),
        };
        status_json(req.send().await.unwrap()).await
    }

    /// A request with the `ops` token (`"METHOD PATH"`, body [`NO`] for none), asserting its
    /// status.
    async fn ops(&self, want: u16, request: &str, body: Value) -> Value {
        let (method, path) = request.split_once(' ').unwrap();
        let body = if body.is_null() {
            Body::None
        } else {
            Body::Json(body)
        };
        let (status, _, json) = self.send(method, path, Some(&self.ops), body).await;
        assert_eq!(status, want, "{request}: {json}");
        json
    }

    async fn get(&self, path: &str) -> Value {
        self.ops(200, &format!("GET {path}"), NO).await
    }

    async fn client(&self, name: &str) -> Value {
        self.ops(201, "POST /v1/clients", json!({ "name": name }))
            .await
    }

    /// Issues a key for `client`; returns the answer with the plaintext.
    async fn key(&self, client: &str) -> Value {
        self.ops(201, "POST /v1/keys", json!({ "client": client }))
            .await
    }

    async fn version(&self) -> i64 {
        self.store.version().await.unwrap()
    }
}

/// Checks a problem document and returns it.
#[track_caller]
fn problem((status, content_type, body): (u16, String, Value), want: u16, code: &str) -> Value {
    assert_eq!(
        (status, body["code"].as_str()),
        (want, Some(code)),
        "{body}"
    );
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["status"], want);
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|d| d.ends_with('.')));
    body
}

fn names(page: &Value) -> Vec<&str> {
    let items = page["items"].as_array().unwrap();
    items.iter().map(|c| c["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn clients_can_be_created_listed_changed_and_disabled() {
    let a = Admin::start().await;
    let body = json!({
        "name": "Acme Sportsbook", "plan": "pro", "scopes": ["cs2:matches:read"],
        "sports": ["cs2"], "limits": { "rps": 100, "per_day": 10000 },
    });
    let created = a.ops(201, "POST /v1/clients", body).await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("cli_"));
    let expected = json!({
        "id": id, "name": "Acme Sportsbook", "plan": "pro", "scopes": ["cs2:matches:read"],
        "sports": ["cs2"], "bookmakers": [], "limits": { "rps": 100, "per_day": 10000 },
        "active": true, "created_at": created["created_at"], "updated_at": created["updated_at"],
    });
    assert_eq!(created, expected);
    assert_eq!(a.get("/v1/clients/Acme%20Sportsbook").await, created);
    assert_eq!(a.get(&format!("/v1/clients/{id}")).await, created);

    // null returns a limit to the plan's value; absent fields stay as they are.
    let patch = json!({ "limits": { "rps": null, "per_hour": 500 }, "bookmakers": ["bet365"] });
    let updated = a.ops(200, &format!("PATCH /v1/clients/{id}"), patch).await;
    let limits = json!({ "per_hour": 500, "per_day": 10000 });
    assert_eq!(updated["limits"], limits);
    assert_eq!(updated["bookmakers"], json!(["bet365"]));
    assert_eq!(updated["sports"], json!(["cs2"]));
    assert_eq!(updated["plan"], "pro");

    let path = "/v1/clients/Acme%20Sportsbook";
    let disabled = a.ops(200, &format!("POST {path}/disable"), NO).await;
    assert_eq!(disabled["active"], false);
    a.client("Other").await;
    let inactive = a.get("/v1/clients?active=false").await;
    assert_eq!(names(&inactive), ["Acme Sportsbook"]);
    assert_eq!(
        names(&a.get("/v1/clients?plan=pro").await),
        ["Acme Sportsbook"]
    );
    let enabled = a.ops(200, &format!("POST {path}/enable"), NO).await;
    assert_eq!(enabled["active"], true);

    let audit = a.get("/v1/audit?actor=admin:ops").await;
    let items = audit["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    let newest_first = ["enable", "create", "disable", "update", "create"];
    assert_eq!(actions, newest_first.map(|a| format!("client.{a}")));
    assert!(items.iter().all(|e| e["actor"] == "admin:ops"));
    assert_eq!(audit["next_before"], NO);
}

fn ids(page: &Value) -> Vec<Value> {
    let items = page["items"].as_array().unwrap();
    items.iter().map(|k| k["id"].clone()).collect()
}

#[tokio::test]
async fn listings_page_with_cursors() {
    let a = Admin::start().await;
    for name in ["c1", "c2", "c3"] {
        a.client(name).await;
    }
    let first = a.get("/v1/clients?limit=2").await;
    assert_eq!(
        (names(&first), &first["next_after"]),
        (vec!["c1", "c2"], &json!("c2"))
    );
    let last = a.get("/v1/clients?limit=2&after=c2").await;
    assert_eq!((names(&last), &last["next_after"]), (vec!["c3"], &NO));

    let made = [a.key("c1").await, a.key("c1").await, a.key("c2").await];
    // Keys list by creation time, then id: keys made in one millisecond sort by id.
    let mut keys: Vec<(Value, Value)> = made
        .iter()
        .map(|k| (k["created_at"].clone(), k["id"].clone()))
        .collect();
    keys.sort_by_key(|(at, id)| (instant(at), id.as_str().unwrap().to_owned()));
    let keys: Vec<Value> = keys.into_iter().map(|(_, id)| id).collect();
    let first = a.get("/v1/keys?limit=2").await;
    assert_eq!(
        (ids(&first), &first["next_after"]),
        (keys[..2].to_vec(), &keys[1])
    );
    let cursor = keys[1].as_str().unwrap();
    let rest = a.get(&format!("/v1/keys?limit=2&after={cursor}")).await;
    assert_eq!((ids(&rest), &rest["next_after"]), (keys[2..].to_vec(), &NO));
    let c1 = ids(&a.get("/v1/keys?client=c1").await);
    assert!(c1.len() == 2 && c1.iter().all(|id| made[..2].iter().any(|k| &k["id"] == id)));

    let audit = a.get("/v1/audit?limit=2").await;
    let cursor = audit["next_before"].as_i64().unwrap();
    assert_eq!(audit["items"][1]["id"], cursor);
    let older = a.get(&format!("/v1/audit?limit=2&before={cursor}")).await;
    assert!(older["items"][0]["id"].as_i64().unwrap() < cursor);
}

fn instant(v: &Value) -> i64 {
    Timestamp::parse_rfc3339(v.as_str().unwrap())
        .unwrap()
        .as_millis()
}

#[tokio::test]
async fn keys_are_shown_once_and_follow_their_lifecycle() {
    let a = Admin::start().await;
    let client = a.client("Acme").await;
    let body = json!({ "client": "Acme", "label": "prod", "expires_at": FUTURE });
    let created = a.ops(201, "POST /v1/keys", body).await;
    let plaintext = created["key"].as_str().unwrap().to_owned();
    assert_eq!(a.issuer.format.check(&plaintext), Ok(()));
    let id = KeyId::parse(created["id"].as_str().unwrap()).unwrap();
    let stored = a.store.key(&id).await.unwrap();
    assert_eq!(stored.digest, a.issuer.digester.digest(&plaintext));
    let expected = json!({
        "id": id, "key": plaintext, "hint": stored.hint, "client": "Acme",
        "client_id": client["id"], "label": "prod", "state": "active",
        "expires_at": FUTURE, "created_at": stored.created_at,
    });
    assert_eq!(created, expected);
    // Never again: not in show, list or audit.
    let path = format!("/v1/keys/{id}");
    for page in [&path, "/v1/keys", "/v1/audit"] {
        let body = a.get(page).await.to_string();
        assert!(!body.contains(&plaintext), "{page} leaks the key");
    }
    let shown = a.get(&path).await;
    assert_eq!((shown.get("key"), &shown["hint"]), (None, &created["hint"]));

    let k = a.ops(200, &format!("POST {path}/disable"), NO).await;
    assert_eq!(k["state"], "disabled");
    let k = a.ops(200, &format!("POST {path}/enable"), NO).await;
    assert_eq!(k["state"], "active");
    let expiry = format!("PUT {path}/expiry");
    let k = a.ops(200, &expiry, json!({ "expires_at": null })).await;
    assert_eq!(k["expires_at"], NO);
    let k = a.ops(200, &expiry, json!({ "expires_at": FUTURE })).await;
    assert_eq!(k["expires_at"], FUTURE);

    // Rotation with grace: the old key keeps working for an hour.
    let grace = json!({ "grace": "1h" });
    let rotated = a.ops(201, &format!("POST {path}/rotate"), grace).await;
    assert_eq!(
        (&rotated["replaces"], &rotated["client"]),
        (&json!(id), &json!("Acme"))
    );
    assert!(a
        .issuer
        .format
        .check(rotated["key"].as_str().unwrap())
        .is_ok());
    assert_ne!(rotated["key"], created["key"]);
    let granted = instant(&rotated["old_key_valid_until"]) - instant(&rotated["created_at"]);
    assert_eq!(granted, 3_600_000);
    let old = a.get(&path).await;
    assert_eq!(
        (&old["state"], &old["replaced_by"]),
        (&json!("active"), &rotated["id"])
    );

    // Without a body the old key is revoked at once.
    let new_path = format!("/v1/keys/{}", rotated["id"].as_str().unwrap());
    let again = a.ops(201, &format!("POST {new_path}/rotate"), NO).await;
    assert_eq!(again["old_key_valid_until"], again["created_at"]);
    assert_eq!(a.get(&new_path).await["state"], "revoked");

    let k = a.ops(200, &format!("POST {path}/revoke"), NO).await;
    assert_eq!(k["state"], "revoked");
    let revoked = a.get("/v1/keys?state=revoked").await;
    let mut revoked = ids(&revoked);
    revoked.sort_by_key(|v| v.to_string());
    let mut want = [json!(id), rotated["id"].clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(revoked, want);
    let audit = a.get("/v1/audit?action=key.").await;
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 8); // create, disable, enable, 2 expiry, 2 rotate, revoke
    assert!(entries.iter().all(|e| e["actor"] == "admin:ops"));
}

/// Requests a read-only token may not make: `METHOD PATH | BODY` per line.
const WRITES: &str = r#"
POST /v1/clients | {"name": "New"}
PATCH /v1/clients/Acme | {"plan": "gold"}
POST /v1/clients/Acme/disable | -
POST /v1/clients/Acme/enable | -
POST /v1/keys | {"client": "Acme"}
POST /v1/keys/{key}/rotate | -
POST /v1/keys/{key}/revoke | -
POST /v1/keys/{key}/disable | -
POST /v1/keys/{key}/enable | -
PUT /v1/keys/{key}/expiry | {"expires_at": null}
PATCH /v1/keys/{key} | {"metadata": {"team": "odds"}}
PUT /v1/emergency | {"on": true}
POST /v1/webhooks/deliveries/1/replay | -
"#;

/// Refused requests: `METHOD PATH | BODY | STATUS CODE [FIELD]`. A body is `-` (none), JSON
/// (sent as `application/json`), or `raw:`, `noct:` or `text:` followed by bytes sent with
/// `application/json`, no content type or `text/plain`.
const REFUSED: &str = r#"
POST /v1/clients | raw:{"name": | 400 malformed_json
POST /v1/clients | raw:{"name": "x"} trailing | 400 malformed_json
POST /v1/clients | {"name": "x", "colour": "red"} | 422 invalid_body
POST /v1/clients | {"name": 5} | 422 invalid_body
POST /v1/clients | {"name": "x", "limits": {"rpm": 1}} | 422 invalid_body
PUT /v1/keys/{key}/expiry | {} | 422 invalid_body
POST /v1/clients | noct:{"name": "x"} | 415 unsupported_media_type
POST /v1/clients | text:{"name": "x"} | 415 unsupported_media_type
GET /v1/keys/nope | - | 400 invalid_id
POST /v1/keys/key_0123456789ABCDEF/revoke | - | 400 invalid_id
GET /v1/keys?after=cli_0123456789abcdef | - | 400 invalid_id
GET /v1/clients?colour=red | - | 400 invalid_query
POST /v1/clients | {"name": " x"} | 422 invalid_value name
POST /v1/clients | {"name": "x", "plan": "pro plan"} | 422 invalid_value plan
POST /v1/clients | {"name": "x", "scopes": ["cs2 matches"]} | 422 invalid_value scopes
POST /v1/clients | {"name": "x", "sports": ["CS2"]} | 422 invalid_value sports
POST /v1/clients | {"name": "x", "bookmakers": [""]} | 422 invalid_value bookmakers
POST /v1/clients | {"name": "x", "limits": {"rps": 0}} | 422 invalid_value limits.rps
PATCH /v1/clients/Acme | {"limits": {"per_day": -5}} | 422 invalid_value limits.per_day
PATCH /v1/clients/Acme | {"limits": {"per_hour": 1.5}} | 422 invalid_value limits.per_hour
POST /v1/keys | {"client": "Acme", "label": "a\nb"} | 422 invalid_value label
PUT /v1/keys/{key}/expiry | {"expires_at": "tomorrow"} | 422 invalid_value expires_at
POST /v1/keys/{key}/rotate | {"grace": "30"} | 422 invalid_value grace
GET /v1/clients?limit=0 | - | 422 invalid_value limit
GET /v1/keys?limit=1001 | - | 422 invalid_value limit
GET /v1/keys?state=lost | - | 422 invalid_value state
GET /v1/clients?active=yes | - | 422 invalid_value active
GET /v1/audit?before=-1 | - | 422 invalid_value before
PUT /v1/emergency | {} | 422 invalid_body
PUT /v1/emergency | {"on": "yes"} | 422 invalid_body
PUT /v1/emergency | {"on": true, "why": "x"} | 422 invalid_body
PUT /v1/emergency | {"on": true, "message": ""} | 422 invalid_value message
PUT /v1/emergency | {"on": true, "message": "a\u0000b"} | 422 invalid_value message
GET /v1/plans/gold | - | 404 plan_not_found
GET /v1/clients/nobody/usage | - | 404 client_not_found
GET /v1/clients/Acme/usage?from=2026-13-01 | - | 422 invalid_value from
GET /v1/clients/Acme/usage?to=yesterday | - | 422 invalid_value to
GET /v1/clients/Acme/usage?from=2026-11-02&to=2026-11-01 | - | 422 invalid_value from
GET /v1/clients/Acme/usage?from=2020-01-01&to=2026-01-01 | - | 422 invalid_value from
GET /v1/clients/Acme/usage?days=3 | - | 400 invalid_query
GET /v1/clients/nobody | - | 404 client_not_found
PATCH /v1/clients/nobody | {"plan": "gold"} | 404 client_not_found
POST /v1/clients/nobody/disable | - | 404 client_not_found
POST /v1/keys | {"client": "nobody"} | 404 client_not_found
GET /v1/keys?client=nobody | - | 404 client_not_found
GET /v1/webhooks/deliveries/abc | - | 400 invalid_id
GET /v1/webhooks/deliveries/999 | - | 404 delivery_not_found
POST /v1/webhooks/deliveries/999/replay | - | 404 delivery_not_found
GET /v1/webhooks/deliveries?state=lost | - | 422 invalid_value state
GET /v1/webhooks/deliveries?colour=red | - | 400 invalid_query
GET /v1/keys/key_0000000000000000 | - | 404 key_not_found
POST /v1/keys/key_0000000000000000/rotate | - | 404 key_not_found
POST /v1/clients | {"name": "Acme"} | 409 duplicate_client
PATCH /v1/clients/Other | {"name": "Acme"} | 409 duplicate_client
POST /v1/keys/{gone}/rotate | - | 409 key_revoked
POST /v1/keys/{gone}/enable | - | 409 key_revoked
PUT /v1/keys/{gone}/expiry | {"expires_at": "2999-01-01T00:00:00Z"} | 409 key_revoked
PUT /v1/keys/{key}/expiry | {"expires_at": "2000-01-01T00:00:00Z"} | 422 expiry_in_past
POST /v1/keys | {"client": "Acme", "expires_at": "2000-01-01T00:00:00Z"} | 422 expiry_in_past
GET /v1/nothing | - | 404 not_found
GET / | - | 404 not_found
DELETE /v1/keys/{key} | - | 405 method_not_allowed
DELETE /v1/clients/Nobody | - | 404 client_not_found
GET /v1/keys/{key}/revoke | - | 405 method_not_allowed
PATCH /v1/keys/{key} | {} | 422 invalid_value body
PATCH /v1/keys/{key} | {"colour": "red"} | 422 invalid_body
PATCH /v1/keys/{key} | {"allowed_cidrs": ["10.0.0.0/33"]} | 422 invalid_value allowed_cidrs
PATCH /v1/keys/{key} | {"allowed_cidrs": ["0.0.0.0/0"]} | 422 invalid_value allowed_cidrs
PATCH /v1/keys/{key} | {"scopes": ["cs2 matches"]} | 422 invalid_value scopes
PATCH /v1/keys/{key} | {"external_id": ""} | 422 invalid_value external_id
PATCH /v1/keys/{key} | {"metadata": {"a b": "c"}} | 422 invalid_value metadata
PATCH /v1/keys/{gone} | {"external_id": "crm-1"} | 409 key_revoked
PATCH /v1/keys/key_0000000000000000 | {"external_id": "crm-1"} | 404 key_not_found
POST /v1/keys | {"client": "Acme", "scopes": ["never:granted"]} | 422 invalid_value scopes
POST /v1/keys | {"client": "Acme", "allowed_cidrs": "10.0.0.0/8"} | 422 invalid_body
GET /v1/keys?external_id=a%20b | - | 422 invalid_value external_id
"#;

/// Parses one table line into its method, path (placeholders filled in) and body, and the rest.
fn request<'l>(line: &'l str, fill: &[(&str, &str)]) -> (&'l str, String, Body, Option<&'l str>) {
    let mut parts = line.split(" | ");
    let (method, path) = parts.next().unwrap().split_once(' ').unwrap();
    let mut path = path.to_owned();
    for (from, to) in fill {
        path = path.replace(from, to);
    }
    let body = match parts.next().unwrap() {
        "-" => Body::None,
        b if b.starts_with("raw:") => Body::Raw(Some("application/json"), b[4..].into()),
        b if b.starts_with("noct:") => Body::Raw(None, b[5..].into()),
        b if b.starts_with("text:") => Body::Raw(Some("text/plain"), b[5..].into()),
        b => Body::Json(serde_json::from_str(b).unwrap()),
    };
    (method, path, body, parts.next())
}

#[tokio::test]
async fn a_read_only_token_reads_but_never_writes() {
    let a = Admin::start().await;
    a.client("Acme").await;
    let key = a.key("Acme").await["id"].as_str().unwrap().to_owned();
    let show = format!("/v1/keys/{key}");
    for path in [
        "/v1/clients",
        "/v1/clients/Acme",
        "/v1/keys",
        &show,
        "/v1/audit",
        "/v1/plans",
        "/v1/plans/pro",
        "/v1/emergency",
        "/v1/clients/Acme/usage",
        "/v1/webhooks",
        "/v1/webhooks/deliveries",
    ] {
        let (status, _, body) = a.send("GET", path, Some(&a.viewer), Body::None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let before = a.version().await;
    for line in WRITES.trim().lines() {
        let (method, path, body, _) = request(line, &[("{key}", &key)]);
        let resp = a.send(method, &path, Some(&a.viewer), body).await;
        problem(resp, 403, "read_only_token");
    }
    assert_eq!(a.version().await, before);
}

#[tokio::test]
async fn requests_without_a_live_token_are_refused() {
    let a = Admin::start().await;
    let revoked = admin_token(&a.store, "former", false).await;
    let setup = Actor("test:setup".into());
    a.store.revoke_admin_token(&setup, "former").await.unwrap();
    let unknown = KeyFormat::admin_token().generate().expose().to_owned();
    let before = a.version().await;
    for method in ["GET", "POST"] {
        let resp = a.send(method, "/v1/clients", None, Body::None).await;
        problem(resp, 401, "missing_token");
        for (token, code) in [
            ("kg_notanadmintoken", "malformed_token"),
            (unknown.as_str(), "unknown_token"),
            (revoked.as_str(), "unknown_token"),
        ] {
            let body = Body::Json(json!({ "name": "Sneaky" }));
            let resp = a.send(method, "/v1/clients", Some(token), body).await;
            assert!(!resp.2.to_string().contains(token), "the token is echoed");
            problem(resp, 401, code);
        }
    }
    let url = format!("{}/v1/clients", a.base);
    let resp = a.http.get(url).basic_auth("ops", Some(&a.ops)).send().await;
    let resp = resp.unwrap();
    let challenge = &resp.headers()["www-authenticate"];
    assert_eq!(challenge, "Bearer realm=\"keygate-admin\"");
    problem(status_json(resp).await, 401, "malformed_token");
    assert_eq!(a.version().await, before);
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_changes_nothing() {
    let a = Admin::start().await;
    a.client("Acme").await;
    a.client("Other").await;
    let key = a.key("Acme").await["id"].as_str().unwrap().to_owned();
    let gone = a.key("Acme").await["id"].as_str().unwrap().to_owned();
    a.ops(200, &format!("POST /v1/keys/{gone}/revoke"), NO)
        .await;
    let client_before = a.get("/v1/clients/Acme").await;
    let key_before = a.get(&format!("/v1/keys/{key}")).await;
    let before = a.version().await;

    let fill = [("{key}", key.as_str()), ("{gone}", gone.as_str())];
    for line in REFUSED.trim().lines() {
        let (method, path, body, expect) = request(line, &fill);
        let mut expect = expect.unwrap().split(' ');
        let status: u16 = expect.next().unwrap().parse().unwrap();
        let (code, field) = (expect.next().unwrap(), expect.next());
        let p = problem(
            a.send(method, &path, Some(&a.ops), body).await,
            status,
            code,
        );
        assert_eq!(p["field"].as_str(), field, "{line}: {p}");
    }
    // Every refusal above is one the OpenAPI document lists for its operation.
    let (_, _, doc) = a.send("GET", "/openapi.json", None, Body::None).await;
    for line in REFUSED.trim().lines() {
        let (method, path, _, expect) = request(line, &fill);
        let status = expect.unwrap().split(' ').next().unwrap();
        let path = path.split('?').next().unwrap();
        let Some(template) = template_of(path) else {
            continue; // no such route: the router's 404
        };
        let op = &doc["paths"][template][method.to_lowercase()];
        if op.is_null() {
            continue; // the router's 405
        }
        assert!(
            op["responses"][status].is_object(),
            "{method} {template} answers {status}, which the document does not list"
        );
    }
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(70 * 1024));
    let body = Body::Raw(Some("application/json"), huge.into_bytes());
    let resp = a.send("POST", "/v1/clients", Some(&a.ops), body).await;
    problem(resp, 413, "body_too_large");

    assert_eq!(a.version().await, before);
    assert_eq!(a.get("/v1/clients/Acme").await, client_before);
    assert_eq!(a.get(&format!("/v1/keys/{key}")).await, key_before);
    assert_eq!(names(&a.get("/v1/clients").await), ["Acme", "Other"]);
}

#[tokio::test]
async fn a_store_outage_is_a_503_not_a_500() {
    let a = Admin::start().await;
    a.client("Acme").await;
    a.store.close().await;
    for (method, path, body) in [
        ("GET", "/v1/clients", Body::None),
        ("POST", "/v1/clients", Body::Json(json!({ "name": "New" }))),
    ] {
        let resp = a.send(method, path, Some(&a.ops), body).await;
        let p = problem(resp, 503, "store_unavailable");
        assert_eq!(p["detail"], STORE_UNAVAILABLE_DETAIL);
    }
}

/// Every admin route, as registered in `admin::router` (`crates/keygate-server/src/admin/mod.rs`).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/clients"),
    ("get", "/v1/clients"),
    ("get", "/v1/clients/{client}"),
    ("patch", "/v1/clients/{client}"),
    ("post", "/v1/clients/{client}/disable"),
    ("post", "/v1/clients/{client}/enable"),
    ("delete", "/v1/clients/{client}"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("get", "/v1/keys/{id}"),
    ("patch", "/v1/keys/{id}"),
    ("post", "/v1/keys/{id}/rotate"),
    ("post", "/v1/keys/{id}/revoke"),
    ("post", "/v1/keys/{id}/disable"),
    ("post", "/v1/keys/{id}/enable"),
    ("put", "/v1/keys/{id}/expiry"),
    ("get", "/v1/keys/suspected"),
    ("get", "/v1/clients/{client}/usage"),
    ("get", "/v1/clients/{client}/quota"),
    ("post", "/v1/clients/{client}/quota"),
    ("get", "/v1/analytics"),
    ("get", "/v1/analytics/latency"),
    ("get", "/v1/analytics/websocket"),
    ("get", "/v1/plans"),
    ("get", "/v1/plans/{name}"),
    ("get", "/v1/emergency"),
    ("put", "/v1/emergency"),
    ("post", "/v1/suspensions"),
    ("get", "/v1/suspensions"),
    ("get", "/v1/suspensions/{id}"),
    ("delete", "/v1/suspensions/{id}"),
    ("get", "/v1/audit"),
    ("post", "/v1/clients/{client}/amqp"),
    ("get", "/v1/clients/{client}/amqp"),
    ("post", "/v1/clients/{client}/amqp/rotate"),
    ("post", "/v1/clients/{client}/amqp/revoke"),
    ("get", "/v1/amqp/drift"),
    ("post", "/v1/amqp/reconcile"),
    ("post", "/v1/reload"),
    ("post", "/v1/clients/{client}/portal/invite"),
    ("get", "/v1/webhooks"),
    ("get", "/v1/webhooks/deliveries"),
    ("get", "/v1/webhooks/deliveries/{id}"),
    ("post", "/v1/webhooks/deliveries/{id}/replay"),
];

/// The route template a concrete path falls under (`/v1/keys/key_…` → `/v1/keys/{id}`).
fn template_of(path: &str) -> Option<&'static str> {
    let want: Vec<&str> = path.split('/').collect();
    ROUTES.iter().map(|(_, t)| *t).find(|t| {
        let have: Vec<&str> = t.split('/').collect();
        have.len() == want.len()
            && have
                .iter()
                .zip(&want)
                .all(|(h, w)| h.starts_with('{') || h == w)
    })
}

/// The (method, path) pairs of the `.route(...)` calls in the router's source, so [`ROUTES`]
/// cannot silently fall behind a new route.
fn registered_routes() -> Vec<(String, String)> {
    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    let source = include_str!("../src/admin/mod.rs");
    let body = source
        .split_once("pub fn router(")
        .unwrap()
        .1
        .split_once(".method_not_allowed_fallback")
        .unwrap()
        .0;
    let mut found = Vec::new();
    for call in body.split(".route(").skip(1) {
        let path = call.split('"').nth(1).unwrap();
        let rest = &call[call.find(',').unwrap()..];
        for method in METHODS {
            let mut from = 0;
            while let Some(at) = rest[from..].find(&format!("{method}(")) {
                let at = from + at;
                let before = rest[..at].chars().last().unwrap();
                if matches!(before, ' ' | '.' | '(' | ',' | '\n') {
                    found.push((method.to_owned(), path.to_owned()));
                }
                from = at + method.len();
            }
        }
    }
    found
}

#[test]
fn the_route_list_mirrors_the_router() {
    let mut registered = registered_routes();
    let mut listed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    registered.sort();
    listed.sort();
    assert_eq!(registered, listed);
}

/// The property names of a schema in the document's components.
fn properties<'d>(doc: &'d Value, schema: &str) -> Vec<&'d str> {
    let mut names: Vec<&str> = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"))
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

/// The field names of a JSON object the API answered.
fn fields(v: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_without_a_token() {
    let a = Admin::start().await;
    let (status, content_type, doc) = a.send("GET", "/openapi.json", None, Body::None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(content_type, "application/json");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "keygate admin API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");

    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if op.get("responses").is_some() {
                documented.push((method.as_str(), path.as_str()));
            }
        }
    }
    for &(method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert_eq!(op["security"], json!([{ "bearer": [] }]), "{method} {path}");
        assert!(
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|s| s.starts_with('2')),
            "{method} {path} has no success response"
        );
        for status in ["401", "503"] {
            assert_eq!(
                op["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path} {status}"
            );
        }
        for param in path
            .split('{')
            .skip(1)
            .map(|p| p.split('}').next().unwrap())
        {
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == param && p["in"] == "path"),
                "{method} {path} does not describe `{param}`"
            );
        }
    }
    documented.sort_unstable();
    let mut routes = ROUTES.iter().map(|&(m, p)| (m, p)).collect::<Vec<_>>();
    routes.sort_unstable();
    assert_eq!(
        documented, routes,
        "the document has operations the router lacks"
    );

    // The schemas name exactly the fields the API answers with.
    a.client("Acme").await;
    let client = a.get("/v1/clients/Acme").await;
    // `parent` and `metadata` appear only on child accounts and accounts with profile fields.
    let mut always = properties(&doc, "Client");
    always.retain(|&f| f != "parent" && f != "metadata");
    assert_eq!(fields(&client), always);
    // A key's restrictions appear only when set.
    let unrestricted = |name: &str| {
        let mut f = properties(&doc, name);
        f.retain(|f| !["scopes", "allowed_cidrs", "metadata", "external_id"].contains(f));
        f
    };
    let issued = a.key("Acme").await;
    assert_eq!(fields(&issued), unrestricted("IssuedKey"));
    let id = issued["id"].as_str().unwrap();
    assert_eq!(
        fields(&a.get(&format!("/v1/keys/{id}")).await),
        unrestricted("ApiKey")
    );
    let restricted = a
        .ops(
            200,
            &format!("PATCH /v1/keys/{id}"),
            json!({ "scopes": [], "allowed_cidrs": ["10.0.0.0/8"], "metadata": {"a": "b"}, "external_id": "x" }),
        )
        .await;
    assert_eq!(fields(&restricted), properties(&doc, "ApiKey"));
    a.ops(
        200,
        &format!("PATCH /v1/keys/{id}"),
        json!({ "scopes": null, "allowed_cidrs": null, "metadata": null, "external_id": null }),
    )
    .await;
    let rotated = a
        .ops(
            201,
            &format!("POST /v1/keys/{id}/rotate"),
            json!({ "grace": "1h" }),
        )
        .await;
    assert_eq!(fields(&rotated), unrestricted("RotatedKey"));
    let audit = a.get("/v1/audit").await;
    assert_eq!(fields(&audit), properties(&doc, "AuditPage"));
    assert_eq!(fields(&audit["items"][0]), properties(&doc, "AuditEntry"));
    assert_eq!(
        fields(&a.get("/v1/clients").await),
        properties(&doc, "ClientPage")
    );
    assert_eq!(
        fields(&a.get("/v1/keys").await),
        properties(&doc, "KeyPage")
    );
    let plans = a.get("/v1/plans").await;
    assert_eq!(fields(&plans), properties(&doc, "PlanList"));
    // A plan's bookmaker selection, sharing detection and delay appear only when set.
    let mut plain = properties(&doc, "Plan");
    plain.retain(|f| !["bookmaker_selection", "sharing", "delay_seconds"].contains(f));
    assert_eq!(fields(&plans["items"][0]), plain);
    let tiered = &plans["items"][2];
    assert_eq!(tiered["name"], "tiered");
    assert_eq!(fields(tiered), properties(&doc, "Plan"));
    assert_eq!(fields(&tiered["sharing"]), properties(&doc, "PlanSharing"));
    let usage = a.get("/v1/clients/Acme/usage").await;
    assert_eq!(fields(&usage), properties(&doc, "Usage"));
    assert_eq!(
        fields(&a.get("/v1/analytics").await),
        properties(&doc, "Analytics")
    );
    assert_eq!(
        fields(&a.get("/v1/analytics/latency").await),
        properties(&doc, "Latency")
    );
    assert_eq!(
        fields(&a.get("/v1/analytics/websocket").await),
        properties(&doc, "WsActivity")
    );
    assert_eq!(
        fields(&a.get("/v1/emergency").await),
        properties(&doc, "EmergencyState")
    );
    // A suspension names one target: the other three are absent.
    let made = a
        .ops(201, "POST /v1/suspensions", json!({ "sport": "cs2" }))
        .await;
    let mut one_target = properties(&doc, "Suspension");
    one_target.retain(|&f| !["scope", "bookmaker", "route"].contains(&f));
    assert_eq!(fields(&made), one_target);
    let id = made["id"].as_str().unwrap();
    assert_eq!(
        fields(&a.get(&format!("/v1/suspensions/{id}")).await),
        one_target
    );
    let missing = a
        .send("GET", "/v1/clients/Nobody", Some(&a.ops), Body::None)
        .await;
    let mut problem_fields = fields(&missing.2);
    problem_fields.push("field");
    problem_fields.sort_unstable();
    assert_eq!(problem_fields, properties(&doc, "Problem"));
}

/// A create or rotate with an `Idempotency-Key`, as the given token.
async fn issue_once(
    a: &Admin,
    token: &str,
    path: &str,
    idempotency: &str,
    body: Value,
) -> (u16, Option<String>, Value) {
    let resp = a
        .http
        .post(format!("{}{path}", a.base))
        .bearer_auth(token)
        .header("idempotency-key", idempotency)
        .json(&body)
        .send()
        .await
        .unwrap();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, _, json) = status_json(resp).await;
    (status, replayed, json)
}

#[tokio::test]
async fn a_retry_under_an_idempotency_key_gets_the_first_answer_and_issues_nothing() {
    let a = Admin::start().await;
    a.client("Acme").await;
    let second_writer = admin_token(&a.store, "billing", false).await;
    let body = json!({ "client": "Acme", "label": "prod" });

    let (status, replayed, first) =
        issue_once(&a, &a.ops, "/v1/keys", "order-4711", body.clone()).await;
    assert_eq!((status, replayed), (201, None), "{first}");
    let plaintext = first["key"].as_str().unwrap().to_owned();
    let v1 = a.version().await;
    for _ in 0..3 {
        let (status, replayed, again) =
            issue_once(&a, &a.ops, "/v1/keys", "order-4711", body.clone()).await;
        assert_eq!((status, replayed.as_deref()), (201, Some("true")));
        assert_eq!(again, first, "the same key, shown again to the same caller");
    }
    assert_eq!(a.version().await, v1, "a replay changes nothing");
    let keys = a.get("/v1/keys").await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);

    // The same idempotency key with another request is refused, and issues nothing.
    let other = json!({ "client": "Acme", "label": "staging" });
    let (status, _, p) = issue_once(&a, &a.ops, "/v1/keys", "order-4711", other).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Records are per admin token: another token's identical key is a new request.
    let (status, replayed, theirs) =
        issue_once(&a, &second_writer, "/v1/keys", "order-4711", body.clone()).await;
    assert_eq!((status, replayed), (201, None));
    assert_ne!(theirs["key"], first["key"]);

    // Malformed keys are refused before anything happens.
    let before = a.version().await;
    for bad in ["", &"x".repeat(256), "two words", "caf\u{e9}"] {
        let resp = a
            .http
            .post(format!("{}/v1/keys", a.base))
            .bearer_auth(&a.ops)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        problem(status_json(resp).await, 400, "invalid_idempotency_key");
    }
    assert_eq!(a.version().await, before);

    // Rotation: a retry returns the first rotation's new key and rotates nothing more.
    let id = first["id"].as_str().unwrap();
    let path = format!("/v1/keys/{id}/rotate");
    let (status, _, rotated) =
        issue_once(&a, &a.ops, &path, "rotate-1", json!({ "grace": "1h" })).await;
    assert_eq!(status, 201, "{rotated}");
    let (status, replayed, again) =
        issue_once(&a, &a.ops, &path, "rotate-1", json!({ "grace": "1h" })).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, rotated);
    let rotations = a.get("/v1/audit?action=key.rotate").await;
    assert_eq!(rotations["items"].as_array().unwrap().len(), 1);

    // The store holds the first answers sealed: no plaintext key in the database file.
    let db = std::fs::read(a._dir.path().join("keygate.db")).unwrap();
    let wal = std::fs::read(a._dir.path().join("keygate.db-wal")).unwrap_or_default();
    for secret in [&plaintext, rotated["key"].as_str().unwrap()] {
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a plaintext key is stored"
            );
        }
    }
}

#[tokio::test]
async fn plans_usage_and_emergency_mode() {
    let a = Admin::start().await;
    let acme = a.client("Acme").await;

    let plans = a.get("/v1/plans").await;
    assert_eq!(
        plans,
        json!({ "items": [
            { "name": "free", "features": [], "limits": { "per_day": 200 }, "limits_by": "client" },
            { "name": "pro", "features": ["live", "websocket"],
              "limits": { "per_hour": 5500, "burst": 50 }, "limits_by": "key" },
            { "name": "tiered", "features": ["live"], "limits": { "per_day": 1000 },
              "limits_by": "client", "bookmaker_selection": 1,
              "sharing": { "networks_per_hour": 5, "action": "disable" }, "delay_seconds": 90.0 },
        ]})
    );
    assert_eq!(a.get("/v1/plans/pro").await, plans["items"][1]);

    // Usage, as the gateways flush it.
    let id = acme["id"].as_str().unwrap().to_owned();
    let row = |day: &str, status: u16, requests: u64| keygate_store::UsageRow {
        client_id: id.clone(),
        day: day.into(),
        status,
        requests,
    };
    a.store
        .add_usage(&[
            row("2026-11-20", 200, 7),
            row("2026-11-20", 429, 2),
            row("2026-11-21", 403, 1),
            row("2026-10-01", 200, 50),
        ])
        .await
        .unwrap();
    let usage = a
        .get("/v1/clients/Acme/usage?from=2026-11-01&to=2026-11-30")
        .await;
    assert_eq!(
        usage,
        json!({
            "client_id": id,
            "client": "Acme",
            "from": "2026-11-01",
            "to": "2026-11-30",
            "requests": 10,
            "ws_messages": 0,
            "ws_bytes": 0,
            "days": [
                { "day": "2026-11-20", "requests": 9, "by_status": { "200": 7, "429": 2 }, "ws_messages": 0, "ws_bytes": 0 },
                { "day": "2026-11-21", "requests": 1, "by_status": { "403": 1 }, "ws_messages": 0, "ws_bytes": 0 },
            ],
        })
    );
    let (status, _, by_id) = a
        .send(
            "GET",
            &format!("/v1/clients/{id}/usage?from=2026-10-01&to=2026-10-01"),
            Some(&a.viewer),
            Body::None,
        )
        .await;
    assert_eq!((status, &by_id["requests"]), (200, &json!(50)));
    let recent = a.get("/v1/clients/Acme/usage").await;
    assert_eq!(
        recent["to"],
        keygate_core::Clock::now(&SystemClock).utc_day()
    );

    // Emergency mode: read-only tokens read it, writers switch it, the audit names the token.
    let off = a.get("/v1/emergency").await;
    assert_eq!(
        off,
        json!({ "on": false, "message": null, "changed_at": null, "changed_by": null })
    );
    let (status, _, _) = a
        .send("GET", "/v1/emergency", Some(&a.viewer), Body::None)
        .await;
    assert_eq!(status, 200);
    let on = a
        .ops(
            200,
            "PUT /v1/emergency",
            json!({ "on": true, "message": "Feed maintenance until 14:00 UTC." }),
        )
        .await;
    assert_eq!(on["on"], true);
    assert_eq!(on["message"], "Feed maintenance until 14:00 UTC.");
    assert_eq!(on["changed_by"], "admin:ops");
    assert_eq!(a.get("/v1/emergency").await, on);
    assert!(a.store.emergency().await.unwrap().on);
    let off = a
        .ops(200, "PUT /v1/emergency", json!({ "on": false }))
        .await;
    assert_eq!(
        (off["on"].clone(), off["message"].clone()),
        (json!(false), Value::Null)
    );
    let audit = a.get("/v1/audit?action=emergency.").await;
    let entries: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        entries,
        [
            ("emergency.off", "admin:ops"),
            ("emergency.on", "admin:ops")
        ]
    );
}
