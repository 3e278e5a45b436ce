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
//! Each answers 200 with the identity headers, or the profile's refusal.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::BodyFormat;
use serde::Deserialize;
use serde_json::json;

use crate::body::Body;
use crate::check::{self, Refused};
use crate::gateway::{Admitted, Gateway};
use crate::guard::Caller;
use crate::metrics::Outcome;
use crate::profile::LimitFacts;
use crate::respond;
use crate::routes::RouteMatch;

/// Largest verify request body accepted.
pub const MAX_VERIFY_BODY: usize = 16 * 1024;

pub const VERIFY_PATH: &str = "/v1/keys/verify";
pub const NGINX_PATH: &str = "/v1/auth/nginx";
pub const TRAEFIK_PATH: &str = "/v1/auth/traefik";
pub const ENVOY_PREFIX: &str = "/v1/auth/envoy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    key: String,
    method: Option<String>,
    path: Option<String>,
    scopes: Option<Vec<String>>,
}

fn bad_request(gw: &Gateway, why: &str, format: BodyFormat) -> Response<Body> {
    gw.metrics
        .record(None, Outcome::Denied(Reason::BadRequest), 400);
    respond::denial(
        &gw.config.profile,
        &Denial::about(Reason::BadRequest, why),
        format,
        LimitFacts::default(),
    )
}

/// `POST /v1/keys/verify`.
pub async fn verify(
    gw: &Gateway,
    req: Request<Incoming>,
    format: BodyFormat,
    peer: IpAddr,
) -> Response<Body> {
    if req.method() != Method::POST {
        return respond::denial(
            &gw.config.profile,
            &Denial::new(Reason::MethodNotAllowed),
            format,
            LimitFacts::default(),
        );
    }
    let (parts, body) = req.into_parts();
    let caller = Caller {
        peer,
        headers: &parts.headers,
    };
    let body: Bytes = match Limited::new(body, MAX_VERIFY_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return bad_request(gw, "the body is larger than 16 KiB or was cut off", format),
    };
    let ask: VerifyRequest = match serde_json::from_slice(&body) {
        Ok(ask) => ask,
        Err(e) => {
            return bad_request(
                gw,
                &format!("the body is not a verify request ({e})"),
                format,
            )
        }
    };
    let outcome = answer_verify(gw, &ask, caller);
    let status = match &outcome {
        Ok(_) => 200,
        Err(d) => gw.config.profile.error(d.reason).status.as_u16(),
    };
    gw.metrics.record(None, Outcome::Local, 200);
    let doc = match outcome {
        Ok(who) => {
            let c = &who.client.policy;
            json!({
                "valid": true,
                "reason": null,
                "status": 200,
                "key_id": who.key.id(),
                "client": { "id": c.id.as_str(), "name": &*c.name, "plan": &*c.plan },
                "scopes": c.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
                "sports": c.sports.iter().map(|s| &**s).collect::<Vec<_>>(),
                "bookmakers": c.bookmakers.iter().map(|s| &**s).collect::<Vec<_>>(),
                "expires_at": who.key.policy.expires_at,
            })
        }
        Err(d) => json!({
            "valid": false,
            "reason": d.reason.code(),
            "status": status,
            "subject": d.subject.as_deref(),
        }),
    };
    respond::json(StatusCode::OK, &doc)
}

fn answer_verify(
    gw: &Gateway,
    ask: &VerifyRequest,
    caller: Caller<'_>,
) -> Result<Admitted, Denial> {
    let key = Some(ask.key.as_str()).filter(|k| !k.is_empty());
    let who = check::guarded(gw, caller, key, || match key {
        Some(key) => gw.authenticate(key),
        None => Err(Reason::MissingKey),
    })?;
    if let Some(scopes) = &ask.scopes {
        if let Some(missing) = scopes.iter().find(|s| !who.client.policy.has_scope(s)) {
            return Err(Denial::about(Reason::ScopeMissing, missing));
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
                gw.authorize(&who, route, &params, query)?
            }
            RouteMatch::Found { .. } => {}
            RouteMatch::MethodNotAllowed => return Err(Denial::new(Reason::MethodNotAllowed)),
            RouteMatch::NotFound => return Err(Denial::new(Reason::NotFound)),
        }
    }
    Ok(who)
}

/// Which forward-auth contract a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contract {
    Nginx,
    Traefik,
    Envoy,
}

impl Contract {
    pub fn from_path(path: &str) -> Option<Contract> {
        match path {
            NGINX_PATH => Some(Contract::Nginx),
            TRAEFIK_PATH => Some(Contract::Traefik),
            p if p == ENVOY_PREFIX || p.starts_with("/v1/auth/envoy/") => Some(Contract::Envoy),
            _ => None,
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers
        .get(HeaderName::from_static(name))
        .and_then(|v| v.to_str().ok())
}

/// A forward-auth sub-request.
pub fn forward_auth(
    gw: &Gateway,
    contract: Contract,
    req: &Request<Incoming>,
    format: BodyFormat,
    peer: IpAddr,
) -> Response<Body> {
    let headers = req.headers();
    let (method, uri): (Method, String) = match contract {
        Contract::Nginx | Contract::Traefik => {
            let (m, u) = if contract == Contract::Nginx {
                ("x-original-method", "x-original-uri")
            } else {
                ("x-forwarded-method", "x-forwarded-uri")
            };
            let Some(uri) = header(headers, u) else {
                return bad_request(gw, &format!("the {u} header is missing"), format);
            };
            let method =
                header(headers, m).map_or(Ok(Method::GET), |m| Method::from_bytes(m.as_bytes()));
            let Ok(method) = method else {
                return bad_request(gw, &format!("the {m} header is not an HTTP method"), format);
            };
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
    match check::decide(gw, &method, path, query, headers, peer) {
        Ok(passed) => {
            gw.metrics
                .record(Some(passed.route_index), Outcome::Local, 200);
            let mut resp = Response::new(Body::empty());
            if let Some(who) = &passed.who {
                who.write_identity(resp.headers_mut(), &gw.config.profile.identity);
                gw.usage.record(&who.client, gw.clock.now(), 200);
            }
            resp
        }
        Err(Refused {
            route_index,
            denial,
            ..
        }) => {
            let facts = check::refusal_facts(gw, denial.reason);
            let mut resp = respond::denial(&gw.config.profile, &denial, format, facts);
            if contract == Contract::Nginx {
                // nginx treats anything but 2xx, 401 and 403 from auth_request as an error (500).
                let status = if denial.reason.is_authentication_failure() {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                };
                *resp.status_mut() = status;
            }
            gw.metrics.record(
                route_index,
                Outcome::Denied(denial.reason),
                resp.status().as_u16(),
            );
            resp
        }
    }
}
