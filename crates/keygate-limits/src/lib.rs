//! keygate's limiters: rates, quotas and connection leases, in process or on Redis.
//!
//! The math lives in `keygate_core::limit`; this crate keeps the counters. [`LocalLimiter`]
//! holds them in a sharded map for a single node; [`RedisLimiter`] keeps them in Redis for
//! several nodes, one round trip and one atomic script per request. Both give the same answers
//! (one shared test suite proves it): a request is checked against all its limits at once, and
//! either every counter is consumed exactly once or none is. A peek reads the same counters
//! without consuming (for answers that report limits without counting). [`Limits`] is what the
//! gateway holds: a backend plus the fallback policy for when Redis fails.

mod error;
mod local;
mod policy;
mod redis_limiter;
mod sentinel;

use keygate_core::limit::{Limit, LimitState};
use smol_str::SmolStr;

pub use error::LimiterError;
pub use local::LocalLimiter;
pub use policy::{LimitStats, Limits, RedisOptions, Unavailable, PROBE_INTERVAL};
pub use redis_limiter::{RedisLimiter, GRACE};

/// Checks a Redis URL as the limiter reads it, without connecting, and says whether it speaks
/// TLS (`rediss://`, `rediss+sentinel://`): for configuration checks.
///
/// # Errors
/// [`LimiterError::BadUrl`], quoting the URL with its password masked.
pub fn url_uses_tls(url: &str) -> Result<bool, LimiterError> {
    redis_limiter::Target::parse(url, None).map(|t| t.tls())
}

/// Identifies one counter: a subject (e.g. "c:cli_abc…" for a client, "k:key_…" for a key, "r3:k:key_…" for route 3 per key) and which of its limits (slot).
///
/// The subject is a [`SmolStr`]: client and key subjects (22 bytes) are held inline, so a
/// request lists its checks without touching, let alone counting references on, a shared
/// string elsewhere in memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitKey {
    pub subject: SmolStr,
    pub slot: u32,
}

impl LimitKey {
    /// The counter `slot` of `subject`.
    pub fn new(subject: impl Into<SmolStr>, slot: u32) -> LimitKey {
        LimitKey {
            subject: subject.into(),
            slot,
        }
    }
}

/// One limit to apply to a request.
///
/// Two checks with the same key in one request share the counter and are applied one after
/// the other, as two requests would be (each consumes once).
#[derive(Clone, Debug)]
pub struct Check {
    pub key: LimitKey,
    pub limit: Limit,
}

impl Check {
    /// Applies `limit` to the counter `key`.
    pub fn new(key: LimitKey, limit: Limit) -> Check {
        Check { key, limit }
    }
}

/// The outcome for a request checked against several limits at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Index (into the checks slice) and state of the limit that decided: the first denying limit when denied; otherwise the allowed limit with the fewest remaining (ties: the first). None when checks was empty.
    pub binding: Option<(usize, LimitState)>,
}

impl Verdict {
    /// The verdict with no limit to apply: allowed, nothing binding.
    pub const UNLIMITED: Verdict = Verdict {
        allowed: true,
        binding: None,
    };

    /// Combines the states of each check, in order.
    pub fn from_states(states: impl IntoIterator<Item = LimitState>) -> Verdict {
        let mut tightest: Option<(usize, LimitState)> = None;
        for (i, state) in states.into_iter().enumerate() {
            if !state.allowed {
                return Verdict {
                    allowed: false,
                    binding: Some((i, state)),
                };
            }
            if tightest.is_none_or(|(_, t)| state.remaining < t.remaining) {
                tightest = Some((i, state));
            }
        }
        Verdict {
            allowed: true,
            binding: tightest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::Timestamp;
    use std::time::Duration;

    fn state(allowed: bool, remaining: u64) -> LimitState {
        LimitState {
            allowed,
            limit: 10,
            remaining,
            reset: Timestamp::from_millis(0),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            },
        }
    }

    #[test]
    fn binding_is_first_denial_or_fewest_remaining() {
        assert_eq!(Verdict::from_states([]), Verdict::UNLIMITED);
        let v = Verdict::from_states([state(true, 5), state(true, 2), state(true, 2)]);
        assert!(v.allowed);
        assert_eq!(v.binding.map(|(i, _)| i), Some(1));
        let v = Verdict::from_states([state(true, 5), state(false, 0), state(false, 0)]);
        assert!(!v.allowed);
        assert_eq!(v.binding.map(|(i, _)| i), Some(1));
    }
}
