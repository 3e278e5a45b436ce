//! Relaying an admitted session: client and upstream frames both ways (text, binary, ping,
//! pong, close), the profile's rules on client messages, the per-connection message rate,
//! the idle timeout, lease renewal and the stop signal of live revocation.
//!
//! One task per session, a bounded queue per direction: a frame is read from a side only after
//! the previous one was queued on the other, in that socket's write buffer
//! (`super::upstream::WRITE_BUFFER` bytes; past it the socket is written and a full socket
//! stops the queueing), so a slow reader holds its writer back through TCP instead of growing
//! a queue. What is queued is written when neither side has a frame ready: several frames
//! that arrive together leave in one write rather than one write (and one wake-up of the
//! peer) each. A delayed plan's session is the exception: its
//! upstream messages are held for the delay (`super::delayed`, bounded) and released by one
//! timer, the oldest first; control frames and the gateway's own messages are never held. A
//! client that takes nothing for the send timeout is closed; a stop arriving while a send
//! waits interrupts it, so revocation never waits on a slow socket.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use keygate_core::decision::Reason;
use keygate_core::limit::MessageRate;
use keygate_core::policy::Grantee;
use keygate_core::render::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::delayed::Held;
use super::inbound::{self, BadMessage, Inbound};
use super::limits::{Fit, Leases};
use super::upstream::UpstreamSocket;
use crate::policy::channels::Refused;
use crate::policy::ws::{
    AuthMode, ClientMessages, CloseEvent, MessageKind, OnViolation, WsLimits, WsProfile,
};
use crate::request::exit::{self, Exit, SessionTally};
use crate::state::changes::Changes;
use crate::state::gateway::{Admitted, Gateway};
use crate::state::metrics::Outcome;
use crate::state::replica::ClientEntry;
use crate::state::shutdown::Hold;
use crate::state::traces::TraceCtx;
use crate::state::ws_sessions::{Registration, Stop};

/// The client side of a session.
pub(crate) type ClientSocket = WebSocketStream<TokioIo<Upgraded>>;

/// How long closing may take on each side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most held messages released in one turn of the loop: a backlog that fell due at once (a
/// plan moved to real time) does not keep the session from reading its client.
const RELEASE_BATCH: usize = 64;

/// An admitted session, ready to relay.
pub(crate) struct Relay {
    /// Shutdown waits for the session's close.
    pub _hold: Hold,
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

/// Sends one message (and whatever was queued before it) unless the stop signal fires or the
/// peer takes longer than `timeout`.
async fn deliver<S>(
    sink: &mut S,
    msg: Message,
    timeout: Duration,
    stop: &mut Changes<Option<Stop>>,
) -> Result<(), Interrupted>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    put(sink, msg, Then::Flush, timeout, stop).await
}

/// Whether [`put`] writes what is queued.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Flush,
    /// The message stays in the socket's write buffer, written by the next flush or once the
    /// buffer is full; [`put`] waits only while the socket cannot take more.
    Queue,
}

async fn put<S>(
    sink: &mut S,
    msg: Message,
    then: Then,
    timeout: Duration,
    stop: &mut Changes<Option<Stop>>,
) -> Result<(), Interrupted>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    // Most messages find the socket ready (its write buffer has room): queued at once, with
    // no timer armed (a clock read) and no select. Only a socket that cannot take more waits,
    // bounded by `timeout` and the stop signal; the loop reads the stop signal on every turn.
    if then == Then::Queue {
        match poll_fn(|cx| Poll::Ready(sink.poll_ready_unpin(cx))).await {
            Poll::Ready(Ok(())) => {
                return sink.start_send_unpin(msg).map_err(|_| Interrupted::Failed)
            }
            Poll::Ready(Err(_)) => return Err(Interrupted::Failed),
            Poll::Pending => {}
        }
    }
    let sending = async {
        match then {
            Then::Flush => sink.send(msg).await,
            Then::Queue => sink.feed(msg).await,
        }
    };
    tokio::select! {
        biased;
        _ = stop.changed() => Err(Interrupted::Stopped),
        sent = tokio::time::timeout(timeout, sending) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Interrupted::Failed),
            Err(_) => Err(Interrupted::Timeout),
        },
    }
}

/// A frame read from one side of the session.
enum Read {
    Client(Option<Result<Message, WsError>>),
    Upstream(Option<Result<Message, WsError>>),
    /// Writing what was queued for the client failed.
    ClientWriteFailed,
    /// Writing what was queued for the upstream failed.
    UpstreamWriteFailed,
}

/// Most frames in one burst: past it, a session that never goes quiet still notes its activity
/// and counts its egress.
const BURST_FRAMES: u32 = 64;

/// What the relay owes between bursts of frames: which sides have messages queued and not yet
/// written, and the bookkeeping done once per burst rather than per frame, the time of the
/// last activity (for the idle timeout) and the egress not yet counted with usage. A burst
/// ends when neither side has a frame ready, or after [`BURST_FRAMES`] frames: per frame, the
/// clock reads and the usage lock were a twentieth of the relay's CPU per message
/// (BENCHMARKS.md, the WebSocket relay beside nginx).
struct Burst<'g> {
    /// Messages are queued for the client.
    client: bool,
    /// Messages are queued for the upstream.
    upstream: bool,
    /// Frames read since the burst began.
    frames: u32,
    /// When the last burst ended.
    last_active: Instant,
    /// Data messages queued for the client, and their bytes, not yet counted with usage.
    egress: (u64, u64),
    gw: &'g Gateway,
    who: &'g ClientEntry,
}

impl<'g> Burst<'g> {
    fn new(gw: &'g Gateway, who: &'g ClientEntry) -> Self {
        Burst {
            client: false,
            upstream: false,
            frames: 0,
            last_active: Instant::now(),
            egress: (0, 0),
            gw,
            who,
        }
    }

    /// One frame read; the burst ends here if it is long.
    fn frame(&mut self) {
        self.frames += 1;
        if self.frames >= BURST_FRAMES {
            self.end();
        }
    }

    /// One message queued for the client, with its bytes when it is a data message (counted as
    /// egress); the answer is the data messages it adds, for the session's tally.
    fn queued_for_client(&mut self, data: Option<u64>) -> u64 {
        self.client = true;
        let Some(bytes) = data else { return 0 };
        self.egress.0 += 1;
        self.egress.1 += bytes;
        1
    }

    /// Notes the activity and counts the egress of the burst that ends.
    fn end(&mut self) {
        if self.frames > 0 {
            self.frames = 0;
            self.last_active = Instant::now();
        }
        if self.egress.0 > 0 {
            let (messages, bytes) = std::mem::take(&mut self.egress);
            let gw = self.gw;
            gw.usage
                .record_ws(self.who, gw.clock.now(), 0, messages, bytes);
        }
    }
}

/// The next frame from the client or the upstream (the client's first, as before); while
/// neither has one ready, the burst ends and what is queued on each side is written. One
/// future for both sockets, since each socket is read and written here.
fn next_read<'a, 'g>(
    client: &'a mut ClientSocket,
    upstream: &'a mut UpstreamSocket,
    burst: &'a mut Burst<'g>,
) -> impl std::future::Future<Output = Read> + use<'a, 'g> {
    poll_fn(move |cx| {
        if let Poll::Ready(m) = client.poll_next_unpin(cx) {
            burst.frame();
            return Poll::Ready(Read::Client(m));
        }
        if let Poll::Ready(m) = upstream.poll_next_unpin(cx) {
            burst.frame();
            return Poll::Ready(Read::Upstream(m));
        }
        burst.end();
        if burst.client {
            match client.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => burst.client = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Read::ClientWriteFailed),
                Poll::Pending => {}
            }
        }
        if burst.upstream {
            match upstream.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => burst.upstream = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Read::UpstreamWriteFailed),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
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

/// The profile's `subscribe_refused` message for channels refused by scope: `scope_missing`,
/// or `key_scope_missing` when the client has the scope and its key was narrowed without it.
fn scope_refusal(profile: &WsProfile, granted: &[String], refused: &[Refused]) -> Message {
    let first = &refused[0];
    let names: Vec<String> = refused.iter().map(|r| r.channel.clone()).collect();
    let first_scope = refused.iter().find_map(|r| r.scope.clone());
    let detail = match &first_scope {
        Some(scope) => format!(
            "Required scope '{scope}' is not granted to this API key for channel '{}'.",
            names[0]
        ),
        None => format!("Unknown channel '{}'.", names[0]),
    };
    let vars = [
        ("code", Value::Str(first.reason().code().into())),
        ("detail", Value::Str(detail)),
        ("granted", Value::List(granted.to_vec())),
        ("refused", Value::List(names.clone())),
        ("channel", Value::Str(names[0].clone())),
        ("scope", Value::Str(first_scope.unwrap_or_default())),
    ];
    Message::Text(profile.message(MessageKind::SubscribeRefused, &vars).into())
}

/// Channels refused by a plan's channel cap (or, fail-closed, because the shared limiter is
/// down): the profile's `subscribe_refused` message with code `channel_limit`, logged and
/// counted (the route's `channel_limit` outcome) here and nowhere else. Login and subscribe
/// alike.
pub(crate) fn over_cap(gw: &Gateway, who: &Admitted, route: usize, fit: &Fit) -> Message {
    let reason = if fit.unavailable {
        Reason::LimiterUnavailable
    } else {
        Reason::ChannelLimit
    };
    gw.metrics.record(
        Some(route),
        Outcome::Denied(reason),
        reason.default_status(),
    );
    tracing::info!(
        key_id = who.key.id(),
        client = who.client.policy.id.as_str(),
        code = reason.code(),
        limit = fit.limit,
        refused = fit.over.len(),
        "WebSocket channels refused: a channel cap is reached."
    );
    let detail = reason
        .default_detail()
        .replace("{subject}", &fit.limit.to_string());
    let vars = [
        ("code", Value::Str(reason.code().into())),
        ("detail", Value::Str(detail)),
        ("granted", Value::List(fit.kept.clone())),
        ("refused", Value::List(fit.over.clone())),
        ("channel", Value::Str(fit.over[0].clone())),
        ("scope", Value::Str(String::new())),
        (
            "limit",
            Value::Int(i64::try_from(fit.limit).unwrap_or(i64::MAX)),
        ),
    ];
    Message::Text(
        gw.config
            .ws
            .profile
            .message(MessageKind::SubscribeRefused, &vars)
            .into(),
    )
}

/// What one client message leads to.
enum Step {
    ToUpstream(Message),
    /// Answer the client; close too when the profile says so.
    Answer(Message, Option<CloseEvent>),
    /// Forward (maybe nothing) and answer.
    Both(Option<Message>, Vec<Message>),
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

    /// A subscribe: the channels the key may see, fitted to the plan's channel caps; answers
    /// the channels refused by scope and those past a cap, each with its own code.
    async fn subscribe(
        &mut self,
        text: &str,
        forward: Option<String>,
        granted: Vec<String>,
        refused: Vec<crate::policy::channels::Refused>,
    ) -> Step {
        let capped =
            self.limits.channels_per_session.is_some() || self.limits.channels_per_client.is_some();
        let fit = if capped {
            let (held, count) = self.reg.holding(&granted);
            let new = granted.len() - held.len();
            if count + new > crate::policy::channels::MAX_CHANNELS_PER_SESSION {
                return self.bad(BadMessage::TooManyChannels);
            }
            let is_held = |c: &str| held.iter().any(|h| h == c);
            let fit = self
                .leases
                .fit_channels(&self.limits, is_held, count, granted)
                .await;
            self.reg.add_channels(&fit.kept);
            fit
        } else {
            // No cap: what it was before caps, one lock and the session's own bound.
            if !self.reg.add_channels(&granted) {
                return self.bad(BadMessage::TooManyChannels);
            }
            Fit {
                kept: granted,
                ..Fit::default()
            }
        };
        if refused.is_empty() && fit.over.is_empty() {
            return Step::Nothing; // The caller forwards the original.
        }
        let profile = &self.gw.config.ws.profile;
        let forward = if fit.over.is_empty() {
            forward.filter(|f| !f.is_empty())
        } else {
            inbound::with_channels(profile, text, &fit.kept)
        };
        let mut answers = Vec::with_capacity(2);
        if !refused.is_empty() {
            answers.push(scope_refusal(profile, &fit.kept, &refused));
        }
        if !fit.over.is_empty() {
            answers.push(over_cap(&self.gw, &self.who, self.reg.route_index, &fit));
        }
        Step::Both(forward.map(|f| Message::Text(f.into())), answers)
    }

    async fn on_client_message(&mut self, msg: Message, rate: &mut Option<MessageRate>) -> Step {
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
        let verdict = inbound::classify(profile, self.mode, who, sport, text.as_str());
        drop(client);
        match verdict {
            Inbound::Forward => Step::ToUpstream(msg),
            Inbound::Subscribe {
                forward,
                granted,
                refused,
            } => match Box::pin(self.subscribe(text.as_str(), forward, granted, refused)).await {
                Step::Nothing => Step::ToUpstream(msg),
                other => other,
            },
            Inbound::Unsubscribe { channels } => {
                self.reg.remove_channels(&channels);
                Box::pin(self.leases.release_channels(&channels)).await;
                Step::ToUpstream(msg)
            }
            Inbound::Bad(bad) => self.bad(bad),
        }
    }

    /// Relays in a task of its own until one side closes, the gateway stops the session, or it
    /// idles out. Its own task, so that nothing of the opening (the upgrade request, the
    /// opening's futures) stays in memory for the session's life: an idle session is this task
    /// and its two sockets (BENCHMARKS.md, memory per idle session).
    pub(crate) fn spawn(self, client: ClientSocket, upstream: UpstreamSocket) {
        tokio::spawn(self.run(client, upstream));
    }

    async fn run(mut self, mut client: ClientSocket, mut upstream: UpstreamSocket) {
        let gw = Arc::clone(&self.gw);
        let profile = &gw.config.ws.profile;
        let send_timeout = profile.send_timeout;
        let mut rate = self.limits.messages.and_then(MessageRate::new);
        let idle_timeout = profile.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let who = Arc::clone(&self.who.client);
        let mut burst = Burst::new(&gw, &who);
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
        let mut held = Held::new(profile.delay_buffer);
        // The plan's delay, as of the last change the registry reported.
        let mut delay = *self.reg.delay.borrow_and_update();
        // The stop signal and the plan's delay are read on every turn: cheaply (`Changes`).
        let mut stop = Changes::new(self.reg.stop.clone());
        let mut delays = Changes::new(self.reg.delay.clone());
        // Armed for the oldest held message's due time; polled only while something is held.
        let release = tokio::time::sleep_until(Instant::now());
        tokio::pin!(release);

        let end = loop {
            let step = tokio::select! {
                biased;
                changed = stop.changed() => match changed {
                    Ok(()) => match stop.borrow().clone() {
                        Some(stop) => break End::Gateway(stop.event),
                        None => continue,
                    },
                    Err(_) => break End::Gateway(CloseEvent::GoingAway),
                },
                () = &mut idle => {
                    // Armed lazily: each burst only notes the time, the timer moves here. A
                    // burst under way counts as activity now.
                    burst.end();
                    let due = burst.last_active + idle_timeout;
                    if due > Instant::now() {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    break End::Gateway(CloseEvent::Idle);
                }
                Some(notice) = self.reg.notices.recv() => {
                    let m = Message::Text(notice.into());
                    match deliver(&mut client, m, send_timeout, &mut stop).await {
                        Ok(()) => continue,
                        Err(i) => break self.interrupted(i, CloseEvent::SlowClient),
                    }
                }
                Ok(()) = delays.changed() => {
                    delay = *delays.borrow();
                    // Re-armed for the new delay: what is now due goes at once.
                    if let Some(due) = held.next_due(delay.unwrap_or_default()) {
                        release.as_mut().reset(due);
                    }
                    continue;
                }
                () = &mut release, if !held.is_empty() => {
                    let delay = delay.unwrap_or_default();
                    let now = Instant::now();
                    let mut failed = None;
                    for _ in 0..RELEASE_BATCH {
                        let Some(m) = held.pop_due(now, delay) else { break };
                        match self.send_upstream_message(&mut client, m, send_timeout, &mut stop).await {
                            Ok(data) => to_client += burst.queued_for_client(data),
                            Err(i) => {
                                failed = Some(i);
                                break;
                            }
                        }
                    }
                    if let Some(i) = failed {
                        break self.interrupted(i, CloseEvent::SlowClient);
                    }
                    if let Some(due) = held.next_due(delay) {
                        release.as_mut().reset(due);
                    }
                    continue;
                }
                _ = renew.tick(), if has_leases => {
                    if !Box::pin(self.leases.renew(&gw, &self.limits)).await {
                        break End::Gateway(CloseEvent::TooManyConnections);
                    }
                    continue;
                }
                read = next_read(&mut client, &mut upstream, &mut burst) => {
                    match read {
                        Read::ClientWriteFailed => break End::ClientGone,
                        Read::UpstreamWriteFailed => {
                            break End::Gateway(CloseEvent::UpstreamUnavailable)
                        }
                        Read::Client(msg) => match msg {
                            None => break End::ClientGone,
                            Some(Err(WsError::Capacity(_))) => {
                                break End::Gateway(CloseEvent::TooBig)
                            }
                            Some(Err(WsError::Protocol(_) | WsError::Utf8(_))) => {
                                break End::Gateway(CloseEvent::BadMessage)
                            }
                            Some(Err(_)) => break End::ClientGone,
                            Some(Ok(m)) => self.on_client_message(m, &mut rate).await,
                        },
                        Read::Upstream(msg) => match msg {
                            Some(Ok(Message::Close(frame))) => break End::UpstreamClosed(frame),
                            Some(Ok(Message::Frame(_))) => Step::Nothing,
                            // Two tests for an undelayed session; held also after the plan moved
                            // to real time while some are still held, so order is kept.
                            Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))
                                if delay.is_some() || !held.is_empty() =>
                            {
                                let delay = delay.unwrap_or_default();
                                let first = held.is_empty();
                                if let Err(full) = held.push(Instant::now(), m) {
                                    tracing::info!(
                                        key_id = self.who.key.id(),
                                        held_messages = full.messages,
                                        held_bytes = full.bytes,
                                        "WebSocket session closed: its delay buffer is full."
                                    );
                                    break End::Gateway(CloseEvent::DelayOverflow);
                                }
                                // Armed for the new oldest; otherwise the timer already is.
                                if first {
                                    if let Some(due) = held.next_due(delay) {
                                        release.as_mut().reset(due);
                                    }
                                }
                                Step::Nothing
                            }
                            Some(Ok(m)) => match self
                                .send_upstream_message(&mut client, m, send_timeout, &mut stop)
                                .await
                            {
                                Ok(data) => {
                                    to_client += burst.queued_for_client(data);
                                    Step::Nothing
                                }
                                Err(i) => break self.interrupted(i, CloseEvent::SlowClient),
                            },
                            None | Some(Err(_)) => {
                                break End::Gateway(CloseEvent::UpstreamUnavailable)
                            }
                        },
                    }
                }
            };
            let (forward, answer, close) = match step {
                Step::Nothing => continue,
                Step::End(end) => break end,
                Step::ToUpstream(m) => (Some(m), Vec::new(), None),
                Step::Answer(m, close) => (None, vec![m], close),
                Step::Both(f, a) => (f, a, None),
            };
            if let Some(m) = forward {
                let data = m.is_text() || m.is_binary();
                if let Err(i) = put(&mut upstream, m, Then::Queue, send_timeout, &mut stop).await {
                    break self.interrupted(i, CloseEvent::UpstreamUnavailable);
                }
                burst.upstream = true;
                from_client += u64::from(data);
            }
            let mut failed = None;
            for m in answer {
                if let Err(i) = deliver(&mut client, m, send_timeout, &mut stop).await {
                    failed = Some(self.interrupted(i, CloseEvent::SlowClient));
                    break;
                }
            }
            if let Some(end) = failed {
                break end;
            }
            if let Some(event) = close {
                break End::Gateway(event);
            }
        };
        // What the last burst queued is counted, however the session ended.
        burst.end();
        let tally = SessionTally {
            from_client,
            to_client,
            lasted: opened.elapsed(),
            end: end.name(),
        };
        // Boxed: inline, the close's state would be part of every idle session's task.
        Box::pin(self.finish(end, client, upstream)).await;
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

    /// Queues one message from the upstream for the client; the answer is the bytes of a data
    /// message (text or binary), which the caller counts as egress.
    async fn send_upstream_message(
        &mut self,
        client: &mut ClientSocket,
        m: Message,
        send_timeout: Duration,
        stop: &mut Changes<Option<Stop>>,
    ) -> Result<Option<u64>, Interrupted> {
        let bytes = (m.is_text() || m.is_binary()).then(|| m.len() as u64);
        put(client, m, Then::Queue, send_timeout, stop).await?;
        Ok(bytes)
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
#[cfg(test)]
mod tests {
    use super::{ClientSocket, Relay, UpstreamSocket};

    /// An idle session is its relay task and its two sockets, held for the session's life:
    /// with the TLS state inline, a plain upstream socket alone was 1.4 KiB (BENCHMARKS.md,
    /// memory per idle session).
    #[test]
    fn what_an_idle_session_holds_stays_small() {
        let sizes = [
            ("client socket", std::mem::size_of::<ClientSocket>()),
            ("upstream socket", std::mem::size_of::<UpstreamSocket>()),
            ("relay", std::mem::size_of::<Relay>()),
        ];
        for (what, size) in sizes {
            assert!(size <= 512, "{what}: {size} bytes");
        }
    }
}
