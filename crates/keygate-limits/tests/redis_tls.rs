//! Redis over TLS (`rediss://`): a `redis-server` of the test's own, with a certificate from a
//! CA generated here; the limiter counts through it, and a server whose certificate another CA
//! signed is refused.

use std::num::NonZeroU64;
use std::time::Duration;

use keygate_core::limit::Limit;
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey, LimiterError, RedisLimiter};
use keygate_test::tls::TestCa;
use keygate_test::RedisServer;

const TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_limiter_counts_over_tls_and_refuses_a_certificate_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis test CA");
    // TLS only, with a certificate `ca` issued for 127.0.0.1.
    let Some(redis) = RedisServer::on_free_port(dir.path(), "redis", Some(&ca), &[]).await else {
        return;
    };
    let url = redis.url();
    let limiter = RedisLimiter::connect_tls(&url, Some(ca.pem.as_bytes()), TIMEOUT, TIMEOUT)
        .await
        .unwrap();
    let now = Timestamp::parse_rfc3339("2026-09-21T10:00:00Z").unwrap();
    let one = [Check::new(
        LimitKey::new(format!("t:tls:{:016x}", getrandom::u64().unwrap()), 0),
        Limit::per_second(NonZeroU64::new(1).unwrap()),
    )];
    assert!(limiter.check(&one, now).await.unwrap().allowed);
    assert!(
        !limiter.check(&one, now).await.unwrap().allowed,
        "counted in Redis"
    );

    let stranger = TestCa::new("not the server's CA");
    let refused =
        RedisLimiter::connect_tls(&url, Some(stranger.pem.as_bytes()), TIMEOUT, TIMEOUT).await;
    let Err(err) = refused else {
        panic!("an unknown issuer is accepted");
    };
    assert!(
        matches!(&err, LimiterError::Unavailable(m) if m.contains("certificate") || m.contains("UnknownIssuer")),
        "{err:?}"
    );
    // Plain redis:// to the TLS port does not get through either.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    assert!(
        RedisLimiter::connect_tls(&plain, None, TIMEOUT, Duration::from_millis(500))
            .await
            .is_err()
    );
}
