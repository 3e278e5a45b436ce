//! Configuration: a TOML file, compiled before any socket is bound.
//!
//! `load` parses the file (serde, unknown keys refused), then `compile` checks every reference
//! and value and returns a validated [`Config`] or *every* error with its file and line, so an
//! operator fixes a bad file in one pass. `keygate check-config FILE` runs the same code.

mod choice;
mod compile;
mod compile_leaks;
mod compile_portal;
mod compile_selfservice;
mod compile_tls;
mod compile_webhooks;
mod compile_ws;
mod errors;
mod raw;
mod raw_portal;
mod raw_webhooks;
mod raw_ws;
mod secret;
mod spanned;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use keygate_core::Issuer;

use crate::policy::profile::Profile;
use crate::policy::ratelimit::LimitSet;
use crate::policy::routes::RouteTable;
use crate::policy::upstream::UpstreamSpec;

pub use compile::{default_config, load};
pub use compile_portal::{Colors, CpuPriority, PortalSettings, SmtpSettings};
pub use errors::{ConfigError, ConfigErrors};

/// Values given on the command line, which win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// The customer portal's listener (only where `[portal]` is configured).
    pub portal_listen: Option<SocketAddr>,
    pub db: Option<String>,
    /// URL of the `default` upstream (used by routes that name none).
    pub upstream: Option<String>,
    pub workers: Option<usize>,
    /// Loading for operator tools (CLI key commands): routes may lack upstreams, which are
    /// given at serve time.
    pub tooling: bool,
    /// Leave TLS certificate, key and CA files unread: commands that never serve or connect
    /// with them (key and client commands) run as users who often cannot read them.
    /// `serve` and `check-config` read and check every one.
    pub skip_tls_files: bool,
}

/// Where a running node's configuration came from, so a reload reads it the same way: the
/// file, and the command line's values that win over it.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: std::path::PathBuf,
    pub overrides: Overrides,
}

/// A plan as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub features: Vec<String>,
    pub limits: LimitSet,
    /// Clients on this plan pick at most this many bookmakers; `None`: every bookmaker.
    pub bookmaker_selection: Option<u32>,
    /// Key-sharing detection (`[plans.NAME.sharing]`); `None`: off.
    pub sharing: Option<crate::policy::sharing::Sharing>,
    /// A delayed tier (`delay`, `crate::policy::delay`); `None`: real time.
    pub delay: Option<Duration>,
}

impl Plan {
    /// One plan as JSON: its features and the limits that are set.
    pub fn to_json(&self, name: &str) -> serde_json::Value {
        let l = &self.limits;
        let mut limits = serde_json::Map::new();
        for (field, value) in [
            ("rps", l.rps),
            ("per_minute", l.per_minute),
            ("per_hour", l.per_hour),
            ("per_day", l.per_day),
            ("per_month", l.per_month),
        ] {
            if let Some(v) = value {
                limits.insert(field.to_owned(), serde_json::json!(v.get()));
            }
        }
        if let Some(burst) = l.burst {
            limits.insert("burst".to_owned(), serde_json::json!(burst));
        }
        let by = match l.by {
            crate::policy::ratelimit::LimitBy::Client => "client",
            crate::policy::ratelimit::LimitBy::Key => "key",
            crate::policy::ratelimit::LimitBy::Source => "source",
        };
        let mut plan = serde_json::json!({
            "name": name,
            "features": self.features,
            "limits": limits,
            "limits_by": by,
        });
        if let Some(n) = self.bookmaker_selection {
            plan["bookmaker_selection"] = serde_json::json!(n);
        }
        if let Some(s) = self.sharing {
            plan["sharing"] = serde_json::json!({
                "networks_per_hour": s.networks_per_hour,
                "action": s.action,
            });
        }
        if let Some(d) = self.delay {
            plan["delay_seconds"] = serde_json::json!(d.as_secs_f64());
        }
        plan
    }
}

/// Where rate-limit counters live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimiterBackend {
    Local,
    /// `ca_file`: roots for a `rediss://` URL instead of the system's.
    Redis {
        url: String,
        ca_file: Option<std::path::PathBuf>,
    },
}

/// The limiter's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimiterConfig {
    pub backend: LimiterBackend,
    /// Budget for one Redis answer before falling back.
    pub timeout: Duration,
    /// Budget for opening a Redis connection (at start, in the background while Redis is
    /// unreachable, on reconnects): a request's few milliseconds are no measure of that.
    pub connect_timeout: Duration,
    pub fail_closed: bool,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            backend: LimiterBackend::Local,
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
            fail_closed: false,
        }
    }
}

/// Bounds on what one client may make the gateway hold: a request head, a body, a slow
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request head (request line and headers); past it, 431 and the connection closes.
    pub max_header_bytes: usize,
    /// Most request headers; past it, 431.
    pub max_headers: usize,
    /// Time a client has to send a request head; the connection is closed after it. Also how
    /// long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// Largest request body forwarded upstream (by its `Content-Length`); past it, 413.
    pub max_body_bytes: u64,
    /// Most open connections on the public listener, all workers together; a connection
    /// past it is closed at once (a flood cannot take every file descriptor).
    pub max_connections: usize,
    /// Most open connections on the admin listener, counted apart from the public one's.
    pub admin_max_connections: usize,
    /// Time an HTTP/2 connection has, from its first bytes, to complete its first request's
    /// headers (hyper's header timer guards HTTP/1 only).
    pub h2_handshake_timeout: Duration,
    /// Time an HTTP/2 connection may stay open with no stream in progress.
    pub h2_idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings (a dead peer is dropped when one goes unanswered
    /// for [`HttpLimits::H2_KEEPALIVE_TIMEOUT`]); `None` sends none.
    pub h2_keepalive_interval: Option<Duration>,
    /// Most concurrent streams one HTTP/2 connection may have open.
    pub h2_max_concurrent_streams: u32,
}

impl HttpLimits {
    /// hyper's own floor for its read buffer, which bounds the request head.
    pub const MIN_HEADER_BYTES: usize = 8 * 1024;
    /// hyper's default header count; another value costs a heap allocation per request.
    pub const DEFAULT_MAX_HEADERS: usize = 100;
    /// How long an HTTP/2 keep-alive ping may go unanswered before the connection is closed
    /// (hyper's default).
    pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 32 * 1024,
            max_headers: HttpLimits::DEFAULT_MAX_HEADERS,
            header_read_timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            admin_max_connections: 256,
            h2_handshake_timeout: Duration::from_secs(10),
            h2_idle_timeout: Duration::from_secs(60),
            h2_keepalive_interval: Some(Duration::from_secs(30)),
            h2_max_concurrent_streams: 100,
        }
    }
}

/// `[analytics]`: hourly counts per key, route and status, upstream latency histograms and
/// WebSocket activity, added by the usage flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnalyticsSettings {
    /// Off, requests are counted per client and day only (the hot path as before analytics).
    pub enabled: bool,
    /// How long hourly rows are kept.
    pub retention: Duration,
}

/// Days of analytics kept by default.
pub const DEFAULT_ANALYTICS_RETENTION_DAYS: u64 = 90;

/// The most days of analytics `retention_days` may keep (ten years).
pub const MAX_ANALYTICS_RETENTION_DAYS: u64 = 3660;

impl Default for AnalyticsSettings {
    fn default() -> Self {
        AnalyticsSettings {
            enabled: true,
            retention: Duration::from_secs(DEFAULT_ANALYTICS_RETENTION_DAYS * 86_400),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, for messages (`<default>` without one).
    pub source: String,
    /// SHA-256 of the file's text, hex (`/status` `config.hash`).
    pub hash: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Worker threads serving the public listener.
    pub workers: usize,
    pub db: String,
    pub feed_poll: Duration,
    /// How often usage counts are added to the store.
    pub usage_flush: Duration,
    pub ready_requires_store: bool,
    pub issuer: Issuer,
    pub upstreams: Vec<UpstreamSpec>,
    /// `[server] upstream_engine`: which HTTP/1.1 client forwards to `http://` upstreams.
    pub upstream_engine: crate::policy::upstream::Engine,
    pub routes: RouteTable,
    pub plans: BTreeMap<String, Plan>,
    pub profile: Profile,
    pub limiter: LimiterConfig,
    pub guard: crate::policy::guard::GuardConfig,
    pub http: HttpLimits,
    /// On SIGTERM, how long in-flight requests and sessions get to finish.
    pub shutdown_grace: Duration,
    /// WebSocket routes, the profile's WebSocket contract and plans' WebSocket limits.
    pub ws: crate::policy::ws::WsConfig,
    /// Self-service accounts; `None` (the default) turns every self-service route off.
    pub selfservice: Option<crate::policy::selfservice::SelfService>,
    /// `[server.tls]`: TLS on the public listener (`None`: plain TCP).
    pub tls: Option<crate::tls::ListenerTls>,
    /// `[server.admin_tls]`: TLS on the admin listener.
    pub admin_tls: Option<crate::tls::ListenerTls>,
    /// `[amqp]`, checked; the operator's credentials are read from the environment by
    /// `keygate_amqp::AmqpConfig::compile` where the broker is used (serve checks them at load).
    pub amqp: Option<keygate_amqp::RawAmqp>,
    /// The customer portal; `None` (the default) serves none.
    pub portal: Option<PortalSettings>,
    /// `[leak_reports]`: GitHub's secret-scanning endpoint; `None` (the default) serves none.
    pub leak_reports: Option<crate::policy::leak_reports::LeakReports>,
    /// `[tracing]`: OpenTelemetry spans over OTLP; `None` (the default) makes none. Read at
    /// start only: a reload that changes it is logged as needing a restart.
    pub tracing: Option<TracingConfig>,
    /// `[[webhooks]]`: where events are sent; none by default.
    pub webhooks: Vec<crate::policy::webhooks::WebhookSpec>,
    /// `[outbox]`: how the node works the webhook outbox.
    pub outbox: crate::policy::webhooks::OutboxSettings,
    /// `[analytics]`.
    pub analytics: AnalyticsSettings,
}

impl Config {
    /// The features of a plan (none for a plan the configuration does not name).
    pub fn plan_features(&self, plan: &str) -> &[String] {
        self.plans.get(plan).map_or(&[], |p| &p.features)
    }

    /// The limits of a plan (none for a plan the configuration does not name).
    pub fn plan_limits(&self, plan: &str) -> LimitSet {
        self.plans
            .get(plan)
            .map(|p| p.limits.clone())
            .unwrap_or_default()
    }
}

/// Why a client cannot have a plan this configuration offers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanChoiceError {
    #[error("plan `{plan}` is not one of this configuration's plans ({known})")]
    UnknownPlan { plan: String, known: String },
    #[error("plan `{plan}` lets a client pick {max} bookmaker(s); {picked} were given")]
    TooManyBookmakers {
        plan: String,
        max: u32,
        picked: usize,
    },
}

impl PlanChoiceError {
    /// Stable code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            PlanChoiceError::UnknownPlan { .. } => "unknown_plan",
            PlanChoiceError::TooManyBookmakers { .. } => "too_many_bookmakers",
        }
    }
}

impl Config {
    /// Checks a client's plan (and bookmaker picks) against the configured plans, so a typo
    /// cannot leave a client on a plan without limits. `default`, the plan of clients created
    /// without one, needs no definition; a configuration without plans accepts any name.
    ///
    /// # Errors
    /// [`PlanChoiceError`] for a plan the file does not define, or more bookmakers than the
    /// plan lets a client pick.
    pub fn check_plan_choice(&self, plan: &str, bookmakers: usize) -> Result<(), PlanChoiceError> {
        let Some(p) = self.plans.get(plan) else {
            // A malformed name is left to the store, which says what is wrong with it.
            let malformed = keygate_core::names::check_plan(plan).is_err();
            if self.plans.is_empty() || plan == "default" || malformed {
                return Ok(());
            }
            return Err(PlanChoiceError::UnknownPlan {
                plan: plan.to_owned(),
                known: self.plans.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        match p.bookmaker_selection {
            Some(max) if bookmakers > max as usize => Err(PlanChoiceError::TooManyBookmakers {
                plan: plan.to_owned(),
                max,
                picked: bookmakers,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;

/// `[tracing]`, compiled (`crate::state::traces`).
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Of the traces that start here, the share sampled; a caller's sampled flag is honoured.
    pub sample_ratio: f64,
    /// Spans waiting for export; past it they are dropped.
    pub max_queue: usize,
    pub export_timeout: Duration,
}
