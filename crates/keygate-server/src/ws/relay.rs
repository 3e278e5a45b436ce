//! Relaying an admitted session: client and upstream frames both ways (text, binary, ping,
//! pong, close), the profile's rules on client messages, the per-connection message rate,
//! the idle timeout, lease renewal and the stop signal of live revocation.
//!
//! One task per session, one message in flight per direction: a frame is read from a side only
//! after the previous one was written to the other, so a slow reader holds its writer back
//! through TCP instead of growing a queue. A client that takes nothing for the send timeout is
//! closed; a stop arriving while a send waits interrupts it, so revocation never waits on a
//! slow socket.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use keygate_core::limit::MessageRate;
use keygate_core::policy::Grantee;
use keygate_core::render::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::inbound::{self, BadMessage, Inbound};
use super::limits::Leases;
use super::upstream::UpstreamSocket;
use crate::policy::ws::{
    AuthMode, ClientMessages, CloseEvent, MessageKind, OnViolation, WsLimits, WsProfile,
};
use crate::request::exit::{self, Exit, SessionTally};
use crate::state::gateway::{Admitted, Gateway};
use crate::state::traces::TraceCtx;
use crate::state::ws_sessions::{Registration, Stop};

/// The client side of a session.
pub(crate) type ClientSocket = WebSocketStream<TokioIo<Upgraded>>;

/// How long closing may take on each side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An admitted session, ready to relay.
pub(crate) struct Relay {
    pub gw: Arc<Gateway>,
    pub mode: AuthMode,
    /// The route's index, for the session's span.
    pub route: usize,
    pub who: Admitted,
    pub reg: Registration,
    pub leases: Leases,
    pub limits: WsLimits,
    /// The upgrade's trace (while `[tracing]` is on): its span ends at the close.
    pub trace: Option<Box<TraceCtx>>,
}

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The client sent a close frame: pass it on.
    ClientClosed(Option<CloseFrame>),
    /// The upstream sent a close frame: pass it on.
    UpstreamClosed(Option<CloseFrame>),
    /// The client's connection ended without a close frame.
    ClientGone,
    /// The gateway closes the session.
    Gateway(CloseEvent),
}

impl End {
    /// How the session ended, as its span says.
    fn name(&self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_closed",
            End::UpstreamClosed(_) => "upstream_closed",
            End::ClientGone => "client_gone",
            End::Gateway(event) => event.name(),
        }
    }
}

/// Why a send did not complete.
enum Interrupted {
    Stopped,
    Timeout,
    Failed,
}

/// Sends one message unless the stop signal fires or the peer takes longer than `timeout`.
async fn deliver<S>(
    sink: &mut S,
    msg: Message,
    timeout: Duration,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Result<(), Interrupted>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    tokio::select! {
        biased;
        _ = stop.changed() => Err(Interrupted::Stopped),
        sent = tokio::time::timeout(timeout, sink.send(msg)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Interrupted::Failed),
            Err(_) => Err(Interrupted::Timeout),
        },
    }
}

/// A close frame from the profile (all of the gateway it needs).
pub(crate) fn close_frame(profile: &WsProfile, event: CloseEvent) -> CloseFrame {
    let spec = profile.close(event);
    CloseFrame {
        code: CloseCode::from(spec.code),
        reason: (&*spec.reason).into(),
    }
}

/// The profile's error message for a code.
pub(crate) fn error_message(profile: &WsProfile, code: &str, detail: &str) -> Message {
    let vars = [
        ("code", Value::Str(code.to_owned())),
        ("detail", Value::Str(detail.to_owned())),
    ];
    Message::Text(profile.message(MessageKind::Error, &vars).into())
}

/// What one client message leads to.
enum Step {
    ToUpstream(Message),
    /// Answer the client; close too when the profile says so.
    Answer(Message, Option<CloseEvent>),
    /// Forward (maybe nothing) and answer.
    Both(Option<Message>, Message),
    Nothing,
    End(End),
}

impl Relay {
    fn bad(&self, bad: BadMessage) -> Step {
        let profile = &self.gw.config.ws.profile;
        let close =
            (profile.on_bad_message == OnViolation::Close).then_some(CloseEvent::BadMessage);
        Step::Answer(error_message(profile, bad.code(), &bad.to_string()), close)
    }

    fn rate_limited(&self, rate: &MessageRate, retry_after: Duration) -> Step {
        let profile = &self.gw.config.ws.profile;
        if profile.on_message_limit == OnViolation::Close {
            return Step::End(End::Gateway(CloseEvent::RateLimited));
        }
        let (limit, _, _) = rate.limit();
        let retry_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        let vars = [
            ("code", Value::Str("rate_limited".into())),
            (
                "detail",
                Value::Str(format!(
                    "Message rate exceeded ({limit} per second); retry after {retry_ms} ms."
                )),
            ),
            (
                "limit",
                Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            ),
            (
                "retry_after",
                Value::Int(i64::try_from(retry_after.as_secs().max(1)).unwrap_or(1)),
            ),
        ];
        Step::Answer(
            Message::Text(profile.message(MessageKind::Error, &vars).into()),
            None,
        )
    }

    fn subscribe(
        &self,
        forward: Option<String>,
        granted: Vec<String>,
        refused: Vec<crate::policy::channels::Refused>,
    ) -> Step {
        if !self.reg.add_channels(&granted) {
            return self.bad(BadMessage::TooManyChannels);
        }
        if refused.is_empty() {
            return Step::Nothing; // The caller forwards the original.
        }
        let first_scope = refused.iter().find_map(|r| r.scope.clone());
        let names: Vec<String> = refused.iter().map(|r| r.channel.clone()).collect();
        let detail = match &first_scope {
            Some(scope) => format!(
                "Required scope '{scope}' is not granted to this API key for channel '{}'.",
                names[0]
            ),
            None => format!("Unknown channel '{}'.", names[0]),
        };
        let vars = [
            ("code", Value::Str("scope_missing".into())),
            ("detail", Value::Str(detail)),
            ("granted", Value::List(granted)),
            ("refused", Value::List(names.clone())),
            ("channel", Value::Str(names[0].clone())),
            ("scope", Value::Str(first_scope.unwrap_or_default())),
        ];
        let answer = Message::Text(
            self.gw
                .config
                .ws
                .profile
                .message(MessageKind::SubscribeRefused, &vars)
                .into(),
        );
        let forward = forward
            .filter(|f| !f.is_empty())
            .map(|f| Message::Text(f.into()));
        Step::Both(forward, answer)
    }

    fn on_client_message(&self, msg: Message, rate: &mut Option<MessageRate>) -> Step {
        let profile = &self.gw.config.ws.profile;
        let text = match &msg {
            Message::Close(frame) => return Step::End(End::ClientClosed(frame.clone())),
            Message::Ping(_) | Message::Pong(_) => return Step::ToUpstream(msg),
            Message::Frame(_) => return Step::Nothing,
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        };
        if let Some(rate) = rate {
            let state = rate.check(self.gw.clock.now());
            if !state.allowed {
                return self.rate_limited(rate, state.retry_after);
            }
        }
        if profile.client_messages == ClientMessages::Any {
            return Step::ToUpstream(msg);
        }
        let Some(text) = text else {
            return self.bad(BadMessage::Binary);
        };
        let client = self.who.key.client.load();
        let sport = self.reg.sport.as_deref();
        let who = Grantee {
            client: &client.policy,
            key: self.who.key.rules.as_deref(),
        };
        match inbound::classify(profile, self.mode, who, sport, text.as_str()) {
            Inbound::Forward => Step::ToUpstream(msg),
            Inbound::Subscribe {
                forward,
                granted,
                refused,
            } => match self.subscribe(forward, granted, refused) {
                Step::Nothing => Step::ToUpstream(msg),
                other => other,
            },
            Inbound::Unsubscribe { channels } => {
                self.reg.remove_channels(&channels);
                Step::ToUpstream(msg)
            }
            Inbound::Bad(bad) => self.bad(bad),
        }
    }

    /// Relays until one side closes, the gateway stops the session, or it idles out.
    pub(crate) async fn run(mut self, mut client: ClientSocket, mut upstream: UpstreamSocket) {
        let gw = Arc::clone(&self.gw);
        let profile = &gw.config.ws.profile;
        let send_timeout = profile.send_timeout;
        let mut rate = self.limits.messages.and_then(MessageRate::new);
        let idle_timeout = profile.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let period = (profile.lease_ttl / 3).max(Duration::from_millis(10));
        let mut renew = tokio::time::interval_at(Instant::now() + period, period);
        let has_leases = !self.leases.is_empty();
        let analytics = gw.config.analytics.enabled;
        let opened = std::time::Instant::now();
        // Data messages each way, for the span (two counters: cheaper than a branch on tracing).
        let (mut from_client, mut to_client) = (0u64, 0u64);
        if analytics {
            gw.usage
                .record_ws(&self.who.client, gw.clock.now(), 1, 0, 0);
        }

        let end = loop {
            let step = tokio::select! {
                biased;
                changed = self.reg.stop.changed() => match changed {
                    Ok(()) => match self.reg.stop.borrow().clone() {
                        Some(stop) => break End::Gateway(stop.event),
                        None => continue,
                    },
                    Err(_) => break End::Gateway(CloseEvent::GoingAway),
                },
                () = &mut idle => break End::Gateway(CloseEvent::Idle),
                Some(notice) = self.reg.notices.recv() => {
                    let m = Message::Text(notice.into());
                    match deliver(&mut client, m, send_timeout, &mut self.reg.stop).await {
                        Ok(()) => continue,
                        Err(i) => break self.interrupted(i, CloseEvent::SlowClient),
                    }
                }
                _ = renew.tick(), if has_leases => {
                    if !self.leases.renew(&gw, &self.limits).await {
                        break End::Gateway(CloseEvent::TooManyConnections);
                    }
                    continue;
                }
                msg = client.next() => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    match msg {
                        None => break End::ClientGone,
                        Some(Err(WsError::Capacity(_))) => break End::Gateway(CloseEvent::TooBig),
                        Some(Err(WsError::Protocol(_) | WsError::Utf8(_))) => {
                            break End::Gateway(CloseEvent::BadMessage)
                        }
                        Some(Err(_)) => break End::ClientGone,
                        Some(Ok(m)) => self.on_client_message(m, &mut rate),
                    }
                }
                msg = upstream.next() => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    match msg {
                        Some(Ok(Message::Close(frame))) => break End::UpstreamClosed(frame),
                        Some(Ok(Message::Frame(_))) => Step::Nothing,
                        Some(Ok(m)) => {
                            let data = m.is_text() || m.is_binary();
                            let bytes = (analytics && data).then(|| m.len() as u64);
                            match deliver(&mut client, m, send_timeout, &mut self.reg.stop).await {
                            Ok(()) => {
                                to_client += u64::from(data);
                                if let Some(bytes) = bytes {
                                    gw.usage.record_ws(&self.who.client, gw.clock.now(), 0, 1, bytes);
                                }
                                Step::Nothing
                            }
                            Err(i) => break self.interrupted(i, CloseEvent::SlowClient),
                        }},
                        None | Some(Err(_)) => break End::Gateway(CloseEvent::UpstreamUnavailable),
                    }
                }
            };
            let (forward, answer, close) = match step {
                Step::Nothing => continue,
                Step::End(end) => break end,
                Step::ToUpstream(m) => (Some(m), None, None),
                Step::Answer(m, close) => (None, Some(m), close),
                Step::Both(f, a) => (f, Some(a), None),
            };
            if let Some(m) = forward {
                let data = m.is_text() || m.is_binary();
                if let Err(i) = deliver(&mut upstream, m, send_timeout, &mut self.reg.stop).await {
                    break self.interrupted(i, CloseEvent::UpstreamUnavailable);
                }
                from_client += u64::from(data);
            }
            if let Some(m) = answer {
                if let Err(i) = deliver(&mut client, m, send_timeout, &mut self.reg.stop).await {
                    break self.interrupted(i, CloseEvent::SlowClient);
                }
            }
            if let Some(event) = close {
                break End::Gateway(event);
            }
        };
        let tally = SessionTally {
            from_client,
            to_client,
            lasted: opened.elapsed(),
            end: end.name(),
        };
        self.finish(end, client, upstream).await;
        if self.trace.is_some() {
            let exit = Exit {
                method: &http::Method::GET,
                route: Some(self.route),
                who: Some(&self.who),
                started: None,
                trace: self.trace.as_deref(),
            };
            exit::session_closed(&gw, &exit, tally);
        }
    }

    fn interrupted(&self, i: Interrupted, on_timeout: CloseEvent) -> End {
        match i {
            Interrupted::Stopped => End::Gateway(
                self.reg
                    .stop
                    .borrow()
                    .as_ref()
                    .map_or(CloseEvent::GoingAway, |s| s.event),
            ),
            Interrupted::Timeout => End::Gateway(on_timeout),
            Interrupted::Failed if on_timeout == CloseEvent::SlowClient => End::ClientGone,
            Interrupted::Failed => End::Gateway(CloseEvent::UpstreamUnavailable),
        }
    }

    async fn finish(&mut self, end: End, mut client: ClientSocket, mut upstream: UpstreamSocket) {
        let gw = Arc::clone(&self.gw);
        let going_away = CloseFrame {
            code: CloseCode::Away,
            reason: "session ended".into(),
        };
        let (to_client, to_upstream) = match end {
            End::ClientClosed(frame) => (None, frame),
            End::UpstreamClosed(frame) => (frame, None),
            End::ClientGone => (None, Some(going_away)),
            End::Gateway(event) => {
                if event == CloseEvent::Suspended {
                    tracing::info!(
                        key_id = self.who.key.id(),
                        "WebSocket session closed: a suspension holds it."
                    );
                }
                if event == CloseEvent::Revoked {
                    if let Some(stop) = self.reg.stop.borrow().as_ref() {
                        tracing::info!(
                            key_id = self.who.key.id(),
                            reason = stop.reason.code(),
                            "WebSocket session closed: its key is no longer valid."
                        );
                    }
                }
                (
                    Some(close_frame(&gw.config.ws.profile, event)),
                    Some(going_away),
                )
            }
        };
        // Both sides at once: a stuck one does not delay the other.
        let client_side = async {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close(to_client)).await;
            // Read until the client's close answer (or its end), so the socket is not reset
            // with unread data and the close frame reaches it.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = client.next().await {}
            })
            .await;
        };
        let upstream_side = async {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, upstream.close(to_upstream)).await;
        };
        tokio::join!(client_side, upstream_side);
        self.leases.release().await;
    }
}
