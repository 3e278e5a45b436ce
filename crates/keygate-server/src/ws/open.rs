//! Opening a session, per auth mode: authenticate, authorize, take the connection limits,
//! connect the upstream, then hand both sockets to the relay.
//!
//! `handshake` decides everything before answering the upgrade, so refusals are plain HTTP
//! with the profile's status and body (and an unreachable upstream is a 502, not a socket that
//! opens and dies). `login_message` and `close_code` upgrade first and refuse with the
//! profile's messages and close codes.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keygate_core::decision::{Denial, Reason};
use keygate_core::render::{BodyFormat, Value};
use keygate_core::KeyDigest;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::channels;
use super::config::{AuthMode, CloseEvent, MessageKind, WsLimits};
use super::handshake::{self, Opening};
use super::limits::{self, Leases};
use super::login::{self, LoginError};
use super::relay::{close_frame, error_message, ClientSocket, Relay};
use super::session::{Admission, Sessions};
use super::token;
use super::upstream::{self, socket_config, Target, UpstreamSocket};
use crate::body::Body;
use crate::credential;
use crate::gateway::{query_param, Admitted, Gateway};
use crate::guard::Caller;
use crate::metrics::Outcome;
use crate::profile::{CredentialSource, LimitFacts};
use crate::respond;
use crate::routes::{BookmakerSource, RouteMatch};

/// An upgrade request on a WebSocket route, owned so it can outlive the HTTP exchange.
#[derive(Debug)]
pub struct Pending {
    pub route_index: usize,
    pub mode: AuthMode,
    /// Where the upgrade request's key is read from.
    pub credentials: Vec<CredentialSource>,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub remote: SocketAddr,
    pub opening: Opening,
}

/// Why a session is not opened.
#[derive(Debug)]
enum Failure {
    /// Refused, with the caller when it had authenticated (its budget is then reported).
    Denied(Denial, Option<Admitted>),
    Limited(limits::Refused),
}

impl From<Denial> for Failure {
    fn from(d: Denial) -> Self {
        Failure::Denied(d, None)
    }
}

impl From<Reason> for Failure {
    fn from(r: Reason) -> Self {
        Failure::Denied(Denial::new(r), None)
    }
}

impl Failure {
    fn reason(&self) -> Reason {
        match self {
            Failure::Denied(d, _) => d.reason,
            Failure::Limited(l) if l.unavailable => Reason::LimiterUnavailable,
            Failure::Limited(_) => Reason::RateLimited,
        }
    }

    /// The profile's close event for this failure.
    fn event(&self) -> CloseEvent {
        match self.reason() {
            r if r.is_authentication_failure() => CloseEvent::Unauthorized,
            Reason::RateLimited | Reason::LimiterUnavailable => CloseEvent::TooManyConnections,
            Reason::UpstreamUnavailable | Reason::UpstreamTimeout => {
                CloseEvent::UpstreamUnavailable
            }
            _ => CloseEvent::Forbidden,
        }
    }

    /// `(code, detail)` of the error message.
    fn message(&self) -> (&'static str, String) {
        match self {
            Failure::Denied(d, _) => (d.reason.code(), detail(d)),
            Failure::Limited(l) if l.unavailable => (
                Reason::LimiterUnavailable.code(),
                Reason::LimiterUnavailable.default_detail().to_owned(),
            ),
            Failure::Limited(l) => (
                "too_many_connections",
                format!("Connection limit reached ({} allowed).", l.state.limit),
            ),
        }
    }
}

fn detail(d: &Denial) -> String {
    d.reason
        .default_detail()
        .replace("{subject}", d.subject.as_deref().unwrap_or(""))
        .replace("{retry_after}", "1")
}

/// What an admitted caller brings to the relay.
struct Accepted {
    who: Admitted,
    admission: Admission,
    leases: Leases,
    limits: WsLimits,
}

/// A key as presented: the key itself, or a WebSocket token standing for one.
fn credential_of(gw: &Gateway, p: &Pending) -> Result<(String, Option<usize>), Reason> {
    let tokens = &gw.config.ws.profile.token;
    if tokens.path.is_some() {
        if let Some(t) = query_param(p.query.as_deref(), &tokens.param) {
            return Ok((t.to_owned(), None));
        }
    }
    let cred = credential::extract(&p.credentials, &p.headers, p.query.as_deref())?;
    Ok((cred.key.to_owned(), Some(cred.source)))
}

/// Authenticates a key or a token (redeeming it).
async fn authenticate(gw: &Gateway, presented: &str) -> Result<(Admitted, KeyDigest), Reason> {
    if presented.starts_with(token::PREFIX) {
        let digest = token::redeem(gw, presented).await.map_err(Reason::from)?;
        return gw.authenticate_digest(&digest).map(|who| (who, digest));
    }
    let who = gw.authenticate(presented)?;
    Ok((who, gw.config.issuer.digester.digest(presented)))
}

/// The route's requirements, and the facts to check them again later.
fn authorize(
    gw: &Gateway,
    who: &Admitted,
    p: &Pending,
    digest: KeyDigest,
) -> Result<Admission, Denial> {
    let RouteMatch::Found { route, params, .. } = gw.config.routes.find(&Method::GET, &p.path)
    else {
        return Err(Denial::new(Reason::NotFound));
    };
    gw.authorize(who, route, &params, p.query.as_deref())?;
    let sport = route.sport_param.as_deref().and_then(|n| params.get(n));
    let bookmaker = match &route.bookmaker {
        None => None,
        Some(BookmakerSource::Path(n)) => params.get(n),
        Some(BookmakerSource::Query(q)) => query_param(p.query.as_deref(), q),
    };
    let params = if route.needs.has_templates() {
        params.values().iter().map(|&v| v.into()).collect()
    } else {
        Box::default()
    };
    Ok(Admission {
        digest,
        route_index: p.route_index,
        sport: sport.map(Into::into),
        bookmaker: bookmaker.map(Into::into),
        params,
    })
}

/// Authentication, authorization and connection limits.
async fn admit(gw: &Gateway, p: &Pending, presented: &str) -> Result<Accepted, Failure> {
    // The brute-force guard sees WebSocket guesses as it sees REST ones: a source in its
    // cool-down is refused before any lookup, and each failure here counts toward one.
    let caller = Caller {
        peer: p.remote.ip(),
        headers: &p.headers,
    };
    gw.guard.check(caller, Some(presented), || gw.clock.now())?;
    let (who, digest) = match authenticate(gw, presented).await {
        Ok(admitted) => admitted,
        Err(reason) => {
            gw.guard
                .failed(caller, Some(presented), reason, gw.clock.now());
            return Err(reason.into());
        }
    };
    let admission =
        authorize(gw, &who, p, digest).map_err(|d| Failure::Denied(d, Some(who.clone())))?;
    let limits = gw.config.ws.limits_for(&who.client.policy.plan).clone();
    let leases = Leases::acquire(gw, &who, &limits)
        .await
        .map_err(Failure::Limited)?;
    Ok(Accepted {
        who,
        admission,
        leases,
        limits,
    })
}

/// Opens the upstream WebSocket for an admitted caller.
async fn connect(
    gw: &Gateway,
    p: &Pending,
    who: &Admitted,
    source: Option<usize>,
) -> Result<(UpstreamSocket, Option<http::HeaderValue>), Reason> {
    let profile = &gw.config.profile;
    let credential = source.and_then(|i| p.credentials.get(i));
    let token = CredentialSource::Query(gw.config.ws.profile.token.param.clone());
    let named = profile.named_credentials.iter().chain([&token]);
    let kept = credential.filter(|_| profile.forward_credential);
    let mut headers = p.headers.clone();
    let query =
        credential::strip(named, kept, &mut headers, p.query.as_deref()).unwrap_or_default();
    let mut path_and_query = p.path.clone();
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&query);
    }
    let route = &gw.config.routes.routes()[p.route_index];
    // The upstream's circuit breaker counts WebSocket connects too; while it is open the
    // session gets the upstream_unavailable answer without a connect attempt.
    let ticket = gw
        .breakers
        .admit(route.upstream, gw.clock.now())
        .map_err(|_| Reason::UpstreamUnavailable)?;
    let result = upstream::connect(
        profile,
        Target {
            spec: &gw.config.upstreams[route.upstream],
            path_and_query,
            headers: &headers,
            who,
            remote: p.remote,
            guard: &gw.guard,
        },
    )
    .await;
    if let Some(ticket) = ticket {
        let failed = matches!(
            result,
            Err(Reason::UpstreamUnavailable | Reason::UpstreamTimeout)
        );
        ticket.record(failed, || gw.clock.now());
    }
    result
}

async fn client_socket(upgraded: hyper::upgrade::Upgraded, gw: &Gateway) -> ClientSocket {
    let config = socket_config(gw.config.ws.profile.max_message_bytes);
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

fn record(gw: &Gateway, p: &Pending, outcome: Outcome, status: u16) {
    gw.metrics.record(Some(p.route_index), outcome, status);
}

/// An upgrade refused before it happened: the profile's HTTP answer. Under
/// `when = "always"` it reports a budget like any answer: a connection limit's own state on its
/// 429, else the caller's request budget as it stands (`crate::service::report_budget`).
async fn refuse_upgrade(
    gw: &Gateway,
    p: &Pending,
    failure: Failure,
    format: BodyFormat,
) -> Response<Body> {
    let profile = &gw.config.profile;
    let overrides = gw
        .config
        .routes
        .routes()
        .get(p.route_index)
        .map(|r| &r.errors);
    let reason = failure.reason();
    let resp = match &failure {
        Failure::Denied(d, who) => {
            let mut resp = respond::denial_on(profile, overrides, d, format, LimitFacts::default());
            let caller = Caller {
                peer: p.remote.ip(),
                headers: &p.headers,
            };
            let who = who.as_ref();
            crate::service::report_budget(gw, &mut resp, who, None, caller, Some(reason)).await;
            resp
        }
        Failure::Limited(l) => {
            let facts = LimitFacts {
                limit: l.state.limit,
                remaining: l.state.remaining,
                reset: u64::try_from(l.state.reset.as_secs()).unwrap_or(0),
                retry_after: l.state.retry_after.as_secs().max(1),
            };
            let mut resp = respond::denial_on(
                profile,
                overrides,
                &Denial::about(reason, "connections"),
                format,
                facts,
            );
            let style = profile.rate_limit_headers;
            if style.always && !l.unavailable {
                let style = crate::ratelimit::HeaderStyle {
                    retry_after: false,
                    ..style
                };
                let now = gw.clock.now();
                let headers = resp.headers_mut();
                crate::ratelimit::write_state(headers, style, l.window_seconds, &l.state, now);
            }
            resp
        }
    };
    record(gw, p, Outcome::Denied(reason), resp.status().as_u16());
    resp
}

/// `handshake` mode: every decision before the upgrade; refusals are HTTP.
pub async fn handshake(
    gw: Arc<Gateway>,
    p: Pending,
    on_upgrade: OnUpgrade,
    format: BodyFormat,
) -> Response<Body> {
    let (presented, source) = match credential_of(&gw, &p) {
        Ok(c) => c,
        Err(r) => return refuse_upgrade(&gw, &p, r.into(), format).await,
    };
    let mut admitted = match admit(&gw, &p, &presented).await {
        Ok(a) => a,
        Err(f) => return refuse_upgrade(&gw, &p, f, format).await,
    };
    drop(presented);
    let (upstream, protocol) = match connect(&gw, &p, &admitted.who, source).await {
        Ok(c) => c,
        Err(r) => {
            admitted.leases.release(&gw).await;
            let failure = Failure::Denied(Denial::new(r), Some(admitted.who.clone()));
            return refuse_upgrade(&gw, &p, failure, format).await;
        }
    };
    record(&gw, &p, Outcome::Forwarded, 101);
    let resp = handshake::switching(&p.opening, protocol);
    let reg = Sessions::register(&gw, admitted.admission);
    let hold = gw.drain.hold();
    tokio::spawn(async move {
        let _hold = hold;
        match on_upgrade.await {
            Ok(upgraded) => {
                let client = client_socket(upgraded, &gw).await;
                Relay {
                    gw,
                    mode: p.mode,
                    who: admitted.who,
                    reg,
                    leases: admitted.leases,
                    limits: admitted.limits,
                }
                .run(client, upstream)
                .await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed.");
                admitted.leases.release(&gw).await;
            }
        }
    });
    resp
}

/// `login_message` and `close_code` modes: upgrade now, decide on the socket.
pub fn after_upgrade(gw: Arc<Gateway>, p: Pending, on_upgrade: OnUpgrade) -> Response<Body> {
    let resp = handshake::switching(&p.opening, None);
    let hold = gw.drain.hold();
    tokio::spawn(async move {
        let _hold = hold;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed.");
                return;
            }
        };
        let client = client_socket(upgraded, &gw).await;
        match p.mode {
            AuthMode::LoginMessage => login_session(gw, p, client).await,
            _ => close_code_session(gw, p, client).await,
        }
    });
    resp
}

/// Sends an optional message, then the profile's close frame, and waits for the client's
/// answer briefly.
async fn refuse_on_socket(
    gw: &Gateway,
    client: &mut ClientSocket,
    message: Option<Message>,
    event: CloseEvent,
) {
    let timeout = std::time::Duration::from_secs(1);
    if let Some(m) = message {
        let _ = tokio::time::timeout(timeout, client.send(m)).await;
    }
    let _ = tokio::time::timeout(timeout, client.close(Some(close_frame(gw, event)))).await;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(_)) = client.next().await {}
    })
    .await;
}

async fn close_code_session(gw: Arc<Gateway>, p: Pending, mut client: ClientSocket) {
    let (presented, source) = match credential_of(&gw, &p) {
        Ok(c) => c,
        Err(r) => {
            record(&gw, &p, Outcome::Denied(r), 101);
            let f = Failure::from(r);
            return refuse_on_socket(&gw, &mut client, None, f.event()).await;
        }
    };
    let mut admitted = match admit(&gw, &p, &presented).await {
        Ok(a) => a,
        Err(f) => {
            record(&gw, &p, Outcome::Denied(f.reason()), 101);
            return refuse_on_socket(&gw, &mut client, None, f.event()).await;
        }
    };
    drop(presented);
    let upstream = match connect(&gw, &p, &admitted.who, source).await {
        Ok((u, _)) => u,
        Err(r) => {
            admitted.leases.release(&gw).await;
            record(&gw, &p, Outcome::Denied(r), 101);
            return refuse_on_socket(&gw, &mut client, None, CloseEvent::UpstreamUnavailable).await;
        }
    };
    record(&gw, &p, Outcome::Forwarded, 101);
    let reg = Sessions::register(&gw, admitted.admission);
    Relay {
        gw,
        mode: p.mode,
        who: admitted.who,
        reg,
        leases: admitted.leases,
        limits: admitted.limits,
    }
    .run(client, upstream)
    .await;
}

/// Waits for the first data message until the login deadline.
async fn first_message(
    gw: &Gateway,
    client: &mut ClientSocket,
) -> Result<String, Option<(LoginError, CloseEvent)>> {
    let deadline = tokio::time::Instant::now() + gw.config.ws.profile.login_deadline;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, client.next()) => next,
            // Shutting down: a session that has not logged in yet is told so and closed.
            () = gw.drain.stopping() => {
                return Err(Some((LoginError::NotLogin, CloseEvent::GoingAway)));
            }
        };
        match next {
            Err(_) => return Err(None),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Binary(_)))) => {
                return Err(Some((LoginError::NotText, CloseEvent::BadMessage)))
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
            Ok(Some(Err(WsError::Capacity(_)))) => {
                return Err(Some((LoginError::TooBig, CloseEvent::TooBig)))
            }
            // Closed, or gone: nothing to answer.
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                return Err(Some((LoginError::NotLogin, CloseEvent::GoingAway)))
            }
        }
    }
}

async fn login_session(gw: Arc<Gateway>, p: Pending, mut client: ClientSocket) {
    let profile = &gw.config.ws.profile;
    let text = match first_message(&gw, &mut client).await {
        Ok(t) => t,
        Err(None) => {
            record(&gw, &p, Outcome::Denied(Reason::MissingKey), 101);
            let m = error_message(
                &gw,
                "login_timeout",
                "No login message arrived within the deadline.",
            );
            return refuse_on_socket(&gw, &mut client, Some(m), CloseEvent::LoginTimeout).await;
        }
        Err(Some((_, CloseEvent::GoingAway))) if gw.drain.is_stopping() => {
            return refuse_on_socket(&gw, &mut client, None, CloseEvent::GoingAway).await;
        }
        Err(Some((_, CloseEvent::GoingAway))) => {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), client.close(None)).await;
            return;
        }
        Err(Some((e, event))) => {
            record(&gw, &p, Outcome::Denied(Reason::BadRequest), 101);
            let m = error_message(&gw, e.code(), &e.to_string());
            return refuse_on_socket(&gw, &mut client, Some(m), event).await;
        }
    };
    let login = match login::parse(
        &profile.login,
        &profile.type_field,
        &text,
        profile.max_login_bytes,
    ) {
        Ok(l) => l,
        Err(e) => {
            let (reason, event) = match e {
                LoginError::MissingKey => (Reason::MissingKey, CloseEvent::Unauthorized),
                LoginError::TooBig => (Reason::BadRequest, CloseEvent::TooBig),
                _ => (Reason::BadRequest, CloseEvent::BadMessage),
            };
            record(&gw, &p, Outcome::Denied(reason), 101);
            let m = error_message(&gw, e.code(), &e.to_string());
            return refuse_on_socket(&gw, &mut client, Some(m), event).await;
        }
    };
    drop(text);
    let mut admitted = match admit(&gw, &p, &login.key).await {
        Ok(a) => a,
        Err(f) => {
            record(&gw, &p, Outcome::Denied(f.reason()), 101);
            let (code, detail) = f.message();
            let m = error_message(&gw, code, &detail);
            return refuse_on_socket(&gw, &mut client, Some(m), f.event()).await;
        }
    };
    let grant = channels::grant(
        &profile.channels,
        &admitted.who.client.policy,
        login.channels,
    );
    let mut upstream = match connect(&gw, &p, &admitted.who, None).await {
        Ok((u, _)) => u,
        Err(r) => {
            admitted.leases.release(&gw).await;
            record(&gw, &p, Outcome::Denied(r), 101);
            let m = error_message(&gw, r.code(), r.default_detail());
            return refuse_on_socket(&gw, &mut client, Some(m), CloseEvent::UpstreamUnavailable)
                .await;
        }
    };
    record(&gw, &p, Outcome::Forwarded, 101);
    let reg = Sessions::register(&gw, admitted.admission);
    reg.add_channels(&grant.granted);
    let timeout = profile.send_timeout;
    if let (false, Some(kind)) = (grant.granted.is_empty(), profile.subscribe.types.first()) {
        let mut subscribe = serde_json::Map::new();
        subscribe.insert(profile.type_field.to_string(), (**kind).into());
        subscribe.insert(
            profile.subscribe.channels_field.to_string(),
            grant.granted.clone().into(),
        );
        let m = Message::Text(serde_json::Value::Object(subscribe).to_string().into());
        if !matches!(
            tokio::time::timeout(timeout, upstream.send(m)).await,
            Ok(Ok(()))
        ) {
            admitted.leases.release(&gw).await;
            return refuse_on_socket(&gw, &mut client, None, CloseEvent::UpstreamUnavailable).await;
        }
    }
    let vars = [
        ("code", Value::Str("ok".into())),
        ("detail", Value::Str("Logged in.".into())),
        ("refused", Value::List(grant.refused_names())),
        ("granted", Value::List(grant.granted)),
    ];
    let ok = Message::Text(profile.message(MessageKind::LoginOk, &vars).into());
    if !matches!(
        tokio::time::timeout(timeout, client.send(ok)).await,
        Ok(Ok(()))
    ) {
        admitted.leases.release(&gw).await;
        return;
    }
    Relay {
        gw: Arc::clone(&gw),
        mode: p.mode,
        who: admitted.who,
        reg,
        leases: admitted.leases,
        limits: admitted.limits,
    }
    .run(client, upstream)
    .await;
}
