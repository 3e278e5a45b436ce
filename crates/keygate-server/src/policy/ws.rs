//! The compiled WebSocket contract: how each WebSocket route authenticates, what the profile
//! answers (close codes and reasons, message templates), which scope each channel needs, and
//! the connection and message limits. Built by `config::compile_ws`, read per session.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::time::Duration;

use keygate_core::limit::Limit;
use keygate_core::render::{BodyTemplate, Vars};

use crate::policy::profile::CredentialSource;
use crate::policy::ratelimit::LimitBy;

/// How a WebSocket route learns the caller's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// The key is on the upgrade request; a bad one is refused with HTTP 401/403 before the
    /// upgrade (seeds 001, 004).
    Handshake,
    /// The upgrade needs no key; the first message is a login within a deadline (seed 000).
    LoginMessage,
    /// The upgrade is accepted; a bad key closes the socket with a close code (seed 002).
    CloseCode,
}

/// A route's WebSocket settings.
#[derive(Clone, Debug)]
pub struct WsRoute {
    pub mode: AuthMode,
    /// Where the upgrade request's key is read from; `None` = the profile's sources.
    pub credentials: Option<Vec<CredentialSource>>,
}

/// Whether the gateway reads client messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMessages {
    /// JSON objects with a type: channel scopes, message types and logins are enforced.
    Json,
    /// Relayed as they are (text and binary); only sizes and rates are enforced.
    Any,
}

/// What a violation (bad message, message rate) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnViolation {
    /// An error message; the session goes on and the offending message is dropped.
    Error,
    /// The event's close frame.
    Close,
}

/// What an open session gets when a suspension starts to hold it (`[profile.ws] on_suspend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSuspend {
    /// The `suspended` message; the session goes on (the client decides, the upstream keeps
    /// sending what it sends).
    Notify,
    /// The `suspended` close frame. The default: nothing the hold covers reaches the client.
    Close,
}

/// Why the gateway closes a session; each has a profile close code and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseEvent {
    /// Missing, malformed, unknown, disabled or expired key (4001 in seed 002).
    Unauthorized,
    /// A valid key without the route's scope, sport or plan feature.
    Forbidden,
    /// No login message within the deadline.
    LoginTimeout,
    /// A message the protocol does not allow, when the profile closes on bad messages.
    BadMessage,
    /// A frame or message over the size limit.
    TooBig,
    /// The per-connection message rate was exceeded, when the profile closes on it.
    RateLimited,
    /// Too many open connections (per key or client) or the daily connection quota.
    TooManyConnections,
    /// The key or its client stopped being valid while the session was open.
    Revoked,
    /// The upstream could not be reached or went away abnormally.
    UpstreamUnavailable,
    /// Nothing in either direction for the idle timeout.
    Idle,
    /// The client did not read what it was sent within the send timeout.
    SlowClient,
    /// The gateway is shutting down.
    GoingAway,
    /// A suspension now holds the session (`on_suspend = "close"`).
    Suspended,
    /// A delayed session would hold more than `[profile.ws] delay_buffer_bytes` or
    /// `delay_buffer_messages` (`crate::policy::delay`).
    DelayOverflow,
}

impl CloseEvent {
    pub const ALL: [CloseEvent; 14] = [
        CloseEvent::Unauthorized,
        CloseEvent::Forbidden,
        CloseEvent::LoginTimeout,
        CloseEvent::BadMessage,
        CloseEvent::TooBig,
        CloseEvent::RateLimited,
        CloseEvent::TooManyConnections,
        CloseEvent::Revoked,
        CloseEvent::UpstreamUnavailable,
        CloseEvent::Idle,
        CloseEvent::SlowClient,
        CloseEvent::GoingAway,
        CloseEvent::Suspended,
        CloseEvent::DelayOverflow,
    ];

    /// The name used in `[profile.ws.close.NAME]`.
    pub const fn name(self) -> &'static str {
        match self {
            CloseEvent::Unauthorized => "unauthorized",
            CloseEvent::Forbidden => "forbidden",
            CloseEvent::LoginTimeout => "login_timeout",
            CloseEvent::BadMessage => "bad_message",
            CloseEvent::TooBig => "too_big",
            CloseEvent::RateLimited => "rate_limited",
            CloseEvent::TooManyConnections => "too_many_connections",
            CloseEvent::Revoked => "revoked",
            CloseEvent::UpstreamUnavailable => "upstream_unavailable",
            CloseEvent::Idle => "idle",
            CloseEvent::SlowClient => "slow_client",
            CloseEvent::GoingAway => "going_away",
            CloseEvent::Suspended => "suspended",
            CloseEvent::DelayOverflow => "delay_overflow",
        }
    }

    pub fn from_name(name: &str) -> Option<CloseEvent> {
        CloseEvent::ALL.into_iter().find(|e| e.name() == name)
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// RFC 6455 codes where one fits, the 4000 private range otherwise.
    pub const fn default_spec(self) -> (u16, &'static str) {
        match self {
            CloseEvent::Unauthorized => (4001, "Unauthorized"),
            CloseEvent::Forbidden => (4003, "Forbidden"),
            CloseEvent::LoginTimeout => (4008, "Login timeout"),
            CloseEvent::BadMessage => (1008, "Bad message"),
            CloseEvent::TooBig => (1009, "Message too big"),
            CloseEvent::RateLimited => (4029, "Message rate exceeded"),
            CloseEvent::TooManyConnections => (4029, "Too many connections"),
            CloseEvent::Revoked => (4001, "API key no longer valid"),
            CloseEvent::UpstreamUnavailable => (1011, "Upstream unavailable"),
            CloseEvent::Idle => (1001, "Idle timeout"),
            CloseEvent::SlowClient => (1008, "Client too slow"),
            CloseEvent::GoingAway => (1001, "Going away"),
            // RFC 6455's registry: 1013 Try Again Later.
            CloseEvent::Suspended => (1013, "Suspended"),
            // 1008 (policy) like a slow client: the session is over its bound; the client
            // reconnects and resubscribes, which gets it a fresh snapshot from the upstream.
            CloseEvent::DelayOverflow => (1008, "Delay buffer full"),
        }
    }
}

/// A close frame as the profile defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseSpec {
    pub code: u16,
    /// At most 123 bytes (the room a close frame has).
    pub reason: Box<str>,
}

/// Messages the gateway itself sends to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// The answer to a successful login: granted and refused channels.
    LoginOk,
    /// Any refusal or protocol error, with a `code`.
    Error,
    /// A subscribe whose channels (some or all) the key may not see.
    SubscribeRefused,
    /// A suspension now holds the session (`on_suspend = "notify"`): `code`, `detail` (the
    /// operator's message), `id` and `until`.
    Suspended,
    /// A suspension the session was told of ended (resumed, or its `until` passed): `code`
    /// (`resumed`) and `id`. Sent only to sessions that got its `suspended` notice.
    Resumed,
}

impl MessageKind {
    pub const ALL: [MessageKind; 5] = [
        MessageKind::LoginOk,
        MessageKind::Error,
        MessageKind::SubscribeRefused,
        MessageKind::Suspended,
        MessageKind::Resumed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::LoginOk => "login_ok",
            MessageKind::Error => "error",
            MessageKind::SubscribeRefused => "subscribe_refused",
            MessageKind::Suspended => "suspended",
            MessageKind::Resumed => "resumed",
        }
    }

    pub fn from_name(name: &str) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| k.name() == name)
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// The default profile's message.
    pub const fn default_template(self) -> &'static str {
        match self {
            MessageKind::LoginOk => {
                r#"{"type":"login_ok","granted":{"var":"granted"},"refused":{"var":"refused"}}"#
            }
            MessageKind::Error => r#"{"type":"error","code":"{code}","detail":"{detail}"}"#,
            MessageKind::SubscribeRefused => {
                r#"{"type":"error","code":"{code}","detail":"{detail}","channels":{"var":"refused"}}"#
            }
            MessageKind::Suspended => {
                r#"{"type":"suspended","code":"{code}","detail":"{detail}","id":"{id}","until":"{until}"}"#
            }
            MessageKind::Resumed => r#"{"type":"resumed","code":"{code}","id":"{id}"}"#,
        }
    }
}

/// Variables a message template may use.
pub(crate) const MESSAGE_VARS: &[&str] = &[
    "code",
    "detail",
    "granted",
    "refused",
    "channel",
    "scope",
    "limit",
    "retry_after",
    "id",
    "until",
];

/// Connection and message limits of a plan (the profile's, overridden field by field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsLimits {
    pub connections_per_key: Option<NonZeroU64>,
    pub connections_per_client: Option<NonZeroU64>,
    pub connections_per_day: Option<NonZeroU64>,
    pub connections_per_day_by: LimitBy,
    /// Per connection, client to upstream.
    pub messages: Option<Limit>,
    /// Channels one session may hold (the plan's `max_channels_per_session`).
    pub channels_per_session: Option<NonZeroU64>,
    /// Channels a client's sessions may hold together, one lease per channel.
    pub channels_per_client: Option<NonZeroU64>,
}

impl WsLimits {
    /// `self` with every field `over` sets replaced.
    pub fn overridden(&self, over: &WsLimits, day_by_set: bool) -> WsLimits {
        WsLimits {
            connections_per_key: over.connections_per_key.or(self.connections_per_key),
            connections_per_client: over.connections_per_client.or(self.connections_per_client),
            connections_per_day: over.connections_per_day.or(self.connections_per_day),
            connections_per_day_by: if day_by_set {
                over.connections_per_day_by
            } else {
                self.connections_per_day_by
            },
            messages: over.messages.or(self.messages),
            channels_per_session: over.channels_per_session.or(self.channels_per_session),
            channels_per_client: over.channels_per_client.or(self.channels_per_client),
        }
    }
}

/// What a channel needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelRule<'a> {
    /// This scope.
    Scope(&'a str),
    /// Nothing: the map does not name it and the profile allows unknown channels.
    Open,
    /// The map does not name it and the profile refuses unknown channels.
    Unknown,
}

/// Channel → scope: exact names, then the longest matching `prefix*`.
#[derive(Clone, Debug, Default)]
pub struct ChannelMap {
    exact: HashMap<Box<str>, Box<str>>,
    /// Longest prefix first.
    prefixes: Vec<(Box<str>, Box<str>)>,
    pub allow_unknown: bool,
}

impl ChannelMap {
    pub fn new(entries: &BTreeMap<String, String>, allow_unknown: bool) -> ChannelMap {
        let mut map = ChannelMap {
            allow_unknown,
            ..ChannelMap::default()
        };
        for (channel, scope) in entries {
            match channel.strip_suffix('*') {
                Some(prefix) => map.prefixes.push((prefix.into(), scope.as_str().into())),
                None => {
                    map.exact
                        .insert(channel.as_str().into(), scope.as_str().into());
                }
            }
        }
        map.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        map
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The rule for one channel.
    pub fn rule(&self, channel: &str) -> ChannelRule<'_> {
        if let Some(scope) = self.exact.get(channel) {
            return ChannelRule::Scope(scope);
        }
        if let Some((_, scope)) = self
            .prefixes
            .iter()
            .find(|(p, _)| channel.starts_with(&**p))
        {
            return ChannelRule::Scope(scope);
        }
        if self.allow_unknown {
            ChannelRule::Open
        } else {
            ChannelRule::Unknown
        }
    }
}

/// The login message's field names.
#[derive(Clone, Debug)]
pub struct LoginShape {
    pub kind: Box<str>,
    pub key_field: Box<str>,
    pub channels_field: Box<str>,
}

/// The subscribe messages' types and field.
#[derive(Clone, Debug)]
pub struct SubscribeShape {
    pub types: Vec<Box<str>>,
    pub unsubscribe_types: Vec<Box<str>>,
    pub channels_field: Box<str>,
}

/// The signing secret of WebSocket tokens; never printed.
#[derive(Clone)]
pub struct TokenSecret(pub [u8; 32]);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

/// Short-lived, single-use WebSocket tokens.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// `POST` path of the exchange endpoint; `None` = off.
    pub path: Option<Box<str>>,
    pub ttl: Duration,
    /// Query parameter carrying a token on an upgrade request.
    pub param: Box<str>,
    /// Plan features a key needs to get a token.
    pub features: Vec<Box<str>>,
    pub secret: TokenSecret,
    /// Whether `secret` came from `secret_env` (shared by every node) rather than being drawn
    /// by this process (kept across a reload, so issued tokens keep working).
    pub from_env: bool,
}

/// `[profile.ws]`, compiled.
#[derive(Clone, Debug)]
pub struct WsProfile {
    pub login_deadline: Duration,
    pub max_message_bytes: usize,
    pub max_login_bytes: usize,
    pub idle_timeout: Duration,
    /// Longest wait for a client to take one message before it is closed as too slow.
    pub send_timeout: Duration,
    /// Lifetime of a connection lease; renewed every third of it.
    pub lease_ttl: Duration,
    /// What one delayed session may hold (`crate::policy::delay`).
    pub delay_buffer: crate::policy::delay::DelayBuffer,
    pub client_messages: ClientMessages,
    pub on_bad_message: OnViolation,
    pub on_message_limit: OnViolation,
    pub on_suspend: OnSuspend,
    pub type_field: Box<str>,
    /// Client message types let through; empty = any.
    pub message_types: Vec<Box<str>>,
    pub login: LoginShape,
    pub subscribe: SubscribeShape,
    pub token: TokenSettings,
    pub limits: WsLimits,
    pub channels: ChannelMap,
    closes: Vec<CloseSpec>,
    messages: Vec<BodyTemplate>,
}

impl WsProfile {
    /// The default profile's contract with a fresh token secret.
    pub fn new(secret: TokenSecret) -> WsProfile {
        WsProfile {
            login_deadline: Duration::from_secs(30),
            max_message_bytes: 64 * 1024,
            max_login_bytes: 4096,
            idle_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(30),
            delay_buffer: crate::policy::delay::DelayBuffer::default(),
            client_messages: ClientMessages::Any,
            on_bad_message: OnViolation::Error,
            on_message_limit: OnViolation::Error,
            on_suspend: OnSuspend::Close,
            type_field: "type".into(),
            message_types: Vec::new(),
            login: LoginShape {
                kind: "login".into(),
                key_field: "apiKey".into(),
                channels_field: "channels".into(),
            },
            subscribe: SubscribeShape {
                types: vec!["subscribe".into()],
                unsubscribe_types: vec!["unsubscribe".into()],
                channels_field: "channels".into(),
            },
            token: TokenSettings {
                path: Some("/v1/ws-token".into()),
                ttl: Duration::from_secs(30),
                param: "token".into(),
                features: Vec::new(),
                secret,
                from_env: false,
            },
            limits: WsLimits::default(),
            channels: ChannelMap::default(),
            closes: CloseEvent::ALL
                .into_iter()
                .map(|e| {
                    let (code, reason) = e.default_spec();
                    CloseSpec {
                        code,
                        reason: reason.into(),
                    }
                })
                .collect(),
            messages: MessageKind::ALL
                .into_iter()
                .map(|k| {
                    let tree = serde_json::from_str(k.default_template())
                        .expect("built-in message templates are JSON");
                    BodyTemplate::compile(&tree, MESSAGE_VARS)
                        .expect("built-in message templates compile")
                })
                .collect(),
        }
    }

    pub fn close(&self, event: CloseEvent) -> &CloseSpec {
        &self.closes[event.index()]
    }

    pub fn set_close(&mut self, event: CloseEvent, spec: CloseSpec) {
        self.closes[event.index()] = spec;
    }

    pub fn set_message(&mut self, kind: MessageKind, template: BodyTemplate) {
        self.messages[kind.index()] = template;
    }

    /// Renders one of the gateway's own messages.
    pub fn message(&self, kind: MessageKind, vars: &dyn Vars) -> String {
        self.messages[kind.index()].render_json(vars)
    }

    /// Whether a client message type may pass (subscribe types always may).
    pub fn allows_type(&self, kind: &str) -> bool {
        self.message_types.is_empty()
            || self.message_types.iter().any(|t| &**t == kind)
            || self.subscribe.types.iter().any(|t| &**t == kind)
            || self
                .subscribe
                .unsubscribe_types
                .iter()
                .any(|t| &**t == kind)
    }
}

/// Everything WebSocket in a configuration.
#[derive(Clone, Debug)]
pub struct WsConfig {
    pub profile: WsProfile,
    /// By route index; `None` for routes that are not WebSocket routes.
    pub routes: Vec<Option<WsRoute>>,
    /// Each plan's limits, already merged over the profile's.
    pub plans: BTreeMap<String, WsLimits>,
}

impl WsConfig {
    /// The WebSocket settings of a route, if it is a WebSocket route.
    pub fn route(&self, index: usize) -> Option<&WsRoute> {
        self.routes.get(index).and_then(Option::as_ref)
    }

    /// Whether any route is a WebSocket route (the token endpoint exists only then).
    pub fn has_routes(&self) -> bool {
        self.routes.iter().any(Option::is_some)
    }

    /// The limits of a plan (the profile's for a plan without its own).
    pub fn limits_for(&self, plan: &str) -> &WsLimits {
        self.plans.get(plan).unwrap_or(&self.profile.limits)
    }

    /// No WebSocket routes; the profile's defaults.
    pub fn new(secret: TokenSecret) -> WsConfig {
        WsConfig {
            profile: WsProfile::new(secret),
            routes: Vec::new(),
            plans: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_exact_then_longest_prefix() {
        let mut entries = BTreeMap::new();
        entries.insert("markets".to_owned(), "cs2:stream:markets".to_owned());
        entries.insert("matches.*".to_owned(), "cs2:stream:matches".to_owned());
        entries.insert("matches.live.*".to_owned(), "cs2:stream:live".to_owned());
        let map = ChannelMap::new(&entries, false);
        assert_eq!(
            map.rule("markets"),
            ChannelRule::Scope("cs2:stream:markets")
        );
        assert_eq!(
            map.rule("matches.42"),
            ChannelRule::Scope("cs2:stream:matches")
        );
        assert_eq!(
            map.rule("matches.live.1"),
            ChannelRule::Scope("cs2:stream:live")
        );
        assert_eq!(map.rule("markets2"), ChannelRule::Unknown);
        assert_eq!(
            ChannelMap::new(&entries, true).rule("other"),
            ChannelRule::Open
        );
    }

    #[test]
    fn events_and_kinds_round_trip() {
        for e in CloseEvent::ALL {
            assert_eq!(CloseEvent::from_name(e.name()), Some(e));
        }
        for k in MessageKind::ALL {
            assert_eq!(MessageKind::from_name(k.name()), Some(k));
        }
        let p = WsProfile::new(TokenSecret([0; 32]));
        assert_eq!(p.close(CloseEvent::Unauthorized).code, 4001);
        let vars = [
            ("code", keygate_core::render::Value::Str("x".into())),
            ("detail", keygate_core::render::Value::Str("y".into())),
        ];
        assert_eq!(
            p.message(MessageKind::Error, &vars),
            r#"{"type":"error","code":"x","detail":"y"}"#
        );
        assert_eq!(format!("{:?}", TokenSecret([7; 32])), "TokenSecret(..)");
    }
}
