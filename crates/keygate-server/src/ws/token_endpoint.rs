//! `POST /v1/ws-token` (path from the profile): a key, presented as on any request, buys a
//! token for one WebSocket upgrade within the token's lifetime (seed 003: refused with the
//! profile's `feature_not_on_plan` answer when the plan lacks WebSocket).

use http::header::{HeaderValue, CACHE_CONTROL};
use http::{HeaderMap, Method, StatusCode};
use keygate_core::decision::{Denial, Reason};
use serde_json::json;

use super::token;
use crate::policy::guard::Caller;
use crate::request::credential;
use crate::request::exit::{Refusal, Served};
use crate::request::respond;
use crate::state::gateway::Gateway;

/// Whether `path` is the token endpoint.
pub(crate) fn is_token_path(gw: &Gateway, path: &str) -> bool {
    gw.config.ws.profile.token.path.as_deref() == Some(path) && gw.config.ws.has_routes()
}

/// Answers the token endpoint.
///
/// # Errors
/// A [`Refusal`], with the caller when it authenticated (its budget is then reported).
pub(crate) fn answer(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: std::net::IpAddr,
) -> Result<Served, Refusal> {
    if method != Method::POST {
        return Err(Reason::MethodNotAllowed.into());
    }
    let settings = &gw.config.ws.profile.token;
    let key = credential::extract(&gw.config.profile.credentials, headers, query)?.key;
    if key.starts_with(token::PREFIX) {
        // A token does not buy another token.
        return Err(Reason::MalformedKey.into());
    }
    // Guessing keys here is guessing keys: the brute-force guard counts it and cools it down.
    let caller = Caller { peer, headers };
    let (who, digest) = crate::request::check::guarded(gw, caller, Some(key), || {
        let digest = gw.digest_presented(key)?;
        gw.authenticate_digest(&digest).map(|who| (who, digest))
    })?;
    if let Some(f) = settings
        .features
        .iter()
        .find(|f| !who.client.policy.has_feature(f))
    {
        return Err(Refusal::from(Denial::about(Reason::FeatureNotOnPlan, f)).by(Some(who)));
    }
    let now = gw.clock.now();
    let token = token::issue(&settings.secret, &digest, now, settings.ttl);
    let expires = now.plus(settings.ttl);
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
    Ok(Served::local(resp, Some(who)))
}
