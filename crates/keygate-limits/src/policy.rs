//! [`Limits`]: the limiter the gateway holds, with the policy for when Redis fails.
//!
//! With Redis configured, a Redis error or timeout makes a call fall back to this node's own
//! [`LocalLimiter`] (fail-open to local limits) or, when configured fail-closed, answer
//! [`Unavailable`]. Either way it is counted and said once: one warning when an incident starts
//! and one info line when Redis answers again. While degraded, Redis is probed by at most one
//! call per [`PROBE_INTERVAL`] (of the callers' `now`), so an outage does not add a timeout to
//! every request.
//!
//! A node also starts while Redis is down: it begins degraded (answering as above) and a
//! background task connects as soon as Redis answers, then keeps checking it while degraded,
//! so the shared limiter is used again, and `/status` says so, even before the next request.
//! Refusing to start would turn a Redis outage into an outage of every node restarted during
//! it, which is the failure the fallback policy exists to avoid.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use keygate_core::limit::LimitState;
use keygate_core::Timestamp;

use crate::{Check, LimitKey, LimiterError, LocalLimiter, RedisLimiter, Verdict};

/// While Redis is failing, how often one call tries it again, and how often the background
/// task connects or checks it.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Limits could not be applied (Redis failed and the policy is fail-closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limits are unavailable")]
pub struct Unavailable;

/// How the limiter is doing, for `/status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitStats {
    /// The configured backend: `"local"` or `"redis"`.
    pub backend: &'static str,
    /// Calls Redis did not answer, each answered locally (or refused when fail-closed).
    pub fallbacks: u64,
    /// Whether Redis is failing right now (or has not been reached since the start).
    pub degraded: bool,
}

/// How to use Redis: the bounds on its calls and what to do when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Budget for one request's call; past it the call falls back (or is refused).
    pub timeout: Duration,
    /// Budget for opening a connection and loading the scripts: at start, in the background
    /// while Redis is unreachable, and for each reconnect.
    pub connect_timeout: Duration,
    /// Refuse ([`Unavailable`]) instead of answering locally while Redis fails.
    pub fail_closed: bool,
}

/// The gateway's limiter: a backend and its failure policy.
#[derive(Debug)]
pub struct Limits {
    local: LocalLimiter,
    redis: Option<Arc<Remote>>,
}

#[derive(Debug)]
struct Remote {
    /// Set once the first connection is made (at start, or later by the background task);
    /// the connection reconnects by itself after that.
    limiter: OnceLock<RedisLimiter>,
    fail_closed: bool,
    fallbacks: AtomicU64,
    degraded: AtomicBool,
    /// While degraded: the `now` (ms) from which the next call may probe Redis.
    next_probe: AtomicI64,
    /// Times Redis came back. A call that was out when it did fails with the old connection;
    /// that says nothing about Redis now, so it is not a new incident.
    recoveries: AtomicU64,
}

impl Remote {
    /// Whether this call should ask Redis: always when healthy; while degraded, one call per
    /// probe interval.
    fn should_try(&self, now: Timestamp) -> bool {
        if !self.degraded.load(Ordering::Acquire) {
            return true;
        }
        let due = self.next_probe.load(Ordering::Acquire);
        now.as_millis() >= due
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now.plus(PROBE_INTERVAL).as_millis(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            self.recoveries.fetch_add(1, Ordering::AcqRel);
            tracing::info!("Redis reachable again.");
        }
    }

    /// Records a call Redis did not answer; `error` is `None` when Redis was not asked (or
    /// the failure is older than Redis's return).
    fn failed(&self, error: Option<&LimiterError>, now: Timestamp) -> Result<(), Unavailable> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        if let Some(error) = error {
            self.next_probe
                .store(now.plus(PROBE_INTERVAL).as_millis(), Ordering::Release);
            if !self.degraded.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    error = %error,
                    fail_closed = self.fail_closed,
                    "Redis failed; rate limits are {} until it answers again.",
                    while_degraded(self.fail_closed)
                );
            }
        }
        if self.fail_closed {
            Err(Unavailable)
        } else {
            Ok(())
        }
    }

    /// Runs `call` on Redis when it should be tried; `Ok(None)` means "answer locally".
    async fn run<'a, T, F, Fut>(&'a self, now: Timestamp, call: F) -> Result<Option<T>, Unavailable>
    where
        F: FnOnce(&'a RedisLimiter) -> Fut,
        Fut: std::future::Future<Output = Result<T, LimiterError>>,
    {
        let limiter = match self.limiter.get() {
            Some(limiter) if self.should_try(now) => limiter,
            // Not connected yet (the background task is on it), or not this call's turn.
            _ => {
                self.failed(None, now)?;
                return Ok(None);
            }
        };
        let recoveries = self.recoveries.load(Ordering::Acquire);
        match call(limiter).await {
            Ok(value) => {
                self.succeeded();
                Ok(Some(value))
            }
            Err(e) => {
                let stale = self.recoveries.load(Ordering::Acquire) != recoveries;
                self.failed((!stale).then_some(&e), now)?;
                Ok(None)
            }
        }
    }
}

/// What answers limited requests while Redis does not, for log lines.
fn while_degraded(fail_closed: bool) -> &'static str {
    if fail_closed {
        "refused"
    } else {
        "local to this node"
    }
}

/// Connects to Redis while it is unreachable, then checks it every [`PROBE_INTERVAL`] while
/// degraded, so that recovery does not wait for traffic. Ends when the [`Limits`] is dropped.
async fn keep_connected(
    remote: Weak<Remote>,
    url: String,
    roots: Option<Vec<u8>>,
    options: RedisOptions,
) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        match remote.limiter.get() {
            Some(limiter) => {
                if remote.degraded.load(Ordering::Acquire)
                    && limiter.ping(options.connect_timeout).await
                {
                    remote.succeeded();
                }
            }
            None => {
                let connected = RedisLimiter::connect_tls(
                    &url,
                    roots.as_deref(),
                    options.timeout,
                    options.connect_timeout,
                );
                match connected.await {
                    Ok(limiter) => {
                        let _ = remote.limiter.set(limiter);
                        remote.recoveries.fetch_add(1, Ordering::AcqRel);
                        remote.degraded.store(false, Ordering::Release);
                        tracing::info!("Redis connected; rate limits are shared by every node.");
                    }
                    Err(e) => tracing::debug!(error = %e, "Redis still unreachable."),
                }
            }
        }
    }
}

impl Limits {
    /// Limits kept in this process only.
    pub fn local() -> Limits {
        Limits {
            local: LocalLimiter::new(),
            redis: None,
        }
    }

    /// Limits kept in Redis at `url`; when Redis fails, calls fall back to this node's local
    /// limits, or are refused if `options.fail_closed`. When Redis cannot be reached now, the
    /// limits start degraded (and say so once) and a task on the current runtime connects as
    /// soon as it answers.
    ///
    /// # Errors
    /// [`LimiterError::BadUrl`] only: an unreachable Redis is an outage to ride out, not a
    /// reason to refuse to start.
    pub async fn with_redis(url: &str, options: RedisOptions) -> Result<Limits, LimiterError> {
        Limits::with_redis_tls(url, None, options).await
    }

    /// [`Limits::with_redis`] for a `rediss://` URL whose server certificate must chain to
    /// `roots` (PEM CA certificates; `None`: the system's roots).
    ///
    /// # Errors
    /// As [`Limits::with_redis`].
    pub async fn with_redis_tls(
        url: &str,
        roots: Option<Vec<u8>>,
        options: RedisOptions,
    ) -> Result<Limits, LimiterError> {
        crate::redis_limiter::Target::parse(url, roots.as_deref())?;
        let limiter = OnceLock::new();
        let connected = RedisLimiter::connect_tls(
            url,
            roots.as_deref(),
            options.timeout,
            options.connect_timeout,
        )
        .await;
        let degraded = match connected {
            Ok(l) => {
                let _ = limiter.set(l);
                false
            }
            Err(e @ LimiterError::BadUrl(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    fail_closed = options.fail_closed,
                    "Redis is unreachable at start; rate limits are {} until it answers. Connecting in the background.",
                    while_degraded(options.fail_closed)
                );
                true
            }
        };
        let remote = Arc::new(Remote {
            limiter,
            fail_closed: options.fail_closed,
            fallbacks: AtomicU64::new(0),
            degraded: AtomicBool::new(degraded),
            next_probe: AtomicI64::new(i64::MIN),
            recoveries: AtomicU64::new(0),
        });
        tokio::spawn(keep_connected(
            Arc::downgrade(&remote),
            url.to_owned(),
            roots,
            options,
        ));
        Ok(Limits {
            local: LocalLimiter::new(),
            redis: Some(remote),
        })
    }

    /// Checks one request against all its limits at `now` (all-or-nothing).
    ///
    /// # Errors
    /// [`Unavailable`] only when Redis failed and the policy is fail-closed.
    pub async fn check(&self, checks: &[Check], now: Timestamp) -> Result<Verdict, Unavailable> {
        if checks.is_empty() {
            // Nothing to limit: nothing for a fail-closed policy to refuse either.
            return Ok(Verdict::UNLIMITED);
        }
        if let Some(remote) = &self.redis {
            // Boxed: the Redis call's state would otherwise size every local check's future,
            // which the gateway initialises and moves on each request.
            let call = Box::pin(remote.run(now, |r| r.check(checks, now)));
            if let Some(verdict) = call.await? {
                return Ok(verdict);
            }
        }
        Ok(self.local.check(checks, now))
    }

    /// What [`Limits::check`] would report for `checks` at `now`, consuming nothing (for
    /// answers that are not counted but still report the caller's limits). Same backend and
    /// failure policy as a check; see [`LocalLimiter::peek`] and [`RedisLimiter::peek`].
    ///
    /// # Errors
    /// [`Unavailable`] only when Redis failed and the policy is fail-closed.
    pub async fn peek(&self, checks: &[Check], now: Timestamp) -> Result<Verdict, Unavailable> {
        if checks.is_empty() {
            return Ok(Verdict::UNLIMITED);
        }
        if let Some(remote) = &self.redis {
            // Boxed: the Redis call's state would otherwise size every local check's future,
            // which the gateway initialises and moves on each request.
            let call = Box::pin(remote.run(now, |r| r.peek(checks, now)));
            if let Some(verdict) = call.await? {
                return Ok(verdict);
            }
        }
        Ok(self.local.peek(checks, now))
    }

    /// Takes a connection lease; see [`LocalLimiter::acquire_lease`].
    ///
    /// # Errors
    /// [`Unavailable`] only when Redis failed and the policy is fail-closed.
    pub async fn acquire_lease(
        &self,
        key: &LimitKey,
        max: u64,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<LimitState, Unavailable> {
        if let Some(remote) = &self.redis {
            let call = remote.run(now, |r| r.acquire_lease(key, max, lease_id, ttl, now));
            if let Some(state) = call.await? {
                return Ok(state);
            }
        }
        Ok(self.local.acquire_lease(key, max, lease_id, ttl, now))
    }

    /// Renews a connection lease; `false` when it is not held and the connection should close.
    ///
    /// While Redis fails open, a lease that Redis cannot confirm is renewed locally, or kept
    /// (`true`) if it was taken on Redis: an outage does not close live connections.
    ///
    /// # Errors
    /// [`Unavailable`] only when Redis failed and the policy is fail-closed.
    pub async fn renew_lease(
        &self,
        key: &LimitKey,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<bool, Unavailable> {
        if let Some(remote) = &self.redis {
            let call = remote.run(now, |r| r.renew_lease(key, lease_id, ttl, now));
            return match call.await? {
                Some(held) => Ok(held),
                None => {
                    self.local.renew_lease(key, lease_id, ttl, now);
                    Ok(true)
                }
            };
        }
        Ok(self.local.renew_lease(key, lease_id, ttl, now))
    }

    /// Gives a connection lease back, on Redis and locally (it may have been taken during a
    /// fallback). Best effort: a lease Redis cannot release now expires by itself.
    pub async fn release_lease(&self, key: &LimitKey, lease_id: u64) {
        self.local.release_lease(key, lease_id);
        if let Some(limiter) = self.redis() {
            if let Err(e) = limiter.release_lease(key, lease_id).await {
                tracing::debug!(error = %e, "Lease not released on Redis; it will expire.");
            }
        }
    }

    /// Live leases on `key` at `now`.
    ///
    /// # Errors
    /// [`Unavailable`] only when Redis failed and the policy is fail-closed.
    pub async fn lease_count(&self, key: &LimitKey, now: Timestamp) -> Result<usize, Unavailable> {
        if let Some(remote) = &self.redis {
            if let Some(n) = remote.run(now, |r| r.lease_count(key, now)).await? {
                return Ok(n);
            }
        }
        Ok(self.local.lease_count(key, now))
    }

    /// Drops local state that no longer matters; see [`LocalLimiter::sweep`].
    pub fn sweep(&self, now: Timestamp) -> usize {
        self.local.sweep(now)
    }

    /// The backend, fallbacks so far and whether Redis is failing now.
    pub fn stats(&self) -> LimitStats {
        match &self.redis {
            None => LimitStats {
                backend: "local",
                fallbacks: 0,
                degraded: false,
            },
            Some(remote) => LimitStats {
                backend: "redis",
                fallbacks: remote.fallbacks.load(Ordering::Relaxed),
                degraded: remote.degraded.load(Ordering::Acquire),
            },
        }
    }

    /// The Redis limiter, when configured and connected (for its round-trip count).
    pub fn redis(&self) -> Option<&RedisLimiter> {
        self.redis.as_ref().and_then(|r| r.limiter.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::limit::Limit;
    use std::num::NonZeroU64;

    #[tokio::test]
    async fn local_limits_never_fail() {
        let limits = Limits::local();
        let check = Check::new(
            LimitKey::new("k:a", 0),
            Limit::per_second(NonZeroU64::new(1).unwrap()),
        );
        let now = Timestamp::from_millis(0);
        assert!(
            limits
                .check(std::slice::from_ref(&check), now)
                .await
                .unwrap()
                .allowed
        );
        assert!(
            !limits
                .check(std::slice::from_ref(&check), now)
                .await
                .unwrap()
                .allowed
        );
        let peeked = limits.peek(&[check], now).await.unwrap();
        assert!(!peeked.allowed);
        assert_eq!(peeked.binding.unwrap().1.remaining, 0);
        assert_eq!(
            limits.stats(),
            LimitStats {
                backend: "local",
                fallbacks: 0,
                degraded: false
            }
        );
        assert!(limits.redis().is_none());
        assert_eq!(Unavailable.to_string(), "rate limits are unavailable");
    }
}
