//! Raw WebSocket settings → [`WsConfig`], with every error and its line.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::ops::Range;

use super::spanned::Spanned;
use http::header::HeaderName;
use keygate_core::limit::Limit;
use keygate_core::render::BodyTemplate;
use keygate_core::Scope;

use super::choice::{Choice, DayBy, UnknownChannels};
use super::errors::{Errors, Zero};
use super::raw::{RawPlan, RawRoute};
use super::raw_ws::{RawWsLimits, RawWsProfile, RawWsRoute};
use crate::policy::channels;
use crate::policy::profile::CredentialSource;
use crate::policy::ratelimit::LimitBy;
use crate::policy::ws::{
    ChannelMap, ClientMessages, CloseEvent, CloseSpec, MessageKind, TokenSecret, WsConfig,
    WsLimits, WsProfile, WsRoute, MESSAGE_VARS,
};

/// Longest close reason: a close frame's payload is at most 125 bytes, two of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// Most channels a plan may let one client hold across its sessions: each is a lease (a
/// sorted-set member in Redis, renewed every third of `lease_ttl`), so the cap bounds that work.
const MAX_CHANNELS_PER_CLIENT: u64 = 100_000;

/// Compiles `[profile.ws]`, the plans' `ws` limits and the routes' `ws` tables. `routes` are
/// the file's routes in order (empty when the file has none: the catch-all is not WebSocket).
pub(super) fn compile(
    profile: Option<&Spanned<RawWsProfile>>,
    plans: &BTreeMap<String, Spanned<RawPlan>>,
    routes: &[Spanned<RawRoute>],
    errors: &mut Errors<'_>,
) -> WsConfig {
    let secret = TokenSecret(random_secret());
    let mut ws = WsConfig::new(secret);
    if let Some(raw) = profile {
        compile_profile(raw.get_ref(), &raw.span(), &mut ws.profile, errors);
    }
    for (name, plan) in plans {
        if let Some(raw) = &plan.get_ref().ws {
            let what = format!("plans.{name}.ws");
            let over = limits(raw, &what, Some(&plan.span()), errors);
            let merged = ws
                .profile
                .limits
                .overridden(&over, raw.connections_per_day_by.is_some());
            ws.plans.insert(name.clone(), merged);
        }
    }
    ws.routes = routes
        .iter()
        .map(|r| {
            r.get_ref()
                .ws
                .as_ref()
                .and_then(|raw| route(r.get_ref(), raw, &r.span(), errors))
        })
        .collect();
    if ws.routes.is_empty() {
        ws.routes.push(None);
    }
    ws
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the OS provides randomness");
    secret
}

fn route(
    r: &RawRoute,
    raw: &RawWsRoute,
    span: &Range<usize>,
    errors: &mut Errors<'_>,
) -> Option<WsRoute> {
    let name = r.name.clone().unwrap_or_else(|| r.path.clone());
    let mode = Choice::read(
        Some(&raw.mode),
        &format!("route `{name}`: ws.mode"),
        Some(span),
        errors,
    )?;
    if r.public {
        errors.at(
            Some(span),
            format!("route `{name}`: a WebSocket route cannot be public"),
        );
    }
    let credentials = raw.credentials.as_ref().map(|list| {
        let sources: Vec<CredentialSource> = list
            .iter()
            .filter_map(|entry| {
                credential_source(entry).or_else(|| {
                    errors.at(
                        Some(span),
                        format!("route `{name}`: ws.credentials: `{entry}` must be `header:NAME`, `bearer` or `query:NAME`"),
                    );
                    None
                })
            })
            .collect();
        if sources.is_empty() {
            errors.at(
                Some(span),
                format!("route `{name}`: ws.credentials must name at least one source"),
            );
        }
        sources
    });
    Some(WsRoute { mode, credentials })
}

fn credential_source(entry: &str) -> Option<CredentialSource> {
    match entry.split_once(':') {
        None if entry == "bearer" => Some(CredentialSource::Bearer),
        Some(("header", h)) => HeaderName::from_bytes(h.as_bytes())
            .ok()
            .map(CredentialSource::Header),
        Some(("query", q)) if !q.is_empty() => Some(CredentialSource::Query(q.into())),
        _ => None,
    }
}

fn limits(
    raw: &RawWsLimits,
    what: &str,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> WsLimits {
    let mut num = |name: &str, v| errors.positive(span, &format!("{what}.{name}"), v, None);
    let per_key = num("connections_per_key", raw.connections_per_key);
    let per_client = num("connections_per_client", raw.connections_per_client);
    let per_day = num("connections_per_day", raw.connections_per_day);
    let rate = num("messages_per_second", raw.messages_per_second);
    let burst = num("message_burst", raw.message_burst);
    let per_session = num("max_channels_per_session", raw.max_channels_per_session);
    let per_client_channels = num("max_channels_per_client", raw.max_channels_per_client);
    let bounded = |n: Option<NonZeroU64>, name: &str, max: u64, errors: &mut Errors<'_>| {
        n.filter(|n| {
            let fits = n.get() <= max;
            if !fits {
                errors.at(span, format!("{what}.{name}: {n} is more than {max}"));
            }
            fits
        })
    };
    let per_session = bounded(
        per_session,
        "max_channels_per_session",
        channels::MAX_CHANNELS_PER_SESSION as u64,
        errors,
    );
    let per_client_channels = bounded(
        per_client_channels,
        "max_channels_per_client",
        MAX_CHANNELS_PER_CLIENT,
        errors,
    );
    let by = Choice::read(
        raw.connections_per_day_by.as_ref(),
        &format!("{what}.connections_per_day_by"),
        span,
        errors,
    )
    .map_or(LimitBy::Client, |DayBy(by)| by);
    WsLimits {
        connections_per_key: per_key,
        connections_per_client: per_client,
        connections_per_day: per_day,
        connections_per_day_by: by,
        messages: rate.map(|n| {
            let limit = Limit::per_second(n);
            match burst {
                Some(b) => limit.with_burst(u32::try_from(b.get()).unwrap_or(u32::MAX)),
                None => limit,
            }
        }),
        channels_per_session: per_session,
        channels_per_client: per_client_channels,
    }
}

fn size(v: Option<i64>, what: &str, span: &Range<usize>, errors: &mut Errors<'_>) -> Option<usize> {
    errors
        .positive(Some(span), &format!("profile.ws.{what}"), v, None)
        .map(|n| usize::try_from(n.get()).unwrap_or(usize::MAX))
}

fn compile_profile(
    raw: &RawWsProfile,
    span: &Range<usize>,
    p: &mut WsProfile,
    errors: &mut Errors<'_>,
) {
    p.login_deadline = errors.duration(
        Some(span),
        "profile.ws.login_deadline",
        raw.login_deadline.as_ref(),
        p.login_deadline,
        Zero::Refused,
    );
    p.idle_timeout = errors.duration(
        Some(span),
        "profile.ws.idle_timeout",
        raw.idle_timeout.as_ref(),
        p.idle_timeout,
        Zero::Refused,
    );
    p.send_timeout = errors.duration(
        Some(span),
        "profile.ws.send_timeout",
        raw.send_timeout.as_ref(),
        p.send_timeout,
        Zero::Refused,
    );
    p.lease_ttl = errors.duration(
        Some(span),
        "profile.ws.lease_ttl",
        raw.lease_ttl.as_ref(),
        p.lease_ttl,
        Zero::Refused,
    );
    if let Some(n) = size(raw.max_message_bytes, "max_message_bytes", span, errors) {
        p.max_message_bytes = n;
    }
    if let Some(n) = size(raw.max_login_bytes, "max_login_bytes", span, errors) {
        p.max_login_bytes = n;
    }
    use crate::policy::delay::{MAX_BUFFER_BYTES, MAX_BUFFER_MESSAGES};
    for (v, what, max, slot) in [
        (
            raw.delay_buffer_bytes,
            "delay_buffer_bytes",
            MAX_BUFFER_BYTES,
            &mut p.delay_buffer.bytes,
        ),
        (
            raw.delay_buffer_messages,
            "delay_buffer_messages",
            MAX_BUFFER_MESSAGES,
            &mut p.delay_buffer.messages,
        ),
    ] {
        match size(v, what, span, errors) {
            Some(n) if n as u64 > max => errors.at(
                Some(span),
                format!("profile.ws.{what}: {n} is more than the most a session may hold, {max}"),
            ),
            Some(n) => *slot = n,
            None => {}
        }
    }
    if let Some(v) = Choice::read(
        raw.on_bad_message.as_ref(),
        "profile.ws.on_bad_message",
        Some(span),
        errors,
    ) {
        p.on_bad_message = v;
    }
    if let Some(v) = Choice::read(
        raw.on_message_limit.as_ref(),
        "profile.ws.on_message_limit",
        Some(span),
        errors,
    ) {
        p.on_message_limit = v;
    }
    if let Some(v) = Choice::read(
        raw.on_suspend.as_ref(),
        "profile.ws.on_suspend",
        Some(span),
        errors,
    ) {
        p.on_suspend = v;
    }
    let mut field = |v: &Option<String>, slot: &mut Box<str>, what: &str| {
        if let Some(v) = v {
            if v.is_empty() {
                errors.at(Some(span), format!("profile.ws.{what} must not be empty"));
            } else {
                *slot = v.as_str().into();
            }
        }
    };
    field(&raw.type_field, &mut p.type_field, "type_field");
    field(&raw.login.kind, &mut p.login.kind, "login.type");
    field(
        &raw.login.key_field,
        &mut p.login.key_field,
        "login.key_field",
    );
    field(
        &raw.login.channels_field,
        &mut p.login.channels_field,
        "login.channels_field",
    );
    field(
        &raw.subscribe.channels_field,
        &mut p.subscribe.channels_field,
        "subscribe.channels_field",
    );
    field(&raw.token.param, &mut p.token.param, "token.param");
    let boxed = |v: &[String]| {
        v.iter()
            .map(|s| s.as_str().into())
            .collect::<Vec<Box<str>>>()
    };
    if let Some(t) = &raw.subscribe.types {
        p.subscribe.types = boxed(t);
    }
    if let Some(t) = &raw.subscribe.unsubscribe_types {
        p.subscribe.unsubscribe_types = boxed(t);
    }
    if let Some(t) = &raw.message_types {
        p.message_types = boxed(t);
    }

    let unknown = Choice::read(
        raw.unknown_channels.as_ref(),
        "profile.ws.unknown_channels",
        Some(span),
        errors,
    );
    let allow_unknown = unknown == Some(UnknownChannels::Allow);
    for (channel, scope) in &raw.channels {
        if channel.is_empty() || channel == "*" {
            errors.at(
                Some(span),
                format!("profile.ws.channels: `{channel}` names no channel"),
            );
        }
        // `{sport}` stands for the session's sport; filled in, it must still be a scope.
        let filled = scope.replace(crate::policy::channels::SPORT, "sport");
        if let Err(e) = Scope::new(&filled) {
            errors.at(Some(span), format!("profile.ws.channels.{channel}: {e}"));
        }
    }
    p.channels = ChannelMap::new(&raw.channels, allow_unknown);
    let client_messages = Choice::read(
        raw.client_messages.as_ref(),
        "profile.ws.client_messages",
        Some(span),
        errors,
    );
    p.client_messages = match client_messages {
        None if p.channels.is_empty() && p.message_types.is_empty() => ClientMessages::Any,
        None | Some(ClientMessages::Json) => ClientMessages::Json,
        Some(ClientMessages::Any) => {
            if !p.channels.is_empty() {
                errors.at(
                    Some(span),
                    "profile.ws.client_messages = \"any\" cannot enforce profile.ws.channels; use \"json\"",
                );
            }
            ClientMessages::Any
        }
    };

    if let Some(path) = &raw.token.path {
        if path.is_empty() {
            p.token.path = None;
        } else if path.starts_with('/') {
            p.token.path = Some(path.as_str().into());
        } else {
            errors.at(
                Some(span),
                format!("profile.ws.token.path `{path}` must start with `/`"),
            );
        }
    }
    p.token.ttl = errors.duration(
        Some(span),
        "profile.ws.token.ttl",
        raw.token.ttl.as_ref(),
        p.token.ttl,
        Zero::Refused,
    );
    if let Some(f) = &raw.token.features {
        p.token.features = boxed(f);
    }
    if let Some(var) = &raw.token.secret_env {
        match super::secret::from_env("profile.ws.token.secret_env", var, 16) {
            Ok(s) => {
                use sha2::Digest;
                p.token.secret = TokenSecret(sha2::Sha256::digest(s.as_bytes()).into());
                p.token.from_env = true;
            }
            Err(m) => errors.at(Some(span), m),
        }
    }
    p.limits = limits(&raw.limits, "profile.ws.limits", Some(span), errors);

    for (name, close) in &raw.close {
        let Some(event) = CloseEvent::from_name(name) else {
            let known: Vec<_> = CloseEvent::ALL.iter().map(|e| e.name()).collect();
            errors.at(
                Some(span),
                format!(
                    "profile.ws.close: unknown event `{name}` (known: {})",
                    known.join(", ")
                ),
            );
            continue;
        };
        let (code, reason) = event.default_spec();
        let code = close.code.unwrap_or(code);
        // RFC 6455 §7.4's codes less those an endpoint must not send (1004-1006, 1015), up to
        // 1013 (clients such as tungstenite fail on later registrations like 1014), and the
        // registered and private 3000-4999 ranges.
        if !(matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)) {
            errors.at(
                Some(span),
                format!("profile.ws.close.{name}.code {code} cannot be sent in a close frame"),
            );
        }
        let reason = close.reason.as_deref().unwrap_or(reason);
        if reason.len() > MAX_CLOSE_REASON {
            errors.at(
                Some(span),
                format!("profile.ws.close.{name}.reason is longer than {MAX_CLOSE_REASON} bytes"),
            );
        }
        p.set_close(
            event,
            CloseSpec {
                code,
                reason: reason.into(),
            },
        );
    }
    for (name, body) in &raw.messages {
        let Some(kind) = MessageKind::from_name(name) else {
            let known: Vec<_> = MessageKind::ALL.iter().map(|k| k.name()).collect();
            errors.at(
                Some(span),
                format!(
                    "profile.ws.messages: unknown message `{name}` (known: {})",
                    known.join(", ")
                ),
            );
            continue;
        };
        let Ok(tree) = serde_json::to_value(body) else {
            errors.at(
                Some(span),
                format!("profile.ws.messages.{name} is not JSON"),
            );
            continue;
        };
        match BodyTemplate::compile(&tree, MESSAGE_VARS) {
            Ok(t) => p.set_message(kind, t),
            Err(e) => errors.at(Some(span), format!("profile.ws.messages.{name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load, Overrides};
    use crate::policy::ws::{AuthMode, ClientMessages, CloseEvent, OnViolation};

    fn over() -> Overrides {
        Overrides {
            upstream: Some("http://127.0.0.1:9000".into()),
            ..Overrides::default()
        }
    }

    #[test]
    fn websocket_settings_compile() {
        let text = r#"
[plans.free]
ws = { connections_per_day = 30 }

[[routes]]
path = "/ws"
ws = { mode = "login_message" }

[[routes]]
path = "/v1/stream"
ws = { mode = "handshake", credentials = ["header:X-API-Key", "query:key"] }

[[routes]]
path = "/{*rest}"

[profile.ws]
login_deadline = "30s"
on_message_limit = "close"
[profile.ws.limits]
connections_per_key = 5
messages_per_second = 20
[profile.ws.channels]
"markets" = "cs2:stream:markets"
[profile.ws.close.unauthorized]
code = 4001
reason = "Invalid key"
"#;
        let c = load(text, "ws.toml", &over()).unwrap();
        let ws = &c.ws;
        assert_eq!(ws.route(0).unwrap().mode, AuthMode::LoginMessage);
        assert_eq!(ws.route(1).unwrap().credentials.as_ref().unwrap().len(), 2);
        assert!(ws.route(2).is_none() && ws.has_routes());
        assert_eq!(ws.profile.client_messages, ClientMessages::Json);
        assert_eq!(ws.profile.on_message_limit, OnViolation::Close);
        assert_eq!(ws.profile.close(CloseEvent::Unauthorized).code, 4001);
        let free = ws.limits_for("free");
        assert_eq!(free.connections_per_day.map(|n| n.get()), Some(30));
        assert_eq!(
            free.connections_per_key.map(|n| n.get()),
            Some(5),
            "inherited"
        );
        assert_eq!(ws.limits_for("other").connections_per_day, None);
    }

    #[test]
    fn websocket_errors_are_all_reported_with_lines() {
        let text = r#"
[[routes]]
path = "/ws"
ws = { mode = "telepathy" }

[profile.ws]
client_messages = "any"
on_bad_message = "shrug"
max_message_bytes = 0
[profile.ws.limits]
connections_per_key = -1
[profile.ws.channels]
"markets" = "not a scope!"
[profile.ws.close.unauthorized]
code = 1006
[profile.ws.close.nope]
code = 4000
[profile.ws.messages]
error = { detail = "{nope}" }
"#;
        let err = load(text, "ws.toml", &over()).unwrap_err().to_string();
        for needle in [
            "ws.toml:2: route `/ws`: ws.mode `telepathy`",
            "cannot enforce profile.ws.channels",
            "on_bad_message `shrug`",
            "max_message_bytes: 0",
            "connections_per_key: -1",
            "profile.ws.channels.markets",
            "code 1006 cannot be sent",
            "unknown event `nope`",
            "profile.ws.messages.error",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn channel_caps_are_bounded_positive_counts() {
        let text = r#"
[plans.pro.ws]
max_channels_per_session = 20
max_channels_per_client = 50

[profile.ws.limits]
max_channels_per_session = 5
"#;
        let c = load(text, "ws.toml", &over()).unwrap();
        let pro = c.ws.limits_for("pro");
        assert_eq!(pro.channels_per_session.map(|n| n.get()), Some(20));
        assert_eq!(pro.channels_per_client.map(|n| n.get()), Some(50));
        let other = c.ws.limits_for("other");
        assert_eq!(other.channels_per_session.map(|n| n.get()), Some(5));
        assert_eq!(other.channels_per_client, None, "off unless set");
        for (value, needle) in [
            (
                "0",
                "max_channels_per_session: 0 is not a positive whole number",
            ),
            (
                "-3",
                "max_channels_per_session: -3 is not a positive whole number",
            ),
            ("257", "max_channels_per_session: 257 is more than 256"),
            ("\"many\"", "max_channels_per_session"),
        ] {
            let text = format!("[plans.pro.ws]\nmax_channels_per_session = {value}\n");
            let err = load(&text, "ws.toml", &over()).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
            assert!(err.contains("ws.toml:"), "{value}: a line: {err}");
        }
        let text = "[plans.pro.ws]\nmax_channels_per_client = 100001\n";
        let err = load(text, "ws.toml", &over()).unwrap_err().to_string();
        assert!(
            err.contains("max_channels_per_client: 100001 is more than 100000"),
            "{err}"
        );
    }
}
