//! The WebSocket parts of the configuration file as written: a route's `ws` table, a plan's
//! `ws` limits and `[profile.ws]`. Compiled by `compile_ws`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::choice::{Choice, DayBy, UnknownChannels};
use super::errors::DurationSetting;
use crate::policy::ws::{AuthMode, ClientMessages, OnSuspend, OnViolation};

/// `ws = { mode = "handshake", credentials = ["header:X-API-Key", "query:key"] }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsRoute {
    /// `handshake`, `login_message` or `close_code`.
    pub(crate) mode: Choice<AuthMode>,
    /// Credential sources for the upgrade request (default: the profile's).
    pub(crate) credentials: Option<Vec<String>>,
}

/// WebSocket limits of the profile (defaults) or a plan (overrides, field by field).
/// Signed so a negative number gets a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsLimits {
    pub(crate) connections_per_key: Option<i64>,
    pub(crate) connections_per_client: Option<i64>,
    pub(crate) connections_per_day: Option<i64>,
    /// `client` (default) or `key`: whose counter `connections_per_day` uses.
    pub(crate) connections_per_day_by: Option<Choice<DayBy>>,
    pub(crate) messages_per_second: Option<i64>,
    pub(crate) message_burst: Option<i64>,
    /// Channels one session may hold at once (at most `MAX_CHANNELS_PER_SESSION`).
    pub(crate) max_channels_per_session: Option<i64>,
    /// Channels a client's sessions may hold together (on every node when limits are shared).
    pub(crate) max_channels_per_client: Option<i64>,
}

/// The login message's shape (`{"type":"login","apiKey":"…","channels":[…]}` by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsLogin {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) key_field: Option<String>,
    pub(crate) channels_field: Option<String>,
}

/// The subscribe messages' shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsSubscribe {
    pub(crate) types: Option<Vec<String>>,
    pub(crate) unsubscribe_types: Option<Vec<String>>,
    pub(crate) channels_field: Option<String>,
}

/// Short-lived WebSocket tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsToken {
    /// Path of the exchange endpoint (`POST`); `""` turns it off.
    pub(crate) path: Option<String>,
    pub(crate) ttl: Option<DurationSetting>,
    /// Query parameter carrying a token on the upgrade request.
    pub(crate) param: Option<String>,
    /// Plan features a key needs to get a token.
    pub(crate) features: Option<Vec<String>>,
    /// Environment variable holding the signing secret shared by every node (otherwise each
    /// process draws its own, and a token works only on the node that issued it).
    pub(crate) secret_env: Option<String>,
}

/// A close frame: code and reason.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsClose {
    pub(crate) code: Option<u16>,
    pub(crate) reason: Option<String>,
}

/// `[profile.ws]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWsProfile {
    pub(crate) login_deadline: Option<DurationSetting>,
    pub(crate) max_message_bytes: Option<i64>,
    pub(crate) max_login_bytes: Option<i64>,
    pub(crate) idle_timeout: Option<DurationSetting>,
    pub(crate) send_timeout: Option<DurationSetting>,
    pub(crate) lease_ttl: Option<DurationSetting>,
    /// Most bytes of upstream messages a delayed session holds (`policy::delay`).
    pub(crate) delay_buffer_bytes: Option<i64>,
    /// Most upstream messages a delayed session holds.
    pub(crate) delay_buffer_messages: Option<i64>,
    /// `json` (client messages are JSON objects the gateway reads) or `any` (relayed as is).
    pub(crate) client_messages: Option<Choice<ClientMessages>>,
    /// `error` (answer and keep the session) or `close`.
    pub(crate) on_bad_message: Option<Choice<OnViolation>>,
    /// `error` (answer, drop the message) or `close`.
    pub(crate) on_message_limit: Option<Choice<OnViolation>>,
    /// What open sessions a new suspension holds get: `close` (default) or `notify` (the
    /// `suspended` message, and the session goes on).
    pub(crate) on_suspend: Option<Choice<OnSuspend>>,
    pub(crate) type_field: Option<String>,
    /// Client message types let through after login; empty = any.
    pub(crate) message_types: Option<Vec<String>>,
    /// Channels the map does not name: `refuse` (default) or `allow`.
    pub(crate) unknown_channels: Option<Choice<UnknownChannels>>,
    #[serde(default)]
    pub(crate) login: RawWsLogin,
    #[serde(default)]
    pub(crate) subscribe: RawWsSubscribe,
    #[serde(default)]
    pub(crate) token: RawWsToken,
    #[serde(default)]
    pub(crate) limits: RawWsLimits,
    /// Channel (or `prefix*`) → required scope; `{sport}` in a scope is the session's sport
    /// (the route's `sport_param`), as in route scopes.
    #[serde(default)]
    pub(crate) channels: BTreeMap<String, String>,
    /// Close event → code and reason.
    #[serde(default)]
    pub(crate) close: BTreeMap<String, RawWsClose>,
    /// Message kind → JSON template.
    #[serde(default)]
    pub(crate) messages: BTreeMap<String, toml::Value>,
}
