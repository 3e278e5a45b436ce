//! GCRA, the generic cell rate algorithm: one `i64` of state per rate limit.
//!
//! The state is the theoretical arrival time (TAT) of the next request, in microseconds since
//! the epoch. A request at `now` is admitted when `max(tat, now) - now <= (burst - 1) * T`,
//! where `T = period / max` is the emission interval; admitting it moves the TAT on by `T`.
//! Unlike a fixed window this never lets `2 * max` through across a boundary, and unlike a
//! sliding log it needs no list. The Redis limiter evaluates the same comparison in a script
//! with [`Params`] computed here, and builds its answer with [`check_with`], so both backends
//! agree to the microsecond.

use std::time::Duration;

use super::{div_ceil_i64, Limit, LimitKind, LimitState};
use crate::time::Timestamp;

/// The largest emission interval, about 11.6 days; a slower "rate" is a quota.
pub const MAX_INTERVAL_US: i64 = 1_000_000_000_000;
/// The largest tolerance (`(burst - 1) * T`), about 31.7 years. Capping it keeps every value the
/// Redis script computes below 2^53, where Lua's doubles stay exact (for instants before 2200).
pub const MAX_TOLERANCE_US: i64 = 1_000_000_000_000_000;

/// A rate limit reduced to what GCRA computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params {
    /// The limit's `max` (at least 1).
    pub max: u64,
    /// The burst (at least 1).
    pub burst: u32,
    /// Emission interval `T = period / max` in µs, rounded up (so the rate never exceeds
    /// `max / period`) and at least 1 µs.
    pub interval_us: i64,
    /// `(burst - 1) * T` in µs: how far ahead of `now` the TAT may run.
    pub tolerance_us: i64,
}

impl Params {
    /// The parameters of `max` requests per `period` with `burst`. A `max` or `burst` of 0 is
    /// read as 1.
    pub fn new(max: u64, period: Duration, burst: u32) -> Params {
        let max = max.max(1);
        let burst = burst.max(1);
        let period_us = period.as_micros();
        let interval = period_us.div_ceil(u128::from(max));
        let interval_us = i64::try_from(interval)
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_INTERVAL_US);
        let tolerance_us = i64::from(burst - 1)
            .saturating_mul(interval_us)
            .min(MAX_TOLERANCE_US);
        Params {
            max,
            burst,
            interval_us,
            tolerance_us,
        }
    }

    /// The parameters of a rate limit; `None` for a quota.
    pub fn of(limit: &Limit) -> Option<Params> {
        match limit.kind {
            LimitKind::Rate { period, burst } => Some(Params::new(limit.max.get(), period, burst)),
            LimitKind::Quota { .. } => None,
        }
    }
}

/// `now` in microseconds since the epoch (saturating).
pub fn now_micros(now: Timestamp) -> i64 {
    now.as_millis().saturating_mul(1000)
}

/// Checks one request against a rate of `max` per `period` with `burst`.
///
/// `tat` is the stored theoretical arrival time in µs since the epoch (`None` for a full
/// bucket). Returns the answer and the new TAT to store, or `None` when the request was denied
/// and the state must stay as it was.
///
/// ```
/// use std::time::Duration;
/// use keygate_core::limit::gcra;
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::from_millis(1_000);
/// let (first, tat) = gcra::check(2, Duration::from_secs(1), 2, None, now);
/// assert!(first.allowed && first.remaining == 1);
/// let (second, tat) = gcra::check(2, Duration::from_secs(1), 2, tat, now);
/// assert!(second.allowed && second.remaining == 0);
/// let (third, unchanged) = gcra::check(2, Duration::from_secs(1), 2, tat, now);
/// assert!(!third.allowed && unchanged.is_none());
/// assert_eq!(third.retry_after, Duration::from_millis(500));
/// ```
pub fn check(
    max: u64,
    period: Duration,
    burst: u32,
    tat: Option<i64>,
    now: Timestamp,
) -> (LimitState, Option<i64>) {
    check_with(&Params::new(max, period, burst), tat, now)
}

/// [`check`] with precomputed [`Params`], for hot paths and the Redis backend.
pub fn check_with(p: &Params, tat: Option<i64>, now: Timestamp) -> (LimitState, Option<i64>) {
    let now_us = now_micros(now);
    let t = p.interval_us;
    let tau = p.tolerance_us;
    let tat = tat.map_or(now_us, |tat| tat.max(now_us));
    let ahead = tat.saturating_sub(now_us);
    if ahead <= tau {
        let new_tat = tat.saturating_add(t);
        let slack = tau - new_tat.saturating_sub(now_us);
        let remaining = (slack.div_euclid(t) + 1).clamp(0, i64::from(p.burst));
        let state = LimitState {
            allowed: true,
            limit: p.max,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: Timestamp::from_millis(div_ceil_i64(new_tat, 1000)),
            retry_after: Duration::ZERO,
        };
        (state, Some(new_tat))
    } else {
        let wait_ms = div_ceil_i64(ahead - tau, 1000);
        let state = LimitState {
            allowed: false,
            limit: p.max,
            remaining: 0,
            reset: Timestamp::from_millis(div_ceil_i64(tat, 1000)),
            retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
        };
        (state, None)
    }
}

/// What a request at `now` would be told, without being one: the state of a rate whose stored
/// TAT is `tat` (`None` for a full bucket), nothing consumed.
///
/// `remaining` is how many requests would be admitted right now (so one more than an
/// admitted [`check_with`] at the same instant reports, which counts itself); `reset` is when
/// the bucket is full (now, for a full one). When a request would be denied the state is the
/// one [`check_with`] gives that request, `retry_after` included.
///
/// ```
/// use std::time::Duration;
/// use keygate_core::limit::gcra;
/// use keygate_core::Timestamp;
///
/// let p = gcra::Params::new(2, Duration::from_secs(1), 2);
/// let now = Timestamp::from_millis(1_000);
/// assert_eq!(gcra::peek_with(&p, None, now).remaining, 2);
/// let (first, tat) = gcra::check_with(&p, None, now);
/// assert_eq!(first.remaining, 1);
/// assert_eq!(gcra::peek_with(&p, tat, now).remaining, 1);
/// assert_eq!(gcra::peek_with(&p, tat, now).reset, Timestamp::from_millis(1_500));
/// ```
pub fn peek_with(p: &Params, tat: Option<i64>, now: Timestamp) -> LimitState {
    let (state, _) = check_with(p, tat, now);
    if !state.allowed {
        return state;
    }
    // The check counted itself (one fewer remaining, its own TAT as reset); undo both.
    let now_us = now_micros(now);
    let tat = tat.map_or(now_us, |tat| tat.max(now_us));
    LimitState {
        remaining: (state.remaining + 1).min(u64::from(p.burst)),
        reset: Timestamp::from_millis(div_ceil_i64(tat, 1000)),
        ..state
    }
}

/// Whether a stored TAT still says anything at `now` (a TAT at or before `now` is a full
/// bucket, the same as no state).
pub fn is_live(tat: i64, now: Timestamp) -> bool {
    tat > now_micros(now)
}

/// A per-connection message rate (a WebSocket's frames), checked locally with no backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRate {
    tat: Option<i64>,
    max: u64,
    period: Duration,
    burst: u32,
    params: Params,
}

impl MessageRate {
    /// A message rate for a rate limit; `None` for a quota.
    pub fn new(limit: Limit) -> Option<Self> {
        match limit.kind {
            LimitKind::Rate { period, burst } => Some(MessageRate {
                tat: None,
                max: limit.max.get(),
                period,
                burst,
                params: Params::new(limit.max.get(), period, burst),
            }),
            LimitKind::Quota { .. } => None,
        }
    }

    /// Checks one message at `now`; an allowed message is counted.
    pub fn check(&mut self, now: Timestamp) -> LimitState {
        let (state, tat) = check_with(&self.params, self.tat, now);
        if tat.is_some() {
            self.tat = tat;
        }
        state
    }

    /// The limit this rate applies: `(max, period, burst)`.
    pub fn limit(&self) -> (u64, Duration, u32) {
        (self.max, self.period, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::num::NonZeroU64;

    const T0: i64 = 1_790_000_000_000;

    fn ms(n: i64) -> Timestamp {
        Timestamp::from_millis(T0 + n)
    }

    #[test]
    fn burst_then_one_per_interval() {
        let p = Params::new(10, Duration::from_secs(1), 3);
        assert_eq!(p.interval_us, 100_000);
        assert_eq!(p.tolerance_us, 200_000);
        let mut tat = None;
        for expect_remaining in [2, 1, 0] {
            let (s, next) = check_with(&p, tat, ms(0));
            assert!(s.allowed);
            assert_eq!(s.remaining, expect_remaining);
            assert_eq!(s.retry_after, Duration::ZERO);
            tat = next;
        }
        let (s, next) = check_with(&p, tat, ms(0));
        assert!(!s.allowed && next.is_none());
        assert_eq!(s.retry_after, Duration::from_millis(100));
        assert_eq!(s.reset, ms(300));
        // Just before the interval: still no; on it: yes, and the bucket is empty again.
        assert!(!check_with(&p, tat, ms(99)).0.allowed);
        let (s, next) = check_with(&p, tat, ms(100));
        assert!(s.allowed && s.remaining == 0);
        assert_eq!(s.reset, ms(400));
        // A long pause refills the bucket to `burst`, never beyond.
        let (s, _) = check_with(&p, next, ms(10_000));
        assert_eq!(s.remaining, 2);
        assert_eq!(s.reset, ms(10_100));
    }

    #[test]
    fn huge_rates_and_odd_inputs_do_not_panic() {
        let p = Params::new(1_000_000_000, Duration::from_secs(1), u32::MAX);
        assert_eq!(p.interval_us, 1);
        let (s, tat) = check_with(&p, None, ms(0));
        assert!(s.allowed);
        assert!(s.remaining <= u64::from(u32::MAX));
        assert!(tat.is_some());
        let p = Params::new(0, Duration::ZERO, 0);
        assert_eq!(
            (p.max, p.burst, p.interval_us, p.tolerance_us),
            (1, 1, 1, 0)
        );
        let p = Params::new(1, Duration::MAX, u32::MAX);
        assert_eq!(p.interval_us, MAX_INTERVAL_US);
        assert_eq!(p.tolerance_us, MAX_TOLERANCE_US);
        for now in [i64::MIN, -1, 0, i64::MAX] {
            for tat in [None, Some(i64::MIN), Some(0), Some(i64::MAX)] {
                let _ = check_with(&p, tat, Timestamp::from_millis(now));
            }
        }
    }

    #[test]
    fn interval_rounds_up_so_the_rate_is_never_exceeded() {
        let p = Params::new(3, Duration::from_secs(1), 1);
        assert_eq!(p.interval_us, 333_334);
        let p = Params::new(500_001, Duration::from_secs(1), 1);
        assert_eq!(p.interval_us, 2);
    }

    #[test]
    fn message_rate_is_local_gcra() {
        let limit = Limit::per_second(NonZeroU64::new(2).unwrap()).with_burst(1);
        let mut rate = MessageRate::new(limit).unwrap();
        assert!(rate.check(ms(0)).allowed);
        let denied = rate.check(ms(100));
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_millis(400));
        assert!(rate.check(ms(500)).allowed);
        assert_eq!(rate.limit(), (2, Duration::from_secs(1), 1));
        let quota = Limit::quota(super::super::Window::Day, NonZeroU64::new(2).unwrap());
        assert!(MessageRate::new(quota).is_none());
    }

    #[test]
    fn liveness() {
        let (_, tat) = check(1, Duration::from_secs(1), 1, None, ms(0));
        let tat = tat.unwrap();
        assert!(is_live(tat, ms(999)));
        assert!(!is_live(tat, ms(1000)));
    }

    fn rate() -> impl Strategy<Value = (u64, Duration, u32)> {
        (
            1u64..5_000,
            prop_oneof![
                Just(Duration::from_secs(1)),
                Just(Duration::from_secs(60)),
                (1u64..5_000).prop_map(Duration::from_millis),
            ],
            1u32..200,
        )
    }

    fn params() -> impl Strategy<Value = Params> {
        rate().prop_map(|(max, period, burst)| Params::new(max, period, burst))
    }

    /// Non-decreasing offsets in ms from T0.
    fn times() -> impl Strategy<Value = Vec<i64>> {
        prop::collection::vec(0i64..300, 1..400).prop_map(|steps| {
            steps
                .into_iter()
                .scan(0i64, |t, step| {
                    // Many requests share an instant; some steps jump far.
                    *t += if step < 150 { 0 } else { step * step / 10 };
                    Some(*t)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_admits_more_than_burst_plus_rate(p in params(), times in times()) {
            let mut tat = None;
            let mut admitted = 0u64;
            let first = times[0];
            for &t in &times {
                let (s, next) = check_with(&p, tat, ms(t));
                if s.allowed {
                    admitted += 1;
                    tat = next;
                }
                // The bound holds after every request, over the time elapsed so far.
                let elapsed_us = u128::from((t - first) as u64) * 1000;
                let by_rate = elapsed_us / u128::from(p.interval_us as u64);
                prop_assert!(u128::from(admitted) <= u128::from(p.burst) + by_rate + 1,
                    "admitted {admitted} burst {} by_rate {by_rate}", p.burst);
            }
        }

        #[test]
        fn remaining_counts_what_is_admitted_now(p in params(), times in times()) {
            let mut tat = None;
            for &t in &times {
                let (s, next) = check_with(&p, tat, ms(t));
                prop_assert!(s.remaining <= u64::from(p.burst));
                if s.allowed {
                    tat = next;
                    // Exactly `remaining` more are admitted at the same instant.
                    let mut probe = tat;
                    for _ in 0..s.remaining.min(50) {
                        let (more, next) = check_with(&p, probe, ms(t));
                        prop_assert!(more.allowed);
                        probe = next;
                    }
                    if s.remaining <= 50 {
                        prop_assert!(!check_with(&p, probe, ms(t)).0.allowed);
                    }
                } else {
                    prop_assert_eq!(s.remaining, 0);
                }
            }
        }

        #[test]
        fn denial_changes_nothing_and_retry_after_is_exact(p in params(), times in times()) {
            let mut tat = None;
            for &t in &times {
                let (s, next) = check_with(&p, tat, ms(t));
                prop_assert_eq!(s.retry_after > Duration::ZERO, !s.allowed);
                if s.allowed {
                    prop_assert!(next.is_some());
                    tat = next;
                } else {
                    prop_assert!(next.is_none());
                    // Asking again at the same instant gives the same answer.
                    prop_assert_eq!(check_with(&p, tat, ms(t)).0, s);
                    // Retrying after `retry_after` succeeds; a millisecond earlier does not.
                    let retry = ms(t).plus(s.retry_after);
                    prop_assert!(check_with(&p, tat, retry).0.allowed);
                    let earlier = Timestamp::from_millis(retry.as_millis() - 1);
                    prop_assert!(!check_with(&p, tat, earlier).0.allowed);
                }
            }
        }

        #[test]
        fn saturated_run_converges_to_the_rate(
            (max, period, burst) in rate(),
            step in 1i64..50,
            steps in 200i64..2_000,
        ) {
            let p = Params::new(max, period, burst);
            let elapsed_us = (steps * step * 1000) as f64;
            // Keep each case small: at most 100k admissions.
            prop_assume!(elapsed_us / (p.interval_us as f64) < 100_000.0);
            // Ask until denied at every step: the admitted count is the burst plus the rate.
            let mut tat = None;
            let mut admitted = 0u64;
            for i in 0..=steps {
                loop {
                    let (s, next) = check_with(&p, tat, ms(i * step));
                    if !s.allowed { break; }
                    admitted += 1;
                    tat = next;
                }
            }
            let admitted = admitted as f64;
            let by_interval = f64::from(p.burst) + elapsed_us / p.interval_us as f64;
            let step_us = step * 1000;
            if p.tolerance_us < step_us {
                // The tolerance cannot bank the time between two asks (burst 1 at 1.37 ms
                // asked every 1 ms admits every 2 ms): the rate is bounded by the interval
                // rounded up to the asking step, and never exceeds the configured one.
                let grid = div_ceil_i64(p.interval_us, step_us) * step_us;
                prop_assert!(admitted <= by_interval + 1.0);
                prop_assert!(admitted + 1.0 >= elapsed_us / grid as f64,
                    "admitted {admitted} vs {}", elapsed_us / grid as f64);
                return Ok(());
            }
            prop_assert!((admitted - by_interval).abs() <= 1.0, "admitted {admitted} vs {by_interval}");
            // And to the configured rate, where the 1 µs resolution allows (T >= 200 µs).
            if p.interval_us >= 200 {
                let nominal = f64::from(p.burst)
                    + elapsed_us * max as f64 / period.as_micros() as f64;
                prop_assert!((admitted - nominal).abs() <= 1.0 + nominal * 0.01,
                    "admitted {admitted} vs nominal {nominal}");
            }
        }

        #[test]
        fn peek_is_the_next_check_without_its_cost(p in params(), times in times()) {
            let mut tat = None;
            for &t in &times {
                let peeked = peek_with(&p, tat, ms(t));
                // Asking twice changes nothing: a peek holds no state.
                prop_assert_eq!(peek_with(&p, tat, ms(t)), peeked);
                let (s, next) = check_with(&p, tat, ms(t));
                prop_assert_eq!(peeked.allowed, s.allowed);
                if s.allowed {
                    // The peek counts the request the check then admitted.
                    prop_assert_eq!(peeked.remaining, s.remaining + 1);
                    prop_assert!(peeked.reset <= s.reset);
                    tat = next;
                    // After it, the peek says what the check said.
                    prop_assert_eq!(peek_with(&p, tat, ms(t)).remaining, s.remaining);
                } else {
                    prop_assert_eq!(peeked, s);
                }
            }
        }

        #[test]
        fn reset_is_when_the_bucket_is_full_again(p in params(), times in times()) {
            let mut tat = None;
            for &t in &times {
                let (s, next) = check_with(&p, tat, ms(t));
                if s.allowed { tat = next; }
                prop_assert!(s.reset >= ms(t));
                // At `reset` the full burst is available again.
                let (at_reset, _) = check_with(&p, tat, s.reset);
                prop_assert!(at_reset.allowed);
                prop_assert_eq!(at_reset.remaining, u64::from(p.burst) - 1);
            }
        }
    }
}
