//! Redis through Sentinel (`redis+sentinel://`): a primary, its replica and a sentinel of the
//! test's own ([`SentinelSet`]). Two limiters (two nodes) share their counters on the primary
//! the sentinel names; when that primary dies, or is demoted by `SENTINEL FAILOVER`, they
//! answer locally meanwhile, then count on the promoted replica and share it again. Over TLS
//! (`rediss+sentinel://`) too, where a sentinel another CA vouches for is refused.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use keygate_core::limit::{Limit, Window};
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey, LimiterError, Limits, RedisOptions, PROBE_INTERVAL};
use keygate_test::tls::TestCa;
use keygate_test::{RedisServer, SentinelSet};

/// Bounds on a busy two-core machine: a failover takes the sentinel a few seconds.
const FAILOVER_WITHIN: Duration = Duration::from_secs(90);

fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(5),
        fail_closed: false,
    }
}

fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-09-21T10:00:00Z").unwrap()
}

/// A subject of its own (tests share nothing) and a daily quota of `max` on it.
fn quota(name: &str, max: u64) -> (String, [Check; 1]) {
    let s = format!("t:{name}:{:016x}", getrandom::u64().unwrap());
    let check = Check::new(
        LimitKey::new(s.clone(), 0),
        Limit::quota(Window::Day, NonZeroU64::new(max).unwrap()),
    );
    (s.to_string(), [check])
}

/// The counter keys of `subject` on `server`.
async fn keys(server: &RedisServer, subject: &str) -> Vec<String> {
    server
        .query(redis::cmd("KEYS").arg(format!("kg:l:{subject}:*")))
        .await
        .unwrap_or_default()
}

/// Three requests allowed across the two nodes, the fourth refused: the count is shared
/// (each node alone would still allow it).
async fn assert_shared(a: &Limits, b: &Limits, checks: &[Check], now: Timestamp) {
    for (i, node) in [a, b, a].into_iter().enumerate() {
        assert!(
            node.check(checks, now).await.unwrap().allowed,
            "request {i}"
        );
    }
    assert!(
        !b.check(checks, now).await.unwrap().allowed,
        "the other node saw the three requests: {:?} {:?}",
        a.stats(),
        b.stats()
    );
}

enum Failover {
    /// The primary is killed; the sentinel sees it down and promotes the replica.
    Crash,
    /// `SENTINEL FAILOVER`: the primary is demoted to a replica (writes get `READONLY`).
    Demotion,
}

/// Two limiters follow the failover `how`; with `tls`, every connection (to the sentinel and
/// the data nodes) is TLS verified against that CA.
async fn follows(how: Failover, tls: Option<&TestCa>) {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut set) = SentinelSet::start(dir.path(), tls).await else {
        return;
    };
    let url = set.url();
    let roots = tls.map(|ca| ca.pem.as_bytes().to_vec());
    let a = Limits::with_redis_tls(&url, roots.clone(), options())
        .await
        .unwrap();
    let b = Limits::with_redis_tls(&url, roots, options())
        .await
        .unwrap();
    assert!(!a.stats().degraded && !b.stats().degraded, "connected");
    let mut now = t0();

    let (before, checks) = quota("sentinel-before", 3);
    assert_shared(&a, &b, &checks, now).await;
    assert!(!keys(&set.primary, &before).await.is_empty());

    match how {
        Failover::Crash => set.primary.kill(),
        Failover::Demotion => {
            let done: Option<String> = set
                .sentinel
                .query(
                    redis::cmd("SENTINEL")
                        .arg("FAILOVER")
                        .arg(SentinelSet::MASTER),
                )
                .await;
            assert_eq!(done.as_deref(), Some("OK"));
        }
    }

    // Requests go on throughout: answered locally while no primary answers, then on the new
    // one. Done when the replica is primary and each node's latest request was counted there
    // (written after the promotion, so not by replication) and neither node is degraded.
    let deadline = Instant::now() + FAILOVER_WITHIN;
    loop {
        now = now.plus(PROBE_INTERVAL);
        let promoted = set
            .replica
            .info("replication")
            .await
            .is_some_and(|i| i.contains("role:master"));
        let mut counted_there = promoted;
        for node in [&a, &b] {
            let (subject, checks) = quota("sentinel-during", 1_000_000);
            assert!(node.check(&checks, now).await.unwrap().allowed);
            counted_there = counted_there && !keys(&set.replica, &subject).await.is_empty();
        }
        if counted_there && !a.stats().degraded && !b.stats().degraded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not on the promoted replica within {FAILOVER_WITHIN:?} (promoted {promoted}, {:?}, {:?}); sentinel log:\n{}",
            a.stats(),
            b.stats(),
            std::fs::read_to_string(&set.sentinel.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (after, checks) = quota("sentinel-after", 3);
    assert_shared(&a, &b, &checks, now).await;
    assert!(
        !keys(&set.replica, &after).await.is_empty(),
        "counted on the promoted replica"
    );
    if matches!(how, Failover::Demotion) {
        // The old primary, now a replica, has the counter only by replication.
        let role = set.primary.info("replication").await.unwrap_or_default();
        assert!(role.contains("role:slave"), "{role}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_follows_the_primary_when_it_dies() {
    follows(Failover::Crash, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_follows_the_primary_when_it_is_demoted() {
    follows(Failover::Demotion, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_limiter_follows_the_primary_and_refuses_another_ca() {
    let ca = TestCa::new("redis sentinel test CA");
    follows(Failover::Crash, Some(&ca)).await;

    let dir = tempfile::tempdir().unwrap();
    let Some(set) = SentinelSet::start(dir.path(), Some(&ca)).await else {
        return;
    };
    let stranger = TestCa::new("not the sentinels' CA");
    let refused = keygate_limits::RedisLimiter::connect_tls(
        &set.url(),
        Some(stranger.pem.as_bytes()),
        options().timeout,
        options().connect_timeout,
    )
    .await;
    let Err(e) = refused else {
        panic!("a sentinel whose certificate another CA signed is trusted");
    };
    assert!(matches!(e, LimiterError::Unavailable(_)), "{e:?}");
    // Plain text to the TLS sentinel does not get through either.
    let plain = set.url().replace("rediss+", "redis+");
    assert!(keygate_limits::RedisLimiter::connect_tls(
        &plain,
        None,
        options().timeout,
        options().connect_timeout
    )
    .await
    .is_err());
}

#[tokio::test]
async fn sentinel_urls_are_checked_and_unreachable_sentinels_are_an_outage() {
    let url = "redis+sentinel://:s3cret@127.0.0.1:1/";
    match keygate_limits::url_uses_tls(url) {
        Err(LimiterError::BadUrl(msg)) => {
            assert!(
                msg.contains("no master name") && !msg.contains("s3cret"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        keygate_limits::url_uses_tls("rediss+sentinel://h1,h2:26380/m"),
        Ok(true)
    );
    assert_eq!(
        keygate_limits::url_uses_tls("redis+sentinel://h/m/1"),
        Ok(false)
    );
    // No sentinel answers: the node starts on local limits, as with any unreachable Redis.
    let port = keygate_test::free_port();
    let limits = Limits::with_redis(
        &format!("redis+sentinel://127.0.0.1:{port}/m"),
        RedisOptions {
            connect_timeout: Duration::from_millis(500),
            ..options()
        },
    )
    .await
    .unwrap();
    assert!(limits.stats().degraded);
    let (_, checks) = quota("sentinel-none", 1);
    assert!(limits.check(&checks, t0()).await.unwrap().allowed);
}
