//! Brute-force throttling: failed authentications are counted per source address and per key
//! prefix, and a source or prefix past its threshold gets the profile's 429 for every key that
//! fails to authenticate, for a cool-down.
//!
//! Keys are high-entropy, so guessing one is hopeless; what this stops is the load and noise of
//! a credential-stuffing or key-guessing run, and targeted guessing around a leaked key prefix
//! spread over many addresses. It refuses guessing, not customers: the guard is consulted only
//! after a key failed (the lookup is in memory and costs nanoseconds), so a key that
//! authenticates is served whatever its source or prefix did, and a NAT, a proxy or a stale key
//! beside valid ones never locks the valid ones out. A guesser learns nothing from a cool-down:
//! every failing key gets the same 429, whatever the failure was (unknown, malformed, revoked,
//! missing), and each guess during the cool-down starts it again, so a run that does not stop
//! never gets its failures back. The fast path of an admitted request does no guard work at all.
//! Memory is bounded: entries expire after their window or cool-down, and at most
//! `max_tracked` sources and as many prefixes are held.
//!
//! A source is the peer address, or, when the peer is a configured trusted proxy, the client
//! address that proxy reports: the right-most untrusted address of `X-Forwarded-For`, else of
//! `Forwarded`'s `for=`, else `X-Real-IP` (see [`Guard::source`]). IPv6 sources count per /64,
//! the unit one subscriber usually holds. Prefixes are held as salted 64-bit hashes, never as
//! key text, and logs name a prefix only by that hash.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use http::HeaderMap;
use ipnet::IpNet;
use keygate_core::decision::Reason;
use keygate_core::limit::LimitState;
use keygate_core::Timestamp;

use crate::policy::profile::LimitFacts;

/// How the guard is configured (`[guard]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    pub enabled: bool,
    /// Failed authentications from one source within `window` that start a cool-down.
    pub threshold: u32,
    /// Failed authentications with one key prefix within `window` that start a cool-down
    /// for that prefix; 0 turns prefix counting off.
    pub prefix_threshold: u32,
    /// Characters of the key body, after the deployment's key prefix, that make a key prefix.
    pub prefix_length: usize,
    pub window: Duration,
    pub cooldown: Duration,
    /// Most sources (and, separately, prefixes) tracked at once.
    pub max_tracked: usize,
    /// Peers whose `X-Forwarded-For`, `Forwarded` or `X-Real-IP` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            threshold: 30,
            prefix_threshold: 30,
            prefix_length: 8,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            max_tracked: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// What a cool-down applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum By {
    Source,
    KeyPrefix,
}

impl By {
    fn label(self) -> &'static str {
        match self {
            By::Source => "source",
            By::KeyPrefix => "key_prefix",
        }
    }
}

/// The request's origin as the guard sees it: the peer and the headers a trusted proxy may
/// have added. Resolved to a source address only when needed (a failure, or a budget to
/// report), so an admitted request pays nothing for it.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub peer: IpAddr,
    pub headers: &'a HeaderMap,
}

/// What one failure did to a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bump {
    /// Counted (or not tracked: the table was full).
    Counted,
    /// Counted, and it reached the threshold: a cool-down starts (one incident).
    Started(u32),
    /// A cool-down was already running; it starts again from now.
    Extended,
}

#[derive(Clone, Copy, Debug)]
struct Counter {
    window_start: i64,
    failures: u32,
    /// End of the cool-down, ms since the epoch (0 = none).
    blocked_until: i64,
}

/// Failure counters and cool-downs of one gateway process.
pub struct Guard {
    config: GuardConfig,
    /// Length of the deployment's key prefix (`sk_`), skipped when taking a key's prefix.
    key_prefix_len: usize,
    sources: DashMap<IpAddr, Counter>,
    prefixes: DashMap<u64, Counter>,
    salt: RandomState,
    /// Latest end of any cool-down (ms); 0 once every cool-down has ended and been swept.
    horizon: AtomicI64,
    last_sweep: AtomicI64,
    incidents: [AtomicU64; 2],
    refused: [AtomicU64; 2],
    /// Failures not counted because the table was full of live entries.
    untracked: AtomicU64,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("config", &self.config)
            .field("sources", &self.sources.len())
            .field("prefixes", &self.prefixes.len())
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// IPv4-mapped IPv6 as IPv4.
pub(crate) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// IPv4-mapped IPv6 as IPv4; other IPv6 addresses as their /64.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The address of one `Forwarded` element's `for=` (RFC 7239: `for=192.0.2.60`,
/// `for="192.0.2.60:4711"`, `for="[2001:db8::17]:4711"`); `None` for `unknown`, an obfuscated
/// name, or an element without one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })?;
    let value = value.trim_matches('"');
    if let Some(v6) = value.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    value.parse().ok().or_else(|| {
        value
            .rsplit_once(':')?
            .0
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    })
}

impl Guard {
    /// A guard for keys whose deployment prefix is `key_prefix` (skipped when taking a key's
    /// prefix, since every key shares it).
    pub fn new(config: GuardConfig, key_prefix: &str) -> Guard {
        Guard {
            config,
            key_prefix_len: key_prefix.len(),
            sources: DashMap::new(),
            prefixes: DashMap::new(),
            salt: RandomState::new(),
            horizon: AtomicI64::new(0),
            last_sweep: AtomicI64::new(0),
            incidents: Default::default(),
            refused: Default::default(),
            untracked: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// True when `ip` is one of `trusted_proxies`: its forwarding headers (`X-Forwarded-For`,
    /// and toward upstreams `X-Real-IP` and `Forwarded`) are believed.
    pub fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// The address failures are counted against: the peer, unless the peer is one of
    /// `trusted_proxies`. From a trusted proxy it is the client address the proxy reports, in
    /// the first of these headers the request has:
    ///
    /// - `X-Forwarded-For` (nginx `$proxy_add_x_forwarded_for`, Traefik ForwardAuth, Envoy),
    ///   walked right to left: each trusted hop vouches for the address before it, and the
    ///   first address no trusted proxy added is the client;
    /// - `Forwarded` (RFC 7239), its `for=` values walked the same way;
    /// - `X-Real-IP` (nginx `$remote_addr`), one address.
    ///
    /// An unparsable entry ends the walk at the last address believed, so a proxy that is
    /// trusted but sends nothing usable counts as the source itself. The proxy must set or
    /// append the header it sends (README, "Beside an existing gateway"): a header a client
    /// wrote and the proxy passed on unchanged would let that client pick its source.
    ///
    /// IPv6 addresses count as their /64 (one host usually has the whole /64).
    pub fn source(&self, caller: Caller<'_>) -> IpAddr {
        normalize(self.client_address(caller))
    }

    /// The caller's own address by the rule [`Guard::source`] describes, IPv6 kept whole
    /// (IPv4-mapped IPv6 as IPv4): what a key's CIDR allowlist is checked against.
    pub fn client_address(&self, caller: Caller<'_>) -> IpAddr {
        let trusted = |ip: &IpAddr| self.is_trusted(ip);
        if !trusted(&caller.peer) {
            return unmap(caller.peer);
        }
        let headers = caller.headers;
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
        };
        let walk = |hops: &mut dyn Iterator<Item = Option<IpAddr>>| {
            let mut source = caller.peer;
            for hop in hops {
                let Some(ip) = hop else { break };
                source = ip;
                if !trusted(&ip) {
                    break;
                }
            }
            source
        };
        let source = if headers.contains_key("x-forwarded-for") {
            let lists = values("x-forwarded-for");
            walk(
                &mut lists
                    .iter()
                    .rev()
                    .flat_map(|v| v.rsplit(','))
                    .map(|hop| hop.trim().parse::<IpAddr>().ok()),
            )
        } else if headers.contains_key(http::header::FORWARDED) {
            let lists = values("forwarded");
            walk(
                &mut lists
                    .iter()
                    .rev()
                    .flat_map(|v| v.rsplit(','))
                    .map(forwarded_for),
            )
        } else {
            headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .unwrap_or(caller.peer)
        };
        unmap(source)
    }

    /// Hash of a key's prefix, if the key is long enough to have one and prefixes count.
    fn prefix_of(&self, key: &str) -> Option<u64> {
        if self.config.prefix_threshold == 0 {
            return None;
        }
        let end = self.key_prefix_len + self.config.prefix_length;
        key.get(..end)
            .filter(|_| key.len() > end)
            .map(|p| self.salt.hash_one(p))
    }

    /// Answers a failed authentication: counts it, and says what to answer. A caller whose
    /// source or key prefix is in a cool-down gets `RateLimited` for any failure, so every
    /// failing key looks the same to a guesser; otherwise the failure's own reason. A key that
    /// authenticates never comes here: it is served whatever its source or prefix did.
    ///
    /// Only guess-like failures count: a malformed, conflicting or unknown key (a real key
    /// that is disabled or expired is not a guess, nor is a missing key). Prefixes count only
    /// well-formed unknown keys, so garbage cannot lock a prefix out. A guess during a
    /// cool-down starts it again (a run that does not stop stays refused); the failure that
    /// reaches the threshold is still answered with its own reason, and starts the cool-down.
    pub fn refuse(
        &self,
        caller: Caller<'_>,
        key: Option<&str>,
        reason: Reason,
        now: Timestamp,
    ) -> Reason {
        if !self.config.enabled {
            return reason;
        }
        let now = now.as_millis();
        self.sweep_if_due(now);
        let guess = matches!(
            reason,
            Reason::MalformedKey | Reason::UnknownKey | Reason::ConflictingCredentials
        );
        let source = self.source(caller);
        let prefix = key.and_then(|k| self.prefix_of(k));
        // What this failure did to each counter; `None` where it does not count.
        let by_source = guess.then(|| self.bump(&self.sources, source, self.config.threshold, now));
        let by_prefix = prefix
            .filter(|_| reason == Reason::UnknownKey)
            .map(|p| self.bump(&self.prefixes, p, self.config.prefix_threshold, now));
        if let Some(Bump::Started(failures)) = by_source {
            self.incident(By::Source, now);
            tracing::warn!(
                target: "keygate::guard",
                by = "source",
                source = %source,
                failures,
                cooldown_seconds = self.config.cooldown.as_secs(),
                "Too many failed authentications; refusing failing keys from this source for the cool-down."
            );
        }
        if let (Some(Bump::Started(failures)), Some(p)) = (by_prefix, prefix) {
            self.incident(By::KeyPrefix, now);
            tracing::warn!(
                target: "keygate::guard",
                by = "key_prefix",
                prefix_hash = %format_args!("{p:016x}"),
                last_source = %source,
                failures,
                cooldown_seconds = self.config.cooldown.as_secs(),
                "Too many failed authentications with one key prefix; refusing failing keys with it for the cool-down."
            );
        }
        // A failure that was not counted is still answered by a running cool-down.
        let cooling = |bump: Option<Bump>, running: &dyn Fn() -> bool| match bump {
            Some(b) => b == Bump::Extended,
            None => now < self.horizon.load(Ordering::Acquire) && running(),
        };
        let refused_by = if cooling(by_source, &|| {
            self.sources
                .get(&source)
                .is_some_and(|c| c.blocked_until > now)
        }) {
            Some(By::Source)
        } else if cooling(by_prefix, &|| {
            prefix.is_some_and(|p| self.prefixes.get(&p).is_some_and(|c| c.blocked_until > now))
        }) {
            Some(By::KeyPrefix)
        } else {
            None
        };
        match refused_by {
            Some(by) => {
                self.refused[by as usize].fetch_add(1, Ordering::Relaxed);
                Reason::RateLimited
            }
            None => reason,
        }
    }

    fn incident(&self, by: By, now: i64) {
        let index = by as usize;
        self.incidents[index].fetch_add(1, Ordering::Relaxed);
        self.horizon.fetch_max(
            now.saturating_add(millis(self.config.cooldown)),
            Ordering::AcqRel,
        );
    }

    /// Adds one failure: counts it, starts a cool-down at the threshold, or starts a running
    /// cool-down again.
    fn bump<K: Eq + std::hash::Hash + Copy>(
        &self,
        map: &DashMap<K, Counter>,
        id: K,
        threshold: u32,
        now: i64,
    ) -> Bump {
        // `len` and `entry` lock shards; never hold an entry while asking for the length.
        if !map.contains_key(&id) && map.len() >= self.config.max_tracked {
            self.sweep_at(now);
            if map.len() >= self.config.max_tracked {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return Bump::Counted;
            }
        }
        let window = millis(self.config.window);
        let until = now.saturating_add(millis(self.config.cooldown));
        let mut c = map.entry(id).or_insert(Counter {
            window_start: now,
            failures: 0,
            blocked_until: 0,
        });
        if c.blocked_until > now {
            // Still one incident; the cool-down ends `cooldown` after the last guess.
            c.blocked_until = until;
            drop(c);
            self.horizon.fetch_max(until, Ordering::AcqRel);
            return Bump::Extended;
        }
        if now - c.window_start >= window || c.blocked_until != 0 {
            *c = Counter {
                window_start: now,
                failures: 0,
                blocked_until: 0,
            };
        }
        c.failures += 1;
        if c.failures < threshold.max(1) {
            return Bump::Counted;
        }
        let failures = c.failures;
        c.blocked_until = until;
        Bump::Started(failures)
    }

    fn sweep_if_due(&self, now: i64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now - last >= millis(self.config.window)
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep_at(now);
        }
    }

    /// Drops entries whose window and cool-down have both ended, and clears the horizon once
    /// no cool-down is left, so admitted requests skip the guard again.
    pub fn sweep(&self, now: Timestamp) {
        self.sweep_at(now.as_millis());
    }

    fn sweep_at(&self, now: i64) {
        let window = millis(self.config.window);
        let seen = self.horizon.load(Ordering::Acquire);
        let mut latest = 0;
        let mut keep = |c: &Counter| {
            latest = latest.max(c.blocked_until);
            c.blocked_until > now || now - c.window_start < window
        };
        self.sources.retain(|_, c| keep(c));
        self.prefixes.retain(|_, c| keep(c));
        let latest = if latest > now { latest } else { 0 };
        // A cool-down that started during the sweep raised the horizon; keep that value.
        let _ = self
            .horizon
            .compare_exchange(seen, latest, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The budget of failed authentications `caller`'s source has left at `now`, as a limit
    /// state: `limit` is the threshold, `remaining` how many more guess-like failures are
    /// answered before the cool-down (0 during it), `reset` when the count starts over (the
    /// window's end, the cool-down's end, or now when nothing is counted). `None` when the
    /// guard is off. Reads only: no entry is created.
    ///
    /// This is the budget a caller without a valid key spends (`when = "always"` reports it
    /// on such refusals). It is this node's count, as the guard itself is.
    pub fn budget(&self, caller: Caller<'_>, now: Timestamp) -> Option<LimitState> {
        if !self.config.enabled {
            return None;
        }
        let threshold = u64::from(self.config.threshold.max(1));
        let ms = now.as_millis();
        let window = millis(self.config.window);
        let counted = self
            .sources
            .get(&self.source(caller))
            .map(|c| *c)
            .filter(|c| {
                c.blocked_until > ms || (c.blocked_until == 0 && ms - c.window_start < window)
            });
        Some(match counted {
            None => LimitState {
                allowed: true,
                limit: threshold,
                remaining: threshold,
                reset: now,
                retry_after: Duration::ZERO,
            },
            Some(c) if c.blocked_until > ms => LimitState {
                allowed: false,
                limit: threshold,
                remaining: 0,
                reset: Timestamp::from_millis(c.blocked_until),
                retry_after: Duration::from_millis(
                    u64::try_from(c.blocked_until - ms).unwrap_or(0),
                ),
            },
            Some(c) => LimitState {
                allowed: true,
                limit: threshold,
                remaining: threshold.saturating_sub(u64::from(c.failures)),
                reset: Timestamp::from_millis(c.window_start.saturating_add(window)),
                retry_after: Duration::ZERO,
            },
        })
    }

    /// What a guard refusal quotes: the cool-down as `Retry-After`, the threshold as `limit`.
    /// Exact for a guess (which starts the cool-down again at `now`); for another failure
    /// during a cool-down it is the longest the cool-down can still run.
    pub fn facts(&self, now: Timestamp) -> LimitFacts {
        let cooldown = self.config.cooldown.as_secs().max(1);
        LimitFacts {
            limit: u64::from(self.config.threshold),
            remaining: 0,
            reset: u64::try_from(now.as_secs()).unwrap_or(0) + cooldown,
            retry_after: cooldown,
        }
    }

    /// Prometheus text for the guard's counters and table sizes.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP keygate_guard_incidents_total Cool-downs started after too many failed authentications.\n# TYPE keygate_guard_incidents_total counter\n");
        for by in [By::Source, By::KeyPrefix] {
            let _ = writeln!(
                out,
                "keygate_guard_incidents_total{{by=\"{}\"}} {}",
                by.label(),
                self.incidents[by as usize].load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP keygate_guard_refused_total Failed authentications answered 429 during a cool-down.\n# TYPE keygate_guard_refused_total counter\n");
        for by in [By::Source, By::KeyPrefix] {
            let _ = writeln!(
                out,
                "keygate_guard_refused_total{{by=\"{}\"}} {}",
                by.label(),
                self.refused[by as usize].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keygate_guard_tracked Sources and key prefixes with recent failures held in memory.\n# TYPE keygate_guard_tracked gauge\nkeygate_guard_tracked{{by=\"source\"}} {}\nkeygate_guard_tracked{{by=\"key_prefix\"}} {}",
            self.sources.len(),
            self.prefixes.len()
        );
        let _ = writeln!(
            out,
            "# HELP keygate_guard_untracked_total Failures not counted because the table was full.\n# TYPE keygate_guard_untracked_total counter\nkeygate_guard_untracked_total {}",
            self.untracked.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "kg_AAAAAAAAbbbbbbbbccccccccdddddddd";

    fn guard(config: GuardConfig) -> Guard {
        Guard::new(config, "kg_")
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn from<'h>(ip: &str, headers: &'h HeaderMap) -> Caller<'h> {
        Caller {
            peer: ip.parse().unwrap(),
            headers,
        }
    }

    #[test]
    fn a_source_past_the_threshold_cools_down_then_recovers() {
        let g = guard(GuardConfig {
            threshold: 3,
            prefix_threshold: 0,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        let bad = from("192.0.2.1", &h);
        let good = from("192.0.2.2", &h);
        let unknown = Reason::UnknownKey;
        // The failure that reaches the threshold is answered as itself and starts it.
        for i in 0..3 {
            assert_eq!(g.refuse(bad, Some(KEY), unknown, at(1000 + i)), unknown);
        }
        // Then every failing key from the source is 429, whatever the failure was.
        for reason in [
            unknown,
            Reason::MissingKey,
            Reason::KeyDisabled,
            Reason::MalformedKey,
        ] {
            assert_eq!(
                g.refuse(bad, Some(KEY), reason, at(1003)),
                Reason::RateLimited
            );
        }
        assert_eq!(g.refuse(good, Some(KEY), unknown, at(1003)), unknown);
        // Guesses during the cool-down start it again, within the same incident; other
        // failures do not.
        assert_eq!(
            g.refuse(bad, Some(KEY), unknown, at(2000)),
            Reason::RateLimited
        );
        assert_eq!(g.incidents[0].load(Ordering::Relaxed), 1);
        let end = 2000 + 300_000;
        assert_eq!(
            g.refuse(bad, None, Reason::MissingKey, at(end - 1)),
            Reason::RateLimited
        );
        assert_eq!(
            g.refuse(bad, None, Reason::MissingKey, at(end)),
            Reason::MissingKey
        );
        assert_eq!(g.refused[0].load(Ordering::Relaxed), 6);
        // The sweep forgets it.
        g.sweep(at(end + 60_000));
        assert_eq!(g.sources.len(), 0);
        assert_eq!(g.horizon.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_budget_counts_down_to_the_cool_down_and_starts_over() {
        let g = guard(GuardConfig {
            threshold: 3,
            prefix_threshold: 0,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        let bad = from("192.0.2.1", &h);
        let summary = |s: LimitState| (s.allowed, s.limit, s.remaining, s.reset.as_millis());
        assert_eq!(summary(g.budget(bad, at(500)).unwrap()), (true, 3, 3, 500));
        assert_eq!(g.sources.len(), 0, "reading the budget tracks nothing");
        // Not guess-like: nothing counted.
        g.refuse(bad, Some(KEY), Reason::MissingKey, at(900));
        assert_eq!(g.budget(bad, at(900)).unwrap().remaining, 3);
        g.refuse(bad, Some(KEY), Reason::UnknownKey, at(1000));
        assert_eq!(
            summary(g.budget(bad, at(1000)).unwrap()),
            (true, 3, 2, 61_000)
        );
        g.refuse(bad, Some(KEY), Reason::UnknownKey, at(1001));
        assert_eq!(g.budget(bad, at(1001)).unwrap().remaining, 1);
        // The third failure is still answered as a failure; it starts the cool-down.
        g.refuse(bad, Some(KEY), Reason::UnknownKey, at(1002));
        let cooling = g.budget(bad, at(2002)).unwrap();
        assert_eq!(summary(cooling), (false, 3, 0, 301_002));
        assert_eq!(cooling.retry_after, Duration::from_secs(299));
        // A guess in the cool-down moves its end, which the budget and `facts` then quote.
        g.refuse(bad, Some(KEY), Reason::UnknownKey, at(10_000));
        let cooling = g.budget(bad, at(10_000)).unwrap();
        assert_eq!(summary(cooling), (false, 3, 0, 310_000));
        assert_eq!(g.facts(at(10_000)).reset, 310);
        // After it, and after a quiet window, the budget is whole again.
        assert_eq!(g.budget(bad, at(310_000)).unwrap().remaining, 3);
        let other = from("192.0.2.9", &h);
        g.refuse(other, None, Reason::MalformedKey, at(0));
        assert_eq!(g.budget(other, at(59_999)).unwrap().remaining, 2);
        assert_eq!(g.budget(other, at(60_000)).unwrap().remaining, 3);
        let off = guard(GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        });
        assert!(off.budget(bad, at(0)).is_none());
    }

    #[test]
    fn only_guess_like_failures_count_and_windows_reset() {
        let g = guard(GuardConfig {
            threshold: 2,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        let c = from("192.0.2.1", &h);
        for reason in [
            Reason::MissingKey,
            Reason::KeyExpired,
            Reason::KeyDisabled,
            Reason::ClientInactive,
            Reason::ScopeMissing,
        ] {
            assert_eq!(g.refuse(c, Some(KEY), reason, at(0)), reason);
            assert_eq!(g.refuse(c, Some(KEY), reason, at(0)), reason);
        }
        assert!(g.sources.is_empty());
        g.refuse(c, None, Reason::MalformedKey, at(0));
        g.refuse(c, None, Reason::MalformedKey, at(60_000)); // a new window
        assert_eq!(
            g.refuse(c, None, Reason::MissingKey, at(60_001)),
            Reason::MissingKey
        );
        let conflict = Reason::ConflictingCredentials;
        assert_eq!(g.refuse(c, None, conflict, at(60_002)), conflict);
        assert_eq!(g.refuse(c, None, conflict, at(60_003)), Reason::RateLimited);
    }

    #[test]
    fn a_key_prefix_guessed_from_many_sources_cools_down_for_failing_keys() {
        let g = guard(GuardConfig {
            threshold: 1000,
            prefix_threshold: 3,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        for i in 0..3 {
            let ip = format!("198.51.100.{i}");
            let guess = format!("kg_AAAAAAAA{i:0>24}");
            let answer = g.refuse(from(&ip, &h), Some(&guess), Reason::UnknownKey, at(0));
            assert_eq!(answer, Reason::UnknownKey);
        }
        let anyone = from("203.0.113.7", &h);
        for reason in [Reason::UnknownKey, Reason::KeyDisabled] {
            assert_eq!(
                g.refuse(anyone, Some(KEY), reason, at(1)),
                Reason::RateLimited
            );
        }
        let elsewhere = "kg_BBBBBBBBbbbbbbbbccccccccdddddddd";
        let answer = g.refuse(anyone, Some(elsewhere), Reason::UnknownKey, at(1));
        assert_eq!(answer, Reason::UnknownKey);
        assert_eq!(g.refused[1].load(Ordering::Relaxed), 2);
        // Malformed keys never count against a prefix.
        let g = guard(GuardConfig {
            threshold: 1000,
            prefix_threshold: 1,
            ..GuardConfig::default()
        });
        g.refuse(anyone, Some(KEY), Reason::MalformedKey, at(0));
        assert_eq!(
            g.refuse(anyone, Some(KEY), Reason::KeyDisabled, at(1)),
            Reason::KeyDisabled
        );
        assert!(g.prefixes.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let g = guard(GuardConfig {
            max_tracked: 10,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        for i in 0..100u8 {
            let ip = format!("192.0.2.{i}");
            g.refuse(from(&ip, &h), None, Reason::UnknownKey, at(0));
        }
        assert_eq!(g.sources.len(), 10);
        assert_eq!(g.untracked.load(Ordering::Relaxed), 90);
        // Once their windows end, room is made again.
        g.refuse(
            from("192.0.2.200", &h),
            None,
            Reason::UnknownKey,
            at(60_000),
        );
        assert_eq!(g.sources.len(), 1);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let g = guard(GuardConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..GuardConfig::default()
        });
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.1".parse().unwrap(),
        );
        h.append("x-forwarded-for", "10.1.1.1".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(g.source(from("10.0.0.1", &h)), ip("198.51.100.1"));
        assert_eq!(g.source(from("192.0.2.1", &h)), ip("192.0.2.1"));
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(g.source(from("10.0.0.1", &junk)), ip("10.0.0.1"));
        let none = HeaderMap::new();
        assert_eq!(g.source(from("10.0.0.1", &none)), ip("10.0.0.1"));
        assert_eq!(
            g.source(from("2001:db8:1:2:3:4:5:6", &none)),
            ip("2001:db8:1:2::")
        );
        assert_eq!(g.source(from("::ffff:192.0.2.5", &none)), ip("192.0.2.5"));
    }

    #[test]
    fn forwarded_and_x_real_ip_name_the_source_behind_a_trusted_proxy() {
        let g = guard(GuardConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..GuardConfig::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.append(*name, value.parse().unwrap());
            }
            h
        };
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[("x-real-ip", "203.0.113.9")], "203.0.113.9"),
            (&[("x-real-ip", " 2001:db8::1 ")], "2001:db8::"),
            (&[("x-real-ip", "nonsense")], "10.0.0.1"),
            (
                &[(
                    "forwarded",
                    "for=198.51.100.7;proto=https, for=\"10.2.2.2:8080\"",
                )],
                "198.51.100.7",
            ),
            (
                &[("forwarded", "For=\"[2001:db8:cafe::17]:4711\"")],
                "2001:db8:cafe::",
            ),
            (&[("forwarded", "for=192.0.2.43:47011")], "192.0.2.43"),
            (&[("forwarded", "for=unknown")], "10.0.0.1"),
            (&[("forwarded", "proto=https")], "10.0.0.1"),
            // X-Forwarded-For first: nginx sends both, Traefik and Envoy the first.
            (
                &[("x-real-ip", "192.0.2.1"), ("x-forwarded-for", "192.0.2.2")],
                "192.0.2.2",
            ),
            (
                &[("forwarded", "for=192.0.2.3"), ("x-real-ip", "192.0.2.1")],
                "192.0.2.3",
            ),
        ];
        for (pairs, want) in cases {
            let h = headers(pairs);
            assert_eq!(g.source(from("10.0.0.1", &h)), ip(want), "{pairs:?}");
            // Never believed from anyone else.
            assert_eq!(g.source(from("192.0.2.99", &h)), ip("192.0.2.99"));
        }
    }

    #[test]
    fn disabled_counts_nothing() {
        let g = guard(GuardConfig {
            enabled: false,
            threshold: 1,
            ..GuardConfig::default()
        });
        let h = HeaderMap::new();
        let c = from("192.0.2.1", &h);
        let unknown = Reason::UnknownKey;
        assert_eq!(g.refuse(c, Some(KEY), unknown, at(0)), unknown);
        assert_eq!(g.refuse(c, Some(KEY), unknown, at(1)), unknown);
        assert!(g.sources.is_empty());
    }
}
