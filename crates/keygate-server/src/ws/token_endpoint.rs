//! `POST /v1/ws-token` (path from the profile): a key, presented as on any request, buys a
//! token for one WebSocket upgrade within the token's lifetime (seed 003: refused with the
//! profile's `feature_not_on_plan` answer when the plan lacks WebSocket).

use http::header::{HeaderValue, CACHE_CONTROL};
use http::{HeaderMap, Method, Response, StatusCode};
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::BodyFormat;
use serde_json::json;

use super::token;
use crate::body::Body;
use crate::credential;
use crate::gateway::{Admitted, Gateway};
use crate::guard::Caller;
use crate::metrics::Outcome;
use crate::profile::LimitFacts;
use crate::respond;

/// Whether `path` is the token endpoint.
pub fn is_token_path(gw: &Gateway, path: &str) -> bool {
    gw.config.ws.profile.token.path.as_deref() == Some(path) && gw.config.ws.has_routes()
}

fn refuse(gw: &Gateway, denial: &Denial, format: BodyFormat) -> Response<Body> {
    let resp = respond::denial(&gw.config.profile, denial, format, LimitFacts::default());
    gw.metrics
        .record(None, Outcome::Denied(denial.reason), resp.status().as_u16());
    resp
}

/// Answers the token endpoint; with the caller when it authenticated, and the reason of a
/// refusal (so the answer can report the caller's budget).
pub fn answer(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: std::net::IpAddr,
    format: BodyFormat,
) -> (Response<Body>, Option<Admitted>, Option<Reason>) {
    let refused = |denial: Denial, who: Option<Admitted>| {
        let reason = Some(denial.reason);
        (refuse(gw, &denial, format), who, reason)
    };
    if method != Method::POST {
        return refused(Denial::new(Reason::MethodNotAllowed), None);
    }
    let settings = &gw.config.ws.profile.token;
    let key = match credential::extract(&gw.config.profile.credentials, headers, query) {
        Ok(c) => c.key,
        Err(r) => return refused(Denial::new(r), None),
    };
    if key.starts_with(token::PREFIX) {
        // A token does not buy another token.
        return refused(Denial::new(Reason::MalformedKey), None);
    }
    // Guessing keys here is guessing keys: the brute-force guard counts it and cools it down.
    let caller = Caller { peer, headers };
    let who = match crate::check::guarded(gw, caller, Some(key), || gw.authenticate(key)) {
        Ok(w) => w,
        Err(r) => return refused(Denial::new(r), None),
    };
    if let Some(f) = settings
        .features
        .iter()
        .find(|f| !who.client.policy.has_feature(f))
    {
        return refused(Denial::about(Reason::FeatureNotOnPlan, f), Some(who));
    }
    let now = gw.clock.now();
    let digest = gw.config.issuer.digester.digest(key);
    let token = token::issue(&settings.secret, &digest, now, settings.ttl);
    let expires = now.plus(settings.ttl);
    gw.metrics.record(None, Outcome::Local, 200);
    let mut resp = respond::json(
        StatusCode::OK,
        &json!({
            "token": token,
            "expires_in": settings.ttl.as_secs(),
            "expires_at": expires.to_rfc3339(),
            "param": &*settings.param,
        }),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (resp, Some(who), None)
}
