//! `[[webhooks]]` and `[outbox]` as compiled: the receivers, their secrets and event filters.
//! Plain data for `config` to build; the delivery itself is `crate::webhooks`.

use std::collections::BTreeSet;
use std::time::Duration;

use keygate_store::EventType;
use rustls::pki_types::ServerName;

/// A webhook's shared secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub(crate) fn new(secret: String) -> WebhookSecret {
        WebhookSecret(secret)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// Where a webhook's POSTs go.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: http::Uri,
    /// `host:port` to connect to.
    pub(crate) addr: String,
    /// `https://`: the client configuration and the name the receiver's certificate must carry.
    pub(crate) tls: Option<(crate::tls::ClientTls, ServerName<'static>)>,
}

/// One `[[webhooks]]` entry, checked.
#[derive(Clone, Debug)]
pub struct WebhookSpec {
    /// Stable identity of the webhook: deliveries are recorded under it, so a reload that
    /// changes the URL or secret keeps its pending deliveries. The URL when not named.
    pub name: String,
    pub target: Target,
    pub secret: WebhookSecret,
    /// The event types its filter takes.
    pub events: BTreeSet<EventType>,
    /// Budget of one attempt: connect, TLS, request and the answer's head.
    pub timeout: Duration,
    /// Attempts before a delivery is dead.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with each further one.
    pub backoff: Duration,
}

/// How the node works the outbox (`[outbox]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxSettings {
    /// How often the outbox is looked at.
    pub poll: Duration,
    /// `key.expiring` is sent this long before a key's expiry.
    pub key_expiring_ahead: Duration,
    /// Settled deliveries and their events are deleted after this long.
    pub retention: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            poll: Duration::from_secs(1),
            key_expiring_ahead: Duration::from_secs(7 * 86_400),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The longest wait between two attempts, whatever the backoff has doubled to.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Why an `events` filter entry is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` names no event (known: {known}; `family.*` and `*` match several)", known = known_events())]
pub struct UnknownEvent(pub String);

fn known_events() -> String {
    EventType::ALL
        .iter()
        .map(|e| e.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The event types a filter takes: exact names, `family.*` (`key.*`) or `*`. An entry that
/// matches nothing is an error, so a typo cannot silently mute a webhook.
///
/// # Errors
/// [`UnknownEvent`] naming the first entry that matches no event.
pub fn event_filter(entries: &[String]) -> Result<BTreeSet<EventType>, UnknownEvent> {
    let mut set = BTreeSet::new();
    for entry in entries {
        let matched: Vec<EventType> = EventType::ALL
            .into_iter()
            .filter(|e| match entry.strip_suffix('*') {
                Some("") => true,
                Some(family) if family.ends_with('.') => e.name().starts_with(family),
                Some(_) => false,
                None => e.name() == entry,
            })
            .collect();
        if matched.is_empty() {
            return Err(UnknownEvent(entry.clone()));
        }
        set.extend(matched);
    }
    Ok(set)
}
