//! The one exit of every request.
//!
//! A step of a request (proxying, forward-auth, verify, whoami, the WebSocket token endpoint, a
//! WebSocket upgrade and its login) that refuses returns a [`Refusal`] and writes nothing
//! itself. [`Trail::finish`] turns the outcome into the answer: a refusal rendered through the
//! profile ([`render`]; [`on_socket`] gives a WebSocket its message and close frame), the budget
//! headers, and [`record`]: the metrics, the client's usage and one access-log line, exactly
//! once. pingora's `handle_error` → `logging()` is the model.

use std::time::{Duration, Instant};

use http::header::{HeaderValue, RETRY_AFTER, SEC_WEBSOCKET_VERSION};
use http::{Method, Response, StatusCode};
use keygate_core::decision::{Denial, Reason};
use keygate_core::limit::{Limit, LimitState};
use keygate_core::render::BodyFormat;
use keygate_core::Timestamp;

use crate::policy::guard::Caller;
use crate::policy::profile::LimitFacts;
use crate::policy::ratelimit::{self, HeaderStyle};
use crate::policy::routes::Route;
use crate::policy::ws::CloseEvent;
use crate::request::body::Body;
use crate::state::gateway::{Admitted, Gateway};
use crate::state::metrics::Outcome;
use crate::state::traces::TraceCtx;

/// A limit's state as an answer reports it, with the window the IETF policy names (`w`).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub window: u64,
    pub state: LimitState,
    /// When the limiter answered: `reset` is reported relative to it.
    pub at: Timestamp,
}

impl Budget {
    pub fn of(limit: &Limit, state: LimitState, at: Timestamp) -> Budget {
        Budget {
            window: limit.window_seconds(),
            state,
            at,
        }
    }

    /// What a refusal quotes of this budget. The one conversion from limiter state to the
    /// facts of an answer, HTTP and WebSocket alike: `Retry-After` in whole seconds rounded
    /// up, and at least one second on a refusal (a client told 0 retries at once).
    pub fn facts(&self) -> LimitFacts {
        let wait = self.state.retry_after;
        let mut retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if !self.state.allowed {
            retry_after = retry_after.max(1);
        }
        LimitFacts {
            limit: self.state.limit,
            remaining: self.state.remaining,
            reset: u64::try_from(self.state.reset.as_secs()).unwrap_or(0),
            retry_after,
        }
    }
}

/// What a refusal quotes besides its reason.
#[derive(Clone, Copy, Debug, Default)]
pub enum Quote {
    /// Nothing of a limit (a brute-force cool-down's 429 quotes the guard's cool-down).
    #[default]
    Nothing,
    /// The limit that refused: a rate, a quota or a connection limit.
    Limit(Budget),
    /// An open circuit breaker: the seconds until it lets a probe through.
    BreakerOpen { retry_after: u64 },
}

/// Why a request is not served, with everything its answer needs.
#[derive(Debug)]
pub struct Refusal {
    pub denial: Denial,
    /// The route it matched: its error overrides and its metrics row.
    pub route: Option<usize>,
    /// The caller, when it authenticated before it was refused (its usage counts the refusal,
    /// its budget is reported). Boxed: refusals are the cold path, and every step's `Result`
    /// is as large as its largest error.
    pub who: Option<Box<Admitted>>,
    pub quote: Quote,
}

impl Refusal {
    pub fn on(mut self, route: usize) -> Refusal {
        self.route = Some(route);
        self
    }

    pub fn by(mut self, who: Option<Admitted>) -> Refusal {
        self.who = who.map(Box::new);
        self
    }

    pub fn quoting(mut self, quote: Quote) -> Refusal {
        self.quote = quote;
        self
    }

    pub fn reason(&self) -> Reason {
        self.denial.reason
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Refusal {
        Refusal {
            denial,
            route: None,
            who: None,
            quote: Quote::Nothing,
        }
    }
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Denial::new(reason).into()
    }
}

/// An answer that is not a refusal.
#[derive(Debug)]
pub(crate) struct Served {
    pub resp: Response<Body>,
    /// `None` while the exit belongs to a WebSocket session that decides on the socket
    /// (`login_message`, `close_code`): the session records it when it has decided.
    pub outcome: Option<Outcome>,
    pub route: Option<usize>,
    pub who: Option<Admitted>,
}

impl Served {
    /// An answer keygate gave itself.
    pub(crate) fn local(resp: Response<Body>, who: Option<Admitted>) -> Served {
        Served {
            resp,
            outcome: Some(Outcome::Local),
            route: None,
            who,
        }
    }
}

/// What one request's exit needs that the steps learn on the way.
#[derive(Debug)]
pub(crate) struct Trail {
    method: Method,
    started: Option<Instant>,
    /// The body format the caller accepts (JSON until negotiated).
    pub format: BodyFormat,
    /// What the limiter counted for this request, once it has: the exit reports that and
    /// never peeks. `Some(None)`: counted, and no limit applied.
    pub counted: Option<Option<Budget>>,
    /// Whether an answer that consumed nothing reports the caller's budget under
    /// `when = "always"` (not the infra endpoints, the verify API or a `101`).
    pub reports_budget: bool,
    /// Refusals answered as 401 or 403 only (nginx's `auth_request` treats any other status
    /// of the sub-request as an error).
    pub auth_statuses_only: bool,
    /// The request's trace, only while `[tracing]` is on.
    pub trace: Option<Box<TraceCtx>>,
}

impl Trail {
    pub(crate) fn start(method: &Method) -> Trail {
        Trail {
            method: method.clone(),
            // The clock is read for the access log's latency only when that log is on.
            started: access_logged().then(Instant::now),
            format: BodyFormat::Json,
            counted: None,
            reports_budget: true,
            auth_statuses_only: false,
            trace: None,
        }
    }

    /// When the request arrived (kept only while the access log is on).
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// Ends the request: renders a refusal, writes the budget headers, counts and logs it.
    /// `caller` is the request's origin while the request is still at hand (a budget that was
    /// not counted is peeked for it); `None` once the request went upstream.
    pub(crate) async fn finish(
        self,
        gw: &Gateway,
        answer: Result<Served, Refusal>,
        caller: Option<Caller<'_>>,
    ) -> Response<Body> {
        let (mut resp, peek) = self.settle(gw, answer);
        if let Some(p) = peek {
            self.peek(gw, &mut resp, p.who.as_ref(), p.route, caller, p.reason)
                .await;
        }
        resp
    }

    /// [`Trail::finish`] for a request the limiter counted (everything let through to an
    /// upstream or a self-service action): there is no budget to peek, so nothing to await,
    /// and the answer is not moved into one more future on the busiest path.
    pub(crate) fn finish_counted(
        self,
        gw: &Gateway,
        answer: Result<Served, Refusal>,
    ) -> Response<Body> {
        debug_assert!(
            self.counted.is_some(),
            "only for requests the limiter counted"
        );
        self.settle(gw, answer).0
    }

    /// Renders the answer, writes the budget the limiter counted and records the exit; says
    /// what to peek when the limiter did not count the request.
    fn settle(
        &self,
        gw: &Gateway,
        answer: Result<Served, Refusal>,
    ) -> (Response<Body>, Option<Peek>) {
        let style = gw.config.profile.rate_limit_headers;
        match answer {
            Ok(served) => {
                let Served {
                    mut resp,
                    outcome,
                    route,
                    who,
                } = served;
                let Some(outcome) = outcome else {
                    return (resp, None);
                };
                if let Some(Some(budget)) = self.counted {
                    write(&mut resp, style, &budget);
                }
                record(
                    gw,
                    &self.exit(route, who.as_ref()),
                    outcome,
                    resp.status(),
                    None,
                );
                let peek = (self.counted.is_none() && outcome == Outcome::Local).then_some(Peek {
                    who,
                    route,
                    reason: None,
                });
                (resp, peek)
            }
            Err(refusal) => {
                let mut resp = render(gw, &refusal, self.format);
                if self.auth_statuses_only {
                    *resp.status_mut() = if refusal.reason().is_authentication_failure() {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::FORBIDDEN
                    };
                }
                let reason = refusal.reason();
                let mut peeks = false;
                match (refusal.quote, self.counted) {
                    (Quote::Limit(budget), _) | (_, Some(Some(budget))) => {
                        write(&mut resp, style, &budget);
                    }
                    (_, Some(None)) => {}
                    (_, None) => peeks = true,
                }
                let exit = self.exit(refusal.route, refusal.who.as_deref());
                record(
                    gw,
                    &exit,
                    Outcome::Denied(reason),
                    resp.status(),
                    Some(reason),
                );
                let peek = peeks.then(|| Peek {
                    who: refusal.who.map(|who| *who),
                    route: refusal.route,
                    reason: Some(reason),
                });
                (resp, peek)
            }
        }
    }

    fn exit<'a>(&'a self, route: Option<usize>, who: Option<&'a Admitted>) -> Exit<'a> {
        Exit {
            method: &self.method,
            route,
            who,
            started: self.started,
            trace: self.trace.as_deref(),
        }
    }

    /// Under `when = "always"`, the caller's budget on an answer the limiter did not count
    /// (`Gateway::budget`: peeked, nothing consumed). `Retry-After` stays the answer's own.
    async fn peek(
        &self,
        gw: &Gateway,
        resp: &mut Response<Body>,
        who: Option<&Admitted>,
        route: Option<usize>,
        caller: Option<Caller<'_>>,
        reason: Option<Reason>,
    ) {
        let style = gw.config.profile.rate_limit_headers;
        let Some(caller) = caller.filter(|_| style.always && self.reports_budget) else {
            return;
        };
        let now = gw.clock.now();
        let route = route_at(gw, route);
        // Boxed: it may wait on Redis, and only refusals and local answers come here.
        if let Some((window, state)) = Box::pin(gw.budget(who, route, caller, reason, now)).await {
            let style = HeaderStyle {
                retry_after: false,
                ..style
            };
            ratelimit::write_state(resp.headers_mut(), style, window, &state, now);
        }
    }
}

/// What an answer the limiter did not count needs to have the caller's budget peeked.
struct Peek {
    who: Option<Admitted>,
    route: Option<usize>,
    reason: Option<Reason>,
}

/// Writes what a limit said of this request (the limiter's own answer: `Retry-After` too on a
/// refusal, where the profile's style has it).
fn write(resp: &mut Response<Body>, style: HeaderStyle, budget: &Budget) {
    ratelimit::write_state(
        resp.headers_mut(),
        style,
        budget.window,
        &budget.state,
        budget.at,
    );
}

fn route_at(gw: &Gateway, index: Option<usize>) -> Option<&Route> {
    index.and_then(|i| gw.config.routes.routes().get(i))
}

/// The facts a refusal quotes: its limit's, an open breaker's wait, or a brute-force
/// cool-down's.
fn facts(gw: &Gateway, refusal: &Refusal) -> LimitFacts {
    match refusal.quote {
        Quote::Limit(budget) => budget.facts(),
        Quote::BreakerOpen { retry_after } => LimitFacts {
            retry_after,
            ..LimitFacts::default()
        },
        Quote::Nothing if refusal.reason() == Reason::RateLimited => gw.guard.facts(gw.clock.now()),
        Quote::Nothing => LimitFacts {
            retry_after: refusal
                .denial
                .lifts_at()
                .map_or(0, |until| seconds_until(gw.clock.now(), until)),
            ..LimitFacts::default()
        },
    }
}

/// Whole seconds from `now` to `until`, rounded up, at least 1.
fn seconds_until(now: Timestamp, until: Timestamp) -> u64 {
    let ms = until.as_millis().saturating_sub(now.as_millis()).max(1);
    u64::try_from(ms).unwrap_or(1).div_ceil(1000)
}

/// The profile's HTTP answer to a refusal: the route's overrides before the profile's own
/// answer, `Retry-After` where the refusal quotes a wait. The one place a refusal becomes HTTP.
pub(crate) fn render(gw: &Gateway, refusal: &Refusal, format: BodyFormat) -> Response<Body> {
    let profile = &gw.config.profile;
    let overrides = route_at(gw, refusal.route).map(|r| &r.errors);
    let facts = facts(gw, refusal);
    let status = match refusal.quote {
        Quote::BreakerOpen { .. } => Some(profile.circuit_open_status),
        _ => None,
    };
    let r = match status {
        Some(status) => profile.render_as(&refusal.denial, format, facts, overrides, status),
        None => profile.render(&refusal.denial, format, facts, overrides),
    };
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() = r.status;
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, r.content_type);
    for (k, v) in r.headers {
        headers.append(k, v);
    }
    let waits = match refusal.quote {
        Quote::BreakerOpen { .. } => true,
        // A suspension with an `until`: 503 with `Retry-After` (RFC 9110 §10.2.3).
        Quote::Nothing if refusal.denial.lifts_at().is_some() => true,
        _ => {
            matches!(
                refusal.reason(),
                Reason::RateLimited | Reason::TooManyConnections
            ) && profile.rate_limit_headers.retry_after
        }
    };
    if waits && facts.retry_after > 0 {
        headers.insert(RETRY_AFTER, HeaderValue::from(facts.retry_after));
    }
    if refusal.reason() == Reason::UpgradeRequired {
        // RFC 6455 §4.2.2: the versions this server speaks.
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    resp
}

/// A refusal on an open WebSocket: the profile's close event for it, and its error message's
/// code and detail. The one reason → close map of every WebSocket mode.
pub(crate) fn on_socket(refusal: &Refusal) -> (CloseEvent, &'static str, String) {
    let reason = refusal.reason();
    let event = match reason {
        r if r.is_authentication_failure() => CloseEvent::Unauthorized,
        Reason::LoginTimeout => CloseEvent::LoginTimeout,
        Reason::RateLimited | Reason::LimiterUnavailable | Reason::TooManyConnections => {
            CloseEvent::TooManyConnections
        }
        Reason::UpstreamUnavailable | Reason::UpstreamTimeout => CloseEvent::UpstreamUnavailable,
        Reason::Suspended => CloseEvent::Suspended,
        _ => CloseEvent::Forbidden,
    };
    let wait = match refusal.quote {
        Quote::Limit(budget) => budget.facts().retry_after,
        Quote::BreakerOpen { retry_after } => retry_after,
        Quote::Nothing => 1,
    };
    let subject = refusal.denial.subject.as_deref().unwrap_or("");
    let detail = match (reason, refusal.quote) {
        (Reason::TooManyConnections, Quote::Limit(b)) => {
            format!("Connection limit reached ({} allowed).", b.state.limit)
        }
        _ => reason
            .default_detail()
            .replace("{subject}", subject)
            .replace("{retry_after}", &wait.to_string()),
    };
    (event, reason.code(), detail)
}

/// Where a request ended, for [`record`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exit<'a> {
    pub method: &'a Method,
    pub route: Option<usize>,
    pub who: Option<&'a Admitted>,
    pub started: Option<Instant>,
    /// The request's trace, only while `[tracing]` is on.
    pub trace: Option<&'a TraceCtx>,
}

/// A forwarded request's exit as the proxy takes it, for the benches: its trace begun from
/// `incoming` (while `[tracing]` is on), told to the upstream in `to_upstream`, the upstream's
/// time taken, then [`record`].
#[doc(hidden)]
pub fn bench_forwarded(
    gw: &Gateway,
    who: &Admitted,
    incoming: &http::HeaderMap,
    to_upstream: &mut http::HeaderMap,
) {
    let mut trace = gw.tracer.get().map(|t| t.begin(incoming));
    let started = trace.as_deref().map(|t| {
        crate::state::traces::toward_upstream(t, to_upstream);
        Instant::now()
    });
    if let (Some(t), Some(started)) = (trace.as_deref_mut(), started) {
        t.upstream = Some(started.elapsed());
    }
    let exit = Exit {
        method: &Method::GET,
        route: Some(0),
        who: Some(who),
        started: None,
        trace: trace.as_deref(),
    };
    record(gw, &exit, Outcome::Forwarded, StatusCode::OK, None);
}

/// Whether the access log is on (its clock is read only then).
pub(crate) fn access_logged() -> bool {
    tracing::enabled!(target: super::access_log::TARGET, tracing::Level::INFO)
}

/// Counts one ended request in the metrics and its client's usage, and writes its one
/// access-log line: never the key, never the query string. Every exit comes here once.
pub(crate) fn record(
    gw: &Gateway,
    exit: &Exit<'_>,
    outcome: Outcome,
    status: StatusCode,
    reason: Option<Reason>,
) {
    let status = status.as_u16();
    gw.metrics.record(exit.route, outcome, status);
    if let Some(w) = exit.who {
        let (key, route) = if gw.config.analytics.enabled {
            (
                Some(&w.key.limit_subject),
                gw.analytics_ids.route(exit.route),
            )
        } else {
            (None, 0)
        };
        gw.usage
            .record(&w.client, key, route, gw.clock.now(), status);
    }
    // An unsampled request's span is never exported: its attributes are not built either.
    if let Some(trace) = exit.trace.filter(|t| t.sampled()) {
        span(gw, exit, trace, outcome, status, reason, Vec::new());
    }
    if !access_logged() {
        return;
    }
    let route_name = route_at(gw, exit.route).map_or("-", |r| &*r.name);
    let latency_us = exit.started.map_or(0, |t| {
        u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
    });
    tracing::info!(
        target: super::access_log::TARGET,
        method = %exit.method,
        route = route_name,
        status,
        reason = reason.map_or("-", Reason::code),
        client = exit.who.map_or("-", |w| w.client.policy.id.as_str()),
        key_id = exit.who.map_or("-", |w| w.key.id()),
        latency_us,
        "Request."
    );
}

/// What an admitted WebSocket session did, for its span at close.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionTally {
    /// Data messages the client sent that went on to the upstream.
    pub from_client: u64,
    /// Data messages the upstream sent that reached the client.
    pub to_client: u64,
    /// From the relay's start to its close.
    pub lasted: Duration,
    /// How it ended: who closed it, or the gateway's close event.
    pub end: &'static str,
}

/// The span of an admitted WebSocket session, at its close: the upgrade's facts (its exit
/// recorded everything else when it was decided) with the session's duration, message counts
/// and end. Spans only; nothing else is counted twice.
pub(crate) fn session_closed(gw: &Gateway, exit: &Exit<'_>, tally: SessionTally) {
    use opentelemetry::KeyValue;
    let Some(trace) = exit.trace.filter(|t| t.sampled()) else {
        return;
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let extra = vec![
        KeyValue::new("keygate.ws.messages_from_client", count(tally.from_client)),
        KeyValue::new("keygate.ws.messages_to_client", count(tally.to_client)),
        KeyValue::new("keygate.ws.session_ms", tally.lasted.as_secs_f64() * 1000.0),
        KeyValue::new("keygate.ws.end", tally.end),
    ];
    span(
        gw,
        exit,
        trace,
        Outcome::Forwarded,
        StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        None,
        extra,
    );
}

/// The request's one span (`crate::state::traces`): what the access log says, under
/// OpenTelemetry's names where it has them, and `extra` (a session's facts). Never the query
/// string, never a header.
#[cold]
fn span(
    gw: &Gateway,
    exit: &Exit<'_>,
    trace: &TraceCtx,
    outcome: Outcome,
    status: u16,
    reason: Option<Reason>,
    extra: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::KeyValue;
    let Some(tracer) = gw.tracer.get() else {
        return;
    };
    let route = route_at(gw, exit.route).map(|r| r.name.to_string());
    let name = match &route {
        Some(r) => format!("{} {r}", exit.method),
        None => exit.method.to_string(),
    };
    let mut attributes = Vec::with_capacity(10 + extra.len());
    attributes.push(KeyValue::new(
        "http.request.method",
        exit.method.to_string(),
    ));
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(r) = route {
        attributes.push(KeyValue::new("http.route", r));
    }
    attributes.push(KeyValue::new("keygate.decision", outcome.name()));
    if let Some(r) = reason {
        attributes.push(KeyValue::new("keygate.reason", r.code()));
    }
    if let Some(w) = exit.who {
        attributes.push(KeyValue::new(
            "keygate.client_id",
            w.client.policy.id.as_str().to_owned(),
        ));
        attributes.push(KeyValue::new("keygate.key_id", w.key.id().to_owned()));
    }
    if let Some(d) = trace.upstream {
        attributes.push(KeyValue::new(
            "keygate.upstream.duration_ms",
            d.as_secs_f64() * 1000.0,
        ));
    }
    attributes.extend(extra);
    tracer.end(trace, name, attributes, status >= 500);
}
