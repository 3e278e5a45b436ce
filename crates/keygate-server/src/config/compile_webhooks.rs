//! `[[webhooks]]` and `[outbox]` checked into [`WebhookSpec`]s and [`OutboxSettings`]. A secret
//! named by `secret_env` is read here, so a missing variable stops `serve` before any port is
//! bound.

use std::collections::HashSet;
use std::time::Duration;

use http::uri::Scheme;
use rustls::pki_types::ServerName;

use super::errors::{Errors, Zero};
use super::raw_webhooks::{RawOutbox, RawWebhook};
use super::spanned::Spanned;
use crate::policy::webhooks::{event_filter, OutboxSettings, Target, WebhookSecret, WebhookSpec};
use crate::tls::{ClientFiles, ClientTls};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_ATTEMPTS: u32 = 12;
const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
/// The shortest secret accepted: an HMAC key shorter than this is guessable offline from one
/// signed request.
const MIN_SECRET_BYTES: usize = 16;

/// Every webhook, checked, and the outbox's settings.
pub(super) fn compile(
    hooks: &[Spanned<RawWebhook>],
    outbox: Option<&Spanned<RawOutbox>>,
    (tooling, read_files): (bool, bool),
    errors: &mut Errors<'_>,
) -> (Vec<WebhookSpec>, OutboxSettings) {
    let base = super::compile_tls::resolve(errors, ".");
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, spanned) in hooks.iter().enumerate() {
        let (raw, span) = (spanned.get_ref(), spanned.span());
        let at = |field: &str| format!("webhooks[{i}].{field}");
        let timeout = errors.duration(
            Some(&span),
            &at("timeout"),
            raw.timeout.as_ref(),
            DEFAULT_TIMEOUT,
            Zero::Refused,
        );
        let backoff = errors.duration(
            Some(&span),
            &at("backoff"),
            raw.backoff.as_ref(),
            DEFAULT_BACKOFF,
            Zero::Refused,
        );
        let max_attempts = errors
            .positive(Some(&span), &at("max_attempts"), raw.max_attempts, None)
            .map_or(DEFAULT_MAX_ATTEMPTS, |n| {
                u32::try_from(n.get()).unwrap_or(u32::MAX)
            });
        let mut err = |m: String| errors.at(Some(&span), format!("webhooks[{i}]: {m}"));
        let Some(spec) = webhook(raw, tooling, read_files, &mut err, base.clone()) else {
            continue;
        };
        if !names.insert(spec.name.clone()) {
            errors.at(
                Some(&span),
                format!(
                    "webhooks[{i}]: another webhook is named `{}`; give each a distinct `name`",
                    spec.name
                ),
            );
            continue;
        }
        specs.push(WebhookSpec {
            timeout,
            backoff,
            max_attempts,
            ..spec
        });
    }
    (specs, compile_outbox(outbox, errors))
}

/// A webhook's URL, name, secret, filter and TLS (its durations are read by the caller); each
/// part is checked, so every problem of the entry is reported in one pass.
fn webhook(
    raw: &RawWebhook,
    tooling: bool,
    read_files: bool,
    err: &mut impl FnMut(String),
    base: std::path::PathBuf,
) -> Option<WebhookSpec> {
    let target = target(raw, read_files, err, base);
    let name = match &raw.name {
        Some(n) if n.trim().is_empty() || n.len() > 200 || n.chars().any(char::is_control) => {
            err("`name` must be 1 to 200 printable characters".to_owned());
            None
        }
        Some(n) => Some(n.clone()),
        None => raw.url.as_deref().map(redact),
    };
    let secret = match (&raw.secret, &raw.secret_env) {
        (Some(s), None) if s.len() >= MIN_SECRET_BYTES => Some(s.clone()),
        (Some(_), None) => {
            err(format!(
                "`secret` must be at least {MIN_SECRET_BYTES} bytes"
            ));
            None
        }
        (None, Some(var)) => match super::secret::from_env("secret_env", var, MIN_SECRET_BYTES) {
            Ok(s) => Some(s),
            // Operator tools never send, and often run without the gateway's environment.
            Err(_) if tooling => Some(String::new()),
            Err(m) => {
                err(m);
                None
            }
        },
        _ => {
            err("give exactly one of `secret` and `secret_env`".to_owned());
            None
        }
    };
    let events = match raw.events.as_deref() {
        None | Some([]) => {
            err("`events` must name at least one event (`*` for all)".to_owned());
            None
        }
        Some(list) => match event_filter(list) {
            Ok(set) => Some(set),
            Err(e) => {
                err(format!("events: {e}"));
                None
            }
        },
    };
    Some(WebhookSpec {
        name: name?,
        target: target?,
        secret: WebhookSecret::new(secret?),
        events: events?,
        timeout: DEFAULT_TIMEOUT,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        backoff: DEFAULT_BACKOFF,
    })
}

/// Where a webhook's POSTs go: its URL checked, and for `https://` its TLS client.
fn target(
    raw: &RawWebhook,
    read_files: bool,
    err: &mut impl FnMut(String),
    base: std::path::PathBuf,
) -> Option<Target> {
    let Some(url_text) = raw.url.as_deref() else {
        err("`url` is required".to_owned());
        return None;
    };
    let not_http = || {
        format!(
            "`{}` is not an absolute http:// or https:// URL",
            redact(url_text)
        )
    };
    let Ok(url) = url_text.parse::<http::Uri>() else {
        err(not_http());
        return None;
    };
    let https = match url.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => {
            err(not_http());
            return None;
        }
    };
    let Some(authority) = url.authority().cloned() else {
        err(not_http());
        return None;
    };
    if authority.as_str().contains('@') || url_text.contains('#') {
        // Credentials in the URL would show in every listing; the signature authenticates.
        err("the URL must carry neither user:password@ nor a #fragment".to_owned());
        return None;
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host().to_owned();
    let tls = match (https, &raw.ca_file) {
        (false, Some(_)) => {
            err("`ca_file` is for https:// URLs".to_owned());
            return None;
        }
        (false, None) => None,
        // Tools that never send leave the files unread (and a `Target` without TLS for an
        // https:// URL is never sent to: only `serve` works the outbox).
        (true, _) if !read_files => None,
        (true, ca_file) => {
            let files = ClientFiles {
                ca_file: ca_file.as_deref().map(|p| base.join(p)),
                client_cert: None,
            };
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let client = ClientTls::new(&files, crate::tls::client::ALPN_UPSTREAM);
            match (client, ServerName::try_from(bare)) {
                (Ok(c), Ok(n)) => Some((c, n)),
                (Err(e), _) => {
                    err(e.to_string());
                    return None;
                }
                (_, Err(_)) => {
                    err(format!("`{host}` is neither a DNS name nor an address"));
                    return None;
                }
            }
        }
    };
    Some(Target {
        addr: format!("{host}:{port}"),
        url,
        tls,
    })
}

/// A URL as shown in messages and default names: without its query, which may hold the
/// receiver's token.
fn redact(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_owned()
}

fn compile_outbox(raw: Option<&Spanned<RawOutbox>>, errors: &mut Errors<'_>) -> OutboxSettings {
    let defaults = OutboxSettings::default();
    let Some(spanned) = raw else {
        return defaults;
    };
    let (r, span) = (spanned.get_ref(), spanned.span());
    let settings = OutboxSettings {
        poll: errors.duration(
            Some(&span),
            "outbox.poll",
            r.poll.as_ref(),
            defaults.poll,
            Zero::Refused,
        ),
        key_expiring_ahead: errors.duration(
            Some(&span),
            "outbox.key_expiring_ahead",
            r.key_expiring_ahead.as_ref(),
            defaults.key_expiring_ahead,
            Zero::Refused,
        ),
        retention: errors.duration(
            Some(&span),
            "outbox.retention",
            r.retention.as_ref(),
            defaults.retention,
            Zero::Refused,
        ),
    };
    if settings.retention < settings.key_expiring_ahead {
        // A pruned `key.expiring` would be made again by the next scan.
        errors.at(
            Some(&span),
            "outbox.retention must be at least outbox.key_expiring_ahead",
        );
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::super::{load, Overrides};
    use keygate_store::EventType;
    use std::time::Duration;

    fn errors(text: &str) -> String {
        load(text, "k.toml", &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_webhook_compiles_with_its_defaults_and_never_shows_its_secret() {
        let config = load(
            r#"
[upstreams.default]
url = "http://127.0.0.1:9"

[[webhooks]]
url = "https://hooks.example.com/k?token=abc"
secret = "s3cret-s3cret-s3cret"
events = ["key.*", "client.disabled"]

[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9000/hook"
secret = "0123456789abcdef"
events = ["*"]
timeout = "2s"
max_attempts = 3
backoff = "1s"

[outbox]
key_expiring_ahead = "3d"
"#,
            "k.toml",
            &Overrides::default(),
        )
        .unwrap();
        let [a, b] = &config.webhooks[..] else {
            panic!("two webhooks")
        };
        assert_eq!(
            a.name, "https://hooks.example.com/k",
            "the query is not in the name"
        );
        assert_eq!(a.target.addr, "hooks.example.com:443");
        assert!(a.target.tls.is_some());
        assert_eq!(a.timeout, Duration::from_secs(10));
        assert_eq!(a.max_attempts, 12);
        assert!(a.events.contains(&EventType::KeyExpiring));
        assert!(!a.events.contains(&EventType::Quota80));
        assert_eq!((b.name.as_str(), b.max_attempts), ("ops", 3));
        assert_eq!(b.target.addr, "127.0.0.1:9000");
        assert!(b.target.tls.is_none());
        assert_eq!(b.events.len(), EventType::ALL.len());
        assert_eq!(
            config.outbox.key_expiring_ahead,
            Duration::from_secs(3 * 86_400)
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("0123456789abcdef"));
    }

    #[test]
    fn bad_webhooks_are_refused_with_their_line() {
        let e = errors(
            "[[webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nevents = []\n",
        );
        assert!(
            e.starts_with("k.toml:") && e.contains(": webhooks[0]: `events` must name"),
            "{e}"
        );
        let e = errors(
            "[[webhooks]]\nurl = \"ftp://h/\"\nsecret = \"0123456789abcdef\"\nevents = [\"*\"]\n",
        );
        assert!(e.contains("not an absolute http:// or https:// URL"), "{e}");
        let e = errors(
            "[[webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nsecret_env = \"X\"\nevents = [\"*\"]\n",
        );
        assert!(
            e.contains("exactly one of `secret` and `secret_env`"),
            "{e}"
        );
        let e = errors(
            "[[webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nevents = [\"*\"]\nca_file = \"x.pem\"\nmax_attempts = 0\n",
        );
        assert!(e.contains("`ca_file` is for https:// URLs"), "{e}");
        let e = errors(
            "[[webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\nevents = [\"*\"]\nmax_attempts = 0\n",
        );
        assert!(
            e.contains("webhooks[0].max_attempts: 0 is not a positive"),
            "{e}"
        );
        let e = errors("[outbox]\nretention = \"1d\"\n");
        assert!(e.contains("outbox.retention must be at least"), "{e}");
    }
}
