//! Calendar-window quotas: a counter per UTC hour, day or month.
//!
//! Quotas are sold as "10,000 requests a day", so they count per calendar window in UTC and a
//! new window starts from zero; `reset` is then the window's end, a time a customer can read.
//! The counter itself lives in a limiter (a map entry or a Redis key named after the window's
//! start); this module only decides.

use std::time::Duration;

use super::{LimitState, Window};
use crate::time::Timestamp;

/// Checks one request against `max` per `window`, given the requests already counted in the
/// window holding `now`.
///
/// Allowed iff `count_before < max`; an allowed request is to be counted by the caller.
///
/// ```
/// use std::time::Duration;
/// use keygate_core::limit::{window, Window};
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::parse_rfc3339("2026-09-21T23:59:00Z").unwrap();
/// let last = window::check(Window::Day, 100, 99, now);
/// assert!(last.allowed && last.remaining == 0);
/// let over = window::check(Window::Day, 100, 100, now);
/// assert!(!over.allowed);
/// assert_eq!(over.retry_after, Duration::from_secs(60));
/// assert_eq!(over.reset.to_rfc3339(), "2026-09-22T00:00:00Z");
/// ```
pub fn check(window: Window, max: u64, count_before: u64, now: Timestamp) -> LimitState {
    check_n(window, max, count_before, 1, now)
}

/// Checks one request that spends `cost` units (a weighted route's `cost`; 0 is read as 1)
/// against `max` per `window`: allowed iff `count_before + cost <= max`, so a request is
/// admitted whole or not at all, and an allowed one is to be counted `cost` times.
///
/// ```
/// use keygate_core::limit::{window, Window};
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::parse_rfc3339("2026-09-21T12:00:00Z").unwrap();
/// assert_eq!(window::check_n(Window::Day, 10, 5, 5, now).remaining, 0);
/// assert!(!window::check_n(Window::Day, 10, 6, 5, now).allowed);
/// ```
pub fn check_n(
    window: Window,
    max: u64,
    count_before: u64,
    cost: u64,
    now: Timestamp,
) -> LimitState {
    let (_, end) = window.bounds(now);
    let cost = cost.max(1);
    if count_before
        .checked_add(cost)
        .is_some_and(|after| after <= max)
    {
        LimitState {
            allowed: true,
            limit: max,
            remaining: max - count_before - cost,
            reset: end,
            retry_after: Duration::ZERO,
        }
    } else {
        let wait = end.as_millis().saturating_sub(now.as_millis()).max(1);
        LimitState {
            allowed: false,
            limit: max,
            remaining: 0,
            reset: end,
            retry_after: Duration::from_millis(u64::try_from(wait).unwrap_or(1)),
        }
    }
}

/// What a request at `now` would be told, without being one: `remaining` is how many requests
/// the window still admits (`max - count`), nothing is counted. When a request would be denied
/// the state is the one [`check`] gives it.
///
/// ```
/// use keygate_core::limit::{window, Window};
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::parse_rfc3339("2026-09-21T23:59:00Z").unwrap();
/// assert_eq!(window::peek(Window::Day, 200, 13, now).remaining, 187);
/// assert_eq!(window::check(Window::Day, 200, 13, now).remaining, 186);
/// assert!(!window::peek(Window::Day, 200, 200, now).allowed);
/// ```
pub fn peek(window: Window, max: u64, count: u64, now: Timestamp) -> LimitState {
    let state = check(window, max, count, now);
    if state.allowed {
        LimitState {
            remaining: max - count,
            ..state
        }
    } else {
        state
    }
}

/// The thresholds of a quota's allowance that a request moving its count from `before` to
/// `after` crossed: 80 % (`.0`) and 100 % (`.1`), for the `quota.80` and `quota.100` events.
/// Exact integer arithmetic; a zero `max` crosses nothing.
///
/// ```
/// use keygate_core::limit::window::crossed;
///
/// assert_eq!(crossed(10, 7, 8), (true, false));
/// assert_eq!(crossed(10, 0, 10), (true, true));
/// assert_eq!(crossed(10, 8, 9), (false, false));
/// ```
pub fn crossed(max: u64, before: u64, after: u64) -> (bool, bool) {
    if max == 0 {
        return (false, false);
    }
    let (max, before, after) = (u128::from(max), u128::from(before), u128::from(after));
    let at80 = |n: u128| n * 5 >= max * 4;
    (!at80(before) && at80(after), before < max && after >= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A weighted request is admitted whole or not at all, and each threshold is crossed
        /// by exactly one request of any sequence that climbs from zero to the allowance.
        #[test]
        fn weighted_checks_and_crossings(
            max in 1u64..10_000,
            count in 0u64..12_000,
            cost in 0u64..3_000,
            steps in prop::collection::vec(1u64..50, 1..100),
        ) {
            let now = Timestamp::from_millis(1_790_000_000_000);
            let s = check_n(Window::Day, max, count, cost, now);
            let units = cost.max(1);
            prop_assert_eq!(s.allowed, count + units <= max);
            if s.allowed {
                prop_assert_eq!(s.remaining, max - count - units);
            }
            prop_assert_eq!(check_n(Window::Day, max, count, 1, now), check(Window::Day, max, count, now));
            let (mut used, mut seen80, mut seen100) = (0u64, 0, 0);
            for step in steps {
                let after = (used + step).min(max);
                let (p80, p100) = crossed(max, used, after);
                seen80 += u32::from(p80);
                seen100 += u32::from(p100);
                used = after;
            }
            prop_assert_eq!(seen80, u32::from(used * 5 >= max * 4));
            prop_assert_eq!(seen100, u32::from(used >= max));
        }
    }

    proptest! {
        #[test]
        fn allowed_iff_under_max(
            w in prop::sample::select(Window::ALL.to_vec()),
            ms in 0i64..10_000_000_000_000,
            max in 0u64..1_000,
            count in 0u64..1_100,
        ) {
            let now = Timestamp::from_millis(ms);
            let s = check(w, max, count, now);
            prop_assert_eq!(s.allowed, count < max);
            prop_assert_eq!(s.limit, max);
            prop_assert_eq!(s.reset, w.bounds(now).1);
            prop_assert!(s.remaining < max.max(1));
            let peeked = peek(w, max, count, now);
            prop_assert_eq!(peeked.allowed, s.allowed);
            prop_assert_eq!(peeked.reset, s.reset);
            if s.allowed {
                prop_assert_eq!(peeked.remaining, s.remaining + 1);
            } else {
                prop_assert_eq!(peeked, s);
            }
            if s.allowed {
                prop_assert_eq!(s.remaining, max - count - 1);
                prop_assert_eq!(s.retry_after, Duration::ZERO);
            } else {
                prop_assert_eq!(s.remaining, 0);
                // Retrying after `retry_after` lands in the next window, which starts at zero.
                let retry = now.plus(s.retry_after);
                prop_assert_eq!(retry, s.reset);
                prop_assert_eq!(w.bounds(retry).0, s.reset);
            }
        }
    }
}
