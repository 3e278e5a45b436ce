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

use std::time::Duration;

pub use crate::policy::webhooks::{
    event_filter, OutboxSettings, Target, UnknownEvent, WebhookSecret, WebhookSpec, MAX_BACKOFF,
};

pub use sign::{signature_header, SIGNATURE_HEADER};

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
    use std::collections::BTreeSet;

    use keygate_store::EventType;

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
