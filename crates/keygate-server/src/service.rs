//! One request through the gateway: infra, content negotiation, whoami and verify endpoints,
//! then the decision and the proxy. Every path ends in one response and one access-log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt as _;
use http::header::ACCEPT;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::{negotiate, BodyFormat};
use serde_json::json;

use crate::body::Body;
use crate::bounds;
use crate::check::{self, Refused};
use crate::gateway::{Admitted, Gateway};
use crate::guard::Caller;
use crate::infra::{self, Infra};
use crate::metrics::Outcome;
use crate::profile::{IdentityHeaders, LimitFacts};
use crate::proxy::{self, Forward, Upstreams};
use crate::ratelimit;
use crate::routes::Route;
use crate::verify::{self, Contract};
use crate::{respond, whoami};

/// What one worker thread owns: the shared gateway and its own upstream connection pools.
#[derive(Debug)]
pub struct Worker {
    pub gw: Arc<Gateway>,
    pub upstreams: Upstreams,
    /// This worker's copy of the profile's identity header names ([`IdentityHeaders::copied`]).
    pub identity: IdentityHeaders,
}

fn refuse(
    gw: &Gateway,
    route: Option<usize>,
    denial: &Denial,
    format: BodyFormat,
) -> Response<Body> {
    let facts = check::refusal_facts(gw, denial.reason);
    let overrides = route
        .and_then(|i| gw.config.routes.routes().get(i))
        .map(|r| &r.errors);
    let resp = respond::denial_on(&gw.config.profile, overrides, denial, format, facts);
    gw.metrics.record(
        route,
        Outcome::Denied(denial.reason),
        resp.status().as_u16(),
    );
    resp
}

/// Under `when = "always"`, writes the caller's budget on an answer the limiter did not count
/// (`Gateway::budget`: peeked, nothing consumed). `Retry-After` stays the answer's own.
pub async fn report_budget(
    gw: &Gateway,
    resp: &mut Response<Body>,
    who: Option<&Admitted>,
    route: Option<&Route>,
    caller: Caller<'_>,
    reason: Option<Reason>,
) {
    let style = gw.config.profile.rate_limit_headers;
    if !style.always {
        return;
    }
    let now = gw.clock.now();
    // Boxed: it may wait on Redis, and only refusals come here.
    if let Some((window, state)) = Box::pin(gw.budget(who, route, caller, reason, now)).await {
        let style = ratelimit::HeaderStyle {
            retry_after: false,
            ..style
        };
        ratelimit::write_state(resp.headers_mut(), style, window, &state, now);
    }
}

fn route_at(gw: &Gateway, index: Option<usize>) -> Option<&Route> {
    index.and_then(|i| gw.config.routes.routes().get(i))
}

/// [`handle`], with a panic turned into a 500 instead of a dropped connection: one request's bug
/// must not take other requests on the connection with it. The panic itself is logged by the
/// process's panic hook (the binary's logs its location through `tracing`).
///
/// Not an `async fn`, nor is [`guard_panics`]: an async wrapper keeps its argument future and
/// the future it awaits side by side in its state, so each layer doubled the size that every
/// request initialises and moves (15 KiB before, BENCHMARKS.md). Combinators hold one.
pub fn handle_guarded(
    w: Arc<Worker>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> impl std::future::Future<Output = Response<Body>> + Send {
    // The worker's own handle, not the gateway's: that count is shared by every worker.
    let worker = Arc::clone(&w);
    guard_panics(handle(w, req, remote)).map(move |resp| {
        if resp.extensions().get::<Panicked>().is_some() {
            worker.gw.metrics.record_panic();
        }
        resp
    })
}

/// Marks the answer [`guard_panics`] gave in place of a panicked handler's.
#[derive(Clone, Copy, Debug)]
pub struct Panicked;

/// Runs `answer`; if it panics, the answer is a 500 `internal_error` problem document.
pub fn guard_panics<F>(answer: F) -> impl std::future::Future<Output = Response<Body>>
where
    F: std::future::Future<Output = Response<Body>>,
{
    std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .map(|answered| answered.unwrap_or_else(|_| panicked()))
}

/// The answer in place of a panicked handler's.
fn panicked() -> Response<Body> {
    tracing::error!("A request handler panicked; answered 500.");
    let mut resp = respond::json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "code": "internal_error",
            "detail": "The gateway failed to answer this request.",
        }),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp.extensions_mut().insert(Panicked);
    resp
}

pub async fn handle(w: Arc<Worker>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    // A request answered here without reading its body leaves unread bytes on the connection;
    // closing it is the only safe end (a client reusing it would read garbage or fail).
    let has_body = !hyper::body::Body::is_end_stream(req.body());
    let mut resp = route(w, req, remote).await;
    if has_body && matches!(resp.body(), Body::Full(_)) && !resp.status().is_success() {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn route(w: Arc<Worker>, mut req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    // The clock is read for the access log's latency only when that log is on.
    let started = access_logged().then(Instant::now);
    let gw = &*w.gw;
    let profile = &gw.config.profile;
    let method = req.method().clone();

    if let Some(which) = Infra::from_path(req.uri().path()) {
        if which.is_public(gw) {
            gw.metrics.record(None, Outcome::Local, 200);
            return infra::answer(gw, which);
        }
    }
    if let Some(denial) = gw.emergency.denial() {
        let format =
            negotiate(req.headers().get(ACCEPT).map(|v| v.as_bytes())).unwrap_or(BodyFormat::Json);
        let mut resp = refuse(gw, None, &denial, format);
        let caller = Caller {
            peer: remote.ip(),
            headers: req.headers(),
        };
        report_budget(gw, &mut resp, None, None, caller, Some(denial.reason)).await;
        access_log(
            gw,
            &method,
            None,
            resp.status(),
            Some(denial.reason),
            None,
            started,
        );
        return resp;
    }
    if !gw.replica.is_loaded() {
        return respond::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "loading", "detail": "keygate is loading its keys; retry shortly." }),
        );
    }
    let format = match negotiate(req.headers().get(ACCEPT).map(|v| v.as_bytes())) {
        Some(f) => f,
        None if profile.enforce_accept => {
            let reason = Reason::NotAcceptable;
            let mut resp = refuse(gw, None, &Denial::new(reason), BodyFormat::Json);
            let caller = Caller {
                peer: remote.ip(),
                headers: req.headers(),
            };
            report_budget(gw, &mut resp, None, None, caller, Some(reason)).await;
            return resp;
        }
        None => BodyFormat::Json,
    };

    if let Some(denial) = check::host_denial(req.version(), req.headers()) {
        let mut resp = refuse(gw, None, &denial, format);
        let caller = Caller {
            peer: remote.ip(),
            headers: req.headers(),
        };
        report_budget(gw, &mut resp, None, None, caller, Some(denial.reason)).await;
        access_log(
            gw,
            &method,
            None,
            resp.status(),
            Some(denial.reason),
            None,
            started,
        );
        return resp;
    }
    // Cold paths are boxed: an awaited future is part of this one's state, which every
    // request initialises and moves whatever path it takes.
    if crate::ws::handshake::is_upgrade(&req) {
        if let Some(resp) = Box::pin(crate::ws::serve(&w, &mut req, remote, format)).await {
            return resp;
        }
    }
    let path = req.uri().path();
    let caller = Caller {
        peer: remote.ip(),
        headers: req.headers(),
    };
    if crate::ws::token_endpoint::is_token_path(gw, path) {
        let (mut resp, who, reason) = crate::ws::token_endpoint::answer(
            gw,
            &method,
            req.headers(),
            req.uri().query(),
            remote.ip(),
            format,
        );
        report_budget(gw, &mut resp, who.as_ref(), None, caller, reason).await;
        return resp;
    }
    if method == Method::GET && profile.whoami.as_deref() == Some(path) {
        return match check::authenticate(gw, req.headers(), req.uri().query(), remote.ip()) {
            Ok((who, _)) => {
                gw.metrics.record(None, Outcome::Local, 200);
                gw.usage.record(&who.client, gw.clock.now(), 200);
                let mut resp = whoami::answer(&profile.whoami_body, &who, format);
                report_budget(gw, &mut resp, Some(&who), None, caller, None).await;
                resp
            }
            Err(reason) => {
                let mut resp = refuse(gw, None, &Denial::new(reason), format);
                report_budget(gw, &mut resp, None, None, caller, Some(reason)).await;
                resp
            }
        };
    }
    if profile.verify {
        if path == verify::VERIFY_PATH {
            return Box::pin(verify::verify(gw, req, format, remote.ip())).await;
        }
        if let Some(contract) = Contract::from_path(path) {
            return verify::forward_auth(gw, contract, &req, format, remote.ip());
        }
    }

    let decided = check::decide(
        gw,
        &method,
        path,
        req.uri().query(),
        req.headers(),
        remote.ip(),
    );
    let passed = match decided {
        Ok(p) => p,
        Err(Refused {
            route_index,
            denial,
            who,
        }) => {
            let mut resp = refuse(gw, route_index, &denial, format);
            let route = route_at(gw, route_index);
            let reason = Some(denial.reason);
            report_budget(gw, &mut resp, who.as_ref(), route, caller, reason).await;
            access_log(
                gw,
                &method,
                route_index,
                resp.status(),
                Some(denial.reason),
                who.as_ref(),
                started,
            );
            return resp;
        }
    };
    // A declared body past the bound is never forwarded (crate::bounds); checked before the
    // limits so a refused request consumes nothing. Self-service reads its own smaller bodies.
    let max_body = match (&passed.route.selfservice, &gw.config.selfservice) {
        (Some(_), Some(s)) => u64::try_from(s.max_body_bytes).unwrap_or(u64::MAX),
        _ => gw.config.http.max_body_bytes,
    };
    if bounds::body_too_large(req.headers(), max_body) {
        let denial = Denial::about(Reason::PayloadTooLarge, &max_body.to_string());
        let mut resp = refuse(gw, Some(passed.route_index), &denial, format);
        let (who, route, reason) = (passed.who.as_ref(), Some(passed.route), Some(denial.reason));
        report_budget(gw, &mut resp, who, route, caller, reason).await;
        access_log(
            gw,
            &method,
            Some(passed.route_index),
            resp.status(),
            Some(denial.reason),
            passed.who.as_ref(),
            started,
        );
        return resp;
    }
    let now = gw.clock.now();
    // An open breaker answers before the limits, so a request that cannot be served
    // consumes nothing. Self-service is answered here, not upstream: no breaker.
    let ticket = if passed.route.selfservice.is_some() {
        None
    } else {
        match gw.breakers.admit(passed.route.upstream, now) {
            Ok(ticket) => ticket,
            Err(open) => {
                let mut resp = respond::circuit_open(profile, format, open.retry_after);
                let reason = Reason::UpstreamUnavailable;
                let (who, route) = (passed.who.as_ref(), Some(passed.route));
                report_budget(gw, &mut resp, who, route, caller, Some(reason)).await;
                gw.metrics.record(
                    Some(passed.route_index),
                    Outcome::Denied(reason),
                    resp.status().as_u16(),
                );
                access_log(
                    gw,
                    &method,
                    Some(passed.route_index),
                    resp.status(),
                    Some(reason),
                    passed.who.as_ref(),
                    started,
                );
                return resp;
            }
        }
    };
    let verdict = match &passed.who {
        Some(who) => gw.check_limits(who, passed.route, now).await,
        None => {
            let source = gw.guard.source(crate::guard::Caller {
                peer: remote.ip(),
                headers: req.headers(),
            });
            gw.check_source_limits(passed.route, source, now).await
        }
    };
    let limited = match verdict {
        Ok(Some((limit, state))) if !state.allowed => {
            let style = profile.rate_limit_headers;
            let facts = LimitFacts {
                limit: state.limit,
                remaining: state.remaining,
                reset: u64::try_from(state.reset.as_secs()).unwrap_or(0),
                retry_after: state.retry_after.as_secs()
                    + u64::from(state.retry_after.subsec_nanos() > 0),
            };
            let mut resp = respond::denial_on(
                profile,
                Some(&passed.route.errors),
                &Denial::new(Reason::RateLimited),
                format,
                facts,
            );
            ratelimit::write_headers(resp.headers_mut(), style, &limit, &state, now);
            gw.metrics.record(
                Some(passed.route_index),
                Outcome::Denied(Reason::RateLimited),
                resp.status().as_u16(),
            );
            access_log(
                gw,
                &method,
                Some(passed.route_index),
                resp.status(),
                Some(Reason::RateLimited),
                passed.who.as_ref(),
                started,
            );
            return resp;
        }
        Ok(decided) => decided,
        Err(reason) => {
            let mut resp = refuse(gw, Some(passed.route_index), &Denial::new(reason), format);
            let (who, route) = (passed.who.as_ref(), Some(passed.route));
            report_budget(gw, &mut resp, who, route, caller, Some(reason)).await;
            access_log(
                gw,
                &method,
                Some(passed.route_index),
                resp.status(),
                Some(reason),
                passed.who.as_ref(),
                started,
            );
            return resp;
        }
    };
    // What the limiter said of this request, on whatever answers it.
    let report_limited = |headers: &mut http::HeaderMap| {
        if let Some((limit, state)) = &limited {
            let style = profile.rate_limit_headers;
            ratelimit::write_headers(headers, style, limit, state, now);
        }
    };
    crate::fault::panic_if_injected(&passed.route.name);
    if let Some(action) = &passed.route.selfservice {
        let answered = Box::pin(crate::selfservice::answer(
            gw,
            action,
            req,
            passed.who.as_ref(),
            remote,
        ))
        .await;
        let (mut resp, reason) = match answered {
            Ok(resp) => {
                gw.metrics.record(
                    Some(passed.route_index),
                    Outcome::Local,
                    resp.status().as_u16(),
                );
                (resp, None)
            }
            Err(e) => {
                let denial = e.denial();
                (
                    refuse(gw, Some(passed.route_index), &denial, format),
                    Some(denial.reason),
                )
            }
        };
        report_limited(resp.headers_mut());
        access_log(
            gw,
            &method,
            Some(passed.route_index),
            resp.status(),
            reason,
            passed.who.as_ref(),
            started,
        );
        return resp;
    }
    let forward = Forward {
        max_body,
        upstream: passed.route.upstream,
        spec: &gw.config.upstreams[passed.route.upstream],
        host: w.upstreams.host(passed.route.upstream),
        identity: &w.identity,
        who: passed.who.as_ref(),
        credential_source: passed.credential_source,
        remote,
        route: passed.route,
        guard: &gw.guard,
    };
    let outcome = if passed.who.is_some() {
        Outcome::Forwarded
    } else {
        Outcome::Public
    };
    let result = match proxy::prepare(&mut req, profile, &forward) {
        Ok(()) => {
            let result = proxy::send(&w.upstreams, &forward, req).await;
            if let Some(ticket) = ticket {
                let failed = match &result {
                    Ok(resp) => ticket.count_5xx() && resp.status().is_server_error(),
                    Err(r) => matches!(r, Reason::UpstreamUnavailable | Reason::UpstreamTimeout),
                };
                ticket.record(failed, || gw.clock.now());
            }
            result
        }
        Err(reason) => Err(reason),
    };
    let (resp, reason) = match result {
        Ok(mut resp) => {
            gw.metrics
                .record(Some(passed.route_index), outcome, resp.status().as_u16());
            report_limited(resp.headers_mut());
            (resp.map(Body::Upstream), None)
        }
        Err(reason) => {
            let mut resp = refuse(gw, Some(passed.route_index), &Denial::new(reason), format);
            // The request was counted: report what the limiter said when it was.
            if profile.rate_limit_headers.always {
                report_limited(resp.headers_mut());
            }
            (resp, Some(reason))
        }
    };
    access_log(
        gw,
        &method,
        Some(passed.route_index),
        resp.status(),
        reason,
        passed.who.as_ref(),
        started,
    );
    resp
}

fn access_logged() -> bool {
    tracing::enabled!(target: "keygate::access", tracing::Level::INFO)
}

/// Counts the request in its client's usage, and writes one access-log line per proxied or
/// refused request. Never the key, never the query string.
fn access_log(
    gw: &Gateway,
    method: &Method,
    route: Option<usize>,
    status: StatusCode,
    reason: Option<Reason>,
    who: Option<&crate::gateway::Admitted>,
    started: Option<Instant>,
) {
    if let Some(w) = who {
        gw.usage.record(&w.client, gw.clock.now(), status.as_u16());
    }
    if !access_logged() {
        return;
    }
    let route_name = route
        .and_then(|i| gw.config.routes.routes().get(i))
        .map_or("-", |r| &*r.name);
    tracing::info!(
        target: "keygate::access",
        method = %method,
        route = route_name,
        status = status.as_u16(),
        reason = reason.map_or("-", Reason::code),
        client = who.map_or("-", |w| w.client.policy.id.as_str()),
        key_id = who.map_or("-", |w| w.key.id()),
        latency_us = started.map_or(0, |t| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)),
        "Request."
    );
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_next_request_is_served() {
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("handler bug");
            }
            respond::json(StatusCode::OK, &json!({}))
        };
        let resp = guard_panics(panicking).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(resp.headers()[http::header::CONNECTION], "close");
        let ok = guard_panics(async { respond::json(StatusCode::OK, &json!({"ok": true})) }).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
