//! The admin API as the CLI's backend: one HTTP call per operation, answers read into the same
//! model types the store returns, problems turned into errors with their stable codes.

use std::time::Duration;

use anyhow::Context as _;
use keygate_core::suspension::Suspension;
use keygate_core::{
    ApiKey, Client, KeyId, KeyRestrictions, KeyState, RestrictionsChange, Timestamp,
};
use keygate_store::{
    AuditEntry, AuditFilter, ClientFilter, ClientUpdate, Delivery, DeliveryFilter, Emergency,
    KeyFilter, NewClient, NewSuspension,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::Issued;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How long one admin call may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts of a create or rotate when the connection fails: safe, because each carries an
/// `Idempotency-Key`, so a retry of a request that did arrive returns its first answer.
const ISSUE_ATTEMPTS: usize = 3;

/// A problem the admin API answered with.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub(crate) struct RemoteError {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) detail: String,
}

#[derive(Deserialize)]
struct Problem {
    code: Option<String>,
    detail: Option<String>,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
}

/// A remote node's admin API.
pub(crate) struct Remote {
    base: String,
    /// The admin token; never printed.
    token: String,
    http: reqwest::Client,
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Remote {
    /// `tls`: the CA file and client certificate for an `https://` URL (the same client
    /// configuration as the gateway's upstreams: system roots unless a CA file is given).
    ///
    /// # Errors
    /// A URL that is not `http://` or `https://`, TLS files given for `http://` or that
    /// cannot be used, or a token that is not a well-formed admin token.
    pub(crate) fn new(
        url: &str,
        token: &str,
        tls: &keygate_server::tls::ClientFiles,
    ) -> anyhow::Result<Remote> {
        let base = url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .with_context(|| format!("--admin-url `{url}` is not a URL"))?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => anyhow::bail!("--admin-url `{url}` must be http:// or https://"),
        };
        if !https && *tls != keygate_server::tls::ClientFiles::default() {
            anyhow::bail!(
                "--admin-ca, --admin-cert and --admin-key are for an https:// --admin-url"
            );
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            anyhow::bail!("--admin-url `{url}` must not have a query or a fragment");
        }
        keygate_core::KeyFormat::admin_token()
            .check(token.trim())
            .map_err(|_| {
                anyhow::anyhow!("KEYGATE_ADMIN_TOKEN does not hold an admin token (kgadm_...)")
            })?;
        let mut http = reqwest::Client::builder().timeout(TIMEOUT);
        if https {
            let client = keygate_server::tls::ClientTls::new(tls, &[b"http/1.1"])
                .context("cannot set up TLS for --admin-url")?;
            http = http.use_preconfigured_tls((*client.config()).clone());
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        Ok(Remote {
            base: base.to_owned(),
            token: token.trim().to_owned(),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        idempotency: Option<&str>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(key) = idempotency {
            req = req.header("idempotency-key", key);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("the admin API at {} broke off its answer", self.base))?;
        if !status.is_success() {
            return Err(problem(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!("the admin API answered {method} {path} with an unexpected document")
        })
    }

    /// A create or rotate (of a key or a feed), retried on connection failures under one
    /// idempotency key.
    async fn issue<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        let key = keygate_core::digest::hex(&raw);
        let mut attempt = 1;
        loop {
            match self
                .call(Method::POST, path, &[], Some(body), Some(&key))
                .await
            {
                Err(e) if attempt < ISSUE_ATTEMPTS && e.downcast_ref::<RemoteError>().is_none() => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn create_client(&self, new: &NewClient) -> anyhow::Result<Client> {
        let l = &new.limits;
        let mut limits = Map::new();
        for (k, v) in [
            ("rps", l.rps),
            ("per_minute", l.per_minute),
            ("per_hour", l.per_hour),
            ("per_day", l.per_day),
            ("per_month", l.per_month),
            ("ws_connections", l.ws_connections),
        ] {
            if let Some(v) = v {
                limits.insert(k.to_owned(), json!(v.get()));
            }
        }
        let mut body = json!({
            "name": new.name,
            "plan": new.plan,
            "scopes": new.scopes,
            "sports": new.sports,
            "bookmakers": new.bookmakers,
            "limits": limits,
        });
        if let Some(parent) = &new.parent {
            body["parent"] = json!(parent);
        }
        self.call(Method::POST, "/v1/clients", &[], Some(&body), None)
            .await
    }

    pub(crate) async fn list_clients(&self, f: &ClientFilter) -> anyhow::Result<Vec<Client>> {
        let mut q = vec![("limit", f.limit.to_string())];
        if let Some(p) = &f.plan {
            q.push(("plan", p.clone()));
        }
        if let Some(a) = f.active {
            q.push(("active", a.to_string()));
        }
        if let Some(a) = &f.after {
            q.push(("after", a.clone()));
        }
        let page: Page<Client> = self
            .call(Method::GET, "/v1/clients", &q, None, None)
            .await?;
        Ok(page.items)
    }

    pub(crate) async fn client(&self, name: &str) -> anyhow::Result<Client> {
        let path = format!("/v1/clients/{}", segment(name));
        self.call(Method::GET, &path, &[], None, None).await
    }

    pub(crate) async fn update_client(
        &self,
        name: &str,
        u: &ClientUpdate,
    ) -> anyhow::Result<Client> {
        let mut body = Map::new();
        if let Some(n) = &u.name {
            body.insert("name".into(), json!(n));
        }
        if let Some(p) = &u.plan {
            body.insert("plan".into(), json!(p));
        }
        if let Some(s) = &u.scopes {
            body.insert("scopes".into(), json!(s));
        }
        if let Some(s) = &u.sports {
            body.insert("sports".into(), json!(s));
        }
        if let Some(b) = &u.bookmakers {
            body.insert("bookmakers".into(), json!(b));
        }
        let l = &u.limits;
        let mut limits = Map::new();
        for (k, change) in [
            ("rps", l.rps),
            ("per_minute", l.per_minute),
            ("per_hour", l.per_hour),
            ("per_day", l.per_day),
            ("per_month", l.per_month),
            ("ws_connections", l.ws_connections),
        ] {
            if let Some(value) = change {
                limits.insert(k.to_owned(), json!(value.map(std::num::NonZeroU64::get)));
            }
        }
        if !limits.is_empty() {
            body.insert("limits".into(), Value::Object(limits));
        }
        let path = format!("/v1/clients/{}", segment(name));
        self.call(Method::PATCH, &path, &[], Some(&Value::Object(body)), None)
            .await
    }

    pub(crate) async fn set_client_active(
        &self,
        name: &str,
        active: bool,
    ) -> anyhow::Result<Client> {
        let verb = if active { "enable" } else { "disable" };
        let path = format!("/v1/clients/{}/{verb}", segment(name));
        self.call(Method::POST, &path, &[], None, None).await
    }

    /// `DELETE /v1/clients/{client}`.
    pub(crate) async fn delete_client(&self, name: &str) -> anyhow::Result<Value> {
        let path = format!("/v1/clients/{}", segment(name));
        self.call(Method::DELETE, &path, &[], None, None).await
    }

    pub(crate) async fn create_key(
        &self,
        client: &str,
        label: &str,
        expires_at: Option<Timestamp>,
        restrictions: &KeyRestrictions,
    ) -> anyhow::Result<Issued> {
        let mut body = json!({ "client": client, "label": label, "expires_at": expires_at });
        if let (Value::Object(b), Value::Object(r)) = (&mut body, json!(restrictions)) {
            b.extend(r);
        }
        self.issue("/v1/keys", &body).await
    }

    /// `PATCH /v1/keys/{id}` with the fields the change names (`null` clears).
    pub(crate) async fn set_key_restrictions(
        &self,
        id: &KeyId,
        change: &RestrictionsChange,
    ) -> anyhow::Result<ApiKey> {
        let mut body = Map::new();
        if let Some(s) = &change.scopes {
            body.insert("scopes".into(), json!(s));
        }
        if let Some(c) = &change.allowed_cidrs {
            body.insert("allowed_cidrs".into(), json!(c));
        }
        if let Some(m) = &change.metadata {
            body.insert("metadata".into(), json!(m));
        }
        if let Some(e) = &change.external_id {
            body.insert("external_id".into(), json!(e));
        }
        self.call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            &[],
            Some(&Value::Object(body)),
            None,
        )
        .await
    }

    pub(crate) async fn rotate_key(
        &self,
        id: &KeyId,
        grace: Option<Duration>,
    ) -> anyhow::Result<Issued> {
        let mut body = Map::new();
        if let Some(g) = grace {
            body.insert("grace".into(), json!(format!("{}ms", g.as_millis())));
        }
        self.issue(&format!("/v1/keys/{id}/rotate"), &Value::Object(body))
            .await
    }

    pub(crate) async fn list_keys(&self, f: &KeyFilter) -> anyhow::Result<Vec<ApiKey>> {
        let mut q = vec![("limit", f.limit.to_string())];
        if let Some(c) = &f.client {
            q.push(("client", c.clone()));
        }
        if let Some(s) = f.state {
            q.push(("state", s.as_str().to_owned()));
        }
        if let Some(a) = &f.after {
            q.push(("after", a.to_string()));
        }
        if let Some(e) = &f.external_id {
            q.push(("external_id", e.clone()));
        }
        let page: Page<ApiKey> = self.call(Method::GET, "/v1/keys", &q, None, None).await?;
        Ok(page.items)
    }

    pub(crate) async fn key(&self, id: &KeyId) -> anyhow::Result<ApiKey> {
        self.call(Method::GET, &format!("/v1/keys/{id}"), &[], None, None)
            .await
    }

    pub(crate) async fn set_key_state(
        &self,
        id: &KeyId,
        state: KeyState,
    ) -> anyhow::Result<ApiKey> {
        let verb = match state {
            KeyState::Active => "enable",
            KeyState::Disabled => "disable",
            KeyState::Revoked => "revoke",
        };
        self.call(
            Method::POST,
            &format!("/v1/keys/{id}/{verb}"),
            &[],
            None,
            None,
        )
        .await
    }

    pub(crate) async fn set_key_expiry(
        &self,
        id: &KeyId,
        at: Option<Timestamp>,
    ) -> anyhow::Result<ApiKey> {
        let body = json!({ "expires_at": at });
        self.call(
            Method::PUT,
            &format!("/v1/keys/{id}/expiry"),
            &[],
            Some(&body),
            None,
        )
        .await
    }

    pub(crate) async fn suspected_keys(
        &self,
        since: Option<Timestamp>,
    ) -> anyhow::Result<Vec<keygate_store::SharingSuspicion>> {
        let q: Vec<(&str, String)> = since.iter().map(|t| ("since", t.to_rfc3339())).collect();
        let page: Page<keygate_store::SharingSuspicion> = self
            .call(Method::GET, "/v1/keys/suspected", &q, None, None)
            .await?;
        Ok(page.items)
    }

    pub(crate) async fn audit(&self, f: &AuditFilter) -> anyhow::Result<Vec<AuditEntry>> {
        let mut q = vec![("limit", f.limit.to_string())];
        if let Some(b) = f.before {
            q.push(("before", b.to_string()));
        }
        for (k, v) in [
            ("actor", &f.actor),
            ("action", &f.action),
            ("target", &f.target),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        let page: Page<AuditEntry> = self.call(Method::GET, "/v1/audit", &q, None, None).await?;
        Ok(page.items)
    }

    pub(crate) async fn deliveries(&self, f: &DeliveryFilter) -> anyhow::Result<Vec<Delivery>> {
        let mut q = vec![("limit", f.limit.to_string())];
        if let Some(b) = f.before {
            q.push(("before", b.to_string()));
        }
        if let Some(s) = f.state {
            q.push(("state", s.as_str().to_owned()));
        }
        for (k, v) in [
            ("webhook", &f.webhook),
            ("event", &f.event_type),
            ("event_id", &f.event_id),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        let page: Page<Delivery> = self
            .call(Method::GET, "/v1/webhooks/deliveries", &q, None, None)
            .await?;
        Ok(page.items)
    }

    pub(crate) async fn delivery(&self, id: i64) -> anyhow::Result<(Delivery, Value)> {
        let mut doc: Value = self
            .call(
                Method::GET,
                &format!("/v1/webhooks/deliveries/{id}"),
                &[],
                None,
                None,
            )
            .await?;
        let body = doc
            .as_object_mut()
            .and_then(|o| o.remove("body"))
            .unwrap_or(Value::Null);
        Ok((serde_json::from_value(doc)?, body))
    }

    pub(crate) async fn replay_delivery(&self, id: i64) -> anyhow::Result<Delivery> {
        self.call(
            Method::POST,
            &format!("/v1/webhooks/deliveries/{id}/replay"),
            &[],
            None,
            None,
        )
        .await
    }

    /// `POST /v1/reload`: the node reads its configuration file again.
    pub(crate) async fn reload(&self) -> anyhow::Result<Value> {
        self.call(Method::POST, "/v1/reload", &[], None, None).await
    }

    pub(crate) async fn emergency(&self) -> anyhow::Result<Emergency> {
        self.call(Method::GET, "/v1/emergency", &[], None, None)
            .await
    }

    pub(crate) async fn set_emergency(
        &self,
        on: bool,
        message: Option<&str>,
    ) -> anyhow::Result<Emergency> {
        let body = json!({ "on": on, "message": message });
        self.call(Method::PUT, "/v1/emergency", &[], Some(&body), None)
            .await
    }

    pub(crate) async fn suspend(&self, new: &NewSuspension) -> anyhow::Result<Suspension> {
        let mut body = Map::new();
        body.insert(new.target.kind().to_owned(), new.target.value().into());
        if let Some(c) = &new.client {
            body.insert("client".into(), c.as_str().into());
        }
        if let Some(m) = &new.message {
            body.insert("message".into(), m.as_str().into());
        }
        if let Some(u) = new.until {
            body.insert("until".into(), u.to_rfc3339().into());
        }
        let body = Value::Object(body);
        self.call(Method::POST, "/v1/suspensions", &[], Some(&body), None)
            .await
    }

    pub(crate) async fn resume(&self, id: &str) -> anyhow::Result<Suspension> {
        let path = format!("/v1/suspensions/{}", segment(id));
        self.call(Method::DELETE, &path, &[], None, None).await
    }

    pub(crate) async fn suspensions(&self, all: bool) -> anyhow::Result<Vec<Suspension>> {
        let q = [("all", all.to_string())];
        self.call(Method::GET, "/v1/suspensions", &q, None, None)
            .await
    }

    pub(crate) async fn usage(&self, client: &str, from: &str, to: &str) -> anyhow::Result<Value> {
        let path = format!("/v1/clients/{}/usage", segment(client));
        let q = [("from", from.to_owned()), ("to", to.to_owned())];
        self.call(Method::GET, &path, &q, None, None).await
    }

    /// `client`'s quota report, after a top-up or reset if asked
    /// (`/v1/clients/{client}/quota`).
    pub(crate) async fn quota(
        &self,
        client: &str,
        add: Option<u64>,
        reset: bool,
        window: Option<keygate_core::limit::Window>,
    ) -> anyhow::Result<Value> {
        let path = format!("/v1/clients/{}/quota", segment(client));
        if add.is_none() && !reset {
            return self.call(Method::GET, &path, &[], None, None).await;
        }
        let mut body = match add {
            Some(n) => json!({ "add": n }),
            None => json!({ "reset": true }),
        };
        if let Some(w) = window {
            body["window"] = w.as_str().into();
        }
        self.call(Method::POST, &path, &[], Some(&body), None).await
    }

    pub(crate) async fn analytics(
        &self,
        raw: &keygate_server::analytics::RawFilters,
    ) -> anyhow::Result<Value> {
        let q: Vec<(&str, String)> = [
            ("from", &raw.from),
            ("to", &raw.to),
            ("client", &raw.client),
            ("key", &raw.key),
            ("route", &raw.route),
            ("status", &raw.status),
            ("group_by", &raw.group_by),
            ("limit", &raw.limit),
            ("cursor", &raw.cursor),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .chain([("format", "json".to_owned())])
        .collect();
        self.call(Method::GET, "/v1/analytics", &q, None, None)
            .await
    }

    /// A feed operation on the node (`/v1/clients/{client}/amqp...`, `/v1/amqp/...`).
    pub(crate) async fn amqp(&self, cmd: &crate::cli::AmqpCommand) -> anyhow::Result<Value> {
        use crate::cli::AmqpCommand as C;
        let feed = |client: &str| format!("/v1/clients/{}/amqp", segment(client));
        match cmd {
            C::Provision { client, slug } => {
                let body = json!({ "slug": slug });
                self.issue(&feed(client), &body).await
            }
            C::Rotate { client } => {
                let path = format!("{}/rotate", feed(client));
                self.issue(&path, &json!({})).await
            }
            C::Revoke { client } => {
                let path = format!("{}/revoke", feed(client));
                self.call(Method::POST, &path, &[], None, None).await
            }
            C::Show { client } => self.call(Method::GET, &feed(client), &[], None, None).await,
            C::Reconcile {
                client,
                check: true,
            } => {
                let q: Vec<(&str, String)> = client.iter().map(|c| ("client", c.clone())).collect();
                self.call(Method::GET, "/v1/amqp/drift", &q, None, None)
                    .await
            }
            C::Reconcile {
                client,
                check: false,
            } => {
                let body = json!({ "client": client });
                self.call(Method::POST, "/v1/amqp/reconcile", &[], Some(&body), None)
                    .await
            }
        }
    }

    /// `POST /v1/clients/{client}/portal/invite`.
    pub(crate) async fn portal_invite(&self, client: &str, email: &str) -> anyhow::Result<Value> {
        let path = format!("/v1/clients/{}/portal/invite", segment(client));
        let body = json!({ "email": email });
        self.call(Method::POST, &path, &[], Some(&body), None).await
    }

    pub(crate) async fn plans(&self) -> anyhow::Result<Vec<Value>> {
        let page: Page<Value> = self.call(Method::GET, "/v1/plans", &[], None, None).await?;
        Ok(page.items)
    }
}

/// The error of a non-2xx answer: its problem document, or the status when there is none.
fn problem(status: StatusCode, body: &[u8]) -> RemoteError {
    let parsed: Option<Problem> = serde_json::from_slice(body).ok();
    let (code, detail) = match parsed {
        Some(Problem {
            code: Some(code),
            detail,
        }) => (code, detail.unwrap_or_default()),
        _ => ("http_error".to_owned(), String::new()),
    };
    let detail = if detail.is_empty() {
        format!("the admin API answered {status}")
    } else {
        detail.trim_end_matches('.').to_owned()
    };
    RemoteError {
        status: status.as_u16(),
        code,
        detail,
    }
}
