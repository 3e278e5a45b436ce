//! The limiter suite, written once and run on both backends: the in-process `LocalLimiter`
//! and `RedisLimiter` against `KEYGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! Time is virtual: every call passes its `now`. Each test uses subjects with a random suffix,
//! so Redis tests run in parallel and leave nothing behind but keys that expire. Outside CI an
//! unreachable Redis skips its half with a note; under `CI=true` it fails.

mod common;

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{redis_url, subject, under_ci};
use keygate_core::limit::{Limit, LimitState, Window};
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey, LocalLimiter, RedisLimiter, Verdict};

/// The two backends behind one async interface.
enum Backend {
    Local(LocalLimiter),
    Redis(RedisLimiter),
}

impl Backend {
    async fn check(&self, checks: &[Check], now: Timestamp) -> Verdict {
        match self {
            Backend::Local(l) => l.check(checks, now),
            Backend::Redis(r) => r.check(checks, now).await.expect("Redis check"),
        }
    }

    async fn peek(&self, checks: &[Check], now: Timestamp) -> Verdict {
        match self {
            Backend::Local(l) => l.peek(checks, now),
            Backend::Redis(r) => r.peek(checks, now).await.expect("Redis peek"),
        }
    }

    async fn acquire_lease(
        &self,
        key: &LimitKey,
        max: u64,
        id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> LimitState {
        match self {
            Backend::Local(l) => l.acquire_lease(key, max, id, ttl, now),
            Backend::Redis(r) => r
                .acquire_lease(key, max, id, ttl, now)
                .await
                .expect("Redis acquire"),
        }
    }

    async fn renew_lease(&self, key: &LimitKey, id: u64, ttl: Duration, now: Timestamp) -> bool {
        match self {
            Backend::Local(l) => l.renew_lease(key, id, ttl, now),
            Backend::Redis(r) => r.renew_lease(key, id, ttl, now).await.expect("Redis renew"),
        }
    }

    async fn release_lease(&self, key: &LimitKey, id: u64) {
        match self {
            Backend::Local(l) => l.release_lease(key, id),
            Backend::Redis(r) => r.release_lease(key, id).await.expect("Redis release"),
        }
    }

    async fn lease_count(&self, key: &LimitKey, now: Timestamp) -> usize {
        match self {
            Backend::Local(l) => l.lease_count(key, now),
            Backend::Redis(r) => r.lease_count(key, now).await.expect("Redis count"),
        }
    }
}

async fn local() -> Option<Backend> {
    Some(Backend::Local(LocalLimiter::new()))
}

async fn redis() -> Option<Backend> {
    let url = redis_url();
    match RedisLimiter::connect(&url, Duration::from_secs(5)).await {
        Ok(r) => Some(Backend::Redis(r)),
        Err(e) if under_ci() => panic!("Redis at {url} is unreachable under CI: {e}"),
        Err(e) => {
            eprintln!("skipping Redis limiter test: {url} unreachable ({e})");
            None
        }
    }
}

/// Instantiates every case for one backend.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = super::$backend().await else { return };
                    super::cases::$case(std::sync::Arc::new(backend)).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        suite!($backend:
            rate_admits_the_burst_then_one_per_interval,
            rate_is_accurate_with_burst_one,
            rate_is_accurate_with_default_burst,
            daily_quota_is_exact_under_load_and_a_new_day_starts_at_zero,
            a_denying_quota_consumes_no_rate,
            a_denying_rate_consumes_no_quota,
            binding_is_the_denial_or_the_fewest_remaining,
            hour_windows,
            month_windows_across_leap_february,
            repeated_keys_share_one_counter,
            no_checks_is_unlimited,
            leases_cap_concurrency,
            leases_expire_without_release,
            peek_reports_a_rate_without_consuming_it,
            peek_reports_quotas_and_the_binding_limit,
            peek_of_a_subject_never_seen_is_a_full_budget,
            a_weighted_request_spends_its_cost_of_every_quota_and_one_of_a_rate,
            a_new_epoch_is_a_fresh_counter_in_the_same_window,
            crossings_of_80_and_100_percent_are_reported_once,
        );
    };
}

all_cases!(local);
all_cases!(redis);

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap()
}

fn at(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).unwrap()
}

fn ms(t: Timestamp, plus: u64) -> Timestamp {
    t.plus(Duration::from_millis(plus))
}

/// The state of an untouched rate of `max` at `now`: `max` requests would pass, full now.
fn full(max: u64, now: Timestamp) -> LimitState {
    LimitState {
        allowed: true,
        limit: max,
        remaining: max,
        reset: now,
        retry_after: Duration::ZERO,
    }
}

fn check(subject: &Arc<str>, slot: u32, limit: Limit) -> Check {
    Check::new(LimitKey::new(subject.clone(), slot), limit)
}

/// Runs `total` requests for `checks` from `tasks` concurrent tasks; request `n` happens at
/// `start + n / per_ms` ms (a shared virtual clock). Returns how many were admitted.
async fn load(
    backend: &Arc<Backend>,
    checks: Vec<Check>,
    start: Timestamp,
    tasks: usize,
    total: u64,
    per_ms: u64,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(checks);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (backend, next, admitted, checks) = (
            backend.clone(),
            next.clone(),
            admitted.clone(),
            checks.clone(),
        );
        handles.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let now = ms(start, n / per_ms);
                if backend.check(&checks, now).await.allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

mod cases {
    use super::*;

    pub(super) async fn rate_admits_the_burst_then_one_per_interval(b: Arc<Backend>) {
        let s = subject("burst");
        let c = [check(&s, 0, Limit::per_second(nz(5)))];
        let t0 = at("2026-09-21T10:00:00Z");
        for remaining in (0..5).rev() {
            let v = b.check(&c, t0).await;
            assert!(v.allowed);
            assert_eq!(v.binding.unwrap().1.remaining, remaining);
        }
        let v = b.check(&c, t0).await;
        assert!(!v.allowed);
        let (i, state) = v.binding.unwrap();
        assert_eq!(i, 0);
        assert_eq!(state.retry_after, Duration::from_millis(200));
        assert_eq!(state.reset, ms(t0, 1000));
        assert!(!b.check(&c, ms(t0, 199)).await.allowed);
        // Then exactly one per 200 ms interval.
        for k in 1..=5 {
            let now = ms(t0, 200 * k);
            assert!(b.check(&c, now).await.allowed, "interval {k}");
            assert!(!b.check(&c, now).await.allowed, "interval {k}");
        }
    }

    pub(super) async fn rate_is_accurate_with_burst_one(b: Arc<Backend>) {
        let s = subject("acc1");
        let c = vec![check(&s, 0, Limit::per_second(nz(100)).with_burst(1))];
        // Every 1 ms for 10 s, from 4 tasks: 40,000 requests.
        let admitted = load(&b, c, at("2026-09-21T10:00:00Z"), 4, 40_000, 4).await;
        assert!((980..=1020).contains(&admitted), "admitted {admitted}");
    }

    pub(super) async fn rate_is_accurate_with_default_burst(b: Arc<Backend>) {
        let s = subject("acc100");
        let c = vec![check(&s, 0, Limit::per_second(nz(100)))];
        let admitted = load(&b, c, at("2026-09-21T10:00:00Z"), 4, 40_000, 4).await;
        assert!((1078..=1122).contains(&admitted), "admitted {admitted}");
    }

    pub(super) async fn daily_quota_is_exact_under_load_and_a_new_day_starts_at_zero(
        b: Arc<Backend>,
    ) {
        let s = subject("day");
        let c = vec![check(&s, 0, Limit::quota(Window::Day, nz(300)))];
        let morning = at("2026-09-21T08:00:00Z");
        // 20 tasks × 50 requests, all within the day.
        let admitted = load(&b, c.clone(), morning, 20, 1000, 1).await;
        assert_eq!(admitted, 300);
        let v = b.check(&c, at("2026-09-21T23:59:59.999Z")).await;
        assert!(!v.allowed);
        let state = v.binding.unwrap().1;
        assert_eq!(state.reset, at("2026-09-22T00:00:00Z"));
        assert_eq!(state.retry_after, Duration::from_millis(1));
        // The next UTC day counts from zero.
        let v = b.check(&c, at("2026-09-22T00:00:00Z")).await;
        assert!(v.allowed);
        assert_eq!(v.binding.unwrap().1.remaining, 299);
        let admitted = load(&b, c, at("2026-09-22T12:00:00Z"), 20, 1000, 1).await;
        assert_eq!(admitted, 299);
    }

    pub(super) async fn a_denying_quota_consumes_no_rate(b: Arc<Backend>) {
        let s = subject("aon1");
        let rate = check(&s, 0, Limit::per_second(nz(3)));
        let quota = check(&s, 1, Limit::quota(Window::Hour, nz(1)));
        let t0 = at("2026-09-21T10:00:00Z");
        assert!(b.check(&[rate.clone(), quota.clone()], t0).await.allowed);
        for _ in 0..5 {
            let v = b.check(&[rate.clone(), quota.clone()], t0).await;
            assert!(!v.allowed);
            assert_eq!(v.binding.unwrap().0, 1);
        }
        // The rate was consumed once: two of its three remain.
        let v = b.check(std::slice::from_ref(&rate), t0).await;
        assert!(v.allowed);
        assert_eq!(v.binding.unwrap().1.remaining, 1);
        assert!(b.check(std::slice::from_ref(&rate), t0).await.allowed);
        assert!(!b.check(&[rate], t0).await.allowed);
    }

    pub(super) async fn a_denying_rate_consumes_no_quota(b: Arc<Backend>) {
        let s = subject("aon2");
        let quota = check(&s, 0, Limit::quota(Window::Day, nz(5)));
        let rate = check(&s, 1, Limit::per_second(nz(1)).with_burst(1));
        let t0 = at("2026-09-21T10:00:00Z");
        assert!(b.check(&[quota.clone(), rate.clone()], t0).await.allowed);
        for _ in 0..10 {
            let v = b.check(&[quota.clone(), rate.clone()], t0).await;
            assert!(!v.allowed);
            assert_eq!(v.binding.unwrap().0, 1);
        }
        let v = b.check(&[quota], t0).await;
        assert!(v.allowed);
        assert_eq!(v.binding.unwrap().1.remaining, 3);
    }

    pub(super) async fn binding_is_the_denial_or_the_fewest_remaining(b: Arc<Backend>) {
        let s = subject("bind");
        let t0 = at("2026-09-21T10:00:00Z");
        let checks = [
            check(&s, 0, Limit::per_second(nz(10))),
            check(&s, 1, Limit::quota(Window::Day, nz(3))),
            check(&s, 2, Limit::per_minute(nz(100))),
        ];
        let v = b.check(&checks, t0).await;
        assert!(v.allowed);
        let (i, state) = v.binding.unwrap();
        assert_eq!((i, state.remaining, state.limit), (1, 2, 3));
        assert!(b.check(&checks, t0).await.allowed);
        assert!(b.check(&checks, t0).await.allowed);
        let v = b.check(&checks, ms(t0, 500)).await;
        assert!(!v.allowed);
        let (i, state) = v.binding.unwrap();
        assert_eq!(i, 1);
        assert_eq!(state.reset, at("2026-09-22T00:00:00Z"));
        assert_eq!(
            state.retry_after,
            Duration::from_millis(14 * 3_600_000 - 500)
        );
        // Ties go to the first.
        let s = subject("tie");
        let checks = [
            check(&s, 0, Limit::per_second(nz(4))),
            check(&s, 1, Limit::quota(Window::Hour, nz(4))),
        ];
        let v = b.check(&checks, t0).await;
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((0, 3)));
    }

    pub(super) async fn hour_windows(b: Arc<Backend>) {
        let s = subject("hour");
        let c = [check(&s, 0, Limit::quota(Window::Hour, nz(2)))];
        let t = at("2026-09-21T10:59:00Z");
        assert!(b.check(&c, t).await.allowed);
        assert!(b.check(&c, ms(t, 1)).await.allowed);
        let v = b.check(&c, ms(t, 2)).await;
        assert!(!v.allowed);
        let state = v.binding.unwrap().1;
        assert_eq!(state.reset, at("2026-09-21T11:00:00Z"));
        assert_eq!(state.retry_after, Duration::from_millis(59_998));
        assert!(b.check(&c, at("2026-09-21T11:00:00Z")).await.allowed);
        assert!(b.check(&c, at("2026-09-21T11:59:59Z")).await.allowed);
        assert!(!b.check(&c, at("2026-09-21T11:59:59.999Z")).await.allowed);
    }

    pub(super) async fn month_windows_across_leap_february(b: Arc<Backend>) {
        let s = subject("month");
        let c = [check(&s, 0, Limit::quota(Window::Month, nz(1)))];
        assert!(b.check(&c, at("2028-02-01T00:00:00Z")).await.allowed);
        let v = b.check(&c, at("2028-02-29T23:59:59Z")).await;
        assert!(!v.allowed);
        assert_eq!(v.binding.unwrap().1.reset, at("2028-03-01T00:00:00Z"));
        assert!(b.check(&c, at("2028-03-01T00:00:00Z")).await.allowed);
        // December to January.
        assert!(b.check(&c, at("2028-12-31T23:59:59Z")).await.allowed);
        let v = b.check(&c, at("2028-12-31T23:59:59.500Z")).await;
        assert_eq!(v.binding.unwrap().1.reset, at("2029-01-01T00:00:00Z"));
        assert!(b.check(&c, at("2029-01-01T00:00:00Z")).await.allowed);
    }

    pub(super) async fn repeated_keys_share_one_counter(b: Arc<Backend>) {
        let s = subject("dup");
        let q = check(&s, 0, Limit::quota(Window::Hour, nz(3)));
        let t0 = at("2026-09-21T10:00:00Z");
        let v = b.check(&[q.clone(), q.clone()], t0).await;
        assert!(v.allowed);
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((1, 1)));
        // Two more would make four: denied as a whole.
        let v = b.check(&[q.clone(), q.clone()], t0).await;
        assert!(!v.allowed);
        assert_eq!(v.binding.unwrap().0, 1);
        assert!(b.check(std::slice::from_ref(&q), t0).await.allowed);
        assert!(!b.check(&[q], t0).await.allowed);
    }

    pub(super) async fn no_checks_is_unlimited(b: Arc<Backend>) {
        let v = b.check(&[], at("2026-09-21T10:00:00Z")).await;
        assert_eq!(v, Verdict::UNLIMITED);
    }

    pub(super) async fn leases_cap_concurrency(b: Arc<Backend>) {
        let key = LimitKey::new(subject("ws"), 0);
        let ttl = Duration::from_secs(30);
        let t0 = at("2026-09-21T10:00:00Z");
        for id in 1..=5 {
            let state = b.acquire_lease(&key, 5, id, ttl, t0).await;
            assert!(state.allowed, "lease {id}");
            assert_eq!(state.remaining, 5 - id);
            assert_eq!(state.reset, ms(t0, 30_000));
        }
        let denied = b.acquire_lease(&key, 5, 6, ttl, t0).await;
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, ttl);
        assert_eq!(b.lease_count(&key, t0).await, 5);
        // Taking a held lease again renews it rather than taking a second slot.
        assert!(b.acquire_lease(&key, 5, 3, ttl, ms(t0, 10)).await.allowed);
        // Releasing one frees a slot.
        b.release_lease(&key, 2).await;
        assert_eq!(b.lease_count(&key, t0).await, 4);
        assert!(b.acquire_lease(&key, 5, 6, ttl, ms(t0, 20)).await.allowed);
        assert!(!b.acquire_lease(&key, 5, 7, ttl, ms(t0, 20)).await.allowed);
        b.release_lease(&key, 99).await;
        assert_eq!(b.lease_count(&key, ms(t0, 20)).await, 5);
    }

    pub(super) async fn leases_expire_without_release(b: Arc<Backend>) {
        let key = LimitKey::new(subject("ws-exp"), 0);
        let ttl = Duration::from_secs(10);
        let t0 = at("2026-09-21T10:00:00Z");
        assert!(b.acquire_lease(&key, 2, 1, ttl, t0).await.allowed);
        assert!(
            b.acquire_lease(&key, 2, 2, ttl, ms(t0, 5_000))
                .await
                .allowed
        );
        assert!(
            !b.acquire_lease(&key, 2, 3, ttl, ms(t0, 9_999))
                .await
                .allowed
        );
        // Lease 1 ends at 10 s without a release (its node died): a slot frees up.
        assert_eq!(b.lease_count(&key, ms(t0, 10_000)).await, 1);
        assert!(
            b.acquire_lease(&key, 2, 3, ttl, ms(t0, 10_000))
                .await
                .allowed
        );
        // Lease 2 is kept alive by renewals; an expired one cannot be renewed.
        assert!(b.renew_lease(&key, 2, ttl, ms(t0, 14_000)).await);
        assert!(!b.renew_lease(&key, 1, ttl, ms(t0, 14_000)).await);
        assert_eq!(b.lease_count(&key, ms(t0, 19_999)).await, 2);
        assert_eq!(b.lease_count(&key, ms(t0, 24_000)).await, 0);
        assert!(!b.renew_lease(&key, 2, ttl, ms(t0, 24_000)).await);
    }

    pub(super) async fn peek_reports_a_rate_without_consuming_it(b: Arc<Backend>) {
        let s = subject("peek-rate");
        let c = [check(&s, 0, Limit::per_second(nz(5)))];
        let t0 = at("2026-09-21T10:00:00Z");
        // Full bucket: five requests would pass, and it is full already.
        let v = b.peek(&c, t0).await;
        assert!(v.allowed);
        assert_eq!(v.binding, Some((0, full(5, t0))));
        for _ in 0..2 {
            assert!(b.check(&c, t0).await.allowed);
        }
        // Peeking any number of times consumes nothing: it says what the last check said.
        for _ in 0..20 {
            let state = b.peek(&c, t0).await.binding.unwrap().1;
            assert_eq!((state.remaining, state.reset), (3, ms(t0, 400)));
        }
        assert_eq!(b.check(&c, t0).await.binding.unwrap().1.remaining, 2);
        // Half an interval later nothing has refilled yet; a whole one refills one request.
        assert_eq!(
            b.peek(&c, ms(t0, 100)).await.binding.unwrap().1.remaining,
            2
        );
        assert_eq!(
            b.peek(&c, ms(t0, 200)).await.binding.unwrap().1.remaining,
            3
        );
        // Empty: the peek is the denial a request would get, Retry-After included.
        assert!(b.check(&c, t0).await.allowed);
        assert!(b.check(&c, t0).await.allowed);
        let denied = b.check(&c, t0).await;
        let peeked = b.peek(&c, t0).await;
        assert_eq!(peeked, denied);
        assert_eq!(
            peeked.binding.unwrap().1.retry_after,
            Duration::from_millis(200)
        );
        assert!(b.check(&c, ms(t0, 200)).await.allowed);
    }

    pub(super) async fn peek_reports_quotas_and_the_binding_limit(b: Arc<Backend>) {
        let s = subject("peek-quota");
        let checks = [
            check(&s, 0, Limit::per_minute(nz(600))),
            check(&s, 1, Limit::quota(Window::Day, nz(200))),
        ];
        let t0 = at("2026-09-21T10:00:00Z");
        let midnight = at("2026-09-22T00:00:00Z");
        for n in 0..13 {
            assert!(b.check(&checks, ms(t0, 1000 * n)).await.allowed);
        }
        // "X-RateLimit-Remaining: 187": the day's quota binds, the rate has refilled.
        let later = ms(t0, 60_000);
        let v = b.peek(&checks, later).await;
        assert!(v.allowed);
        let (i, state) = v.binding.unwrap();
        assert_eq!(
            (i, state.limit, state.remaining, state.reset),
            (1, 200, 187, midnight)
        );
        assert_eq!(b.peek(&checks, later).await, v);
        let after = b.check(&checks, later).await.binding.unwrap();
        assert_eq!((after.0, after.1.remaining), (1, 186));
        // The next window starts full, without a request.
        let v = b.peek(&checks, midnight).await;
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((1, 200)));
        let day = b.peek(&checks[1..], midnight).await.binding.unwrap().1;
        assert_eq!(
            (day.remaining, day.reset),
            (200, at("2026-09-23T00:00:00Z"))
        );
        // An exhausted quota peeks as its denial; the rate beside it is untouched.
        let q = check(&subject("peek-q1"), 0, Limit::quota(Window::Hour, nz(1)));
        assert!(b.check(std::slice::from_ref(&q), t0).await.allowed);
        let denied = b.check(std::slice::from_ref(&q), t0).await;
        assert!(!denied.allowed);
        assert_eq!(b.peek(std::slice::from_ref(&q), t0).await, denied);
        assert_eq!(b.peek(&[], t0).await, Verdict::UNLIMITED);
    }

    pub(super) async fn peek_of_a_subject_never_seen_is_a_full_budget(b: Arc<Backend>) {
        let t0 = at("2026-09-21T10:00:00Z");
        for n in 0..50 {
            let s = subject(&format!("peek-new{n}"));
            let checks = [
                check(&s, 0, Limit::per_minute(nz(600))),
                check(&s, 1, Limit::quota(Window::Month, nz(5))),
            ];
            let v = b.peek(&checks, t0).await;
            assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((1, 5)));
            assert_eq!(
                b.peek(&checks[..1], t0).await.binding,
                Some((0, full(600, t0)))
            );
        }
        if let Backend::Local(l) = &*b {
            assert!(l.is_empty(), "peeks hold no state");
        }
    }

    pub(super) async fn a_weighted_request_spends_its_cost_of_every_quota_and_one_of_a_rate(
        b: Arc<Backend>,
    ) {
        let t0 = at("2026-09-21T10:00:00Z");
        let s = subject("cost");
        let checks = [
            check(&s, 0, Limit::per_minute(nz(100))).with_cost(5),
            check(&s, 1, Limit::quota(Window::Day, nz(10))).with_cost(5),
            check(&s, 2, Limit::quota(Window::Hour, nz(12))).with_cost(5),
        ];
        let v = b.check(&checks, t0).await;
        assert!(v.allowed);
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((1, 5)));
        let v = b.check(&checks, t0).await;
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((1, 0)));
        // The third would make 15 of 10: refused whole, nothing spent (the hour has 2 left).
        let denied = b.check(&checks, t0).await;
        assert!(!denied.allowed);
        assert_eq!(denied.binding.map(|(i, _)| i), Some(1));
        let hour = b.peek(&checks[2..], t0).await.binding.unwrap().1;
        assert_eq!(hour.remaining, 2);
        // The rate spent one per request: 98 of 100 left.
        let rate = b.peek(&checks[..1], t0).await.binding.unwrap().1;
        assert_eq!(rate.remaining, 98);
        // A cost larger than the whole allowance is refused, and 0 reads as 1.
        let big = check(&subject("cost-big"), 0, Limit::quota(Window::Day, nz(3))).with_cost(4);
        assert!(!b.check(std::slice::from_ref(&big), t0).await.allowed);
        let zero = big.with_cost(0);
        let v = b.check(std::slice::from_ref(&zero), t0).await;
        assert_eq!(v.binding.map(|(_, s)| s.remaining), Some(2));
        // A cost near u32::MAX against a u64 allowance neither overflows nor passes.
        let huge = check(
            &subject("cost-huge"),
            0,
            Limit::quota(Window::Day, nz(u64::from(u32::MAX) - 1)),
        )
        .with_cost(u32::MAX);
        assert!(!b.check(std::slice::from_ref(&huge), t0).await.allowed);
    }

    pub(super) async fn a_new_epoch_is_a_fresh_counter_in_the_same_window(b: Arc<Backend>) {
        let t0 = at("2026-09-21T10:00:00Z");
        let q = check(&subject("epoch"), 0, Limit::quota(Window::Day, nz(2)));
        for _ in 0..2 {
            assert!(b.check(std::slice::from_ref(&q), t0).await.allowed);
        }
        assert!(!b.check(std::slice::from_ref(&q), t0).await.allowed);
        let reset = Check {
            epoch: 1,
            ..q.clone()
        };
        let v = b.check(std::slice::from_ref(&reset), t0).await;
        assert_eq!(
            v.binding.map(|(_, s)| (s.allowed, s.remaining)),
            Some((true, 1))
        );
        // The old generation is untouched (and no longer named by anyone).
        assert!(!b.peek(std::slice::from_ref(&q), t0).await.allowed);
        // A raised allowance (a top-up) is the same counter with a larger max.
        let topped = Check {
            limit: Limit::quota(Window::Day, nz(3)),
            ..q.clone()
        };
        assert!(b.check(std::slice::from_ref(&topped), t0).await.allowed);
        assert!(!b.check(std::slice::from_ref(&topped), t0).await.allowed);
    }

    pub(super) async fn crossings_of_80_and_100_percent_are_reported_once(b: Arc<Backend>) {
        let t0 = at("2026-09-21T10:00:00Z");
        let s = subject("cross");
        let checks = [
            check(&s, 0, Limit::per_second(nz(1000))),
            check(&s, 1, Limit::quota(Window::Day, nz(10))).with_cost(3),
        ];
        let mut seen = Vec::new();
        for _ in 0..4 {
            let v = b.check(&checks, t0).await;
            seen.push((v.allowed, v.crossed.of(0), v.crossed.of(1)));
        }
        // 3, 6, 9 (crosses 80 %), then 12 > 10 is refused and crosses nothing.
        assert_eq!(
            seen,
            vec![
                (true, (false, false), (false, false)),
                (true, (false, false), (false, false)),
                (true, (false, false), (true, false)),
                (false, (false, false), (false, false)),
            ]
        );
        let one = [check(&s, 2, Limit::quota(Window::Day, nz(2))).with_cost(2)];
        assert_eq!(b.check(&one, t0).await.crossed.of(0), (true, true));
        assert!(b.peek(&one, t0).await.crossed.is_empty());
    }
}
