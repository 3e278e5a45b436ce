//! The configuration file as written: serde structs that accept exactly the documented keys.
//! Nothing here is validated beyond types; `compile` turns it into a [`super::Config`].

use std::collections::BTreeMap;

use super::choice::{Backend, Choice, Reset, SelfServiceWord, When};
use super::errors::DurationSetting;
use super::spanned::Spanned;
use crate::policy::ratelimit::LimitBy;
use keygate_core::key_format::Alphabet;
use keygate_core::legacy_format::Charset;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) keys: Option<Spanned<RawKeys>>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(crate) plans: BTreeMap<String, Spanned<RawPlan>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(crate) profile: RawProfile,
    #[serde(default)]
    pub(crate) limits: Option<Spanned<RawLimiter>>,
    #[serde(default)]
    pub(crate) guard: Option<Spanned<RawGuard>>,
    /// Self-service accounts (`crate::selfservice`); off when absent.
    #[serde(default)]
    pub(crate) selfservice: Option<Spanned<RawSelfService>>,
    /// Messaging feed credentials on RabbitMQ (`keygate_amqp`); off when absent.
    #[serde(default)]
    pub(crate) amqp: Option<Spanned<keygate_amqp::RawAmqp>>,
    /// The customer portal (`crate::portal`); off unless `[portal] listen` is set.
    #[serde(default)]
    pub(crate) portal: Option<Spanned<super::raw_portal::RawPortal>>,
    /// Receivers of events (`crate::webhooks`); none when absent.
    #[serde(default)]
    pub(crate) webhooks: Vec<Spanned<super::raw_webhooks::RawWebhook>>,
    /// How nodes work the webhook outbox; defaults when absent.
    #[serde(default)]
    pub(crate) outbox: Option<Spanned<super::raw_webhooks::RawOutbox>>,
    /// GitHub's secret-scanning reports (`crate::leak_reports`); off when absent.
    #[serde(default)]
    pub(crate) leak_reports: Option<Spanned<RawLeakReports>>,
    /// Hourly analytics (`crate::state::usage`); on with defaults when absent.
    #[serde(default)]
    pub(crate) analytics: Option<Spanned<RawAnalytics>>,
    /// OpenTelemetry spans over OTLP/HTTP (`crate::state::traces`); off when absent.
    #[serde(default)]
    pub(crate) tracing: Option<Spanned<RawTracing>>,
}

/// `[analytics]`: whether requests are counted per key, route, status and hour, and how long.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAnalytics {
    /// Default true; off, requests are counted per client and day only, as before.
    pub(crate) enabled: Option<bool>,
    /// Days hourly rows are kept (default 90, at most 3660).
    pub(crate) retention_days: Option<i64>,
}

/// `[tracing]`: where spans are exported, and how many.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`); spans go to `/v1/traces`.
    pub(crate) otlp_endpoint: String,
    /// `service.name` of the spans (default `keygate`).
    pub(crate) service_name: Option<String>,
    /// Share of new traces sampled, 0.0 to 1.0 (default 1.0).
    pub(crate) sample_ratio: Option<f64>,
    /// Spans queued for export before new ones are dropped (default 2048).
    pub(crate) max_queue: Option<i64>,
    /// How long one export may take (default 10s).
    pub(crate) export_timeout: Option<DurationSetting>,
}

/// `[leak_reports]`: where GitHub's secret scanning reports leaked keys, and what to do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLeakReports {
    /// Path on the public listener (default `/_keygate/secret-scanning`).
    pub(crate) path: Option<String>,
    /// GitHub's public keys document, saved from
    /// `https://api.github.com/meta/public_keys/secret_scanning`.
    pub(crate) public_keys_file: Option<String>,
    /// `revoke` (the default) or `flag`.
    pub(crate) action: Option<super::choice::Choice<keygate_store::LeakAction>>,
    /// Largest report body, in bytes (default 1 MiB).
    pub(crate) max_body_bytes: Option<i64>,
}

/// What self-service registration creates and which profile fields callers may keep.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelfService {
    /// Plan of registered accounts (must be a configured plan).
    pub(crate) plan: String,
    /// Scopes of registered accounts.
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    /// Label of the keys self-service issues.
    pub(crate) key_label: Option<String>,
    /// Largest register / update body, in bytes (default 4096).
    pub(crate) max_body_bytes: Option<i64>,
    /// Longest account name, in characters (default 64, at most 100).
    pub(crate) name_max_length: Option<usize>,
    /// Profile fields besides `name`: field → longest value in characters.
    #[serde(default)]
    pub(crate) fields: BTreeMap<String, i64>,
    /// What an update may change: `name` and any of `fields` (default: all of them).
    pub(crate) patchable: Option<Vec<String>>,
}

/// Brute-force throttling (`crate::policy::guard`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuard {
    pub(crate) enabled: Option<bool>,
    /// Failed authentications per source within `window` that start a cool-down.
    pub(crate) threshold: Option<i64>,
    /// The same per key prefix; 0 turns prefix counting off.
    pub(crate) prefix_threshold: Option<u32>,
    pub(crate) prefix_length: Option<usize>,
    pub(crate) window: Option<DurationSetting>,
    /// How long failing keys from a cooled-down source (or with a cooled-down prefix) get
    /// 429, counted from the last guess; keys that authenticate are always served.
    pub(crate) cooldown: Option<DurationSetting>,
    pub(crate) max_tracked: Option<i64>,
    /// Addresses or CIDR ranges of proxies (nginx, Traefik, Envoy in front of keygate or
    /// calling its forward-auth endpoints) whose `X-Forwarded-For`, `Forwarded` or
    /// `X-Real-IP` names the client counted by the guard.
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
}

/// Where rate-limit counters live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimiter {
    /// `local` (one node) or `redis` (shared by every node).
    pub(crate) backend: Option<Choice<Backend>>,
    pub(crate) redis_url: Option<String>,
    /// CA certificates (PEM) to trust for a `rediss://` URL instead of the system's.
    pub(crate) redis_ca_file: Option<String>,
    /// Longest wait for Redis's answer to a request's call before falling back (`5ms`).
    pub(crate) timeout: Option<DurationSetting>,
    /// Longest wait for a connection to Redis (`1s`): at start, in the background while Redis
    /// is unreachable (the node starts anyway, on the fallback), and on each reconnect.
    pub(crate) connect_timeout: Option<DurationSetting>,
    /// Refuse limited requests (the profile's 503) instead of falling back to local limits
    /// while Redis fails or has not answered since the start.
    #[serde(default)]
    pub(crate) fail_closed: bool,
}

/// Limits of a plan or a route. Signed so a negative number gets a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) rps: Option<i64>,
    pub(crate) per_minute: Option<i64>,
    pub(crate) per_hour: Option<i64>,
    pub(crate) per_day: Option<i64>,
    pub(crate) per_month: Option<i64>,
    pub(crate) burst: Option<i64>,
    /// `client` (default), `key`, or `source` (the caller's address; public routes only).
    pub(crate) by: Option<Choice<LimitBy>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) admin_listen: Option<Spanned<String>>,
    /// Worker threads; 0 or absent = one per core.
    pub(crate) workers: Option<usize>,
    pub(crate) db: Option<String>,
    /// How often to poll the store's change feed (default 100ms on SQLite, 500ms on
    /// PostgreSQL, where LISTEN/NOTIFY wakes the poller at once).
    pub(crate) feed_poll: Option<Spanned<DurationSetting>>,
    /// How often usage counts are added to the store (default 10s).
    pub(crate) usage_flush: Option<Spanned<DurationSetting>>,
    /// Answer `/ready` 503 while the store is unreachable (default: keep serving from the
    /// replica and stay ready).
    #[serde(default)]
    pub(crate) ready_requires_store: bool,
    /// Largest request head (request line and headers) in bytes; past it, 431.
    pub(crate) max_header_bytes: Option<usize>,
    /// Most request headers; past it, 431.
    pub(crate) max_headers: Option<i64>,
    /// Time a client has to send a request head (and that an idle connection is kept).
    pub(crate) header_read_timeout: Option<DurationSetting>,
    /// Largest request body forwarded upstream, in bytes; past it, 413.
    pub(crate) max_body_bytes: Option<i64>,
    /// The HTTP/1.1 client toward `http://` upstreams: `"hyper"` (default) or `"direct"`.
    pub(crate) upstream_engine: Option<Choice<crate::policy::upstream::Engine>>,
    /// On SIGTERM, how long the whole shutdown may take (default 15s): in-flight requests and
    /// WebSocket sessions get it less a fifth (at most a second), kept for the last usage
    /// write; the process exits by then, whatever is still running.
    pub(crate) shutdown_grace: Option<DurationSetting>,
    /// Most open connections on the public listener (all its workers together); past it a
    /// new connection is closed at once, so a flood cannot take every file descriptor.
    pub(crate) max_connections: Option<i64>,
    /// Most open connections on the admin listener, counted apart from the public one's so
    /// neither starves the other.
    pub(crate) admin_max_connections: Option<i64>,
    /// Time an HTTP/2 connection has, from its first bytes, to complete its first request's
    /// headers; past it the connection is closed.
    pub(crate) h2_handshake_timeout: Option<DurationSetting>,
    /// Time an HTTP/2 connection may stay open with no stream in progress.
    pub(crate) h2_idle_timeout: Option<DurationSetting>,
    /// Interval of HTTP/2 keep-alive pings; a ping unanswered for 20 s closes the connection.
    /// `"0s"` sends none.
    pub(crate) h2_keepalive_interval: Option<DurationSetting>,
    /// Most concurrent streams (requests) one HTTP/2 connection may have open.
    pub(crate) h2_max_concurrent_streams: Option<i64>,
    /// TLS on the public listener.
    pub(crate) tls: Option<Spanned<RawTls>>,
    /// TLS on the admin listener.
    pub(crate) admin_tls: Option<Spanned<RawTls>>,
}

/// `[server.tls]` / `[server.admin_tls]`: the default certificate (`cert`, `key`), more
/// certificates chosen by SNI, client-certificate verification, the handshake's deadline.
/// Paths are relative to the configuration file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// Certificate chain, leaf first (PEM).
    pub(crate) cert: Option<Spanned<String>>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Option<Spanned<String>>,
    /// More certificates; each serves the names its subjectAltName lists.
    #[serde(default)]
    pub(crate) certificates: Vec<Spanned<RawCertPair>>,
    /// CA certificates (PEM) that clients' certificates must chain to; a client without
    /// one is refused at the handshake.
    pub(crate) client_ca: Option<Spanned<String>>,
    /// Time a connection has to complete its handshake (default 10s).
    pub(crate) handshake_timeout: Option<DurationSetting>,
}

/// One more certificate of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeys {
    pub(crate) prefix: String,
    #[serde(default = "default_alphabet")]
    pub(crate) alphabet: Choice<Alphabet>,
    pub(crate) length: usize,
    #[serde(default)]
    pub(crate) checksum: bool,
    /// Name of an environment variable holding the digest secret (HMAC).
    pub(crate) digest_secret_env: Option<String>,
    /// Shapes of imported keys accepted beside this format (`[[keys.legacy]]`).
    #[serde(default)]
    pub(crate) legacy: Vec<Spanned<RawLegacyKeys>>,
}

fn default_alphabet() -> Choice<Alphabet> {
    Choice::Known(Alphabet::Base62)
}

/// `[[keys.legacy]] prefix = "sk_live_", alphabet = "base62", length = 24`: the shape of keys
/// another system issued, imported with `keygate import`. `length` counts the characters after
/// the prefix, as `[keys] length` does; legacy keys have no checksum.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLegacyKeys {
    #[serde(default)]
    pub(crate) prefix: String,
    #[serde(default = "default_charset")]
    pub(crate) alphabet: Choice<Charset>,
    pub(crate) length: usize,
}

fn default_charset() -> Choice<Charset> {
    Choice::Known(Charset::Base62)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: String,
    pub(crate) connect_timeout: Option<DurationSetting>,
    pub(crate) timeout: Option<DurationSetting>,
    /// The circuit breaker (`crate::state::breaker`); on with its defaults when absent.
    pub(crate) breaker: Option<Spanned<RawBreaker>>,
    /// `https://` only: CA certificates (PEM) to trust instead of the system's.
    pub(crate) ca_file: Option<String>,
    /// `https://` only: a client certificate chain (PEM) to present, with `client_key`.
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
}

/// `breaker = { failures = 5, window = "10s", open_for = "5s", half_open_probes = 1 }`.
/// Signed so a negative number gets a clear message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub(crate) enabled: Option<bool>,
    pub(crate) failures: Option<i64>,
    pub(crate) window: Option<DurationSetting>,
    pub(crate) open_for: Option<DurationSetting>,
    pub(crate) half_open_probes: Option<i64>,
    /// Count upstream 5xx answers as failures.
    pub(crate) count_5xx: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlan {
    #[serde(default)]
    pub(crate) features: Vec<String>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    /// WebSocket connection and message limits of this plan.
    pub(crate) ws: Option<super::raw_ws::RawWsLimits>,
    /// Clients on this plan pick at most this many bookmakers (their bookmaker allowlist);
    /// until they pick one, routes that read a bookmaker answer `bookmaker_not_configured`.
    /// Absent: every bookmaker, unless the client's allowlist narrows it.
    pub(crate) bookmaker_selection: Option<i64>,
    /// Key-sharing detection: suspect a key used from this many source networks in an hour.
    /// Spanned itself: a `[plans.NAME.sharing]` header alone leaves the plan's table without a
    /// span, and its errors name the sharing table's line.
    pub(crate) sharing: Option<Spanned<RawSharing>>,
    /// A delayed tier: WebSocket messages reach this plan's sessions this long after they
    /// arrived, REST requests go to a route's `delayed_upstream` (`policy::delay`).
    pub(crate) delay: Option<Spanned<DurationSetting>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSharing {
    pub(crate) networks_per_hour: i64,
    /// `flag` (the default) or `disable`.
    pub(crate) action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Option<String>,
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) methods: Vec<String>,
    pub(crate) upstream: Option<String>,
    /// Where REST requests of callers on a delayed plan (`[plans.NAME] delay`) go instead.
    pub(crate) delayed_upstream: Option<String>,
    /// Every one of these; `{param}` in a scope is the matched path parameter
    /// (`{sport}:matches:list`).
    pub(crate) scopes: Option<Spanned<Vec<String>>>,
    /// At least one of these scopes is needed (besides all of `scopes`); templates as there.
    pub(crate) scopes_any: Option<Spanned<Vec<String>>>,
    /// Path parameter naming the sport namespace, gated by the client's sport allowlist.
    pub(crate) sport_param: Option<String>,
    /// Where the bookmaker comes from: `query:NAME` or `path:NAME`.
    pub(crate) bookmaker: Option<String>,
    #[serde(default)]
    pub(crate) bookmaker_required: bool,
    #[serde(default)]
    pub(crate) features: Vec<String>,
    #[serde(default)]
    pub(crate) public: bool,
    #[serde(default)]
    pub(crate) limits: Option<RawLimits>,
    /// Units of every quota a request on this route spends (1 to 1000, default 1); rates
    /// count it as one request.
    pub(crate) cost: Option<Spanned<i64>>,
    /// Makes this a WebSocket route.
    pub(crate) ws: Option<super::raw_ws::RawWsRoute>,
    /// This route's answers to some refusals (`REASON` or `REASON:SUBJECT`), over the profile's.
    #[serde(default)]
    pub(crate) errors: BTreeMap<String, RawError>,
    /// Answered by the gateway itself: `register`, `me`, `regenerate_key` or
    /// `regenerate_child_key` (needs `[selfservice]`).
    pub(crate) selfservice: Option<Choice<SelfServiceWord>>,
    /// For `regenerate_child_key`: the path parameter naming the child account.
    pub(crate) child_param: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub(crate) name: Option<String>,
    /// `header:NAME`, `bearer`, `query:NAME`, in the order they are tried.
    pub(crate) credentials: Option<Spanned<Vec<String>>>,
    /// Forward the key to the upstream in the one source it was read from (default false).
    /// Every other source the configuration names is stripped all the same, and public routes
    /// (which read no key) forward none (`crate::request::credential::strip`).
    #[serde(default)]
    pub(crate) forward_credential: bool,
    /// Infra endpoints answered without a key on the public listener.
    pub(crate) public: Option<Spanned<Vec<String>>>,
    /// Path of the whoami endpoint; `""` turns it off.
    pub(crate) whoami: Option<String>,
    /// The whoami document as a template over the whoami variables (`profile::WHOAMI_VARS`).
    pub(crate) whoami_body: Option<Spanned<toml::Value>>,
    /// Root element of the whoami document's XML form (default `whoami`).
    pub(crate) whoami_xml_root: Option<String>,
    /// Serve the verify and forward-auth endpoints on the public listener.
    pub(crate) verify: Option<bool>,
    pub(crate) xml_root: Option<String>,
    /// Answer 406 when a request's Accept admits neither JSON nor XML.
    pub(crate) enforce_accept: Option<bool>,
    /// The body formats the profile answers in: `["json", "xml"]` (default: by `Accept`, 406
    /// when neither is accepted) or `["json"]` (JSON whatever `Accept` says, never 406; for
    /// contracts that publish JSON bodies only, as seeds 000 and 004 do).
    pub(crate) formats: Option<Vec<String>>,
    /// The plan clients start on when created without one (`keygate client create` without
    /// `--plan`, `POST /v1/clients` without `plan`): `default` unless set; must name a plan of
    /// the file (seed 003: "A free account gives you immediate access", `default_plan = "free"`).
    pub(crate) default_plan: Option<String>,
    /// Answer a path or method no route serves with `not_found` / `method_not_allowed` only
    /// to a caller with a valid key, and with the key's refusal (401) to others, so an
    /// unauthenticated caller learns nothing about which paths exist (seed 004: "The only
    /// endpoint that does not require authentication is GET /health"). Default false.
    #[serde(default)]
    pub(crate) unknown_paths_need_key: bool,
    #[serde(default)]
    pub(crate) identity_headers: RawIdentityHeaders,
    #[serde(default)]
    pub(crate) errors: BTreeMap<String, Spanned<RawError>>,
    pub(crate) rate_limit_headers: Option<RawHeaderStyle>,
    pub(crate) ws: Option<Spanned<super::raw_ws::RawWsProfile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderStyle {
    pub(crate) x_ratelimit: Option<bool>,
    /// `epoch` (default) or `delta`.
    pub(crate) reset: Option<Choice<Reset>>,
    pub(crate) ietf: Option<bool>,
    pub(crate) retry_after: Option<bool>,
    /// `limited` (default): on answers the limiter counted (forwarded responses, its 429s);
    /// `always`: on every answer of the API, refusals included (`ratelimit::HeaderStyle`).
    pub(crate) when: Option<Choice<When>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdentityHeaders {
    pub(crate) client_id: Option<String>,
    pub(crate) client_name: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) scopes: Option<String>,
    pub(crate) plan: Option<String>,
    /// The client's sport allowlist, comma separated (default `X-Keygate-Sports`); empty
    /// when it has none, which allows no sport-gated route.
    pub(crate) sports: Option<String>,
    /// The client's bookmakers, comma separated (default `X-Keygate-Bookmakers`): `*` when
    /// every bookmaker is allowed (no allowlist, on a plan without `bookmaker_selection`),
    /// empty when a `bookmaker_selection` plan's client has picked none, so an upstream can
    /// confine an answer without a lookup of its own.
    pub(crate) bookmakers: Option<String>,
    /// The caller's plan delay in seconds (default `X-Keygate-Delay`); sent only for a plan
    /// with `delay`, and removed from every caller's request.
    pub(crate) delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawError {
    pub(crate) status: Option<u16>,
    pub(crate) body: Option<toml::Value>,
    /// Content type of JSON bodies (default `application/json`).
    pub(crate) content_type: Option<String>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
}
