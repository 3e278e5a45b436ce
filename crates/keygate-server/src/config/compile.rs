//! Raw configuration → validated [`Config`], collecting every error with its line.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::spanned::Spanned;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use keygate_core::decision::Reason;
use keygate_core::key_format::{Alphabet, KeyFormat};
use keygate_core::legacy_format::LegacyFormat;
use keygate_core::policy::Requirements;
use keygate_core::render::BodyTemplate;
use keygate_core::scope_need::{PathParam, ScopeNeed};
use keygate_core::{Digester, Issuer};

use super::choice::{Backend, Choice, Reset, When};
use super::errors::{Errors, Zero};
use super::raw::{RawBreaker, RawConfig, RawError, RawLimits, RawProfile, RawRoute};
use super::{Config, ConfigErrors, HttpLimits, LimiterBackend, LimiterConfig, Overrides, Plan};
use crate::policy::guard::GuardConfig;
use crate::policy::profile::{
    CredentialSource, ErrorOverrides, ErrorSpec, Profile, PublicInfra, TEMPLATE_VARS, WHOAMI_VARS,
};
use crate::policy::ratelimit::{HeaderStyle, LimitBy, LimitSet};
use crate::policy::routes::{BookmakerSource, Route, RouteTable, Target};
use crate::policy::upstream::BreakerConfig;
use crate::policy::upstream::UpstreamSpec;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
const DEFAULT_FEED_POLL: Duration = Duration::from_millis(100);
const DEFAULT_FEED_POLL_LISTENING: Duration = Duration::from_millis(500);
const DEFAULT_USAGE_FLUSH: Duration = Duration::from_secs(10);
const DEFAULT_UPSTREAM: &str = "default";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The configuration `serve` uses without `--config`: the default profile and one catch-all
/// route that needs any valid key and forwards to the `default` upstream.
///
/// # Errors
/// [`ConfigErrors`] when an override is invalid (a bad `--upstream` URL).
pub fn default_config(overrides: &Overrides) -> Result<Config, ConfigErrors> {
    load("", "<default>", overrides)
}

/// Parses and validates a configuration file's text.
///
/// # Errors
/// [`ConfigErrors`] listing every problem with its file and line.
pub fn load(text: &str, file: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::new(file, text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span();
            // toml has no words for some lines (`profile]` after a table): say what it wanted.
            let message = match e.message().trim() {
                "" => "not valid TOML here: expected `key = value`, a `[table]` or a `[[table]]` header",
                m => m,
            };
            errors.at(span.as_ref(), message.to_owned());
            return Err(errors.into_errors());
        }
    };
    let config = compile(raw, overrides, &mut errors);
    if errors.is_empty() {
        let mut config = config.expect("no errors means a config");
        config.hash = text_hash(text);
        Ok(config)
    } else {
        Err(errors.into_errors())
    }
}

/// The most units of a quota one request may spend (`[[routes]] cost`): a weight, not a way to
/// spend a day's quota in one call by a typo.
pub(crate) const MAX_ROUTE_COST: u32 = 1000;

/// The SHA-256 of a configuration's text, in hex: `/status` shows it so an operator can tell
/// which file every node serves.
fn text_hash(text: &str) -> String {
    // The plain digester is SHA-256 of the text, the key digest's own code and hex.
    keygate_core::Digester::plain().digest(text).to_hex()
}

fn addr(
    raw: Option<&Spanned<String>>,
    overridden: Option<SocketAddr>,
    default: &str,
    what: &str,
    errors: &mut Errors<'_>,
) -> SocketAddr {
    if let Some(a) = overridden {
        return a;
    }
    let fallback = default.parse().expect("default addresses parse");
    match raw {
        None => fallback,
        Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
            errors.at(
                Some(&s.span()),
                format!(
                    "{what} `{}` is not an address like 127.0.0.1:8080",
                    s.get_ref()
                ),
            );
            fallback
        }),
    }
}

fn compile(raw: RawConfig, overrides: &Overrides, errors: &mut Errors<'_>) -> Option<Config> {
    let listen = addr(
        raw.server.listen.as_ref(),
        overrides.listen,
        DEFAULT_LISTEN,
        "listen",
        errors,
    );
    let admin_listen = addr(
        raw.server.admin_listen.as_ref(),
        overrides.admin_listen,
        DEFAULT_ADMIN_LISTEN,
        "admin_listen",
        errors,
    );
    let db = overrides
        .db
        .clone()
        .or_else(|| raw.server.db.clone())
        .unwrap_or_else(|| "keygate.db".to_owned());
    let default_poll = if db.starts_with("postgres") {
        DEFAULT_FEED_POLL_LISTENING
    } else {
        DEFAULT_FEED_POLL
    };
    let feed_poll = errors.duration(
        raw.server.feed_poll.as_ref().map(Spanned::span).as_ref(),
        "server.feed_poll",
        raw.server.feed_poll.as_ref().map(Spanned::get_ref),
        default_poll,
        Zero::Refused,
    );
    let usage_flush = errors.duration(
        raw.server.usage_flush.as_ref().map(Spanned::span).as_ref(),
        "server.usage_flush",
        raw.server.usage_flush.as_ref().map(Spanned::get_ref),
        DEFAULT_USAGE_FLUSH,
        Zero::Refused,
    );
    if usage_flush.is_zero() {
        errors.at(
            raw.server.usage_flush.as_ref().map(Spanned::span).as_ref(),
            "usage_flush must be longer than zero".to_owned(),
        );
    }
    let workers = overrides
        .workers
        .or(raw.server.workers)
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let issuer = compile_keys(&raw, errors);

    // Upstreams: the file's, plus or replaced by `--upstream` as `default`.
    let mut upstreams = Vec::new();
    let mut upstream_index = BTreeMap::new();
    for (name, spanned) in &raw.upstreams {
        let span = spanned.span();
        let u = spanned.get_ref();
        let url = match (name.as_str(), &overrides.upstream) {
            (DEFAULT_UPSTREAM, Some(url)) => url.as_str(),
            _ => u.url.as_str(),
        };
        match UpstreamSpec::parse(name, url) {
            Ok(mut spec) => {
                spec.connect_timeout = errors.duration(
                    Some(&span),
                    &format!("upstreams.{name}.connect_timeout"),
                    u.connect_timeout.as_ref(),
                    spec.connect_timeout,
                    Zero::Refused,
                );
                spec.timeout = errors.duration(
                    Some(&span),
                    &format!("upstreams.{name}.timeout"),
                    u.timeout.as_ref(),
                    spec.timeout,
                    Zero::Refused,
                );
                if let Some(b) = &u.breaker {
                    spec.breaker = compile_breaker(name, b, errors);
                }
                if !overrides.skip_tls_files {
                    super::compile_tls::upstream(name, u, &mut spec, &span, errors);
                }
                upstream_index.insert(name.clone(), upstreams.len());
                upstreams.push(spec);
            }
            Err(e) => errors.at(Some(&span), format!("upstream `{name}`: {e}")),
        }
    }
    if !upstream_index.contains_key(DEFAULT_UPSTREAM) {
        if let Some(url) = &overrides.upstream {
            match UpstreamSpec::parse(DEFAULT_UPSTREAM, url) {
                Ok(mut spec) => {
                    let none = super::raw::RawUpstream::default();
                    super::compile_tls::upstream(
                        DEFAULT_UPSTREAM,
                        &none,
                        &mut spec,
                        &(0..0),
                        errors,
                    );
                    upstream_index.insert(DEFAULT_UPSTREAM.to_owned(), upstreams.len());
                    upstreams.push(spec);
                }
                Err(e) => errors.at(None, format!("--upstream: {e}")),
            }
        }
    }

    let mut plans = BTreeMap::new();
    for (name, spanned) in &raw.plans {
        if let Err(e) = keygate_core::names::check_plan(name) {
            errors.at(Some(&spanned.span()), e.to_string());
        }
        let limits = compile_limits(
            &spanned.get_ref().limits,
            &format!("plans.{name}.limits"),
            Some(&spanned.span()),
            errors,
        );
        let bookmaker_selection = errors
            .positive(
                Some(&spanned.span()),
                &format!("plans.{name}.bookmaker_selection"),
                spanned.get_ref().bookmaker_selection,
                None,
            )
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        if limits.by == LimitBy::Source {
            errors.at(
                Some(&spanned.span()),
                format!("plans.{name}.limits.by: `source` is for public routes; a plan counts by `client` or `key`"),
            );
        }
        let sharing = compile_sharing(name, spanned, errors);
        let delay = compile_delay(name, spanned, errors);
        plans.insert(
            name.clone(),
            Plan {
                features: spanned.get_ref().features.clone(),
                limits,
                bookmaker_selection,
                sharing,
                delay,
            },
        );
    }

    if overrides.tooling && !upstream_index.contains_key(DEFAULT_UPSTREAM) {
        // Tools never forward; a placeholder keeps route references valid.
        upstream_index.insert(DEFAULT_UPSTREAM.to_owned(), upstreams.len());
        upstreams.push(
            UpstreamSpec::parse(DEFAULT_UPSTREAM, "http://127.0.0.1:9")
                .expect("placeholder URL parses"),
        );
    }
    let mut profile = compile_profile(&raw.profile, errors);
    if &*profile.default_plan != "default" && !plans.contains_key(&*profile.default_plan) {
        errors.at(
            None,
            format!(
                "profile.default_plan `{}` is not a plan of this file ({})",
                profile.default_plan,
                plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let selfservice = super::compile_selfservice::compile(raw.selfservice.as_ref(), &plans, errors);
    let mut routes = RouteTable::default();
    if raw.routes.is_empty() {
        // No routes: one catch-all that needs any valid key.
        let catch_all = RawRoute {
            name: Some("default".to_owned()),
            path: "/{*path}".to_owned(),
            ..RawRoute::default()
        };
        add_route(
            &catch_all,
            None,
            &upstream_index,
            &profile,
            &mut routes,
            None,
            errors,
        );
    }
    for spanned in &raw.routes {
        add_route(
            spanned.get_ref(),
            Some(&spanned.span()),
            &upstream_index,
            &profile,
            &mut routes,
            selfservice.as_ref(),
            errors,
        );
    }

    let limiter = compile_limiter(&raw, !overrides.skip_tls_files, errors);
    let guard = compile_guard(&raw, errors);
    let http = compile_http_limits(&raw, errors);
    let read_files = !overrides.skip_tls_files;
    let tls =
        super::compile_tls::listener(raw.server.tls.as_ref(), "server.tls", read_files, errors);
    let admin_tls = super::compile_tls::listener(
        raw.server.admin_tls.as_ref(),
        "server.admin_tls",
        read_files,
        errors,
    );
    let shutdown_grace = errors.duration(
        None,
        "server.shutdown_grace",
        raw.server.shutdown_grace.as_ref(),
        DEFAULT_SHUTDOWN_GRACE,
        Zero::Allowed,
    );
    let ws = super::compile_ws::compile(raw.profile.ws.as_ref(), &raw.plans, &raw.routes, errors);
    profile.named_credentials = profile.credentials.clone();
    let ws_sources = ws
        .routes
        .iter()
        .flatten()
        .flat_map(|r| r.credentials.iter().flatten());
    for source in ws_sources {
        if !profile.named_credentials.contains(source) {
            profile.named_credentials.push(source.clone());
        }
    }
    let amqp = raw.amqp.as_ref().map(|spanned| {
        // Tools check the table's shape; the credentials are needed only where the broker is
        // called (`keygate amqp`), and `serve` needs them at start.
        let env = |name: &str| match std::env::var(name) {
            Ok(v) => Some(v),
            Err(_) if overrides.tooling => Some("unset".to_owned()),
            Err(_) => None,
        };
        if let Err(list) = keygate_amqp::AmqpConfig::compile(spanned.get_ref(), &env) {
            for message in list {
                errors.at(Some(&spanned.span()), message);
            }
        }
        spanned.get_ref().clone()
    });
    let portal = super::compile_portal::compile(
        raw.portal.as_ref(),
        overrides.portal_listen,
        (overrides.tooling, read_files),
        errors,
    );
    let leak_reports =
        super::compile_leaks::compile(raw.leak_reports.as_ref(), &profile, read_files, errors);
    let (webhooks, outbox) = super::compile_webhooks::compile(
        &raw.webhooks,
        raw.outbox.as_ref(),
        (overrides.tooling, read_files),
        errors,
    );
    let analytics = compile_analytics(raw.analytics.as_ref(), errors);
    let tracing = raw.tracing.as_ref().map(|t| compile_tracing(t, errors));
    if !errors.is_empty() {
        return None;
    }
    let upstream_engine = Choice::read(
        raw.server.upstream_engine.as_ref(),
        "server.upstream_engine",
        None,
        errors,
    )
    .unwrap_or_default();
    if !errors.is_empty() {
        return None;
    }
    Some(Config {
        upstream_engine,
        source: errors.file().to_owned(),
        hash: String::new(),
        listen,
        admin_listen,
        workers,
        db,
        feed_poll,
        usage_flush,
        ready_requires_store: raw.server.ready_requires_store,
        issuer,
        upstreams,
        routes,
        plans,
        profile,
        limiter,
        guard,
        http,
        shutdown_grace,
        ws,
        selfservice,
        amqp,
        tls,
        admin_tls,
        portal,
        leak_reports,
        webhooks,
        outbox,
        analytics,
        tracing,
    })
}

/// `[analytics]`: defaults when absent; `retention_days` a whole number of days, 1..=3660.
fn compile_analytics(
    raw: Option<&Spanned<super::raw::RawAnalytics>>,
    errors: &mut Errors<'_>,
) -> super::AnalyticsSettings {
    let mut settings = super::AnalyticsSettings::default();
    let Some(spanned) = raw else {
        return settings;
    };
    let (r, span) = (spanned.get_ref(), spanned.span());
    settings.enabled = r.enabled.unwrap_or(true);
    if let Some(days) = errors.positive(
        Some(&span),
        "analytics.retention_days",
        r.retention_days,
        Some("use enabled = false to keep none"),
    ) {
        if days.get() > super::MAX_ANALYTICS_RETENTION_DAYS {
            errors.at(
                Some(&span),
                format!(
                    "analytics.retention_days: {days} is more than {} (ten years)",
                    super::MAX_ANALYTICS_RETENTION_DAYS
                ),
            );
        } else {
            settings.retention = Duration::from_secs(days.get() * 86_400);
        }
    }
    settings
}

/// `[tracing]`: an `http(s)` collector URL without credentials, query or fragment (it may be
/// logged), a ratio in 0.0–1.0, a positive queue and timeout.
fn compile_tracing(
    spanned: &Spanned<super::raw::RawTracing>,
    errors: &mut Errors<'_>,
) -> super::TracingConfig {
    let span = Some(spanned.span());
    let t = spanned.get_ref();
    let endpoint = t.otlp_endpoint.trim();
    match endpoint.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
                && uri.query().is_none()
                && !endpoint.contains('#') => {}
        _ => errors.at(
            span.as_ref(),
            // Not the value: a refused URL may be one with a password in it.
            "tracing.otlp_endpoint: not an http(s) URL without credentials, query or fragment",
        ),
    }
    let service_name = t
        .service_name
        .clone()
        .unwrap_or_else(|| "keygate".to_owned());
    if service_name.is_empty()
        || service_name.len() > 255
        || service_name.chars().any(char::is_control)
    {
        errors.at(
            span.as_ref(),
            "tracing.service_name: 1 to 255 printable characters",
        );
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        errors.at(
            span.as_ref(),
            format!("tracing.sample_ratio: {sample_ratio} is not between 0.0 and 1.0"),
        );
    }
    let max_queue = errors
        .positive(span.as_ref(), "tracing.max_queue", t.max_queue, None)
        .map_or(2048, |n| {
            usize::try_from(n.get()).unwrap_or(usize::MAX).min(1 << 20)
        });
    let export_timeout = errors.duration(
        span.as_ref(),
        "tracing.export_timeout",
        t.export_timeout.as_ref(),
        Duration::from_secs(10),
        Zero::Refused,
    );
    super::TracingConfig {
        otlp_endpoint: endpoint.to_owned(),
        service_name,
        sample_ratio,
        max_queue,
        export_timeout,
    }
}

fn compile_http_limits(raw: &RawConfig, errors: &mut Errors<'_>) -> HttpLimits {
    let s = &raw.server;
    let mut limits = HttpLimits::default();
    if let Some(n) = s.max_header_bytes {
        if n < HttpLimits::MIN_HEADER_BYTES {
            errors.at(
                None,
                format!(
                    "server.max_header_bytes: {n} is below the smallest supported head size ({} bytes)",
                    HttpLimits::MIN_HEADER_BYTES
                ),
            );
        } else {
            limits.max_header_bytes = n;
        }
    }
    if let Some(n) = errors.positive(None, "server.max_headers", s.max_headers, None) {
        limits.max_headers = usize::try_from(n.get()).unwrap_or(usize::MAX);
    }
    if let Some(n) = errors.positive(
        None,
        "server.max_body_bytes",
        s.max_body_bytes,
        Some("it would refuse every body"),
    ) {
        limits.max_body_bytes = n.get();
    }
    limits.header_read_timeout = errors.duration(
        None,
        "server.header_read_timeout",
        s.header_read_timeout.as_ref(),
        limits.header_read_timeout,
        Zero::Refused,
    );
    for (name, value, field) in [
        (
            "server.max_connections",
            s.max_connections,
            &mut limits.max_connections,
        ),
        (
            "server.admin_max_connections",
            s.admin_max_connections,
            &mut limits.admin_max_connections,
        ),
    ] {
        if let Some(n) =
            errors.positive(None, name, value, Some("it would refuse every connection"))
        {
            *field = usize::try_from(n.get()).unwrap_or(usize::MAX);
        }
    }
    for (name, value, field) in [
        (
            "server.h2_handshake_timeout",
            &s.h2_handshake_timeout,
            &mut limits.h2_handshake_timeout,
        ),
        (
            "server.h2_idle_timeout",
            &s.h2_idle_timeout,
            &mut limits.h2_idle_timeout,
        ),
    ] {
        *field = errors.duration(None, name, value.as_ref(), *field, Zero::Refused);
    }
    if s.h2_keepalive_interval.is_some() {
        let interval = errors.duration(
            None,
            "server.h2_keepalive_interval",
            s.h2_keepalive_interval.as_ref(),
            Duration::ZERO,
            Zero::Allowed,
        );
        limits.h2_keepalive_interval = (!interval.is_zero()).then_some(interval);
    }
    if let Some(n) = errors.positive(
        None,
        "server.h2_max_concurrent_streams",
        s.h2_max_concurrent_streams,
        Some("it would refuse every HTTP/2 request"),
    ) {
        limits.h2_max_concurrent_streams = u32::try_from(n.get()).unwrap_or(u32::MAX);
    }
    limits
}

fn compile_guard(raw: &RawConfig, errors: &mut Errors<'_>) -> GuardConfig {
    let mut config = GuardConfig::default();
    let Some(spanned) = &raw.guard else {
        return config;
    };
    let span = spanned.span();
    let g = spanned.get_ref();
    config.enabled = g.enabled.unwrap_or(config.enabled);
    if let Some(n) = errors.positive(
        Some(&span),
        "guard.threshold",
        g.threshold,
        Some("set guard.enabled = false to turn the guard off"),
    ) {
        config.threshold = u32::try_from(n.get()).unwrap_or(u32::MAX);
    }
    config.prefix_threshold = g.prefix_threshold.unwrap_or(config.threshold);
    match g.prefix_length {
        Some(n) if !(4..=64).contains(&n) => errors.at(
            Some(&span),
            format!("guard.prefix_length: {n} is not between 4 and 64 characters"),
        ),
        Some(n) => config.prefix_length = n,
        None => {}
    }
    config.window = errors.duration(
        Some(&span),
        "guard.window",
        g.window.as_ref(),
        config.window,
        Zero::Refused,
    );
    config.cooldown = errors.duration(
        Some(&span),
        "guard.cooldown",
        g.cooldown.as_ref(),
        config.cooldown,
        Zero::Refused,
    );
    if let Some(n) = errors.positive(Some(&span), "guard.max_tracked", g.max_tracked, None) {
        config.max_tracked = usize::try_from(n.get()).unwrap_or(usize::MAX);
    }
    for p in &g.trusted_proxies {
        let net = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => config.trusted_proxies.push(net),
            Err(_) => errors.at(
                Some(&span),
                format!("guard.trusted_proxies: `{p}` is not an address or CIDR range"),
            ),
        }
    }
    config
}

fn compile_limiter(raw: &RawConfig, read_files: bool, errors: &mut Errors<'_>) -> LimiterConfig {
    let mut config = LimiterConfig::default();
    let Some(spanned) = &raw.limits else {
        return config;
    };
    let span = spanned.span();
    let l = spanned.get_ref();
    config.fail_closed = l.fail_closed;
    config.timeout = errors.duration(
        Some(&span),
        "limits.timeout",
        l.timeout.as_ref(),
        config.timeout,
        Zero::Refused,
    );
    config.connect_timeout = errors.duration(
        Some(&span),
        "limits.connect_timeout",
        l.connect_timeout.as_ref(),
        config.connect_timeout,
        Zero::Refused,
    );
    // Absent is `local`; an unknown word is reported by `read` and nothing more is said.
    let backend = match &l.backend {
        None => Some(Backend::Local),
        Some(choice) => Choice::read(Some(choice), "limits.backend", Some(&span), errors),
    };
    match (backend, &l.redis_url) {
        (None, _) | (Some(Backend::Local), None) => {}
        (Some(Backend::Local), Some(_)) => errors.at(
            Some(&span),
            "limits.redis_url is set but limits.backend is `local`; set backend = \"redis\"",
        ),
        (Some(Backend::Redis), None) => errors.at(
            Some(&span),
            "limits.backend = \"redis\" needs limits.redis_url",
        ),
        (Some(Backend::Redis), Some(url)) => match keygate_limits::url_uses_tls(url) {
            Ok(tls) => {
                let ca_file = l
                    .redis_ca_file
                    .as_deref()
                    .map(|p| super::compile_tls::resolve(errors, p));
                if let Some(path) = &ca_file {
                    if !tls {
                        errors.at(
                            Some(&span),
                            "limits.redis_ca_file is for rediss:// URLs (and rediss+sentinel://)",
                        );
                    } else if read_files {
                        if let Err(e) = crate::tls::pem::roots(path) {
                            errors.at(Some(&span), format!("limits.redis_ca_file: {e}"));
                        }
                    }
                }
                config.backend = LimiterBackend::Redis {
                    url: url.clone(),
                    ca_file,
                }
            }
            // The message quotes the URL with its password masked.
            Err(keygate_limits::LimiterError::BadUrl(why)) => {
                errors.at(Some(&span), format!("limits.redis_url {why}"))
            }
            Err(e) => errors.at(Some(&span), format!("limits.redis_url: {e}")),
        },
    }
    config
}

/// `[plans.NAME.sharing]`: a threshold of 2 to `MAX_NETWORKS_PER_HOUR` networks (one network
/// would suspect every key) and `flag` or `disable`.
fn compile_sharing(
    name: &str,
    plan: &Spanned<super::raw::RawPlan>,
    errors: &mut Errors<'_>,
) -> Option<crate::policy::sharing::Sharing> {
    use crate::policy::sharing::{Sharing, SharingAction, MAX_NETWORKS_PER_HOUR};
    let spanned = plan.get_ref().sharing.as_ref()?;
    let raw = spanned.get_ref();
    // The sharing table's line, else the plan's (a table of its own has a span).
    let span = Some(spanned.span())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| plan.span());
    let n = raw.networks_per_hour;
    let networks_per_hour = match u32::try_from(n) {
        Ok(n) if (2..=MAX_NETWORKS_PER_HOUR).contains(&n) => Some(n),
        _ => {
            errors.at(
                Some(&span),
                format!("plans.{name}.sharing.networks_per_hour: {n} is not between 2 and {MAX_NETWORKS_PER_HOUR}"),
            );
            None
        }
    };
    let action = match raw.action.as_deref() {
        None => Some(SharingAction::Flag),
        Some(a) => {
            let parsed = SharingAction::parse(a);
            if parsed.is_none() {
                errors.at(
                    Some(&span),
                    format!("plans.{name}.sharing.action: `{a}` is not `flag` or `disable`"),
                );
            }
            parsed
        }
    };
    Some(Sharing {
        networks_per_hour: networks_per_hour?,
        action: action?,
    })
}

/// A plan's `delay`: longer than zero (a zero delay is no delayed tier: leave it out) and at
/// most [`crate::policy::delay::MAX_DELAY`].
fn compile_delay(
    name: &str,
    plan: &Spanned<super::raw::RawPlan>,
    errors: &mut Errors<'_>,
) -> Option<Duration> {
    use crate::policy::delay::MAX_DELAY;
    let raw = plan.get_ref().delay.as_ref()?;
    let span = Some(raw.span())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| plan.span());
    let what = format!("plans.{name}.delay");
    let before = errors.len();
    let delay = errors.duration(
        Some(&span),
        &what,
        Some(raw.get_ref()),
        Duration::ZERO,
        Zero::Refused,
    );
    if errors.len() > before {
        return None;
    }
    if delay > MAX_DELAY {
        errors.at(
            Some(&span),
            format!(
                "{what}: {}s is longer than the longest delay, {}s",
                delay.as_secs(),
                MAX_DELAY.as_secs()
            ),
        );
        return None;
    }
    Some(delay)
}

/// Validates the numbers of a plan's or route's limits.
fn compile_limits(
    raw: &RawLimits,
    what: &str,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> LimitSet {
    let mut number = |name: &str, v: Option<i64>| {
        errors.positive(
            span,
            &format!("{what}.{name}"),
            v,
            Some("a limit of 0 would refuse every request; remove it instead"),
        )
    };
    let set = LimitSet {
        rps: number("rps", raw.rps),
        per_minute: number("per_minute", raw.per_minute),
        per_hour: number("per_hour", raw.per_hour),
        per_day: number("per_day", raw.per_day),
        per_month: number("per_month", raw.per_month),
        burst: number("burst", raw.burst).map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        by: LimitBy::Client,
    };
    let by = Choice::read(raw.by.as_ref(), &format!("{what}.by"), span, errors)
        .unwrap_or(LimitBy::Client);
    LimitSet { by, ..set }
}

fn compile_keys(raw: &RawConfig, errors: &mut Errors<'_>) -> Issuer {
    let Some(spanned) = &raw.keys else {
        return Issuer::default();
    };
    let span = spanned.span();
    let k = spanned.get_ref();
    let alphabet = Choice::read(Some(&k.alphabet), "keys.alphabet", Some(&span), errors)
        .unwrap_or(Alphabet::Base62);
    let format = KeyFormat::new(&k.prefix, alphabet, k.length, k.checksum).unwrap_or_else(|e| {
        errors.at(Some(&span), format!("keys: {e}"));
        KeyFormat::default()
    });
    let digester = match &k.digest_secret_env {
        None => Digester::plain(),
        Some(var) => match super::secret::from_env("keys.digest_secret_env", var, 16) {
            Ok(secret) => Digester::keyed(secret.as_bytes()),
            Err(m) => {
                errors.at(Some(&span), m);
                Digester::plain()
            }
        },
    };
    let mut legacy = Vec::new();
    for (i, spanned) in k.legacy.iter().enumerate() {
        let l = spanned.get_ref();
        let span = spanned.span();
        let what = format!("keys.legacy[{i}]");
        let Some(charset) = Choice::read(
            Some(&l.alphabet),
            &format!("{what}.alphabet"),
            Some(&span),
            errors,
        ) else {
            continue;
        };
        match LegacyFormat::new(&l.prefix, charset, l.length, &format) {
            Ok(f) => legacy.push(f),
            Err(e) => errors.at(Some(&span), format!("{what}: {e}")),
        }
    }
    Issuer {
        legacy,
        ..Issuer::new(format, digester)
    }
}

fn add_route(
    r: &RawRoute,
    span: Option<&Range<usize>>,
    upstreams: &BTreeMap<String, usize>,
    profile: &Profile,
    routes: &mut RouteTable,
    selfservice: Option<&crate::policy::selfservice::SelfService>,
    errors: &mut Errors<'_>,
) {
    let name = r.name.clone().unwrap_or_else(|| r.path.clone());
    let before = errors.len();
    let action = super::compile_selfservice::route_action(r, &name, span, selfservice, errors);
    // Registration has no key yet: its route is public (limited by source address).
    let public = r.public || matches!(action, Some(crate::policy::selfservice::Action::Register));
    let mut err = |m: String| errors.at(span, format!("route `{name}`: {m}"));
    if !r.path.starts_with('/') {
        err(format!("path `{}` must start with `/`", r.path));
    }
    let methods = if r.methods.is_empty() {
        action
            .as_ref()
            .map(crate::policy::selfservice::Action::methods)
    } else {
        let mut list = Vec::new();
        for m in &r.methods {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => list.push(method),
                Err(_) => err(format!("`{m}` is not an HTTP method")),
            }
        }
        Some(list)
    };
    let upstream_name = r.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM);
    let target = match (action, upstreams.get(upstream_name)) {
        (Some(action), _) => Target::SelfService(action),
        (None, Some(&i)) => Target::Upstream(i),
        (None, None) if r.upstream.is_none() => {
            err(format!(
                "no upstream `{DEFAULT_UPSTREAM}` is configured (add [upstreams.{DEFAULT_UPSTREAM}] or pass --upstream URL)"
            ));
            Target::Upstream(0)
        }
        (None, None) => {
            err(format!("unknown upstream `{upstream_name}`"));
            Target::Upstream(0)
        }
    };
    // Public routes have no caller, hence no plan to delay; self-service is answered here.
    let delayed_upstream = match (r.delayed_upstream.as_deref(), &target) {
        (None, _) => None,
        (Some(_), Target::SelfService(_)) => {
            err(
                "a self-service route is answered by the gateway; it has no `delayed_upstream`"
                    .to_owned(),
            );
            None
        }
        (Some(_), _) if public => {
            err("a public route has no caller whose plan could be delayed; remove `delayed_upstream`".to_owned());
            None
        }
        (Some(name), _) => match upstreams.get(name) {
            Some(&i) => Some(i),
            None => {
                err(format!("unknown delayed_upstream `{name}`"));
                None
            }
        },
    };
    let params: HashSet<&str> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| s.trim_start_matches('*'))
        .collect();
    if let Some(p) = &r.sport_param {
        if !params.contains(p.as_str()) {
            err(format!(
                "sport_param `{p}` is not a parameter of path `{}`",
                r.path
            ));
        }
    }
    let bookmaker = match r.bookmaker.as_deref().map(|b| b.split_once(':')) {
        None => None,
        Some(Some(("query", name))) if !name.is_empty() => {
            Some(BookmakerSource::Query(name.into()))
        }
        Some(Some(("path", name))) if params.contains(name) => {
            Some(BookmakerSource::Path(name.into()))
        }
        Some(Some(("path", name))) => {
            err(format!(
                "bookmaker path parameter `{name}` is not in path `{}`",
                r.path
            ));
            None
        }
        Some(_) => {
            err(format!(
                "bookmaker `{}` must be `query:NAME` or `path:NAME`",
                r.bookmaker.as_deref().unwrap_or_default()
            ));
            None
        }
    };
    let listed =
        |l: &Option<Spanned<Vec<String>>>| l.as_ref().is_some_and(|l| !l.get_ref().is_empty());
    if public && (listed(&r.scopes) || listed(&r.scopes_any) || !r.features.is_empty()) {
        err("a public route cannot require scopes or features (it has no caller)".to_owned());
    }
    // The path's parameters in pattern order, as the router numbers them, for templates.
    let path_params: Vec<PathParam<'_>> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|s| match s.strip_prefix('*') {
            Some(name) => PathParam {
                name,
                catch_all: true,
            },
            None => PathParam {
                name: s,
                catch_all: false,
            },
        })
        .collect();
    let mut scopes = Vec::new();
    let mut any_scope = Vec::new();
    for (field, list, into) in [
        ("scopes", &r.scopes, &mut scopes),
        ("scopes_any", &r.scopes_any, &mut any_scope),
    ] {
        let Some(list) = list else { continue };
        // The line of the list itself, else the route's.
        let at = Some(list.span())
            .filter(|s| !s.is_empty())
            .or_else(|| span.cloned());
        for s in list.get_ref() {
            match ScopeNeed::parse(s, &path_params) {
                Ok(need) => into.push(need),
                Err(e) => errors.at(at.as_ref(), format!("route `{name}`: {field}: {e}")),
            }
        }
    }
    let limits = r
        .limits
        .as_ref()
        .map(|l| compile_limits(l, &format!("route `{name}` limits"), span, errors))
        .unwrap_or_default();
    let cost = match &r.cost {
        None => 1,
        Some(c) => {
            let at = Some(c.span())
                .filter(|s| !s.is_empty())
                .or_else(|| span.cloned());
            match u32::try_from(*c.get_ref()) {
                Ok(n) if (1..=MAX_ROUTE_COST).contains(&n) => n,
                _ => {
                    errors.at(
                        at.as_ref(),
                        format!(
                            "route `{name}`: cost = {} is out of range: a request spends 1 to {MAX_ROUTE_COST} units of each quota",
                            c.get_ref()
                        ),
                    );
                    1
                }
            }
        }
    };
    if cost > 1 && public {
        errors.at(
            span,
            format!("route `{name}`: a public route has no client quota to spend; remove `cost`"),
        );
    }
    let error_overrides = compile_route_errors(&r.errors, &name, profile, span, errors);
    match (public, limits.by) {
        (true, LimitBy::Source) | (false, LimitBy::Client | LimitBy::Key) => {}
        _ if limits.is_empty() => {}
        (true, _) => errors.at(
            span,
            format!("route `{name}`: a public route has no client or key to count; its limits need by = \"source\""),
        ),
        (false, LimitBy::Source) => errors.at(
            span,
            format!("route `{name}`: by = \"source\" is for public routes; count callers with a key by \"client\" or \"key\""),
        ),
    }
    if errors.len() > before {
        return;
    }
    let route = Route {
        name: name.as_str().into(),
        pattern: r.path.as_str().into(),
        methods,
        target,
        delayed_upstream,
        needs: Requirements {
            scopes,
            any_scope,
            features: r.features.iter().map(|f| f.as_str().into()).collect(),
            sport_gated: r.sport_param.is_some(),
            bookmaker_required: r.bookmaker_required,
            bookmaker_gated: bookmaker.is_some(),
        },
        sport_param: r.sport_param.as_deref().map(Into::into),
        bookmaker,
        public,
        limits,
        compiled_limits: Vec::new(),
        cost,
        errors: error_overrides,
    };
    if let Err(e) = routes.insert(route) {
        errors.at(span, format!("route `{name}`: {e}"));
    }
}

fn header_name(
    s: &str,
    what: &str,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> Option<HeaderName> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| errors.at(span, format!("{what}: `{s}` is not a valid header name")))
        .ok()
}

/// An upstream's `breaker` table; every field is optional and falls back to the default.
fn compile_breaker(
    upstream: &str,
    raw: &Spanned<RawBreaker>,
    errors: &mut Errors<'_>,
) -> Option<BreakerConfig> {
    let span = raw.span();
    let b = raw.get_ref();
    let mut config = BreakerConfig::default();
    let at = format!("upstreams.{upstream}.breaker");
    let mut count = |value: Option<i64>, field: &str, default: u32| {
        errors
            .positive(Some(&span), &format!("{at}.{field}"), value, None)
            .map_or(default, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    };
    config.failures = count(b.failures, "failures", config.failures);
    config.half_open_probes = count(
        b.half_open_probes,
        "half_open_probes",
        config.half_open_probes,
    );
    config.window = errors.duration(
        Some(&span),
        &format!("{at}.window"),
        b.window.as_ref(),
        config.window,
        Zero::Refused,
    );
    config.open_for = errors.duration(
        Some(&span),
        &format!("{at}.open_for"),
        b.open_for.as_ref(),
        config.open_for,
        Zero::Refused,
    );
    config.count_5xx = b.count_5xx.unwrap_or(config.count_5xx);
    b.enabled.unwrap_or(true).then_some(config)
}

fn compile_profile(raw: &RawProfile, errors: &mut Errors<'_>) -> Profile {
    let mut profile = Profile::default();
    if let Some(name) = &raw.name {
        profile.name = name.as_str().into();
    }
    if let Some(list) = &raw.credentials {
        let span = list.span();
        profile.credentials.clear();
        for entry in list.get_ref() {
            let source = match entry.split_once(':') {
                None if entry == "bearer" => Some(CredentialSource::Bearer),
                Some(("header", h)) => header_name(h, "profile.credentials", Some(&span), errors)
                    .map(CredentialSource::Header),
                Some(("query", q)) if !q.is_empty() => Some(CredentialSource::Query(q.into())),
                _ => {
                    errors.at(Some(&span), format!("profile.credentials: `{entry}` must be `header:NAME`, `bearer` or `query:NAME`"));
                    None
                }
            };
            profile.credentials.extend(source);
        }
        if profile.credentials.is_empty() {
            errors.at(
                Some(&span),
                "profile.credentials must name at least one source",
            );
        }
    }
    profile.forward_credential = raw.forward_credential;
    if let Some(list) = &raw.public {
        let span = list.span();
        profile.public = PublicInfra::default();
        for p in list.get_ref() {
            match p.as_str() {
                "/health" => profile.public.health = true,
                "/ready" => profile.public.ready = true,
                "/status" => profile.public.status = true,
                "/metrics" => profile.public.metrics = true,
                other => errors.at(Some(&span), format!("profile.public: `{other}` is not one of /health, /ready, /status, /metrics")),
            }
        }
    }
    if let Some(w) = &raw.whoami {
        profile.whoami = if w.is_empty() {
            None
        } else {
            Some(w.as_str().into())
        };
        if !w.is_empty() && !w.starts_with('/') {
            errors.at(None, format!("profile.whoami `{w}` must start with `/`"));
        }
    }
    if let Some(v) = raw.verify {
        profile.verify = v;
    }
    if let Some(e) = raw.enforce_accept {
        profile.enforce_accept = e;
    }
    match raw.formats.as_deref() {
        None => {}
        Some([json]) if json == "json" => {
            profile.json_only = true;
            if raw.enforce_accept == Some(true) {
                errors.at(
                    None,
                    "profile.enforce_accept = true cannot refuse by Accept when profile.formats is [\"json\"] (JSON is the only answer)",
                );
            }
            profile.enforce_accept = false;
        }
        Some(f)
            if f.len() == 2 && f.iter().any(|x| x == "json") && f.iter().any(|x| x == "xml") => {}
        Some(other) => errors.at(
            None,
            format!("profile.formats {other:?} is not [\"json\"] or [\"json\", \"xml\"]"),
        ),
    }
    if let Some(plan) = &raw.default_plan {
        profile.default_plan = plan.as_str().into();
    }
    profile.unknown_paths_need_key = raw.unknown_paths_need_key;
    let ids = &raw.identity_headers;
    let identity = &mut profile.identity;
    for (value, slot) in [
        (&ids.client_id, &mut identity.client_id),
        (&ids.client_name, &mut identity.client_name),
        (&ids.key_id, &mut identity.key_id),
        (&ids.scopes, &mut identity.scopes),
        (&ids.plan, &mut identity.plan),
        (&ids.sports, &mut identity.sports),
        (&ids.bookmakers, &mut identity.bookmakers),
        (&ids.delay, &mut identity.delay),
    ] {
        if let Some(name) = value {
            if let Some(h) = header_name(name, "profile.identity_headers", None, errors) {
                *slot = h;
            }
        }
    }
    if let Some(h) = &raw.rate_limit_headers {
        let mut style = HeaderStyle::default();
        style.x_ratelimit = h.x_ratelimit.unwrap_or(style.x_ratelimit);
        style.ietf = h.ietf.unwrap_or(style.ietf);
        style.retry_after = h.retry_after.unwrap_or(style.retry_after);
        let reset = Choice::read(
            h.reset.as_ref(),
            "profile.rate_limit_headers.reset",
            None,
            errors,
        );
        style.reset_epoch = reset != Some(Reset::Delta);
        let when = Choice::read(
            h.when.as_ref(),
            "profile.rate_limit_headers.when",
            None,
            errors,
        );
        style.always = when == Some(When::Always);
        profile.rate_limit_headers = style;
    }
    let xml_root = raw.xml_root.clone().unwrap_or_else(|| "error".to_owned());
    // Reasons first, so a subject's answer starts from its reason's.
    let mut by_subject = Vec::new();
    for (key, spanned) in &raw.errors {
        let span = spanned.span();
        match error_key(key) {
            Err(m) => errors.at(Some(&span), format!("profile.errors: {m}")),
            Ok((reason, None)) => {
                let base = ErrorSpec::problem(reason);
                if let Some(spec) = compile_error(
                    &format!("profile.errors.{key}"),
                    base,
                    spanned.get_ref(),
                    &xml_root,
                    Some(&span),
                    errors,
                ) {
                    if reason == Reason::UpstreamUnavailable && spanned.get_ref().status.is_some() {
                        profile.circuit_open_status = spec.status;
                    }
                    profile.errors[reason.index()] = spec;
                }
            }
            Ok((reason, Some(subject))) => by_subject.push((key, reason, subject, spanned)),
        }
    }
    // A provider's 429 is one answer unless it publishes another for connections: a
    // connection limit answers as the profile's rate limit until `too_many_connections` is set.
    if !raw.errors.contains_key(Reason::TooManyConnections.code())
        && raw.errors.contains_key(Reason::RateLimited.code())
    {
        profile.errors[Reason::TooManyConnections.index()] =
            profile.error(Reason::RateLimited).clone();
    }
    for (key, reason, subject, spanned) in by_subject {
        let base = profile.error(reason).clone();
        let span = spanned.span();
        if let Some(spec) = compile_error(
            &format!("profile.errors.{key}"),
            base,
            spanned.get_ref(),
            &xml_root,
            Some(&span),
            errors,
        ) {
            profile
                .subject_errors
                .by_subject
                .push((reason, subject.into(), spec));
        }
    }
    profile.xml_root = xml_root.into();
    if let Some(body) = &raw.whoami_body {
        let span = body.span();
        match serde_json::to_value(body.get_ref()) {
            Ok(tree) => match BodyTemplate::compile(&tree, WHOAMI_VARS) {
                Ok(t) => profile.whoami_body.template = t,
                Err(e) => errors.at(Some(&span), format!("profile.whoami_body: {e}")),
            },
            Err(e) => errors.at(Some(&span), format!("profile.whoami_body: {e}")),
        }
    }
    if let Some(root) = &raw.whoami_xml_root {
        if keygate_core::render::is_xml_name(root) {
            profile.whoami_body.xml_root = root.as_str().into();
        } else {
            errors.at(
                None,
                format!("profile.whoami_xml_root `{root}` is not an XML element name"),
            );
        }
    }
    profile
}

/// An error table's key: `REASON` (`scope_missing`) or `REASON:SUBJECT`
/// (`feature_not_on_plan:live`, the answer for one scope, sport, bookmaker or feature).
fn error_key(key: &str) -> Result<(Reason, Option<&str>), String> {
    let (code, subject) = match key.split_once(':') {
        Some((code, subject)) => (code, Some(subject)),
        None => (key, None),
    };
    let Some(reason) = Reason::from_code(code) else {
        let known: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        return Err(format!(
            "unknown reason `{code}` (known: {})",
            known.join(", ")
        ));
    };
    if subject == Some("") {
        return Err(format!("`{key}` names no subject after `:`"));
    }
    Ok((reason, subject))
}

/// A route's own answers, each starting from the profile's answer it replaces.
fn compile_route_errors(
    raw: &BTreeMap<String, RawError>,
    route: &str,
    profile: &Profile,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> ErrorOverrides {
    let mut out = ErrorOverrides::default();
    for (key, e) in raw {
        match error_key(key) {
            Err(m) => errors.at(span, format!("route `{route}` errors: {m}")),
            Ok((reason, subject)) => {
                let denial = match subject {
                    Some(subject) => keygate_core::decision::Denial::about(reason, subject),
                    None => keygate_core::decision::Denial::new(reason),
                };
                let base = profile.spec_for(&denial, None).clone();
                let what = format!("route `{route}` errors.{key}");
                let Some(spec) = compile_error(&what, base, e, &profile.xml_root, span, errors)
                else {
                    continue;
                };
                match subject {
                    Some(s) => out.by_subject.push((reason, s.into(), spec)),
                    None => out.by_reason.push((reason, spec)),
                }
            }
        }
    }
    out
}

fn compile_error(
    what: &str,
    mut spec: ErrorSpec,
    e: &RawError,
    xml_root: &str,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> Option<ErrorSpec> {
    if let Some(status) = e.status {
        match StatusCode::from_u16(status) {
            Ok(s) if (400..600).contains(&status) => spec.status = s,
            _ => errors.at(
                span,
                format!("{what}: status {status} is not a 4xx or 5xx status"),
            ),
        }
    }
    if let Some(body) = &e.body {
        let tree = serde_json::to_value(body).ok()?;
        match BodyTemplate::compile(&tree, TEMPLATE_VARS) {
            Ok(t) => spec.template = t,
            Err(err) => errors.at(span, format!("{what}.body: {err}")),
        }
        spec.json_type = HeaderValue::from_static("application/json");
        spec.xml_type = HeaderValue::from_static("application/xml");
        spec.xml_root = xml_root.into();
        spec.xml_namespace = None;
    }
    if let Some(ct) = &e.content_type {
        match HeaderValue::from_str(ct) {
            Ok(v) => spec.json_type = v,
            Err(_) => errors.at(
                span,
                format!("{what}.content_type `{ct}` is not a valid header value"),
            ),
        }
    }
    for (name, value) in &e.headers {
        let n = header_name(name, &format!("{what}.headers"), span, errors);
        match (n, HeaderValue::from_str(value)) {
            (Some(n), Ok(v)) => spec.headers.push((n, v)),
            (_, Err(_)) => errors.at(
                span,
                format!("{what}.headers: `{value}` is not a valid header value"),
            ),
            _ => {}
        }
    }
    Some(spec)
}

#[cfg(test)]
mod analytics_tests {
    use super::super::{load, Overrides};
    use std::time::Duration;

    const UP: &str = "[upstreams.default]\nurl = \"http://127.0.0.1:9\"\n";

    fn errors(text: &str) -> String {
        load(&format!("{text}{UP}"), "k.toml", &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn analytics_defaults_on_and_its_retention_is_bounded() {
        let on = load(UP, "k.toml", &Overrides::default()).unwrap();
        assert!(on.analytics.enabled);
        assert_eq!(on.analytics.retention, Duration::from_secs(90 * 86_400));
        let off = load(
            &format!("[analytics]\nenabled = false\nretention_days = 7\n{UP}"),
            "k.toml",
            &Overrides::default(),
        )
        .unwrap();
        assert!(!off.analytics.enabled);
        assert_eq!(off.analytics.retention, Duration::from_secs(7 * 86_400));
        let e = errors("[analytics]\nretention_days = 0\n");
        assert!(
            e.contains("analytics.retention_days: 0 is not a positive"),
            "{e}"
        );
        assert!(e.contains("k.toml:1"), "{e}");
        let e = errors("[analytics]\nretention_days = 4000\n");
        assert!(e.contains("more than 3660"), "{e}");
        let e = errors("[analytics]\nretention = \"90d\"\n");
        assert!(e.contains("retention"), "{e}");
    }
}
