//! One request through the gateway, as a pipeline: infra, content negotiation, the WebSocket
//! upgrade, the token, whoami, verify and forward-auth endpoints, then the decision, the body
//! bound, the breaker and the limits ([`gate`]), and the upstream or a self-service action
//! ([`forward`]). Each step refuses with a [`Refusal`]; every path ends in
//! [`Trail::finish`]: one answer, one metrics record, one access-log line.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt as _;
use http::header::ACCEPT;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::{negotiate, BodyFormat};
use serde_json::json;

use crate::policy::guard::Caller;
use crate::policy::routes::Target;
use crate::request::body::Body;
use crate::request::bounds;
use crate::request::check::{self, Passed};
use crate::request::exit::{Quote, Refusal, Served, Trail};
use crate::request::proxy::{self, Forward};
use crate::request::verify::{self, Contract};
pub(crate) use crate::request::worker::Worker;
use crate::request::{respond, whoami};
use crate::runtime::infra::{self, Infra};
use crate::state::breaker::Ticket;
use crate::state::metrics::Outcome;

/// [`handle`], with a panic turned into a 500 instead of a dropped connection: one request's bug
/// must not take other requests on the connection with it. The panic itself is logged by the
/// process's panic hook (the binary's logs its location through `tracing`).
///
/// Not an `async fn`, nor is [`guard_panics`]: an async wrapper keeps its argument future and
/// the future it awaits side by side in its state, so each layer doubled the size that every
/// request initialises and moves (15 KiB before, BENCHMARKS.md). Combinators hold one.
pub(crate) fn handle_guarded(
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
pub(crate) struct Panicked;

/// Runs `answer`; if it panics, the answer is a 500 `internal_error` problem document.
pub(crate) fn guard_panics<F>(answer: F) -> impl std::future::Future<Output = Response<Body>>
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

pub(crate) async fn handle(
    w: Arc<Worker>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
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

/// What the steps before the upstream decided.
enum Gate<'g> {
    /// Answered here: infra, loading, whoami, verify, forward-auth, the token endpoint, a
    /// WebSocket upgrade.
    Answered(Served),
    /// Let through to its route's upstream or self-service action.
    Pass(Pass<'g>),
}

/// A request let through, with what forwarding it needs.
struct Pass<'g> {
    passed: Passed<'g>,
    /// The breaker's ticket (`None` where no breaker applies).
    ticket: Option<Ticket<'g>>,
    /// The body bound it was checked against, enforced again while streaming.
    max_body: u64,
}

async fn route(w: Arc<Worker>, mut req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
    let gw = &*w.gw;
    let mut trail = Trail::start(req.method());
    if let Some(tracer) = gw.tracer.get() {
        trail.trace = Some(tracer.begin(req.headers()));
    }
    let answer = match gate(&w, &mut req, remote, &mut trail).await {
        Ok(Gate::Pass(pass)) => return forward(&w, req, remote, pass, trail).await,
        Ok(Gate::Answered(served)) => Ok(served),
        Err(refusal) => Err(refusal),
    };
    let caller = Caller {
        peer: remote.ip(),
        headers: req.headers(),
    };
    trail.finish(gw, answer, Some(caller)).await
}

/// Every step before the upstream, in order; each may answer or refuse.
async fn gate<'g>(
    w: &'g Arc<Worker>,
    req: &mut Request<Incoming>,
    remote: SocketAddr,
    trail: &mut Trail,
) -> Result<Gate<'g>, Refusal> {
    let gw = &*w.gw;
    let profile = &gw.config.profile;
    if let Some(which) = Infra::from_path(req.uri().path()) {
        if which.is_public(gw) {
            trail.reports_budget = false;
            return Ok(Gate::Answered(Served::local(
                infra::answer(gw, which),
                None,
            )));
        }
    }
    // Leak reports are answered even in emergency mode and while loading: a key published
    // on GitHub must be revoked whatever else is going on.
    if let Some(leaks) = &gw.config.leak_reports {
        if req.uri().path() == leaks.path {
            trail.reports_budget = false;
            let resp = Box::pin(crate::leak_reports::answer(gw, leaks, req)).await;
            return Ok(Gate::Answered(Served::local(resp, None)));
        }
    }
    let accepted = negotiate(req.headers().get(ACCEPT).map(|v| v.as_bytes()));
    trail.format = accepted.unwrap_or(BodyFormat::Json);
    if let Some(denial) = gw.emergency.denial() {
        return Err(denial.into());
    }
    if !gw.replica.is_loaded() {
        trail.reports_budget = false;
        let resp = respond::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "loading", "detail": "keygate is loading its keys; retry shortly." }),
        );
        return Ok(Gate::Answered(Served::local(resp, None)));
    }
    if accepted.is_none() && profile.enforce_accept {
        return Err(Reason::NotAcceptable.into());
    }
    if let Some(denial) = check::host_denial(req.version(), req.headers()) {
        return Err(denial.into());
    }
    // Cold paths are boxed: an awaited future is part of this one's state, which every
    // request initialises and moves whatever path it takes.
    if crate::ws::handshake::is_upgrade(req) {
        let started = trail.started();
        let serving = crate::ws::serve(w, req, remote, started, &mut trail.trace);
        if let Some(answer) = Box::pin(serving).await {
            return answer.map(Gate::Answered);
        }
    }
    let path = req.uri().path();
    if crate::ws::token_endpoint::is_token_path(gw, path) {
        let (method, headers, query) = (req.method(), req.headers(), req.uri().query());
        return crate::ws::token_endpoint::answer(gw, method, headers, query, remote.ip())
            .map(Gate::Answered);
    }
    if req.method() == Method::GET && profile.whoami.as_deref() == Some(path) {
        let (who, _) = check::authenticate(gw, req.headers(), req.uri().query(), remote.ip())?;
        let resp = whoami::answer(&profile.whoami_body, &who, trail.format);
        return Ok(Gate::Answered(Served::local(resp, Some(who))));
    }
    if profile.verify {
        if path == verify::VERIFY_PATH {
            trail.reports_budget = false;
            return Box::pin(verify::verify(gw, req, remote.ip()))
                .await
                .map(Gate::Answered);
        }
        if let Some(contract) = Contract::from_path(path) {
            return Box::pin(verify::forward_auth(gw, contract, req, remote.ip(), trail))
                .await
                .map(Gate::Answered);
        }
    }

    let (method, query, headers) = (req.method(), req.uri().query(), req.headers());
    let passed = check::decide(gw, method, path, query, headers, remote.ip())?;
    // A declared body past the bound is never forwarded (crate::request::bounds); checked before the
    // limits so a refused request consumes nothing. Self-service reads its own smaller bodies.
    let max_body = match (&passed.route.target, &gw.config.selfservice) {
        (Target::SelfService(_), Some(s)) => u64::try_from(s.max_body_bytes).unwrap_or(u64::MAX),
        _ => gw.config.http.max_body_bytes,
    };
    if bounds::body_too_large(headers, max_body) {
        let denial = Denial::about(Reason::PayloadTooLarge, &max_body.to_string());
        return Err(Refusal::from(denial).on(passed.route_index).by(passed.who));
    }
    let now = gw.clock.now();
    // An open breaker answers before the limits, so a request that cannot be served
    // consumes nothing. Self-service is answered here, not upstream: no breaker.
    let ticket = match passed.route.target {
        Target::SelfService(_) => None,
        Target::Upstream(upstream) => match gw.breakers.admit(passed.upstream(upstream), now) {
            Ok(ticket) => ticket,
            Err(open) => {
                let quote = Quote::BreakerOpen {
                    retry_after: open.retry_after,
                };
                return Err(Refusal::from(Reason::UpstreamUnavailable)
                    .quoting(quote)
                    .on(passed.route_index)
                    .by(passed.who));
            }
        },
    };
    let caller = Caller {
        peer: remote.ip(),
        headers,
    };
    check::limit(gw, &passed, caller, now, trail).await?;
    Ok(Gate::Pass(Pass {
        passed,
        ticket,
        max_body,
    }))
}

/// The upstream, or the route's self-service action; the request is spent here, so the exit
/// peeks no budget (the limiter counted it: [`Trail::finish_counted`]).
async fn forward(
    w: &Worker,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    pass: Pass<'_>,
    mut trail: Trail,
) -> Response<Body> {
    let gw = &*w.gw;
    let Pass {
        passed,
        ticket,
        max_body,
    } = pass;
    let index = passed.route_index;
    crate::runtime::fault::panic_if_injected(&passed.route.name);
    let answer = match &passed.route.target {
        Target::SelfService(action) => {
            let answered = Box::pin(crate::selfservice::answer(
                gw,
                action,
                req,
                passed.who.as_ref(),
                remote,
            ))
            .await;
            match answered {
                Ok(resp) => Ok(Served {
                    resp,
                    outcome: Some(Outcome::Local),
                    route: Some(index),
                    who: passed.who,
                }),
                Err(e) => Err(Refusal::from(e.denial()).on(index).by(passed.who)),
            }
        }
        &Target::Upstream(upstream) => {
            let upstream = passed.upstream(upstream);
            let forward = Forward {
                max_body,
                upstream,
                spec: &gw.config.upstreams[upstream],
                host: w.upstreams.host(upstream),
                identity: &w.identity,
                who: passed.who.as_ref(),
                credential_source: passed.credential_source,
                remote,
                route: passed.route,
                guard: &gw.guard,
                engine: gw.config.upstream_engine,
            };
            let sent = match proxy::prepare(&mut req, &gw.config.profile, &forward) {
                Ok(()) => {
                    // One clock read when the latency histogram (analytics) or a span (tracing)
                    // uses it.
                    let traced = trail.trace.as_deref().is_some_and(|t| {
                        crate::state::traces::toward_upstream(t, req.headers_mut());
                        true
                    });
                    let started =
                        (gw.config.analytics.enabled || traced).then(std::time::Instant::now);
                    let sent = proxy::send(&w.upstreams, &forward, req).await;
                    if let Some(started) = started {
                        let took = started.elapsed();
                        if let Some(t) = trail.trace.as_deref_mut() {
                            t.upstream = Some(took);
                        }
                        if sent.is_ok() && gw.config.analytics.enabled {
                            gw.usage.record_latency(
                                gw.analytics_ids.route(Some(index)),
                                gw.analytics_ids.upstream(upstream),
                                gw.clock.now(),
                                took,
                            );
                        }
                    }
                    if let Some(ticket) = ticket {
                        let failed = match &sent {
                            Ok(resp) => ticket.count_5xx() && resp.status().is_server_error(),
                            Err(r) => {
                                matches!(r, Reason::UpstreamUnavailable | Reason::UpstreamTimeout)
                            }
                        };
                        ticket.record(failed, || gw.clock.now());
                    }
                    sent
                }
                Err(reason) => Err(reason),
            };
            let outcome = if passed.who.is_some() {
                Outcome::Forwarded
            } else {
                Outcome::Public
            };
            match sent {
                Ok(resp) => Ok(Served {
                    resp,
                    outcome: Some(outcome),
                    route: Some(index),
                    who: passed.who,
                }),
                Err(reason) => Err(Refusal::from(reason).on(index).by(passed.who)),
            }
        }
    };
    trail.finish_counted(gw, answer)
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
