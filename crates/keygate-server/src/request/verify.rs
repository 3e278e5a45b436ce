//! keygate as an auth service beside an existing gateway.
//!
//! - `POST /v1/keys/verify` for applications: `{"key", "method", "path"}` or `{"key", "scopes"}`
//!   → `{"valid", "reason", "client", "key_id", "scopes", ...}`, always 200 when the question
//!   itself was well-formed.
//! - nginx `auth_request` (`/v1/auth/nginx`, reads `X-Original-URI` / `X-Original-Method`;
//!   nginx only honours 401 and 403 from the sub-request, so refusals are mapped onto those).
//! - Traefik ForwardAuth (`/v1/auth/traefik`, `X-Forwarded-Uri` / `X-Forwarded-Method`).
//! - Envoy `ext_authz` over HTTP (`/v1/auth/envoy{original path}`, original method).
//!
//! Each answers 200 with the identity headers, or the profile's refusal. Forward-auth runs the
//! gateway's own steps (decision, limits, the route's error answers, the access log), so a
//! proxy in front gets what keygate's own listener would answer.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use keygate_core::decision::{Denial, Reason};
use serde::Deserialize;
use serde_json::json;

use crate::policy::guard::Caller;
use crate::policy::profile::CredentialSource;
use crate::policy::routes::RouteMatch;
use crate::request::body::Body;
use crate::request::check;
use crate::request::exit::{Refusal, Served, Trail};
use crate::request::respond;
use crate::state::gateway::{Admitted, Gateway};
use crate::state::metrics::Outcome;

/// Largest verify request body accepted.
pub(crate) const MAX_VERIFY_BODY: usize = 16 * 1024;

pub(crate) use crate::policy::paths::{
    ENVOY as ENVOY_PREFIX, NGINX as NGINX_PATH, TRAEFIK as TRAEFIK_PATH, VERIFY as VERIFY_PATH,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    key: String,
    method: Option<String>,
    path: Option<String>,
    scopes: Option<Vec<String>>,
    /// The address the key is used from, for a key with a CIDR allowlist (the application
    /// knows its caller; keygate sees only the application). Absent: the verify request's own
    /// source, by the guard's trusted-proxy rule.
    ip: Option<String>,
}

fn bad_request(why: &str) -> Refusal {
    Denial::about(Reason::BadRequest, why).into()
}

/// `POST /v1/keys/verify`: a well-formed question is answered 200 whatever the verdict; the
/// caller counts in its client's usage when the key authenticated.
///
/// # Errors
/// A [`Refusal`] for a question that is not one (method, body).
pub(crate) async fn verify(
    gw: &Gateway,
    req: &mut Request<Incoming>,
    peer: IpAddr,
) -> Result<Served, Refusal> {
    if req.method() != Method::POST {
        return Err(Reason::MethodNotAllowed.into());
    }
    let body: Bytes = Limited::new(req.body_mut(), MAX_VERIFY_BODY)
        .collect()
        .await
        .map_err(|_| bad_request("the body is larger than 16 KiB or was cut off"))?
        .to_bytes();
    let ask: VerifyRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(&format!("the body is not a verify request ({e})")))?;
    let caller = Caller {
        peer,
        headers: req.headers(),
    };
    let (who, verdict) = answer_verify(gw, &ask, caller);
    let doc = match (&who, verdict) {
        (Some(who), None) => {
            let c = &who.client.policy;
            let mut doc = json!({
                "valid": true,
                "reason": null,
                "status": 200,
                "key_id": who.key.id(),
                "client": { "id": c.id.as_str(), "name": &*c.name, "plan": &*c.plan },
                "scopes": who.effective_scopes(),
                "sports": c.sports.iter().map(|s| &**s).collect::<Vec<_>>(),
                "bookmakers": c.bookmakers.iter().map(|s| &**s).collect::<Vec<_>>(),
                "expires_at": who.key.policy.expires_at,
            });
            if let Some(rules) = &who.key.rules {
                restrictions_json(&mut doc, &rules.source);
            }
            doc
        }
        (_, d) => {
            let d = d.unwrap_or_else(|| Denial::new(Reason::UnknownKey));
            json!({
                "valid": false,
                "reason": d.reason.code(),
                "status": gw.config.profile.error(d.reason).status.as_u16(),
                "subject": d.subject.as_deref(),
            })
        }
    };
    Ok(Served::local(respond::json(StatusCode::OK, &doc), who))
}

/// The verdict on a verify question, with the caller when its key authenticated (a refusal
/// after that counts in its usage too).
fn answer_verify(
    gw: &Gateway,
    ask: &VerifyRequest,
    caller: Caller<'_>,
) -> (Option<Admitted>, Option<Denial>) {
    let key = Some(ask.key.as_str()).filter(|k| !k.is_empty());
    let who = check::guarded(gw, caller, key, || match key {
        Some(key) => gw.authenticate(key),
        None => Err(Reason::MissingKey),
    });
    match who {
        Ok(who) => {
            let verdict = authorize_verify(gw, &who, ask, caller).err();
            (Some(who), verdict)
        }
        Err(reason) => (None, Some(Denial::new(reason))),
    }
}

/// A key's effective scopes: its client's, narrowed by the key's own when it has them.
/// Adds a restricted key's CIDR allowlist, metadata and external id to an answer.
pub(crate) fn restrictions_json(doc: &mut serde_json::Value, r: &keygate_core::KeyRestrictions) {
    doc["allowed_cidrs"] = json!(r.allowed_cidrs);
    doc["metadata"] = json!(r.metadata);
    doc["external_id"] = json!(r.external_id);
}

/// The address a verify question is about: its `ip`, else the request's source.
fn verify_source(gw: &Gateway, ask: &VerifyRequest, caller: Caller<'_>) -> Result<IpAddr, Denial> {
    match &ask.ip {
        Some(ip) => ip
            .parse::<IpAddr>()
            .map(crate::policy::guard::unmap)
            .map_err(|_| Denial::about(Reason::BadRequest, "`ip` is not an IP address")),
        None => Ok(gw.guard.client_address(caller)),
    }
}

/// The scopes or the route a verify question asks about.
fn authorize_verify(
    gw: &Gateway,
    who: &Admitted,
    ask: &VerifyRequest,
    caller: Caller<'_>,
) -> Result<(), Denial> {
    let source = verify_source(gw, ask, caller)?;
    if let Some(rules) = &who.key.rules {
        crate::state::gateway::key_address(rules, || source)?;
    }
    if let Some(scopes) = &ask.scopes {
        if let Some(missing) = scopes.iter().find(|s| !who.client.policy.has_scope(s)) {
            return Err(Denial::about(Reason::ScopeMissing, missing));
        }
        if let Some(missing) = who
            .key
            .rules
            .as_deref()
            .and_then(|r| scopes.iter().find(|s| !r.has_scope(s)))
        {
            return Err(Denial::about(Reason::KeyScopeMissing, missing));
        }
    }
    if let Some(path) = &ask.path {
        let method = Method::from_bytes(ask.method.as_deref().unwrap_or("GET").as_bytes())
            .map_err(|_| Denial::about(Reason::BadRequest, "`method` is not an HTTP method"))?;
        let (path, query) = path
            .split_once('?')
            .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
        if check::is_ambiguous_path(path) {
            return Err(Denial::about(
                Reason::BadRequest,
                "the path contains dot segments or encoded separators",
            ));
        }
        match gw.config.routes.find(&method, path) {
            RouteMatch::Found { route, params, .. } if !route.public => {
                gw.authorize(who, route, &params, query, || source)?;
            }
            RouteMatch::Found { .. } => {}
            RouteMatch::MethodNotAllowed => return Err(Denial::new(Reason::MethodNotAllowed)),
            RouteMatch::NotFound => return Err(Denial::new(Reason::NotFound)),
        }
    }
    Ok(())
}

/// Which forward-auth contract a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contract {
    Nginx,
    Traefik,
    Envoy,
}

impl Contract {
    pub(crate) fn from_path(path: &str) -> Option<Contract> {
        match path {
            NGINX_PATH => Some(Contract::Nginx),
            TRAEFIK_PATH => Some(Contract::Traefik),
            p if crate::policy::paths::is_envoy(p) => Some(Contract::Envoy),
            _ => None,
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers
        .get(HeaderName::from_static(name))
        .and_then(|v| v.to_str().ok())
}

/// A forward-auth sub-request: the gateway's decision and limits for the original request,
/// answered 200 with the identity and rate-limit headers or refused with the route's answer.
///
/// # Errors
/// The [`Refusal`] keygate's own listener would give the original request.
pub(crate) async fn forward_auth(
    gw: &Gateway,
    contract: Contract,
    req: &Request<Incoming>,
    peer: IpAddr,
    trail: &mut Trail,
) -> Result<Served, Refusal> {
    // nginx treats anything but 2xx, 401 and 403 from auth_request as an error (500).
    trail.auth_statuses_only = contract == Contract::Nginx;
    let headers = req.headers();
    let (method, uri): (Method, String) = match contract {
        Contract::Nginx | Contract::Traefik => {
            let (m, u) = if contract == Contract::Nginx {
                ("x-original-method", "x-original-uri")
            } else {
                ("x-forwarded-method", "x-forwarded-uri")
            };
            let uri = header(headers, u)
                .ok_or_else(|| bad_request(&format!("the {u} header is missing")))?;
            let method = header(headers, m)
                .map_or(Ok(Method::GET), |m| Method::from_bytes(m.as_bytes()))
                .map_err(|_| bad_request(&format!("the {m} header is not an HTTP method")))?;
            (method, uri.to_owned())
        }
        Contract::Envoy => {
            let rest = &req.uri().path()[ENVOY_PREFIX.len()..];
            let rest = if rest.is_empty() { "/" } else { rest };
            let uri = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            (req.method().clone(), uri)
        }
    };
    let (path, query) = uri
        .split_once('?')
        .map_or((uri.as_str(), None), |(p, q)| (p, Some(q)));
    let passed = check::decide(gw, &method, path, query, headers, peer)?;
    let caller = Caller { peer, headers };
    check::limit(gw, &passed, caller, gw.clock.now(), trail).await?;
    let profile = &gw.config.profile;
    let mut resp = Response::new(Body::empty());
    match &passed.who {
        Some(who) => {
            who.write_identity(resp.headers_mut(), &profile.identity);
            // A caller on a plan without a delay may have sent its own delay header, which
            // Envoy would forward: it is asked to remove it.
            if contract == Contract::Envoy && who.client.identity().delay.is_none() {
                append_removals(
                    resp.headers_mut(),
                    std::iter::once(profile.identity.delay.as_str()),
                );
            }
        }
        // A pass with no identity (a public route): Envoy would forward the caller's own
        // identity headers, so it is asked to remove them (Traefik's `authResponseHeaders`
        // replaces them itself).
        None if contract == Contract::Envoy => {
            let names = profile.identity.all();
            append_removals(
                resp.headers_mut(),
                names.into_iter().map(HeaderName::as_str),
            );
        }
        None => {}
    }
    if contract == Contract::Envoy && !profile.forward_credential {
        // The key stops at the gateway: Envoy removes the credential headers before it
        // forwards (a query-parameter key cannot be removed this way).
        let credentials = profile.credentials.iter().filter_map(|c| match c {
            CredentialSource::Header(name) => Some(name.as_str()),
            CredentialSource::Bearer => Some("authorization"),
            _ => None,
        });
        append_removals(resp.headers_mut(), credentials);
    }
    Ok(Served {
        resp,
        outcome: Some(Outcome::Local),
        route: Some(passed.route_index),
        who: passed.who,
    })
}

/// Adds header names to Envoy's `x-envoy-auth-headers-to-remove` list.
fn append_removals<'a>(headers: &mut HeaderMap, names: impl Iterator<Item = &'a str>) {
    let name = HeaderName::from_static("x-envoy-auth-headers-to-remove");
    let mut list = headers
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    for n in names {
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(n);
    }
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(name, v);
    }
}
