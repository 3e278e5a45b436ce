//! Building responses: profile refusals and small JSON/text answers. The one place a
//! [`Denial`] becomes HTTP.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::BodyFormat;

use crate::body::Body;
use crate::profile::{ErrorOverrides, LimitFacts, Profile};

/// The profile's answer to a refusal.
pub fn denial(
    profile: &Profile,
    denial: &Denial,
    format: BodyFormat,
    limits: LimitFacts,
) -> Response<Body> {
    denial_on(profile, None, denial, format, limits)
}

/// The answer to a refusal on a route with its own error overrides.
pub fn denial_on(
    profile: &Profile,
    route: Option<&ErrorOverrides>,
    denial: &Denial,
    format: BodyFormat,
    limits: LimitFacts,
) -> Response<Body> {
    let r = profile.render(denial, format, limits, route);
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() = r.status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, r.content_type);
    for (k, v) in r.headers {
        headers.append(k, v);
    }
    if denial.reason == Reason::RateLimited
        && profile.rate_limit_headers.retry_after
        && limits.retry_after > 0
    {
        headers.insert(RETRY_AFTER, HeaderValue::from(limits.retry_after));
    }
    resp
}

/// The answer while an upstream's circuit breaker is open: the profile's
/// `upstream_unavailable` body at [`Profile::circuit_open_status`], with `Retry-After` saying
/// when the breaker next lets a probe through.
pub fn circuit_open(profile: &Profile, format: BodyFormat, retry_after: u64) -> Response<Body> {
    let denial = Denial::new(Reason::UpstreamUnavailable);
    let limits = LimitFacts {
        retry_after,
        ..LimitFacts::default()
    };
    let r = profile.render_as(&denial, format, limits, None, profile.circuit_open_status);
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() = r.status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, r.content_type);
    for (k, v) in r.headers {
        headers.append(k, v);
    }
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text answer.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
