//! WebSocket sessions: every auth mode of the profiles (`handshake`, `login_message`,
//! `close_code`), channel scopes, connection and message limits, live revocation, and
//! short-lived tokens for browsers.
//!
//! A request reaches this module when it asks for a WebSocket upgrade on a route with a `ws`
//! table. [`open`] authenticates and admits it per the route's mode, [`relay`] carries frames
//! between client and upstream, and [`crate::state::ws_sessions`] keeps every open session findable so a key or
//! client change closes it within the second.

pub(crate) mod delayed;
pub(crate) mod handshake;
pub(crate) mod inbound;
pub(crate) mod limits;
pub(crate) mod login;
pub(crate) mod open;
pub(crate) mod relay;
pub(crate) mod token;
pub(crate) mod token_endpoint;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;

use crate::policy::routes::RouteMatch;
use crate::policy::ws::AuthMode;
use crate::request::check;
use crate::request::exit::{Refusal, Served};
use crate::request::worker::Worker;
use crate::state::traces::TraceCtx;

/// Serves an upgrade request if its route is a WebSocket route; `None` otherwise (the request
/// then goes the usual way). Only for requests that ask for an upgrade
/// ([`handshake::is_upgrade`]): the caller checks, so that no other request builds this future.
/// The caller's exit ends it (`crate::request::exit`), a refusal included.
///
/// `trace` is the request's (while `[tracing]` is on). An admitted session takes it and ends
/// its span at close (`exit::session_closed`); a refusal answered over HTTP leaves it for the
/// caller's exit.
pub(crate) async fn serve(
    w: &Arc<Worker>,
    req: &mut Request<Incoming>,
    remote: SocketAddr,
    started: Option<std::time::Instant>,
    trace: &mut Option<Box<TraceCtx>>,
) -> Option<Result<Served, Refusal>> {
    let gw = &w.gw;
    let path = req.uri().path();
    if check::is_ambiguous_path(path) {
        return None;
    }
    let RouteMatch::Found { index, .. } = gw.config.routes.find(req.method(), path) else {
        return None;
    };
    let ws_route = gw.config.ws.route(index)?;
    let opening = match handshake::validate(req) {
        Ok(o) => o,
        Err(e) => return Some(Err(Refusal::from(e.denial()).on(index))),
    };
    let pending = open::Pending {
        route_index: index,
        mode: ws_route.mode,
        credentials: ws_route
            .credentials
            .clone()
            .unwrap_or_else(|| gw.config.profile.credentials.clone()),
        path: path.to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        remote,
        opening,
        started,
    };
    let on_upgrade = hyper::upgrade::on(&mut *req);
    let gw = Arc::clone(gw);
    Some(match ws_route.mode {
        AuthMode::Handshake => open::handshake(gw, pending, on_upgrade, trace).await,
        // The HTTP exit records nothing of these (the session decides on the socket).
        AuthMode::LoginMessage | AuthMode::CloseCode => {
            Ok(open::after_upgrade(gw, pending, on_upgrade, trace.take()))
        }
    })
}
