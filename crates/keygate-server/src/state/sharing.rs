//! Key-sharing detection (`[plans.NAME.sharing]`): distinct source networks per key per UTC
//! hour, counted at the usage flush; a key reaching its plan's threshold is recorded once per
//! hour across the deployment (`Store::record_key_sharing`), which audits it, announces
//! `key.sharing_suspected` and, with `action = "disable"`, disables the key.
//!
//! The hot path only queues: a request of a watched key adds its network to the key's pending
//! list under one short lock (keys on plans without `sharing` never get here). The queue is
//! bounded: [`MAX_PENDING_PER_KEY`] networks per key and [`MAX_PENDING_KEYS`] keys between two
//! flushes; beyond that, networks are dropped (counted in `keygate_key_sharing_dropped_total`),
//! which can only delay a suspicion: a shared key's networks come back in the next interval.
//!
//! Counting: with `[limits] backend = "redis"`, a HyperLogLog per key and hour in Redis
//! (`kg:sharing:{key id}:{hour ms}`), every pending key in one pipelined round trip, so the
//! nodes count together. Otherwise this node counts exactly, per key and hour, a set of at
//! most the threshold's network values: at thresholds of tens the exact set is both smaller and
//! more accurate than an HLL (whose standard error is 0.81%). The Redis count is bounded by the
//! limiter's background budget (its connection timeout), not a request's milliseconds. When
//! Redis fails even so, the flush counts locally for that interval (this node's view only)
//! rather than losing the networks.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keygate_core::{KeyId, Timestamp};
use keygate_store::{Store, StoreError, HOUR_MS};
use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::policy::sharing::{network, Sharing};
use crate::state::locks::lock;
use crate::state::replica::{KeyEntry, KEY_SUBJECT_PREFIX};

/// Networks of one key queued between two flushes, at most.
pub(crate) const MAX_PENDING_PER_KEY: usize = 64;
/// Keys with queued networks between two flushes, at most.
pub(crate) const MAX_PENDING_KEYS: usize = 100_000;
/// Keys counted locally in one hour, at most (the local counter's memory bound).
pub(crate) const MAX_COUNTED_KEYS: usize = 100_000;

#[derive(Debug)]
struct Pending {
    rule: Sharing,
    networks: SmallVec<[u64; 4]>,
}

/// A key's exact count in the current hour.
#[derive(Debug, Default)]
struct Counted {
    networks: HashSet<u64>,
    reported: bool,
}

#[derive(Debug, Default)]
struct Hourly {
    hour: i64,
    keys: HashMap<SmolStr, Counted>,
}

/// The detector of one node.
#[derive(Debug, Default)]
pub struct SharingDetector {
    pending: Mutex<HashMap<SmolStr, Pending, foldhash::fast::RandomState>>,
    /// Exact counts (local backend), or with Redis only `reported`, reset each hour.
    hourly: Mutex<Hourly>,
    suspected: AtomicU64,
    dropped: AtomicU64,
}

impl SharingDetector {
    /// Notes that `key`, on a plan with `rule`, was used from `source`.
    pub fn observe(&self, key: &KeyEntry, rule: Sharing, source: IpAddr) {
        let net = network(source);
        let mut pending = lock(&self.pending);
        let full = pending.len() >= MAX_PENDING_KEYS;
        if let Some(p) = pending.get_mut(&key.limit_subject) {
            if p.networks.contains(&net) {
                return;
            }
            if p.networks.len() < MAX_PENDING_PER_KEY {
                p.networks.push(net);
                return;
            }
        } else if !full {
            let mut networks = SmallVec::new();
            networks.push(net);
            pending.insert(key.limit_subject.clone(), Pending { rule, networks });
            return;
        }
        drop(pending);
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Keys with networks queued for the next flush.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Counts the queued networks into the hour of `now` and records each key that reached its
    /// threshold. Returns how many suspicions this node recorded.
    ///
    /// # Errors
    /// The store's error; the keys not yet recorded are recounted and recorded at a later flush.
    pub async fn flush(
        &self,
        limits: &keygate_limits::Limits,
        store: &Store,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let taken = std::mem::take(&mut *lock(&self.pending));
        if taken.is_empty() {
            return Ok(0);
        }
        let hour = now.as_millis() - now.as_millis().rem_euclid(HOUR_MS);
        let batch: Vec<(SmolStr, Pending)> = taken.into_iter().collect();
        let remote = match limits.redis() {
            None => None,
            Some(redis) => {
                let ids: Vec<(&str, &[u64])> = batch
                    .iter()
                    .map(|(s, p)| (key_id(s), &p.networks[..]))
                    .collect();
                match redis
                    .count_networks(Timestamp::from_millis(hour), &ids)
                    .await
                {
                    Ok(counts) if counts.len() == batch.len() => Some(counts),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot count key-sharing networks in Redis; counting this interval on this node.");
                        None
                    }
                }
            }
        };
        let crossed = self.crossed(hour, &batch, remote.as_deref());
        let mut recorded = 0;
        for (subject, rule, networks) in crossed {
            let Ok(id) = KeyId::parse(key_id(&subject)) else {
                continue;
            };
            let at = Timestamp::from_millis(hour);
            match store
                .record_key_sharing(&id, at, networks, rule.action)
                .await
            {
                Ok(Some(_)) => {
                    recorded += 1;
                    self.suspected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key_id = %id, networks, action = rule.action.as_str(), "Key suspected of being shared: used from more source networks in an hour than its plan allows.");
                }
                Ok(None) | Err(StoreError::KeyNotFound(_)) => {}
                Err(e) => {
                    self.unreport(hour, &subject);
                    return Err(e);
                }
            }
        }
        Ok(recorded)
    }

    /// Adds the batch to this hour's counts (exactly, or Redis's `remote` estimates in the
    /// batch's order) and answers the keys that reached their threshold and were not yet
    /// reported this hour, marking them reported.
    fn crossed(
        &self,
        hour: i64,
        batch: &[(SmolStr, Pending)],
        remote: Option<&[u64]>,
    ) -> Vec<(SmolStr, Sharing, u64)> {
        let mut hourly = lock(&self.hourly);
        if hourly.hour != hour {
            *hourly = Hourly {
                hour,
                keys: HashMap::new(),
            };
        }
        let mut crossed = Vec::new();
        for (i, (subject, p)) in batch.iter().enumerate() {
            let threshold = u64::from(p.rule.networks_per_hour);
            if !hourly.keys.contains_key(subject) && hourly.keys.len() >= MAX_COUNTED_KEYS {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let counted = hourly.keys.entry(subject.clone()).or_default();
            if counted.reported {
                continue;
            }
            let count = match remote {
                Some(counts) => counts[i],
                None => {
                    for &n in &p.networks {
                        // Bounded by the threshold: beyond it the count no longer matters.
                        if (counted.networks.len() as u64) < threshold {
                            counted.networks.insert(n);
                        }
                    }
                    counted.networks.len() as u64
                }
            };
            if count >= threshold {
                counted.reported = true;
                counted.networks = HashSet::new();
                crossed.push((subject.clone(), p.rule, count));
            }
        }
        crossed
    }

    /// A record that failed: let a later flush try again.
    fn unreport(&self, hour: i64, subject: &SmolStr) {
        let mut hourly = lock(&self.hourly);
        if hourly.hour == hour {
            hourly.keys.remove(subject);
        }
    }

    /// `keygate_key_sharing_suspected_total`, `keygate_key_sharing_dropped_total` and
    /// `keygate_key_sharing_watched_keys` (keys counted this hour on this node).
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let watched = lock(&self.hourly).keys.len();
        let _ = write!(
            out,
            "# HELP keygate_key_sharing_suspected_total Keys this node recorded as suspected of being shared (one per key and hour across the deployment).\n\
             # TYPE keygate_key_sharing_suspected_total counter\n\
             keygate_key_sharing_suspected_total {}\n\
             # HELP keygate_key_sharing_dropped_total Source networks not queued or counted because the detector's bounds were reached.\n\
             # TYPE keygate_key_sharing_dropped_total counter\n\
             keygate_key_sharing_dropped_total {}\n\
             # HELP keygate_key_sharing_watched_keys Keys on a plan with sharing detection counted this hour on this node.\n\
             # TYPE keygate_key_sharing_watched_keys gauge\n\
             keygate_key_sharing_watched_keys {watched}\n",
            self.suspected.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        );
    }
}

fn key_id(subject: &str) -> &str {
    subject.strip_prefix(KEY_SUBJECT_PREFIX).unwrap_or(subject)
}
