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
    /// Units a quota check spends (a weighted route's `cost`, 1 by default; 0 is read as 1).
    /// A rate spends one per request whatever this says: rates pace requests, quotas are
    /// the budget a route's weight is sold in.
    pub cost: u32,
    /// A quota counter's generation within its window: 0 until an operator resets the
    /// window, then the number of resets. Each generation is a counter of its own (a new
    /// local cell, a new Redis key), so a reset zeroes the count on every node and backend
    /// without deleting anything a concurrent request may be writing.
    pub epoch: u32,
}

impl Check {
    /// Applies `limit` to the counter `key`, one unit per request.
    pub fn new(key: LimitKey, limit: Limit) -> Check {
        Check {
            key,
            limit,
            cost: 1,
            epoch: 0,
        }
    }

    /// The same check spending `cost` units of a quota.
    pub fn with_cost(self, cost: u32) -> Check {
        Check { cost, ..self }
    }

    /// Units this check spends: `cost` for a quota (at least 1), 1 for a rate.
    pub fn units(&self) -> u64 {
        match self.limit.kind {
            keygate_core::limit::LimitKind::Quota { .. } => u64::from(self.cost.max(1)),
            keygate_core::limit::LimitKind::Rate { .. } => 1,
        }
    }
}

/// The quota thresholds an allowed request crossed, for the first [`Crossings::CHECKS`]
/// checks: whether check `i` reached 80 % and 100 % of its allowance, and its count after the
/// request. Computed from the states the limiter returns anyway, so noticing a crossing costs
/// the request nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crossings {
    /// Bit `2i`: check `i` reached 80 %; bit `2i + 1`: 100 %.
    bits: u16,
    used: [u64; Crossings::CHECKS],
}

impl Crossings {
    /// Checks a crossing is noticed for (a plan's quotas come first among a request's).
    pub const CHECKS: usize = 8;

    /// Whether check `i` crossed 80 % and 100 %.
    pub fn of(self, i: usize) -> (bool, bool) {
        if i >= Self::CHECKS {
            return (false, false);
        }
        (
            self.bits >> (2 * i) & 1 == 1,
            self.bits >> (2 * i + 1) & 1 == 1,
        )
    }

    /// Check `i`'s count after the request, when it crossed a threshold.
    pub fn used(self, i: usize) -> Option<u64> {
        (self.of(i) != (false, false)).then(|| self.used[i])
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }
}

/// The outcome for a request checked against several limits at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Index (into the checks slice) and state of the limit that decided: the first denying limit when denied; otherwise the allowed limit with the fewest remaining (ties: the first). None when checks was empty.
    pub binding: Option<(usize, LimitState)>,
    /// The quota thresholds this request crossed (empty when denied, and for a peek).
    pub crossed: Crossings,
}

impl Verdict {
    /// The verdict with no limit to apply: allowed, nothing binding.
    pub const UNLIMITED: Verdict = Verdict {
        allowed: true,
        binding: None,
        crossed: Crossings {
            bits: 0,
            used: [0; Crossings::CHECKS],
        },
    };

    /// Combines the states of `checks`, in order, and notes the quota thresholds an allowed
    /// request crossed (a quota's state says the count after the request: `limit -
    /// remaining`; before it, that less the check's units).
    pub fn from_checks(checks: &[Check], states: impl IntoIterator<Item = LimitState>) -> Verdict {
        let mut crossed = Crossings::default();
        let mut verdict = Verdict::from_states(checks.iter().zip(states).enumerate().map(
            |(i, (check, state))| {
                if state.allowed && i < Crossings::CHECKS && check.limit.kind.is_quota() {
                    let after = state.limit.saturating_sub(state.remaining);
                    let before = after.saturating_sub(check.units());
                    let (p80, p100) =
                        keygate_core::limit::window::crossed(state.limit, before, after);
                    if p80 || p100 {
                        crossed.bits |= u16::from(p80) << (2 * i) | u16::from(p100) << (2 * i + 1);
                        crossed.used[i] = after;
                    }
                }
                state
            },
        ));
        if verdict.allowed {
            verdict.crossed = crossed;
        }
        verdict
    }

    /// Combines the states of each check, in order.
    pub fn from_states(states: impl IntoIterator<Item = LimitState>) -> Verdict {
        let mut tightest: Option<(usize, LimitState)> = None;
        for (i, state) in states.into_iter().enumerate() {
            if !state.allowed {
                return Verdict {
                    allowed: false,
                    binding: Some((i, state)),
                    crossed: Crossings::default(),
                };
            }
            if tightest.is_none_or(|(_, t)| state.remaining < t.remaining) {
                tightest = Some((i, state));
            }
        }
        Verdict {
            allowed: true,
            binding: tightest,
            crossed: Crossings::default(),
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
