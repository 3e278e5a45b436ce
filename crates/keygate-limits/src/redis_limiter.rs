//! The Redis limiter: counters shared by every gateway node, one round trip per request.
//!
//! All the limits of a request go to Redis in one `EVALSHA` of `check.lua`, which reads every
//! counter, decides with the same comparisons as keygate-core, and writes only if all allow.
//! The script returns the counters it read and this side builds each answer with the core's
//! functions, so the local and Redis backends cannot drift apart. Every key carries a TTL, so
//! nothing needs cleaning up: a rate key lives until its bucket is full again and a quota key
//! (named after its window's start) until its window ends, each plus [`GRACE`] for clock skew
//! between nodes. Time is the caller's `now`; TTLs are relative to it. A peek (the state an
//! answer reports without counting as a request) is one `MGET` of the same keys.
//!
//! The connection goes to one address, or to the primary a set of sentinels names
//! (`redis+sentinel://`, [`crate::sentinel`]): any failed call then makes it check whether the
//! primary moved.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keygate_core::limit::{gcra, lease, window, LimitKind, LimitState};
use keygate_core::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind};
use smallvec::SmallVec;

use crate::error::redact;
use crate::sentinel::{Followed, SentinelUrl};
use crate::{Check, LimitKey, LimiterError, Verdict};

/// Added to every key's TTL, so a node whose clock lags a little still finds the state.
pub const GRACE: Duration = Duration::from_secs(1);

const CHECK_LUA: &str = include_str!("check.lua");
const LEASE_LUA: &str = include_str!("lease.lua");

/// The limiter on Redis.
pub struct RedisLimiter {
    link: Link,
    timeout: Duration,
    /// Bounds the calls made off the request path (key-sharing's count at the usage flush):
    /// the longer of the two timeouts. The request's budget (milliseconds) failed them on a
    /// busy host, and a failed count left that interval's networks out of the shared count.
    background_timeout: Duration,
    check_sha: String,
    lease_sha: String,
    round_trips: AtomicU64,
}

/// Where the calls go.
enum Link {
    /// One address (`redis://`, `rediss://`); the manager reconnects to it by itself.
    Direct(ConnectionManager),
    /// The primary the sentinels name (`redis+sentinel://`), followed through failovers.
    Sentinel(Arc<Followed>),
}

impl Link {
    fn conn(&self) -> ConnectionManager {
        match self {
            Link::Direct(conn) => conn.clone(),
            Link::Sentinel(followed) => followed.conn(),
        }
    }

    /// A call failed or timed out: behind sentinels, the primary may have moved.
    fn failed(&self) {
        if let Link::Sentinel(followed) = self {
            followed.call_failed();
        }
    }
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("timeout", &self.timeout)
            .field("background_timeout", &self.background_timeout)
            .field("round_trips", &self.round_trips())
            .finish_non_exhaustive()
    }
}

/// The Redis key of one check's counter at `now`.
fn counter_key(check: &Check, now: Timestamp) -> String {
    let LimitKey { subject, slot } = &check.key;
    match check.limit.kind {
        LimitKind::Rate { .. } => format!("kg:l:{subject}:{slot}"),
        LimitKind::Quota { window } => {
            let (start, _) = window.bounds(now);
            match check.epoch {
                0 => format!("kg:l:{subject}:{slot}:{}", start.as_millis()),
                epoch => format!("kg:l:{subject}:{slot}:{}:{epoch}", start.as_millis()),
            }
        }
    }
}

/// How long a key's hourly network count outlives its hour's start: the hour, and an hour
/// for nodes whose clocks or flushes lag.
const SHARING_TTL_SECS: u64 = 7200;

/// The Redis key of a key's network count in the hour starting at `hour`.
fn sharing_key(key_id: &str, hour: Timestamp) -> String {
    format!("kg:sharing:{key_id}:{}", hour.as_millis())
}

fn lease_key(key: &LimitKey) -> String {
    format!("kg:lease:{}:{}", key.subject, key.slot)
}

/// What a limiter URL names: one Redis, or the primary of a set of sentinels.
pub(crate) enum Target {
    Direct(redis::Client),
    Sentinel(SentinelUrl),
}

impl Target {
    /// Reads `url`: `redis://[[user]:password@]host[:port][/db]` (`rediss://` for TLS), or
    /// `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]`
    /// (`rediss+sentinel://` for TLS). A TLS server's certificate must chain to `roots` (PEM
    /// CA certificates) or, without them, to the system's roots. Nothing is connected yet.
    ///
    /// # Errors
    /// [`LimiterError::BadUrl`], quoting the URL with its password masked.
    pub(crate) fn parse(url: &str, roots: Option<&[u8]>) -> Result<Target, LimiterError> {
        let bad = |why: &dyn fmt::Display| {
            LimiterError::BadUrl(format!("`{}` does not parse: {why}", redact(url)))
        };
        if let Some(parsed) = SentinelUrl::parse(url) {
            return parsed.map(Target::Sentinel).map_err(|why| bad(&why));
        }
        let built = match roots {
            None => redis::Client::open(url),
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        };
        built.map(Target::Direct).map_err(|e| bad(&e))
    }

    /// Whether the connections speak TLS.
    pub(crate) fn tls(&self) -> bool {
        match self {
            Target::Direct(client) => matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
            Target::Sentinel(url) => url.tls(),
        }
    }
}

fn unavailable(e: &RedisError) -> LimiterError {
    LimiterError::Unavailable(e.to_string())
}

#[derive(Clone, Copy)]
enum LeaseOp {
    Acquire { max: u64, expires: Timestamp },
    Renew { expires: Timestamp },
    Release,
    Count,
}

impl RedisLimiter {
    /// Connects to Redis at `url` (`redis://[:password@]host[:port][/db]`, or the primary a
    /// `redis+sentinel://` URL names, followed through failovers: see the `sentinel` module)
    /// and loads the scripts, every call (this one included) bounded by `timeout`; see
    /// [`RedisLimiter::connect_with`].
    ///
    /// # Errors
    /// As [`RedisLimiter::connect_with`].
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisLimiter, LimiterError> {
        RedisLimiter::connect_with(url, timeout, timeout).await
    }

    /// Connects to `url` and loads the scripts within `connect_timeout`; afterwards each
    /// call is bounded by `timeout`. The connection reconnects by itself after a failure (each
    /// attempt bounded by `connect_timeout`). The two differ because a request's budget
    /// (milliseconds) is no measure of how long opening a connection may take on a busy host.
    ///
    /// # Errors
    /// [`LimiterError::BadUrl`] when `url` does not parse, [`LimiterError::Unavailable`] when
    /// Redis cannot be reached or refuses the scripts, [`LimiterError::Timeout`] when it does
    /// not answer within `connect_timeout`.
    pub async fn connect_with(
        url: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<RedisLimiter, LimiterError> {
        RedisLimiter::connect_tls(url, None, timeout, connect_timeout).await
    }

    /// [`RedisLimiter::connect_with`] for a `rediss://` URL whose server certificate must
    /// chain to `roots` (PEM CA certificates; `None`: the system's roots).
    ///
    /// # Errors
    /// As [`RedisLimiter::connect_with`]; a certificate that does not verify is
    /// [`LimiterError::Unavailable`] with the TLS reason.
    pub async fn connect_tls(
        url: &str,
        roots: Option<&[u8]>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<RedisLimiter, LimiterError> {
        // The longest any call may take: the connection's answer bound and the background calls'.
        let background_timeout = connect_timeout.max(timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // Each call has its own (shorter) bound in `send` and `eval`; this one only keeps
            // a lost answer from being waited for forever.
            .set_response_timeout(Some(background_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let target = Target::parse(url, roots)?;
        let setup = async {
            let link = match target {
                Target::Direct(client) => ConnectionManager::new_with_config(client, config)
                    .await
                    .map(Link::Direct),
                Target::Sentinel(sentinels) => {
                    Followed::connect(&sentinels, roots, config, connect_timeout)
                        .await
                        .map(Link::Sentinel)
                }
            }
            .map_err(|e| unavailable(&e))?;
            let limiter = RedisLimiter {
                link,
                timeout,
                background_timeout,
                check_sha: Script::new(CHECK_LUA).get_hash().to_owned(),
                lease_sha: Script::new(LEASE_LUA).get_hash().to_owned(),
                round_trips: AtomicU64::new(0),
            };
            for source in [CHECK_LUA, LEASE_LUA] {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(source);
                let mut conn = limiter.link.conn();
                load.query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            Ok(limiter)
        };
        tokio::time::timeout(connect_timeout, setup)
            .await
            .map_err(|_| LimiterError::Timeout(connect_timeout))?
    }

    /// Whether Redis answers a `PING` within `within`. Not counted in
    /// [`RedisLimiter::round_trips`]: it is the background health check, not a request's call.
    pub async fn ping(&self, within: Duration) -> bool {
        let mut conn = self.link.conn();
        let ping = async { redis::cmd("PING").query_async::<String>(&mut conn).await };
        self.bounded(within, ping).await.is_ok()
    }

    /// Network calls made so far (one per `check` once the scripts are loaded).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The bound on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks one request against all its limits at `now`, in one round trip: if every limit
    /// allows, each counter is consumed once; if any denies, none is.
    ///
    /// # Errors
    /// [`LimiterError::Unavailable`] when Redis or the script fails, [`LimiterError::Timeout`]
    /// when it does not answer within the limiter's timeout.
    pub async fn check(&self, checks: &[Check], now: Timestamp) -> Result<Verdict, LimiterError> {
        if checks.is_empty() {
            return Ok(Verdict::UNLIMITED);
        }
        let now_us = gcra::now_micros(now);
        let grace_ms = GRACE.as_millis() as i64;
        let build = |cmd: &mut Cmd| {
            cmd.arg(checks.len());
            for check in checks {
                cmd.arg(counter_key(check, now));
            }
            cmd.arg(now_us).arg(grace_ms);
            for check in checks {
                match check.limit.kind {
                    LimitKind::Rate { period, burst } => {
                        let p = gcra::Params::new(check.limit.max.get(), period, burst);
                        cmd.arg("r").arg(p.interval_us).arg(p.tolerance_us).arg(0);
                    }
                    LimitKind::Quota { window } => {
                        let (_, end) = window.bounds(now);
                        let ttl = end.as_millis().saturating_sub(now.as_millis()) + grace_ms;
                        cmd.arg("q")
                            .arg(check.limit.max.get())
                            .arg(ttl)
                            .arg(check.units());
                    }
                }
            }
        };
        let reply: Vec<i64> = self.eval(&self.check_sha, CHECK_LUA, build).await?;
        if reply.len() != checks.len() + 1 {
            return Err(LimiterError::Unavailable(format!(
                "the check script answered {} values for {} checks",
                reply.len(),
                checks.len()
            )));
        }
        let states: SmallVec<[LimitState; 4]> = checks
            .iter()
            .zip(&reply[1..])
            .map(|(check, &seen)| match check.limit.kind {
                LimitKind::Rate { period, burst } => {
                    let p = gcra::Params::new(check.limit.max.get(), period, burst);
                    gcra::check_with(&p, Some(seen), now).0
                }
                LimitKind::Quota { window } => {
                    let count = u64::try_from(seen).unwrap_or(0);
                    window::check_n(window, check.limit.max.get(), count, check.units(), now)
                }
            })
            .collect();
        let verdict = Verdict::from_checks(checks, states);
        if verdict.allowed != (reply[0] == 1) {
            return Err(LimiterError::Unavailable(
                "the check script and keygate-core disagree".to_owned(),
            ));
        }
        Ok(verdict)
    }

    /// What [`RedisLimiter::check`] would report for `checks` at `now`, consuming nothing: one
    /// `MGET` of the counters (a read, so no script and nothing written), each answered with
    /// keygate-core's math as [`LocalLimiter::peek`](crate::LocalLimiter::peek) does.
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn peek(&self, checks: &[Check], now: Timestamp) -> Result<Verdict, LimiterError> {
        if checks.is_empty() {
            return Ok(Verdict::UNLIMITED);
        }
        let mut cmd = redis::cmd("MGET");
        for check in checks {
            cmd.arg(counter_key(check, now));
        }
        let reply: Vec<Option<i64>> = self.send(&cmd).await?;
        if reply.len() != checks.len() {
            return Err(LimiterError::Unavailable(format!(
                "MGET answered {} values for {} keys",
                reply.len(),
                checks.len()
            )));
        }
        let states: SmallVec<[LimitState; 4]> = checks
            .iter()
            .zip(reply)
            .map(|(check, seen)| match check.limit.kind {
                LimitKind::Rate { period, burst } => {
                    let p = gcra::Params::new(check.limit.max.get(), period, burst);
                    gcra::peek_with(&p, seen, now)
                }
                LimitKind::Quota { window } => {
                    let count = seen.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                    window::peek(window, check.limit.max.get(), count, now)
                }
            })
            .collect();
        Ok(Verdict::from_states(states))
    }

    /// Takes lease `lease_id` on `key` (at most `max` live at once) until `now + ttl`; taking a
    /// lease already held renews it. One round trip.
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn acquire_lease(
        &self,
        key: &LimitKey,
        max: u64,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<LimitState, LimiterError> {
        let expires = now.plus(ttl);
        let (allowed, others) = self
            .lease(key, LeaseOp::Acquire { max, expires }, lease_id, now)
            .await?;
        let others = usize::try_from(others).unwrap_or(usize::MAX);
        let state = lease::acquire(max, others, now, ttl);
        if state.allowed != (allowed == 1) {
            return Err(LimiterError::Unavailable(
                "the lease script and keygate-core disagree".to_owned(),
            ));
        }
        Ok(state)
    }

    /// Extends a live lease to `now + ttl`; `false` if it is not held.
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn renew_lease(
        &self,
        key: &LimitKey,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, LimiterError> {
        let expires = now.plus(ttl);
        let (held, _) = self
            .lease(key, LeaseOp::Renew { expires }, lease_id, now)
            .await?;
        Ok(held == 1)
    }

    /// Gives lease `lease_id` back (a no-op if it is not held).
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn release_lease(&self, key: &LimitKey, lease_id: u64) -> Result<(), LimiterError> {
        // Expired leases are pruned against the epoch: nothing is older than that.
        self.lease(key, LeaseOp::Release, lease_id, Timestamp::from_millis(0))
            .await?;
        Ok(())
    }

    /// Live leases on `key` at `now`.
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn lease_count(&self, key: &LimitKey, now: Timestamp) -> Result<usize, LimiterError> {
        let (live, _) = self.lease(key, LeaseOp::Count, 0, now).await?;
        Ok(usize::try_from(live).unwrap_or(0))
    }

    async fn lease(
        &self,
        key: &LimitKey,
        op: LeaseOp,
        lease_id: u64,
        now: Timestamp,
    ) -> Result<(i64, i64), LimiterError> {
        let (name, max, expires) = match op {
            LeaseOp::Acquire { max, expires } => ("acquire", max, expires.as_millis()),
            LeaseOp::Renew { expires } => ("renew", 0, expires.as_millis()),
            LeaseOp::Release => ("release", 0, 0),
            LeaseOp::Count => ("count", 0, 0),
        };
        let redis_key = lease_key(key);
        let build = |cmd: &mut Cmd| {
            cmd.arg(1)
                .arg(&redis_key)
                .arg(name)
                .arg(now.as_millis())
                .arg(lease_id)
                .arg(expires)
                .arg(max)
                .arg(GRACE.as_millis() as u64);
        };
        let reply: Vec<i64> = self.eval(&self.lease_sha, LEASE_LUA, build).await?;
        match reply[..] {
            [result, live] => Ok((result, live)),
            _ => Err(LimiterError::Unavailable(
                "the lease script answered an unexpected reply".to_owned(),
            )),
        }
    }

    /// `EVALSHA sha …`, falling back to `EVAL source …` if Redis lost the script (a restart or
    /// `SCRIPT FLUSH`); one round trip unless that happens. Bounded by the timeout as a whole.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        sha: &str,
        source: &str,
        build: impl Fn(&mut Cmd),
    ) -> Result<T, LimiterError> {
        let call = async {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            build(&mut cmd);
            match self.send_raw(&cmd).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(source);
                    build(&mut cmd);
                    self.send_raw(&cmd).await
                }
                other => other,
            }
        };
        self.bounded(self.timeout, call).await
    }

    async fn send<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, LimiterError> {
        self.bounded(self.timeout, self.send_raw(cmd)).await
    }

    /// Runs `call` within `within`; a failure also tells the link, which behind sentinels
    /// checks whether the primary moved.
    async fn bounded<T>(
        &self,
        within: Duration,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LimiterError> {
        let result = match tokio::time::timeout(within, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => unavailable(&e),
            Err(_) => LimiterError::Timeout(within),
        };
        self.link.failed();
        Err(result)
    }

    /// Key-sharing detection's count: for each `(key id, networks)` of `batch`, adds the
    /// networks to the key's HyperLogLog of the hour starting at `hour`
    /// (`kg:sharing:{key id}:{hour in ms}`, kept 2 hours) and reads its estimate, every key in
    /// one pipelined round trip. Answers the estimates in `batch`'s order. It runs at the usage
    /// flush, off the request path, so it is bounded by the longer of the connection's and the
    /// calls' timeouts.
    ///
    /// # Errors
    /// As [`RedisLimiter::check`].
    pub async fn count_networks(
        &self,
        hour: Timestamp,
        batch: &[(&str, &[u64])],
    ) -> Result<Vec<u64>, LimiterError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key_id, networks) in batch {
            let key = sharing_key(key_id, hour);
            pipe.cmd("PFADD").arg(&key).arg(*networks).ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(SHARING_TTL_SECS).ignore();
            pipe.cmd("PFCOUNT").arg(&key);
        }
        let call = async {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = self.link.conn();
            pipe.query_async::<Vec<u64>>(&mut conn).await
        };
        // Off the request path: bounded by the background budget, not the request's.
        self.bounded(self.background_timeout, call).await
    }

    async fn send_raw<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.link.conn();
        cmd.query_async(&mut conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::limit::{Limit, Window};
    use std::num::NonZeroU64;

    #[test]
    fn key_names() {
        let now = Timestamp::parse_rfc3339("2026-09-21T13:45:00Z").unwrap();
        let max = NonZeroU64::new(5).unwrap();
        let key = LimitKey::new("k:key_abc", 3);
        let rate = Check::new(key.clone(), Limit::per_second(max));
        assert_eq!(counter_key(&rate, now), "kg:l:k:key_abc:3");
        let day = Check::new(key.clone(), Limit::quota(Window::Day, max));
        let midnight = Timestamp::parse_rfc3339("2026-09-21T00:00:00Z").unwrap();
        assert_eq!(
            counter_key(&day, now),
            format!("kg:l:k:key_abc:3:{}", midnight.as_millis())
        );
        let reset = Check {
            epoch: 2,
            ..day.clone()
        };
        assert_eq!(
            counter_key(&reset, now),
            format!("kg:l:k:key_abc:3:{}:2", midnight.as_millis())
        );
        assert_eq!(lease_key(&key), "kg:lease:k:key_abc:3");
    }

    #[tokio::test]
    async fn bad_urls_are_named() {
        for url in ["http://127.0.0.1:6379", "not a url", "redis://:s3cret@[::1"] {
            match RedisLimiter::connect(url, Duration::from_millis(200)).await {
                Err(LimiterError::BadUrl(msg)) => {
                    assert!(!msg.contains("s3cret"), "{msg}");
                    assert!(msg.contains(&redact(url)), "{msg}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
