//! Opening a session, per auth mode: authenticate, authorize, take the connection limits,
//! connect the upstream, then hand both sockets to the relay.
//!
//! `handshake` decides everything before answering the upgrade, so refusals are plain HTTP
//! with the profile's status and body (and an unreachable upstream is a 502, not a socket that
//! opens and dies). `login_message` and `close_code` upgrade first and refuse with the
//! profile's messages and close codes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keygate_core::decision::{Denial, Reason};
use keygate_core::policy::Grantee;
use keygate_core::render::Value;
use keygate_core::KeyDigest;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::handshake::{self, Opening};
use super::limits::Leases;
use super::login::{self, LoginError};
use super::relay::{close_frame, error_message, over_cap, ClientSocket, Relay};
use super::token;
use super::upstream::{self, socket_config, Target, UpstreamSocket};
use crate::policy::channels;
use crate::policy::guard::Caller;
use crate::policy::profile::CredentialSource;
use crate::policy::routes::{self, RouteMatch};
use crate::policy::ws::{AuthMode, CloseEvent, MessageKind, WsLimits};
use crate::request::check;
use crate::request::credential;
use crate::request::exit::{self, Budget, Exit, Quote, Refusal, Served};
use crate::state::gateway::{query_param, Admitted, Gateway, Named};
use crate::state::metrics::Outcome;
use crate::state::traces::{self, TraceCtx};
use crate::state::ws_sessions::{Admission, Sessions};

/// An upgrade request on a WebSocket route, owned so it can outlive the HTTP exchange.
#[derive(Debug)]
pub(crate) struct Pending {
    pub route_index: usize,
    pub mode: AuthMode,
    /// Where the upgrade request's key is read from.
    pub credentials: Vec<CredentialSource>,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub remote: SocketAddr,
    pub opening: Opening,
    /// When the request arrived, for the access log's latency (when that log is on).
    pub started: Option<Instant>,
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
        let token = query_param(p.query.as_deref(), &tokens.param)
            .map_err(|_| Reason::DuplicateParameter)?;
        if let Some(t) = token {
            return Ok((t.into_owned(), None));
        }
    }
    let cred = credential::extract(&p.credentials, &p.headers, p.query.as_deref())?;
    Ok((cred.key.to_owned(), Some(cred.source)))
}

/// Authenticates a key or a token (redeeming it) under the brute-force guard, as every
/// other authentication is (`check::guarded`): WebSocket guesses count as REST ones do.
async fn authenticate(
    gw: &Gateway,
    p: &Pending,
    presented: &str,
) -> Result<(Admitted, KeyDigest), Reason> {
    let caller = Caller {
        peer: p.remote.ip(),
        headers: &p.headers,
    };
    // A token is redeemed (single use) before the guard looks: what it stands for is a
    // digest, then checked like a key's.
    let redeemed = match presented.starts_with(token::PREFIX) {
        true => {
            let secret = &gw.config.ws.profile.token.secret;
            let redeemed = token::redeem(secret, &gw.limits, gw.clock.now(), presented).await;
            Some(redeemed.map_err(Reason::from))
        }
        false => None,
    };
    check::guarded(gw, caller, Some(presented), || match redeemed {
        Some(digest) => {
            let digest = digest?;
            gw.authenticate_digest(&digest).map(|who| (who, digest))
        }
        None => {
            let digest = gw.digest_presented(presented)?;
            gw.authenticate_digest(&digest).map(|who| (who, digest))
        }
    })
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
    let caller = Caller {
        peer: p.remote.ip(),
        headers: &p.headers,
    };
    let address = gw.guard.client_address(caller);
    let Named { sport, bookmaker } =
        gw.authorize(who, route, &params, p.query.as_deref(), || address)?;
    let params = if route.needs.has_templates() {
        params.values().iter().map(|&v| v.into()).collect()
    } else {
        Box::default()
    };
    Ok(Admission {
        address,
        digest,
        route_index: p.route_index,
        route_name: Arc::clone(&gw.config.routes.routes()[p.route_index].name),
        sport: sport.map(Into::into),
        bookmaker: bookmaker.map(Into::into),
        params,
        delay: who.client.delay,
    })
}

/// Authentication, authorization and connection limits.
async fn admit(gw: &Arc<Gateway>, p: &Pending, presented: &str) -> Result<Accepted, Refusal> {
    let refused = |r: Refusal| r.on(p.route_index);
    let (who, digest) = authenticate(gw, p, presented)
        .await
        .map_err(|r| refused(r.into()))?;
    let admission = match authorize(gw, &who, p, digest) {
        Ok(a) => a,
        Err(d) => return Err(refused(d.into()).by(Some(who))),
    };
    gw.observe_sharing(
        &who,
        Caller {
            peer: p.remote.ip(),
            headers: &p.headers,
        },
    );
    let limits = gw.config.ws.limits_for(&who.client.policy.plan).clone();
    let leases = match Leases::acquire(gw, &who, &limits).await {
        Ok(l) => l,
        Err(l) => {
            let refusal = if l.unavailable {
                Refusal::from(Reason::LimiterUnavailable)
            } else {
                let budget = Budget {
                    window: l.window_seconds,
                    state: l.state,
                    at: gw.clock.now(),
                };
                Refusal::from(Denial::about(Reason::TooManyConnections, "connections"))
                    .quoting(Quote::Limit(budget))
            };
            return Err(refused(refusal).by(Some(who)));
        }
    };
    Ok(Accepted {
        who,
        admission,
        leases,
        limits,
    })
}

/// Opens the upstream WebSocket for an admitted caller. A traced session tells the upstream's
/// handshake of its span (`traceparent`, as HTTP does) and times the connect.
async fn connect(
    gw: &Gateway,
    p: &Pending,
    who: &Admitted,
    source: Option<usize>,
    trace: Option<&mut TraceCtx>,
) -> Result<(UpstreamSocket, Option<http::HeaderValue>), Refusal> {
    let profile = &gw.config.profile;
    let credential = source.and_then(|i| p.credentials.get(i));
    let token = CredentialSource::Query(gw.config.ws.profile.token.param.clone());
    let named = profile.named_credentials.iter().chain([&token]);
    let kept = credential.filter(|_| profile.forward_credential);
    let mut headers = p.headers.clone();
    let query =
        credential::strip(named, kept, &mut headers, p.query.as_deref()).unwrap_or_default();
    if let Some(t) = trace.as_deref() {
        traces::toward_upstream(t, &mut headers);
    }
    let mut path_and_query = p.path.clone();
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&query);
    }
    // WebSocket routes always forward (the config refuses `ws` beside `selfservice`).
    let routes::Target::Upstream(upstream) = gw.config.routes.routes()[p.route_index].target else {
        return Err(Reason::NotFound.into());
    };
    // The upstream's circuit breaker counts WebSocket connects too; while it is open the
    // session gets the upstream_unavailable answer without a connect attempt.
    // An open breaker answers as on HTTP: the profile's upstream_unavailable, 503 and
    // `Retry-After` on a handshake.
    let ticket = gw
        .breakers
        .admit(upstream, gw.clock.now())
        .map_err(|open| {
            Refusal::from(Reason::UpstreamUnavailable).quoting(Quote::BreakerOpen {
                retry_after: open.retry_after,
            })
        })?;
    let started = trace.is_some().then(Instant::now);
    let result = upstream::connect(
        profile,
        Target {
            spec: &gw.config.upstreams[upstream],
            path_and_query,
            headers: &headers,
            who,
            remote: p.remote,
            guard: &gw.guard,
        },
    )
    .await;
    if let (Some(t), Some(started)) = (trace, started) {
        t.upstream = Some(started.elapsed());
    }
    if let Some(ticket) = ticket {
        let failed = matches!(
            result,
            Err(Reason::UpstreamUnavailable | Reason::UpstreamTimeout)
        );
        ticket.record(failed, || gw.clock.now());
    }
    result.map_err(Refusal::from)
}

async fn client_socket(upgraded: hyper::upgrade::Upgraded, gw: &Gateway) -> ClientSocket {
    let config = socket_config(gw.config.ws.profile.max_message_bytes);
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

/// An admitted session's relay, registered where the gateway finds it to stop it.
fn relay(gw: Arc<Gateway>, p: &Pending, admitted: Accepted, trace: Option<Box<TraceCtx>>) -> Relay {
    Relay {
        _hold: gw.drain.hold(),
        reg: Sessions::register(&gw, admitted.admission),
        gw,
        mode: p.mode,
        route: p.route_index,
        who: admitted.who,
        leases: admitted.leases,
        limits: admitted.limits,
        trace,
    }
}

/// Records the end of a session's opening that was decided on the socket (the HTTP exchange
/// ended with its `101`): once, through the one exit. A refusal's span ends here; an admitted
/// session's at its close (the relay's).
fn record(
    gw: &Gateway,
    p: &Pending,
    who: Option<&Admitted>,
    answer: Result<(), &Refusal>,
    trace: Option<&TraceCtx>,
) {
    let exit = Exit {
        trace: answer.is_err().then_some(trace).flatten(),
        method: &Method::GET,
        route: Some(p.route_index),
        who,
        started: p.started,
    };
    let status = StatusCode::SWITCHING_PROTOCOLS;
    match answer {
        Ok(()) => exit::record(gw, &exit, Outcome::Forwarded, status, None),
        Err(r) => {
            let who = r.who.as_deref().or(who);
            let exit = Exit { who, ..exit };
            exit::record(
                gw,
                &exit,
                Outcome::Denied(r.reason()),
                status,
                Some(r.reason()),
            );
        }
    }
}

/// `handshake` mode: every decision before the upgrade; a refusal is the profile's HTTP
/// answer (the caller's exit renders it).
pub(crate) async fn handshake(
    gw: Arc<Gateway>,
    p: Pending,
    on_upgrade: OnUpgrade,
    trace: &mut Option<Box<TraceCtx>>,
) -> Result<Served, Refusal> {
    let (presented, source) =
        credential_of(&gw, &p).map_err(|r| Refusal::from(r).on(p.route_index))?;
    let admitted = admit(&gw, &p, &presented).await?;
    drop(presented);
    let connecting = connect(&gw, &p, &admitted.who, source, trace.as_deref_mut());
    let (upstream, protocol) = match connecting.await {
        Ok(c) => c,
        Err(r) => return Err(r.on(p.route_index).by(Some(admitted.who))),
    };
    let resp = handshake::switching(&p.opening, protocol);
    let served = Served {
        resp,
        outcome: Some(Outcome::Forwarded),
        route: Some(p.route_index),
        who: Some(admitted.who.clone()),
    };
    // The session's span ends at its close; the HTTP exit records the `101` without one.
    let relay = relay(gw, &p, admitted, trace.take());
    // This task holds only the relay until the upgrade: not the request (`p`).
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let client = client_socket(upgraded, &relay.gw).await;
                relay.spawn(client, upstream);
            }
            // The leases go back as `relay` drops.
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed."),
        }
    });
    Ok(served)
}

/// `login_message` and `close_code` modes: upgrade now, decide on the socket.
pub(crate) fn after_upgrade(
    gw: Arc<Gateway>,
    p: Pending,
    on_upgrade: OnUpgrade,
    trace: Option<Box<TraceCtx>>,
) -> Served {
    let resp = handshake::switching(&p.opening, None);
    let p_route = p.route_index;
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
            AuthMode::LoginMessage => login_session(gw, p, client, trace).await,
            _ => close_code_session(gw, p, client, trace).await,
        }
    });
    // The session records its exit when it has decided.
    Served {
        resp,
        outcome: None,
        route: Some(p_route),
        who: None,
    }
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
    let _ = tokio::time::timeout(
        timeout,
        client.close(Some(close_frame(&gw.config.ws.profile, event))),
    )
    .await;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(_)) = client.next().await {}
    })
    .await;
}

/// Refuses a session on its socket: records its exit once, then sends the profile's error
/// message (login mode) and close frame.
async fn refuse_session(
    gw: &Gateway,
    p: &Pending,
    client: &mut ClientSocket,
    refusal: &Refusal,
    with_message: bool,
    trace: Option<&TraceCtx>,
) {
    record(gw, p, None, Err(refusal), trace);
    let (event, code, detail) = exit::on_socket(refusal);
    let message = with_message.then(|| error_message(&gw.config.ws.profile, code, &detail));
    refuse_on_socket(gw, client, message, event).await;
}

async fn close_code_session(
    gw: Arc<Gateway>,
    p: Pending,
    mut client: ClientSocket,
    mut trace: Option<Box<TraceCtx>>,
) {
    let admitted = async {
        let (presented, source) = credential_of(&gw, &p).map_err(Refusal::from)?;
        let admitted = admit(&gw, &p, &presented).await?;
        drop(presented);
        match connect(&gw, &p, &admitted.who, source, trace.as_deref_mut()).await {
            Ok((upstream, _)) => Ok((admitted, upstream)),
            Err(r) => Err(r.by(Some(admitted.who))),
        }
    };
    let (admitted, upstream) = match admitted.await {
        Ok(a) => a,
        Err(refusal) => {
            let trace = trace.as_deref();
            return refuse_session(&gw, &p, &mut client, &refusal, false, trace).await;
        }
    };
    record(&gw, &p, Some(&admitted.who), Ok(()), None);
    relay(gw, &p, admitted, trace).spawn(client, upstream);
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

async fn login_session(
    gw: Arc<Gateway>,
    p: Pending,
    mut client: ClientSocket,
    mut trace: Option<Box<TraceCtx>>,
) {
    let profile = &gw.config.ws.profile;
    let text = match first_message(&gw, &mut client).await {
        Ok(t) => t,
        Err(None) => {
            let refusal = Refusal::from(Reason::LoginTimeout).on(p.route_index);
            let trace = trace.as_deref();
            return refuse_session(&gw, &p, &mut client, &refusal, true, trace).await;
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
            return refuse_login(&gw, &p, &mut client, e, event, trace.as_deref()).await
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
            let event = match e {
                LoginError::MissingKey => CloseEvent::Unauthorized,
                LoginError::TooBig => CloseEvent::TooBig,
                _ => CloseEvent::BadMessage,
            };
            return refuse_login(&gw, &p, &mut client, e, event, trace.as_deref()).await;
        }
    };
    drop(text);
    let mut admitted = match admit(&gw, &p, &login.key).await {
        Ok(a) => a,
        Err(refusal) => {
            let trace = trace.as_deref();
            return refuse_session(&gw, &p, &mut client, &refusal, true, trace).await;
        }
    };
    let grant = channels::grant(
        &profile.channels,
        Grantee {
            client: &admitted.who.client.policy,
            key: admitted.who.key.rules.as_deref(),
        },
        admitted.admission.sport.as_deref(),
        login.channels,
    );
    let refused = grant.refused_names();
    let (granted, over) = match (
        admitted.limits.channels_per_session,
        admitted.limits.channels_per_client,
    ) {
        (None, None) => (grant.granted, None),
        _ => {
            let fit = admitted
                .leases
                .fit_channels(&admitted.limits, |_| false, 0, grant.granted)
                .await;
            let over =
                (!fit.over.is_empty()).then(|| over_cap(&gw, &admitted.who, p.route_index, &fit));
            (fit.kept, over)
        }
    };
    let mut upstream = match connect(&gw, &p, &admitted.who, None, trace.as_deref_mut()).await {
        Ok((u, _)) => u,
        Err(refusal) => {
            let refusal = refusal.on(p.route_index).by(Some(admitted.who));
            let trace = trace.as_deref();
            return refuse_session(&gw, &p, &mut client, &refusal, true, trace).await;
        }
    };
    record(&gw, &p, Some(&admitted.who), Ok(()), None);
    let relay = relay(Arc::clone(&gw), &p, admitted, trace);
    relay.reg.add_channels(&granted);
    let timeout = profile.send_timeout;
    if let (false, Some(kind)) = (granted.is_empty(), profile.subscribe.types.first()) {
        let mut subscribe = serde_json::Map::new();
        subscribe.insert(profile.type_field.to_string(), (**kind).into());
        subscribe.insert(
            profile.subscribe.channels_field.to_string(),
            granted.clone().into(),
        );
        let m = Message::Text(serde_json::Value::Object(subscribe).to_string().into());
        if !matches!(
            tokio::time::timeout(timeout, upstream.send(m)).await,
            Ok(Ok(()))
        ) {
            return refuse_on_socket(&gw, &mut client, None, CloseEvent::UpstreamUnavailable).await;
        }
    }
    let vars = [
        ("code", Value::Str("ok".into())),
        ("detail", Value::Str("Logged in.".into())),
        ("refused", Value::List(refused)),
        ("granted", Value::List(granted)),
    ];
    let ok = Message::Text(profile.message(MessageKind::LoginOk, &vars).into());
    for m in std::iter::once(ok).chain(over) {
        if !matches!(
            tokio::time::timeout(timeout, client.send(m)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    relay.spawn(client, upstream);
}

/// A login message that is not one: recorded as a bad request, answered with the login
/// error's own code (the login protocol's, not a profile reason's) and close event.
async fn refuse_login(
    gw: &Gateway,
    p: &Pending,
    client: &mut ClientSocket,
    error: LoginError,
    event: CloseEvent,
    trace: Option<&TraceCtx>,
) {
    let reason = match error {
        LoginError::MissingKey => Reason::MissingKey,
        _ => Reason::BadRequest,
    };
    let refusal = Refusal::from(Denial::about(reason, error.code())).on(p.route_index);
    record(gw, p, None, Err(&refusal), trace);
    let message = error_message(&gw.config.ws.profile, error.code(), &error.to_string());
    refuse_on_socket(gw, client, Some(message), event).await;
}
