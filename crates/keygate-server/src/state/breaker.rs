//! Per-upstream circuit breakers: after `failures` failed requests within `window`, an
//! upstream is left alone for `open_for` (callers get the profile's `upstream_unavailable`
//! answer at once, with `Retry-After`), then `half_open_probes` trial requests go through; the
//! first that succeeds closes the breaker, one that fails opens it again.
//!
//! One breaker per upstream, shared by every worker thread, in atomics. Per-worker breakers
//! would need `failures × workers` failures to trip and send `workers` probes, so an operator's
//! numbers would mean nothing; a lock would serialize the cores. With atomics the healthy path
//! costs one `Acquire` load of a word nobody writes (the cache line stays shared between
//! cores) and nothing after the response: only failures and transitions write. Counting
//! failures races benignly (a window restarting while another thread adds can lose a count);
//! transitions are compare-and-swap, so exactly one thread trips, probes and closes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::Timestamp;

use crate::policy::upstream::BreakerConfig;

/// What a breaker is doing, as `/status` and `/metrics` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The `keygate_upstream_breaker_state` gauge value.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// The state word: the low two bits are the phase, the rest an instant in ms since the epoch
/// (when an open breaker may probe).
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;

fn phase(word: u64) -> u64 {
    word & 3
}

fn open_until(word: u64) -> i64 {
    i64::try_from(word >> 2).unwrap_or(i64::MAX)
}

fn open_word(until: i64) -> u64 {
    (u64::try_from(until.max(0)).unwrap_or(0) << 2) | OPEN
}

/// The refusal of an open breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    /// Whole seconds until a probe may go through (at least 1).
    pub retry_after: u64,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    word: AtomicU64,
    failures: AtomicU32,
    window_start: AtomicU64,
    probes: AtomicU32,
    trips: AtomicU64,
}

/// Leave to send one request; report how it went with [`Ticket::record`]. Dropped unrecorded
/// (the caller went away), it gives its probe slot back.
#[derive(Debug)]
#[must_use = "record the outcome, or the breaker learns nothing"]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            word: AtomicU64::new(CLOSED),
            failures: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            trips: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Whether a request may go to the upstream now.
    ///
    /// # Errors
    /// [`Open`] while the breaker is open, or half-open with every probe slot taken.
    pub fn admit(&self, now: Timestamp) -> Result<Ticket<'_>, Open> {
        let word = self.word.load(Ordering::Acquire);
        if phase(word) == CLOSED {
            return Ok(Ticket {
                breaker: self,
                probe: false,
            });
        }
        let now_ms = now.as_millis();
        if phase(word) == OPEN {
            let until = open_until(word);
            if now_ms < until {
                let ms = u64::try_from(until - now_ms).unwrap_or(0);
                return Err(Open {
                    retry_after: ms.div_ceil(1000).max(1),
                });
            }
            // Whoever wins moves it to half-open; losers see half-open too.
            let _ =
                self.word
                    .compare_exchange(word, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire);
        }
        if phase(self.word.load(Ordering::Acquire)) == CLOSED {
            return Ok(Ticket {
                breaker: self,
                probe: false,
            });
        }
        if self.probes.fetch_add(1, Ordering::AcqRel) < self.config.half_open_probes {
            Ok(Ticket {
                breaker: self,
                probe: true,
            })
        } else {
            self.probes.fetch_sub(1, Ordering::AcqRel);
            Err(Open { retry_after: 1 })
        }
    }

    fn fail(&self, probe: bool, now: Timestamp) {
        let now_ms = now.as_millis();
        if probe {
            self.open_at(HALF_OPEN, now_ms);
            return;
        }
        let start = i64::try_from(self.window_start.load(Ordering::Acquire)).unwrap_or(0);
        let window = i64::try_from(self.config.window.as_millis()).unwrap_or(i64::MAX);
        let count = if now_ms.saturating_sub(start) >= window {
            self.window_start
                .store(u64::try_from(now_ms).unwrap_or(0), Ordering::Release);
            self.failures.store(1, Ordering::Release);
            1
        } else {
            self.failures.fetch_add(1, Ordering::AcqRel) + 1
        };
        if count >= self.config.failures {
            self.open_at(CLOSED, now_ms);
        }
    }

    /// Opens the breaker if it is still in `from`; one thread wins.
    fn open_at(&self, from: u64, now_ms: i64) {
        let open_ms = i64::try_from(self.config.open_for.as_millis()).unwrap_or(i64::MAX);
        let opened = self
            .word
            .compare_exchange(
                from,
                open_word(now_ms.saturating_add(open_ms)),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if opened {
            self.trips.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn succeed(&self, now: Timestamp) {
        let closed = self
            .word
            .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closed {
            self.failures.store(0, Ordering::Release);
            self.window_start.store(
                u64::try_from(now.as_millis()).unwrap_or(0),
                Ordering::Release,
            );
        }
    }

    /// The state now (an open breaker past `open_for` shows as half-open: the next request
    /// probes).
    pub fn state(&self, now: Timestamp) -> State {
        let word = self.word.load(Ordering::Acquire);
        match phase(word) {
            CLOSED => State::Closed,
            OPEN if now.as_millis() < open_until(word) => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Times the breaker opened.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

impl Ticket<'_> {
    /// Whether upstream 5xx answers count as failures for this breaker.
    pub fn count_5xx(&self) -> bool {
        self.breaker.config.count_5xx
    }

    /// Reports the outcome: `failed` for a connect error, a timeout, or a 5xx the breaker
    /// counts. `now` is read only when something changes.
    pub fn record(self, failed: bool, now: impl FnOnce() -> Timestamp) {
        let b = self.breaker;
        if failed {
            b.fail(self.probe, now());
        } else if self.probe {
            b.succeed(now());
        }
    }
}

impl Drop for Ticket<'_> {
    /// Every probe slot is given back here, recorded or not, so the count never drifts.
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Every upstream's breaker, indexed like `Config::upstreams`; `None` where it is off.
#[derive(Debug, Default)]
pub struct Breakers(Vec<Option<Arc<Breaker>>>);

impl Breakers {
    pub fn new(upstreams: &[crate::policy::upstream::UpstreamSpec]) -> Breakers {
        Breakers(
            upstreams
                .iter()
                .map(|u| u.breaker.map(|c| Arc::new(Breaker::new(c))))
                .collect(),
        )
    }

    /// The breakers of a reloaded upstream list: an upstream with the same name, address and
    /// breaker settings keeps its breaker (an open one stays open), any other gets a new one.
    pub fn carried_to(
        &self,
        before: &[crate::policy::upstream::UpstreamSpec],
        after: &[crate::policy::upstream::UpstreamSpec],
    ) -> Breakers {
        Breakers(
            after
                .iter()
                .map(|u| {
                    let kept = before
                        .iter()
                        .position(|b| b.same_endpoint(u) && b.breaker == u.breaker)
                        .and_then(|i| self.0.get(i).cloned().flatten());
                    kept.or_else(|| u.breaker.map(|c| Arc::new(Breaker::new(c))))
                })
                .collect(),
        )
    }

    pub fn get(&self, upstream: usize) -> Option<&Breaker> {
        self.0.get(upstream).and_then(Option::as_deref)
    }

    /// Admits a request to an upstream; always, where the upstream has no breaker.
    ///
    /// # Errors
    /// [`Open`] while its breaker refuses.
    pub fn admit(&self, upstream: usize, now: Timestamp) -> Result<Option<Ticket<'_>>, Open> {
        self.get(upstream).map(|b| b.admit(now)).transpose()
    }
}

impl Breakers {
    /// `/status`: each upstream's breaker state and trips (`"off"` where it has none).
    pub fn status(
        &self,
        upstreams: &[crate::policy::upstream::UpstreamSpec],
        now: Timestamp,
    ) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (i, u) in upstreams.iter().enumerate() {
            let entry = match self.get(i) {
                None => serde_json::json!({ "breaker": "off" }),
                Some(b) => serde_json::json!({
                    "breaker": b.state(now).label(),
                    "trips": b.trips(),
                }),
            };
            out.insert(u.name.to_string(), entry);
        }
        serde_json::Value::Object(out)
    }

    /// `/metrics`: the state gauge and trips counter per upstream with a breaker.
    pub fn render(
        &self,
        upstreams: &[crate::policy::upstream::UpstreamSpec],
        now: Timestamp,
        out: &mut String,
    ) {
        use std::fmt::Write as _;
        let with: Vec<_> = upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                self.get(i)
                    .map(|b| (crate::state::metrics::escape(&u.name), b))
            })
            .collect();
        out.push_str("# HELP keygate_upstream_breaker_state Circuit breaker per upstream: 0 closed, 1 open, 2 half-open.\n");
        out.push_str("# TYPE keygate_upstream_breaker_state gauge\n");
        for (name, b) in &with {
            let _ = writeln!(
                out,
                "keygate_upstream_breaker_state{{upstream=\"{name}\"}} {}",
                b.state(now).gauge()
            );
        }
        out.push_str(
            "# HELP keygate_upstream_breaker_trips_total Times an upstream's breaker opened.\n",
        );
        out.push_str("# TYPE keygate_upstream_breaker_trips_total counter\n");
        for (name, b) in &with {
            let _ = writeln!(
                out,
                "keygate_upstream_breaker_trips_total{{upstream=\"{name}\"}} {}",
                b.trips()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            count_5xx: false,
        })
    }

    #[test]
    fn trips_after_failures_within_the_window_then_probes_and_closes() {
        let b = breaker();
        for i in 0..2 {
            b.admit(at(i)).unwrap().record(true, || at(i));
        }
        assert_eq!(b.state(at(2)), State::Closed);
        b.admit(at(2)).unwrap().record(true, || at(2));
        assert_eq!(b.state(at(3)), State::Open);
        assert_eq!(b.trips(), 1);
        assert_eq!(b.admit(at(1_000)).unwrap_err().retry_after, 5);
        assert_eq!(b.admit(at(4_999)).unwrap_err().retry_after, 1);
        // Past open_for: one probe, and no second one while it is out.
        let probe = b.admit(at(5_002)).unwrap();
        assert_eq!(b.state(at(5_002)), State::HalfOpen);
        assert!(b.admit(at(5_003)).is_err());
        probe.record(false, || at(5_010));
        assert_eq!(b.state(at(5_010)), State::Closed);
        // Closing starts a fresh count.
        b.admit(at(5_020)).unwrap().record(true, || at(5_020));
        assert_eq!(b.state(at(5_021)), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again_and_counts_a_trip() {
        let b = breaker();
        for i in 0..3 {
            b.admit(at(i)).unwrap().record(true, || at(i));
        }
        b.admit(at(6_000)).unwrap().record(true, || at(6_000));
        assert_eq!(b.state(at(6_001)), State::Open);
        assert_eq!(b.trips(), 2);
        assert_eq!(b.admit(at(6_001)).unwrap_err().retry_after, 5);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let b = breaker();
        for i in 0..5 {
            let t = i * 6_000;
            b.admit(at(t)).unwrap().record(true, || at(t));
        }
        assert_eq!(b.state(at(30_000)), State::Closed);
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let b = breaker();
        for i in 0..3 {
            b.admit(at(i)).unwrap().record(true, || at(i));
        }
        drop(b.admit(at(5_100)).unwrap());
        assert!(b.admit(at(5_101)).is_ok());
    }
}
