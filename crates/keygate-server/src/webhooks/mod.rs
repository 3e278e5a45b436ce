//! Webhooks (`[[webhooks]]`): the configured receivers, the signature they verify, one
//! attempt's HTTP POST, and the node's background task that works the store's outbox.
//!
//! The store holds the outbox (`keygate_store::EventType`, deliveries); this module decides
//! which webhooks get an event (their `events` filter), signs and sends, and settles each
//! attempt: delivered on 2xx, retried with exponential backoff and jitter, dead after the
//! webhook's `max_attempts`. Any node may work the outbox: a delivery is claimed by one node at
//! a time in the store, so each event reaches each receiver once while the nodes are up.

mod send;
pub(crate) mod sign;
pub(crate) mod worker;

use std::collections::BTreeSet;
use std::time::Duration;

use keygate_store::EventType;
use rustls::pki_types::ServerName;

pub use sign::{signature_header, SIGNATURE_HEADER};

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

/// The delay before attempt `attempts + 1` after `attempts` failed ones: `backoff` doubled per
/// earlier failure, capped at [`MAX_BACKOFF`], then drawn uniformly from its upper half
/// (`jitter` in 0..=1), so receivers that failed together are not retried together.
pub fn retry_delay(backoff: Duration, attempts: u32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let full = backoff
        .checked_mul(1u32 << doublings)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A uniform draw in 0..=1 from the OS's generator (0.5 if it cannot be read).
pub(crate) fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_take_names_families_and_everything() {
        let f = |e: &[&str]| event_filter(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(f(&["*"]).unwrap().len(), EventType::ALL.len());
        let keys = f(&["key.*"]).unwrap();
        assert!(keys.contains(&EventType::KeyRevoked) && keys.contains(&EventType::KeyExpiring));
        assert!(!keys.contains(&EventType::ClientDisabled));
        assert_eq!(
            f(&["key.revoked", "quota.100"]).unwrap(),
            BTreeSet::from([EventType::KeyRevoked, EventType::Quota100])
        );
        assert_eq!(
            f(&["key.revoke"]).unwrap_err(),
            UnknownEvent("key.revoke".into())
        );
        assert!(f(&["ke*"]).is_err());
        assert!(f(&["nope.*"]).is_err());
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_its_upper_half() {
        let b = Duration::from_secs(2);
        assert_eq!(retry_delay(b, 1, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(b, 2, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(b, 4, 1.0), Duration::from_secs(16));
        assert_eq!(retry_delay(b, 4, 0.0), Duration::from_secs(8));
        assert_eq!(retry_delay(b, 40, 1.0), MAX_BACKOFF);
        for _ in 0..100 {
            let d = retry_delay(b, 3, jitter());
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
                "{d:?}"
            );
        }
    }

    #[test]
    fn secrets_are_masked() {
        let s = WebhookSecret::new("whsec_very_secret".into());
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
    }
}
