//! Limit math: what a rate, a quota or a connection cap says about one request, with no I/O.
//!
//! One algorithm per kind of limit (DESIGN "Limits"): GCRA for rates ([`gcra`]), UTC calendar
//! windows for quotas ([`window`]) and leased counters for concurrency ([`lease`]). The
//! in-process and Redis limiters in `keygate-limits` both call these functions, so the two
//! backends cannot disagree about an answer. Time is always passed in, never read here.

use std::num::NonZeroU64;
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

pub mod gcra;
pub mod lease;
pub mod window;

pub use gcra::MessageRate;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// The month length used for [`Window::seconds_hint`], and for instants chrono cannot represent.
const MONTH_HINT_MS: i64 = 2_592_000_000;

/// UTC calendar windows for quotas.
///
/// ```
/// use keygate_core::limit::Window;
/// use keygate_core::Timestamp;
///
/// let now = Timestamp::parse_rfc3339("2028-02-14T10:30:00Z").unwrap();
/// let (start, end) = Window::Month.bounds(now);
/// assert_eq!(start.to_rfc3339(), "2028-02-01T00:00:00Z");
/// assert_eq!(end.to_rfc3339(), "2028-03-01T00:00:00Z");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    Day,
    Month,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::Hour, Window::Day, Window::Month];

    /// The window holding `now`, as `[start, end)` in UTC.
    ///
    /// Hours and days are fixed lengths of Unix time (which has no leap seconds); a month is
    /// the calendar month. For an instant chrono cannot represent (beyond ±262,000 years), a
    /// month falls back to a 30-day window counted from the epoch.
    pub fn bounds(self, now: Timestamp) -> (Timestamp, Timestamp) {
        let ms = now.as_millis();
        match self {
            Window::Hour => fixed(ms, HOUR_MS),
            Window::Day => fixed(ms, DAY_MS),
            Window::Month => month(ms).unwrap_or_else(|| fixed(ms, MONTH_HINT_MS)),
        }
    }

    /// `"hour"`, `"day"` or `"month"`, as in configuration and key names.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// A nominal length in seconds (a month counts 30 days), for the `RateLimit-Policy` `w`.
    pub fn seconds_hint(self) -> u64 {
        match self {
            Window::Hour => 3600,
            Window::Day => 86_400,
            Window::Month => 2_592_000,
        }
    }
}

fn fixed(ms: i64, len: i64) -> (Timestamp, Timestamp) {
    let start = ms.saturating_sub(ms.rem_euclid(len));
    (
        Timestamp::from_millis(start),
        Timestamp::from_millis(start.saturating_add(len)),
    )
}

fn month(ms: i64) -> Option<(Timestamp, Timestamp)> {
    let date = Timestamp::from_millis(ms).to_datetime()?.date_naive();
    let start = NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?;
    let next = if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)?
    };
    let millis = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|dt| Timestamp::from_millis(dt.and_utc().timestamp_millis()))
    };
    Some((millis(start)?, millis(next)?))
}

/// The kind of a limit: a rate or a calendar quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// GCRA: `max` requests per `period` (1 s or 60 s in practice, any non-zero Duration allowed) with a burst of `burst` (>= 1) requests.
    Rate { period: Duration, burst: u32 },
    /// Calendar-window counter: `max` requests per UTC hour/day/month.
    Quota { window: Window },
}

impl LimitKind {
    /// Whether this is a calendar quota (which a weighted route spends `cost` units of).
    pub fn is_quota(&self) -> bool {
        matches!(self, LimitKind::Quota { .. })
    }
}

/// One limit: a kind and how many requests it lets through.
///
/// ```
/// use std::num::NonZeroU64;
/// use keygate_core::limit::{Limit, LimitKind};
///
/// let rps = Limit::per_second(NonZeroU64::new(250).unwrap()).with_burst(50);
/// assert!(matches!(rps.kind, LimitKind::Rate { burst: 50, .. }));
/// assert_eq!(rps.window_seconds(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub kind: LimitKind,
    pub max: NonZeroU64,
}

impl Limit {
    /// `max` requests per second, with a burst of `max` (at most `u32::MAX`).
    pub fn per_second(max: NonZeroU64) -> Limit {
        Limit::rate(max, Duration::from_secs(1))
    }

    /// `max` requests per minute, with a burst of `max` (at most `u32::MAX`).
    pub fn per_minute(max: NonZeroU64) -> Limit {
        Limit::rate(max, Duration::from_secs(60))
    }

    /// `max` requests per `period`, with a burst of `max`. A zero `period` is read as 1 µs
    /// (the resolution of [`gcra`]).
    pub fn rate(max: NonZeroU64, period: Duration) -> Limit {
        Limit {
            kind: LimitKind::Rate {
                period: period.max(Duration::from_micros(1)),
                burst: u32::try_from(max.get()).unwrap_or(u32::MAX),
            },
            max,
        }
    }

    /// `max` requests per UTC calendar `window`.
    pub fn quota(window: Window, max: NonZeroU64) -> Limit {
        Limit {
            kind: LimitKind::Quota { window },
            max,
        }
    }

    /// The same rate with another burst (0 is read as 1); a quota is returned unchanged.
    pub fn with_burst(self, burst: u32) -> Limit {
        match self.kind {
            LimitKind::Rate { period, .. } => Limit {
                kind: LimitKind::Rate {
                    period,
                    burst: burst.max(1),
                },
                max: self.max,
            },
            LimitKind::Quota { .. } => self,
        }
    }

    /// Window length in seconds for the IETF RateLimit-Policy `w` parameter (period secs for Rate, window length hint for Quota).
    ///
    /// A sub-second period rounds up to 1.
    pub fn window_seconds(&self) -> u64 {
        match self.kind {
            LimitKind::Rate { period, .. } => {
                let secs = period.as_secs() + u64::from(period.subsec_nanos() > 0);
                secs.max(1)
            }
            LimitKind::Quota { window } => window.seconds_hint(),
        }
    }
}

/// The answer of one limit for one request. A "no" is a value, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitState {
    pub allowed: bool,
    /// The limit's `max`.
    pub limit: u64,
    /// How many more requests would be admitted right now, after this one if it was allowed
    /// (0 when denied).
    pub remaining: u64,
    /// Rate: when the bucket is fully replenished; quota: the window's end; lease: when the
    /// lease expires unless renewed.
    pub reset: Timestamp,
    /// Zero when allowed; otherwise the earliest time a retry can succeed (Quota: until window
    /// end).
    pub retry_after: Duration,
}

/// `a / b` rounded up, for any signs of `a` and `b > 0`, without overflow.
pub(crate) fn div_ceil_i64(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn hour_and_day_bounds() {
        let now = at("2026-09-21T13:45:12.345Z");
        assert_eq!(
            Window::Hour.bounds(now),
            (at("2026-09-21T13:00:00Z"), at("2026-09-21T14:00:00Z"))
        );
        assert_eq!(
            Window::Day.bounds(now),
            (at("2026-09-21T00:00:00Z"), at("2026-09-22T00:00:00Z"))
        );
        // An instant on a boundary starts the window.
        let midnight = at("2026-09-22T00:00:00Z");
        assert_eq!(Window::Day.bounds(midnight).0, midnight);
        // Before the epoch too.
        let old = at("1969-12-31T23:30:00Z");
        assert_eq!(
            Window::Hour.bounds(old),
            (at("1969-12-31T23:00:00Z"), at("1970-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn month_bounds_across_the_year_and_leap_february() {
        assert_eq!(
            Window::Month.bounds(at("2026-12-31T23:59:59.999Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(at("2027-01-01T00:00:00Z")),
            (at("2027-01-01T00:00:00Z"), at("2027-02-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(at("2028-02-29T12:00:00Z")),
            (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(at("2027-02-28T23:59:59Z")),
            (at("2027-02-01T00:00:00Z"), at("2027-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for w in Window::ALL {
            for ms in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
                let (start, end) = w.bounds(Timestamp::from_millis(ms));
                assert!(start <= end, "{w:?} {ms}");
            }
        }
    }

    #[test]
    fn names_and_hints() {
        assert_eq!(Window::Day.as_str(), "day");
        assert_eq!(serde_json::to_string(&Window::Month).unwrap(), r#""month""#);
        assert_eq!(
            serde_json::from_str::<Window>(r#""hour""#).unwrap(),
            Window::Hour
        );
        assert_eq!(Window::Month.seconds_hint(), 2_592_000);
    }

    #[test]
    fn limit_constructors() {
        let l = Limit::per_minute(nz(30));
        assert_eq!(
            l.kind,
            LimitKind::Rate {
                period: Duration::from_secs(60),
                burst: 30
            }
        );
        assert_eq!(l.window_seconds(), 60);
        assert_eq!(
            Limit::per_second(nz(u64::MAX)).kind,
            LimitKind::Rate {
                period: Duration::from_secs(1),
                burst: u32::MAX
            }
        );
        assert!(matches!(
            Limit::per_second(nz(5)).with_burst(0).kind,
            LimitKind::Rate { burst: 1, .. }
        ));
        let q = Limit::quota(Window::Day, nz(10));
        assert_eq!(q.with_burst(3), q);
        assert_eq!(q.window_seconds(), 86_400);
        assert_eq!(
            Limit::rate(nz(1), Duration::from_millis(1500)).window_seconds(),
            2
        );
        assert_eq!(
            Limit::rate(nz(1), Duration::ZERO).kind,
            LimitKind::Rate {
                period: Duration::from_micros(1),
                burst: 1
            }
        );
    }

    #[test]
    fn ceil_division() {
        assert_eq!(div_ceil_i64(7, 2), 4);
        assert_eq!(div_ceil_i64(-7, 2), -3);
        assert_eq!(div_ceil_i64(6, 3), 2);
        assert_eq!(div_ceil_i64(i64::MIN, 1000), i64::MIN / 1000);
        assert_eq!(div_ceil_i64(i64::MAX, 1000), i64::MAX / 1000 + 1);
    }

    /// Instants from 1900 to 2400.
    fn instant() -> impl Strategy<Value = i64> {
        -2_208_988_800_000i64..13_569_465_600_000i64
    }

    proptest! {
        #[test]
        fn bounds_contain_now_and_tile(ms in instant(), w in prop::sample::select(Window::ALL.to_vec())) {
            let now = Timestamp::from_millis(ms);
            let (start, end) = w.bounds(now);
            prop_assert!(start <= now && now < end);
            prop_assert!(start < end);
            // The next window starts where this one ends; the previous one ends where it starts.
            prop_assert_eq!(w.bounds(end).0, end);
            prop_assert_eq!(w.bounds(Timestamp::from_millis(start.as_millis() - 1)).1, start);
            // Windows start at midnight (or on the hour) UTC.
            let dt = start.to_datetime().unwrap();
            prop_assert_eq!(start.as_millis() % HOUR_MS, 0);
            if w != Window::Hour {
                prop_assert_eq!(start.as_millis().rem_euclid(DAY_MS), 0);
            }
            if w == Window::Month {
                prop_assert_eq!(dt.day(), 1);
                let days = (end.as_millis() - start.as_millis()) / DAY_MS;
                prop_assert!((28..=31).contains(&days));
            }
        }
    }
}
