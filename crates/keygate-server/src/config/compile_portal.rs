//! `[portal]` checked into [`PortalSettings`]: the customer portal's listener, look, features
//! and mail relay. Secrets (SMTP credentials) are read from the environment here, so a missing
//! variable stops `serve` before any port is bound.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use keygate_core::Slug;

use super::choice::Choice;
use super::errors::{Errors, Zero};
use super::raw_portal::{RawPortal, RawSmtp};
use super::spanned::Spanned;

/// The customer portal as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalSettings {
    pub listen: SocketAddr,
    /// No trailing slash.
    pub base_url: String,
    /// Cookies get `Secure` (and the `__Host-` prefix) when the portal is reached over HTTPS.
    pub secure_cookies: bool,
    pub name: String,
    pub logo: Option<String>,
    pub colors: Colors,
    pub sign_up: bool,
    pub bookmaker_selection: bool,
    pub bookmakers: Vec<Slug>,
    pub child_bots: bool,
    /// Customers may provision their own messaging feed (with `[amqp]`).
    pub feed_requests: bool,
    pub session_lifetime: Duration,
    /// Longest grace the old key may keep on rotation; `None`: revoked at once only.
    pub rotate_grace: Option<Duration>,
    pub sign_in_per_address: u32,
    pub sign_in_per_source: u32,
    /// Requests per source address in a minute, any page: past it a 429 from memory, before a
    /// session is looked up or a page rendered, so one caller cannot spend the portal's CPU.
    pub requests_per_source: u32,
    /// Most open connections on the portal's listener; past it a new one is closed at once.
    pub max_connections: usize,
    /// The CPU priority of the portal's thread; see `runtime::portal_thread`.
    pub priority: CpuPriority,
    /// `[portal.tls]`: the listener terminates TLS itself.
    pub tls: Option<crate::tls::ListenerTls>,
    pub smtp: Option<SmtpSettings>,
}

impl PortalSettings {
    /// The links' address when `base_url` is not set: the listener's own.
    pub fn default_base_url(&self, listen: SocketAddr) -> String {
        default_base_url(listen, self.tls.is_some())
    }

    /// `base_url` was not set, so it follows the listener (whose port 0 becomes a real one
    /// once bound).
    pub fn base_url_follows_listen(&self) -> bool {
        self.base_url == self.default_base_url(self.listen)
    }
}

/// Colours as CSS hex, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Colors {
    pub primary: String,
    pub background: String,
    pub text: String,
}

/// How the mail relay is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
    /// `smtp://` with a required STARTTLS upgrade.
    pub starttls: bool,
    /// The environment variables holding the user name and password, read at each send.
    pub credentials_env: Option<(String, String)>,
    pub from: String,
}

const DEFAULT_SESSION: Duration = Duration::from_secs(12 * 3600);
/// The portal's own address as a URL, for links when `base_url` is not set.
fn default_base_url(listen: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{listen}")
}

/// `[portal] priority`: how the portal's thread shares the CPU with the gateway's workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPriority {
    /// Linux's `SCHED_IDLE`: the portal runs when the gateway leaves a core idle and yields at
    /// once when a worker wakes. With the cores saturated it nearly stops, also in the middle
    /// of a store write whose lock others then wait for: for nodes whose portal may wait.
    Idle,
    /// `nice` 10 above the process (the default): about a tenth of a worker's share while both
    /// want a core, so the portal's writes still finish under load.
    Low,
    /// The gateway's own priority.
    Normal,
}

fn color(field: &str, raw: Option<&String>, default: &str, err: &mut impl FnMut(String)) -> String {
    let Some(c) = raw else {
        return default.to_owned();
    };
    let hex = c.strip_prefix('#').unwrap_or("");
    if matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        c.clone()
    } else {
        err(format!(
            "colors.{field}: `{c}` is not a CSS hex colour like #0a7f5a"
        ));
        default.to_owned()
    }
}

/// A logo `data:` URI, base64 of a PNG or SVG image.
fn logo(raw: &str) -> Result<String, String> {
    let payload = raw
        .strip_prefix("data:image/png;base64,")
        .or_else(|| raw.strip_prefix("data:image/svg+xml;base64,"))
        .ok_or("logo: give a data:image/png;base64,... or data:image/svg+xml;base64,... URI")?;
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if payload.is_empty() || payload.len() > 256 * 1024 || !payload.bytes().all(base64) {
        return Err("logo: the data URI's payload must be base64, at most 256 KiB".to_owned());
    }
    Ok(raw.to_owned())
}

/// Compiles `[portal]`; `None` when absent or without `listen` (the portal is off).
pub(super) fn compile(
    raw: Option<&Spanned<RawPortal>>,
    listen_override: Option<SocketAddr>,
    (tooling, read_files): (bool, bool),
    errors: &mut Errors<'_>,
) -> Option<PortalSettings> {
    let spanned = raw?;
    let span = spanned.span();
    let r = spanned.get_ref();
    let mut list = Vec::new();
    let mut err = |m: String| list.push(m);
    let Some(listen) = r.listen.as_deref() else {
        if r.smtp.is_some() || r.base_url.is_some() {
            err("listen is missing: the portal is off without it".to_owned());
        }
        report(errors, &span, list);
        return None;
    };
    let listen = listen_override.unwrap_or_else(|| {
        listen.parse().unwrap_or_else(|_| {
            err(format!(
                "listen `{listen}` is not an address like 127.0.0.1:8082"
            ));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    });
    let base_url = match r.base_url.as_deref() {
        Some(u)
            if (u.starts_with("https://") || u.starts_with("http://"))
                && !u.contains(['"', '<', '>', ' ', '\'']) =>
        {
            u.trim_end_matches('/').to_owned()
        }
        Some(u) => {
            err(format!("base_url `{u}` is not an http:// or https:// URL"));
            String::new()
        }
        None => default_base_url(listen, r.tls.is_some()),
    };
    let name = r.name.clone().unwrap_or_else(|| "API".to_owned());
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        err("name: 1 to 64 printable characters".to_owned());
    }
    let logo = r.logo.as_deref().map(logo).transpose().unwrap_or_else(|m| {
        err(m);
        None
    });
    let colors = Colors {
        primary: color("primary", r.colors.primary.as_ref(), "#1f5fbf", &mut err),
        background: color(
            "background",
            r.colors.background.as_ref(),
            "#ffffff",
            &mut err,
        ),
        text: color("text", r.colors.text.as_ref(), "#1a1a1a", &mut err),
    };
    let mut bookmakers = Vec::new();
    for b in &r.bookmakers {
        match Slug::new(b) {
            Ok(s) => bookmakers.push(s),
            Err(e) => err(format!("bookmakers: {e}")),
        }
    }
    if r.bookmaker_selection && bookmakers.is_empty() {
        err(
            "bookmaker_selection needs the list of bookmakers to pick from (bookmakers = [...])"
                .to_owned(),
        );
    }
    let session_lifetime = errors.duration(
        Some(&span),
        "portal.session_lifetime",
        r.session_lifetime.as_ref(),
        DEFAULT_SESSION,
        Zero::Refused,
    );
    let rotate_grace = r.rotate_grace.as_ref().and_then(|grace| {
        let d = errors.duration(
            Some(&span),
            "portal.rotate_grace",
            Some(grace),
            Duration::ZERO,
            Zero::Refused,
        );
        (!d.is_zero()).then_some(d)
    });
    let mut count = |field: &str, raw: Option<i64>, default: u32| match raw {
        None => default,
        Some(n @ 1..=10_000) => u32::try_from(n).unwrap_or(default),
        Some(n) => {
            err(format!("{field}: {n} is not a count from 1 to 10000"));
            default
        }
    };
    let sign_in_per_address = count("sign_in_per_address", r.sign_in_per_address, 5);
    let sign_in_per_source = count("sign_in_per_source", r.sign_in_per_source, 20);
    let requests_per_source = match r.requests_per_source {
        None => 600,
        Some(n @ 1..=1_000_000) => u32::try_from(n).unwrap_or(600),
        Some(n) => {
            err(format!(
                "requests_per_source: {n} is not a count from 1 to 1000000"
            ));
            600
        }
    };
    let max_connections = match r.max_connections {
        None => 1024,
        Some(n @ 1..=1_000_000) => usize::try_from(n).unwrap_or(1024),
        Some(n) => {
            err(format!(
                "max_connections: {n} is not a count from 1 to 1000000"
            ));
            1024
        }
    };
    let smtp = r.smtp.as_ref().and_then(|s| smtp(s, tooling, &mut err));
    report(errors, &span, list);
    let tls = super::compile_tls::listener(r.tls.as_ref(), "portal.tls", read_files, errors);
    let priority = Choice::read(r.priority.as_ref(), "portal.priority", Some(&span), errors)
        .unwrap_or(CpuPriority::Low);
    Some(PortalSettings {
        listen,
        secure_cookies: base_url.starts_with("https://"),
        base_url,
        name,
        logo,
        colors,
        sign_up: r.sign_up,
        bookmaker_selection: r.bookmaker_selection,
        bookmakers,
        child_bots: r.child_bots,
        feed_requests: r.feed_requests,
        session_lifetime,
        rotate_grace,
        sign_in_per_address,
        sign_in_per_source,
        requests_per_source,
        max_connections,
        priority,
        tls,
        smtp,
    })
}

fn report(errors: &mut Errors<'_>, span: &Range<usize>, list: Vec<String>) {
    for m in list {
        errors.at(Some(span), format!("portal: {m}"));
    }
}

fn smtp(r: &RawSmtp, tooling: bool, err: &mut impl FnMut(String)) -> Option<SmtpSettings> {
    let (implicit_tls, rest) = if let Some(rest) = r.url.strip_prefix("smtps://") {
        (true, rest)
    } else if let Some(rest) = r.url.strip_prefix("smtp://") {
        (false, rest)
    } else {
        err(format!(
            "smtp.url `{}` is not smtp://HOST:PORT or smtps://HOST:PORT",
            r.url
        ));
        return None;
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => {
                err(format!("smtp.url: `{p}` is not a port"));
                return None;
            }
        },
        None => (authority, if implicit_tls { 465 } else { 587 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        err(format!(
            "smtp.url `{}` has no plain host (credentials go in username_env/password_env)",
            r.url
        ));
        return None;
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let starttls = !implicit_tls && r.starttls.unwrap_or(!loopback);
    if implicit_tls && r.starttls == Some(true) {
        err("smtp.starttls is for smtp:// URLs; smtps:// is TLS from the first byte".to_owned());
    }
    if let Err(e) = r.from.parse::<lettre::message::Mailbox>() {
        err(format!("smtp.from `{}`: {e}", r.from));
    }
    // The secrets are read when a mail is sent; here only their presence is checked, so
    // `serve` stops before binding a port when one is missing.
    let credentials = match (&r.username_env, &r.password_env) {
        (Some(user), Some(password)) => {
            if !tooling {
                for (field, var) in [("username_env", user), ("password_env", password)] {
                    if let Err(m) = super::secret::from_env(&format!("smtp.{field}"), var, 1) {
                        err(m);
                    }
                }
            }
            Some((user.clone(), password.clone()))
        }
        (None, None) => None,
        _ => {
            err("smtp: give both username_env and password_env, or neither".to_owned());
            None
        }
    };
    Some(SmtpSettings {
        host: host.to_owned(),
        port,
        implicit_tls,
        starttls,
        credentials_env: credentials,
        from: r.from.clone(),
    })
}
