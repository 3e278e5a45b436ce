//! Leased counters for concurrency limits (open WebSocket connections per key or client).
//!
//! A plain counter leaks when a node dies with connections open, so each connection holds a
//! lease instead: an id with an expiry that its holder renews while the connection lives and
//! releases on close. A dead node's leases simply expire. This module decides; the limiters
//! keep the leases (a map entry or a Redis sorted set scored by expiry).

use std::time::Duration;

use super::LimitState;
use crate::time::Timestamp;

/// How many of `leases` (`(id, expires)`) are still held at `now`: those expiring after it.
pub fn active(leases: &[(u64, Timestamp)], now: Timestamp) -> usize {
    leases.iter().filter(|(_, expires)| *expires > now).count()
}

/// Decides whether one more lease of `ttl` may be taken while `active` are held.
///
/// Allowed iff `active < max`. `reset` is when the new lease expires unless renewed; a denied
/// caller is told to retry after `ttl`, by which time a lease of a dead node has expired.
///
/// ```
/// use std::time::Duration;
/// use keygate_core::limit::lease;
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::from_millis(0);
/// let ttl = Duration::from_secs(30);
/// assert_eq!(lease::acquire(5, 3, now, ttl).remaining, 1);
/// assert!(!lease::acquire(5, 5, now, ttl).allowed);
/// ```
pub fn acquire(max: u64, active: usize, now: Timestamp, ttl: Duration) -> LimitState {
    let active = u64::try_from(active).unwrap_or(u64::MAX);
    let reset = now.plus(ttl);
    if active < max {
        LimitState {
            allowed: true,
            limit: max,
            remaining: max - active - 1,
            reset,
            retry_after: Duration::ZERO,
        }
    } else {
        LimitState {
            allowed: false,
            limit: max,
            remaining: 0,
            reset,
            retry_after: ttl.max(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn expired_leases_do_not_count() {
        let leases = [(1, t(100)), (2, t(200)), (3, t(300))];
        assert_eq!(active(&leases, t(0)), 3);
        assert_eq!(active(&leases, t(100)), 2);
        assert_eq!(active(&leases, t(299)), 1);
        assert_eq!(active(&leases, t(300)), 0);
        assert_eq!(active(&[], t(0)), 0);
    }

    #[test]
    fn acquire_up_to_max() {
        let ttl = Duration::from_secs(30);
        let s = acquire(2, 0, t(0), ttl);
        assert!(s.allowed);
        assert_eq!((s.limit, s.remaining, s.reset), (2, 1, t(30_000)));
        assert_eq!(acquire(2, 1, t(0), ttl).remaining, 0);
        let denied = acquire(2, 2, t(0), ttl);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, ttl);
        assert!(!acquire(0, 0, t(0), ttl).allowed);
        assert!(!acquire(2, 7, t(0), Duration::ZERO).retry_after.is_zero());
    }
}
