//! What only the Redis backend has: one round trip per request, keys that expire by
//! themselves, and `Limits` falling back to local limits while Redis is cut off (through a
//! relay in this test that can drop every connection and refuse new ones).

mod common;

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{redis_url, subject, under_ci};
use keygate_core::limit::{Limit, Window};
use keygate_core::Timestamp;
use keygate_limits::{
    Check, LimitKey, LimiterError, Limits, RedisLimiter, RedisOptions, Unavailable,
};
use keygate_test::Relay;
use redis::AsyncCommands;
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(2);

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).unwrap()
}

fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-09-21T10:00:00Z").unwrap()
}

/// The test Redis, or `None` (with a note) when it is unreachable outside CI.
async fn limiter() -> Option<RedisLimiter> {
    let url = redis_url();
    match RedisLimiter::connect(&url, TIMEOUT).await {
        Ok(r) => Some(r),
        Err(e) if under_ci() => panic!("Redis at {url} is unreachable under CI: {e}"),
        Err(e) => {
            eprintln!("skipping Redis test: {url} unreachable ({e})");
            None
        }
    }
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn checks(n: u32) -> Vec<Check> {
    let s = subject("rt");
    (0..n)
        .map(|slot| {
            let limit = match slot % 3 {
                0 => Limit::per_second(nz(1000)),
                1 => Limit::quota(Window::Day, nz(1000)),
                _ => Limit::per_minute(nz(1000)),
            };
            Check::new(LimitKey::new(s.clone(), slot), limit)
        })
        .collect()
}

#[tokio::test]
async fn one_round_trip_per_check_whatever_the_number_of_limits() {
    let Some(r) = limiter().await else { return };
    for n in [1, 2, 3, 8, 20] {
        let checks = checks(n);
        let before = r.round_trips();
        assert!(r.check(&checks, t0()).await.unwrap().allowed);
        assert_eq!(r.round_trips() - before, 1, "{n} limits");
    }
    let key = LimitKey::new(subject("rt-lease"), 0);
    let before = r.round_trips();
    r.acquire_lease(&key, 1, 1, TIMEOUT, t0()).await.unwrap();
    assert_eq!(r.round_trips() - before, 1);
}

#[tokio::test]
async fn a_peek_is_one_read_and_writes_nothing() {
    let Some(r) = limiter().await else { return };
    for n in [1, 3, 20] {
        let checks = checks(n);
        let before = r.round_trips();
        assert!(r.peek(&checks, t0()).await.unwrap().allowed);
        assert_eq!(r.round_trips() - before, 1, "{n} limits");
        // Nothing was created: the counters a check would write do not exist.
        let mut conn = raw().await;
        let rate = format!("kg:l:{}:0", checks[0].key.subject);
        let exists: bool = conn.exists(&rate).await.unwrap();
        assert!(!exists, "{rate}");
    }
}

#[tokio::test]
async fn every_key_carries_a_ttl() {
    let Some(r) = limiter().await else { return };
    let s = subject("ttl");
    let now = t0();
    let checks = [
        Check::new(LimitKey::new(s.clone(), 0), Limit::per_second(nz(10))),
        Check::new(
            LimitKey::new(s.clone(), 1),
            Limit::quota(Window::Hour, nz(10)),
        ),
    ];
    assert!(r.check(&checks, now).await.unwrap().allowed);
    let lease = LimitKey::new(s.clone(), 2);
    assert!(
        r.acquire_lease(&lease, 3, 1, Duration::from_secs(30), now)
            .await
            .unwrap()
            .allowed
    );
    let mut conn = raw().await;
    let hour_start = Window::Hour.bounds(now).0.as_millis();
    // Rate: until the bucket is full (100 ms) plus grace; quota: until the hour ends plus
    // grace; lease: until it expires plus grace.
    for (key, max_ms) in [
        (format!("kg:l:{s}:0"), 1_100),
        (format!("kg:l:{s}:1:{hour_start}"), 3_601_000),
        (format!("kg:lease:{s}:2"), 31_000),
    ] {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= max_ms, "{key}: PTTL {ttl}");
    }
}

#[tokio::test]
async fn rate_keys_disappear_by_themselves() {
    // The one test that waits on real time: a rate key outlives its bucket by the grace only.
    let Some(r) = limiter().await else { return };
    let s = subject("vanish");
    let check = [Check::new(
        LimitKey::new(s.clone(), 0),
        Limit::per_second(nz(10)).with_burst(1),
    )];
    assert!(r.check(&check, t0()).await.unwrap().allowed);
    let mut conn = raw().await;
    let key = format!("kg:l:{s}:0");
    assert!(conn.exists::<_, bool>(&key).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!conn.exists::<_, bool>(&key).await.unwrap());
}

#[tokio::test]
async fn a_bad_url_is_named_in_the_error() {
    for url in ["http://127.0.0.1:6379", "redis//127.0.0.1", ""] {
        match Limits::with_redis(url, options(TIMEOUT, false)).await {
            Err(LimiterError::BadUrl(msg)) => {
                assert!(msg.contains(url), "{msg}");
                let shown = LimiterError::BadUrl(msg).to_string();
                assert!(shown.starts_with("bad Redis URL"), "{shown}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_redis_fails_to_connect() {
    // A port nothing listens on (bound, then released).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = RedisLimiter::connect(&format!("redis://{addr}"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LimiterError::Unavailable(_) | LimiterError::Timeout(_)),
        "{err:?}"
    );
}

/// Calls bounded by `timeout`; connections by two seconds, generous for a busy test host.
fn options(timeout: Duration, fail_closed: bool) -> RedisOptions {
    RedisOptions {
        timeout,
        connect_timeout: Duration::from_secs(2),
        fail_closed,
    }
}

fn relay_url(relay: &Relay) -> String {
    format!("redis://{}", relay.addr())
}

/// The test Redis's address, or `None` when it is unreachable outside CI.
async fn redis_addr() -> Option<SocketAddr> {
    limiter().await?;
    let info = redis::Client::open(redis_url()).unwrap();
    let host = info.get_connection_info().addr().to_string();
    tokio::net::lookup_host(host).await.unwrap().next()
}

/// Every log line of this test binary, each with the name of the thread that wrote it (the
/// test harness names a test's thread after the test): one
/// process-wide subscriber, so no call site's interest is ever cached as "nobody listens"
/// (a thread-scoped subscriber raced other tests' threads for that cache, and the line under
/// test was sometimes dropped on a busy machine).
static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

/// The lines this thread logs from now on (use a current-thread runtime, so the code under
/// test logs on the test's thread); read them with [`logged_here`].
fn capture_logs() -> usize {
    let buf = LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_thread_names(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
        buf
    });
    let len = buf.lock().unwrap().len();
    len
}

/// This thread's lines since `from` (what [`capture_logs`] returned).
fn logged_here(from: usize) -> String {
    let all = LOGS.get().expect("capture_logs first").lock().unwrap();
    let text = String::from_utf8_lossy(&all[from..]).into_owned();
    let me = std::thread::current()
        .name()
        .expect("the test harness names each test's thread")
        .to_owned();
    text.lines()
        .filter(|l| l.contains(&format!(" {me} ")))
        .map(|l| format!("{l}\n"))
        .collect()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn limits_fall_back_to_local_while_redis_is_cut_and_return_after() {
    let Some(upstream) = redis_addr().await else {
        return;
    };
    let logs = capture_logs();
    let relay = Relay::start(upstream).await;
    let limits = Limits::with_redis(
        &relay_url(&relay),
        options(Duration::from_millis(300), false),
    )
    .await
    .unwrap();
    let s = subject("fallback");
    let c = [Check::new(
        LimitKey::new(s, 0),
        Limit::quota(Window::Day, nz(1000)),
    )];
    let mut now = t0();
    let rt = |l: &Limits| l.redis().unwrap().round_trips();

    let before = rt(&limits);
    assert!(limits.check(&c, now).await.unwrap().allowed);
    assert_eq!(rt(&limits), before + 1);
    assert_eq!(limits.stats().fallbacks, 0);
    assert_eq!(limits.stats().backend, "redis");

    relay.cut();
    for i in 1..=5 {
        now = now.plus(Duration::from_millis(10));
        let v = limits.check(&c, now).await.unwrap();
        assert!(v.allowed, "answered locally");
        let stats = limits.stats();
        assert!(stats.degraded);
        assert_eq!(stats.fallbacks, i);
    }
    // Within the probe interval Redis is not even asked.
    let asked = rt(&limits);
    assert!(limits.check(&c, now).await.unwrap().allowed);
    assert_eq!(rt(&limits), asked);

    relay.restore().await;
    let mut back = false;
    for _ in 0..20 {
        now = now.plus(keygate_limits::PROBE_INTERVAL);
        let v = limits.check(&c, now).await.unwrap();
        assert!(v.allowed);
        if !limits.stats().degraded {
            back = true;
            break;
        }
    }
    assert!(back, "never returned to Redis: {:?}", limits.stats());
    // Back on Redis: its counter has only the requests made while it was reachable.
    let v = limits.check(&c, now).await.unwrap();
    assert!(!limits.stats().degraded);
    let remaining = v.binding.unwrap().1.remaining;
    assert!(remaining >= 1000 - 3, "remaining {remaining}");

    // One incident: one warning when it started, one info line when it ended.
    let logs = logged_here(logs);
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("keygate_limits"))
        .collect();
    let warns = lines.iter().filter(|l| l.contains("WARN")).count();
    let again = lines
        .iter()
        .filter(|l| l.contains("Redis reachable again."))
        .count();
    assert_eq!((warns, again), (1, 1), "{logs}");
    relay.cut();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_redis_is_cut() {
    let Some(upstream) = redis_addr().await else {
        return;
    };
    let relay = Relay::start(upstream).await;
    let limits = Limits::with_redis(
        &relay_url(&relay),
        options(Duration::from_millis(300), true),
    )
    .await
    .unwrap();
    let c = [Check::new(
        LimitKey::new(subject("closed"), 0),
        Limit::per_second(nz(10)),
    )];
    assert!(limits.check(&c, t0()).await.unwrap().allowed);
    relay.cut();
    assert_eq!(limits.check(&c, t0()).await, Err(Unavailable));
    assert_eq!(limits.check(&c, t0()).await, Err(Unavailable));
    let stats = limits.stats();
    assert!(stats.degraded);
    assert_eq!(stats.fallbacks, 2);
    let key = LimitKey::new(subject("closed-ws"), 0);
    assert_eq!(
        limits
            .acquire_lease(&key, 1, 1, Duration::from_secs(1), t0())
            .await,
        Err(Unavailable)
    );
}

/// Redis is down when the limits are made: they start anyway, degraded (answering locally, or
/// refusing when fail-closed), and connect by themselves once Redis answers, before any call
/// asks it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_start_while_redis_is_down_and_connect_when_it_answers() {
    let Some(upstream) = redis_addr().await else {
        return;
    };
    for fail_closed in [false, true] {
        let relay = Relay::start(upstream).await;
        relay.cut();
        let limits = Limits::with_redis(&relay_url(&relay), options(TIMEOUT, fail_closed))
            .await
            .expect("an unreachable Redis does not stop the limits from starting");
        let stats = limits.stats();
        assert!(stats.degraded, "{stats:?}");
        assert!(limits.redis().is_none(), "not connected yet");
        let c = [Check::new(
            LimitKey::new(subject("late"), 0),
            Limit::quota(Window::Day, nz(1000)),
        )];
        let answer = limits.check(&c, t0()).await;
        if fail_closed {
            assert_eq!(answer, Err(Unavailable));
        } else {
            assert!(answer.unwrap().allowed, "answered locally");
        }
        assert_eq!(limits.stats().fallbacks, 1);

        relay.restore().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while limits.stats().degraded {
            assert!(
                std::time::Instant::now() < deadline,
                "never connected: {:?}",
                limits.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = limits.redis().expect("connected").round_trips();
        let v = limits.check(&c, t0()).await.expect("Redis answers");
        assert!(v.allowed);
        assert_eq!(
            limits.redis().unwrap().round_trips(),
            before + 1,
            "asked Redis"
        );
        assert_eq!(v.binding.unwrap().1.remaining, 999, "Redis's own counter");
        relay.cut();
    }
}
