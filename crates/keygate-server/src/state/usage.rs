//! Usage counting: requests per client, UTC day and status, counted in memory on the hot path
//! and added to the store by a periodic flush (and a last one at shutdown), which also writes
//! keys' last uses. A flush that fails puts its counts back, so a store outage delays usage
//! figures but loses none.

use std::collections::HashMap;
use std::sync::Mutex;

use std::collections::BTreeMap;

use keygate_core::{Client, Timestamp};
use keygate_store::{Store, UsageRow};
use serde_json::{json, Value};
use smol_str::SmolStr;

use crate::state::last_used::LastUsed;
use crate::state::locks::lock;
use crate::state::per_worker::PerWorker;
use crate::state::replica::ClientEntry;

const DAY_MS: i64 = 86_400_000;

/// What one count is of: a client's limit subject (`c:cli_…`, inline, so a key costs no
/// allocation and no shared reference count), the UTC day (days since the epoch), the status.
type UsageKey = (SmolStr, i64, u16);

/// Counts of one worker thread. The lock is the worker's own but for the flush's moment.
type Counts = Mutex<HashMap<UsageKey, u64, foldhash::fast::RandomState>>;

/// Counts not yet flushed, one map per worker thread (`crate::state::per_worker`): a shared map's
/// locks and counters bounced between the cores on every request. A flush empties the maps, so
/// memory is bounded by clients × statuses in use between two flushes.
#[derive(Debug)]
pub struct UsageCounter {
    counts: PerWorker<Counts>,
}

fn count(counts: &Counts, subject: &SmolStr, day: i64, status: u16, n: u64) {
    *lock(counts)
        .entry((subject.clone(), day, status))
        .or_default() += n;
}

impl UsageCounter {
    /// Counters for `workers` worker threads (and any other).
    pub fn new(workers: usize) -> Self {
        UsageCounter {
            counts: PerWorker::new(workers, Counts::default),
        }
    }

    /// Counts one answered request of `client`.
    pub fn record(&self, client: &ClientEntry, now: Timestamp, status: u16) {
        let day = now.as_millis().div_euclid(DAY_MS);
        count(self.counts.local(), &client.limit_subject, day, status, 1);
    }

    /// Takes every count so far, summed over the workers.
    pub fn drain(&self) -> Vec<UsageRow> {
        let mut summed: HashMap<UsageKey, u64> = HashMap::new();
        for counts in self.counts.iter() {
            for (key, n) in lock(counts).drain() {
                *summed.entry(key).or_default() += n;
            }
        }
        summed
            .into_iter()
            .filter(|&(_, requests)| requests > 0)
            .map(|((subject, day, status), requests)| UsageRow {
                client_id: subject.strip_prefix("c:").unwrap_or(&subject).to_owned(),
                day: Timestamp::from_millis(day * DAY_MS).utc_day(),
                status,
                requests,
            })
            .collect()
    }

    /// Puts back counts whose flush failed.
    fn restore(&self, rows: Vec<UsageRow>) {
        let shared = self.counts.local();
        for r in rows {
            let day = Timestamp::parse_rfc3339(&format!("{}T00:00:00Z", r.day))
                .map_or(0, |t| t.as_millis().div_euclid(DAY_MS));
            let subject = smol_str::format_smolstr!("c:{}", r.client_id);
            count(shared, &subject, day, r.status, r.requests);
        }
    }
}

/// What a flush writes, and all it may touch of the gateway: the usage counts and keys' last uses.
#[derive(Clone, Copy, Debug)]
pub struct Unflushed<'a> {
    pub usage: &'a UsageCounter,
    pub last_used: &'a LastUsed,
}

/// Adds what was counted to the store, and keys' last uses ([`crate::state::last_used`]); on failure
/// keeps what was not written for the next flush. Returns how many rows were written (usage
/// rows plus keys whose last use moved).
///
/// # Errors
/// The store's error (already logged by the caller's policy).
pub async fn flush<'a>(
    unflushed: impl Into<Unflushed<'a>>,
    store: &Store,
) -> Result<usize, keygate_store::StoreError> {
    let Unflushed { usage, last_used } = unflushed.into();
    let uses = last_used.flush(store).await;
    let rows = usage.drain();
    let n = rows.len();
    match store.add_usage(&rows).await {
        Ok(()) => Ok(n + uses?),
        Err(e) => {
            usage.restore(rows);
            Err(e)
        }
    }
}

/// A client's usage over `from..=to` as the admin API and the CLI show it: requests per day
/// with a count per status (days without requests left out), and the total.
pub fn report(client: &Client, from: &str, to: &str, rows: &[UsageRow]) -> Value {
    let mut days: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for r in rows {
        *days
            .entry(&r.day)
            .or_default()
            .entry(r.status.to_string())
            .or_default() += r.requests;
    }
    let mut total = 0;
    let days: Vec<Value> = days
        .into_iter()
        .map(|(day, statuses)| {
            let sum: u64 = statuses.values().sum();
            total += sum;
            json!({ "day": day, "requests": sum, "by_status": statuses })
        })
        .collect();
    json!({
        "client_id": client.id,
        "client": client.name,
        "from": from,
        "to": to,
        "requests": total,
        "days": days,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keygate_core::{ClientId, LimitOverrides};
    use keygate_store::Snapshot;

    use super::*;
    use crate::state::replica::Replica;

    fn entry(id: &str) -> Arc<ClientEntry> {
        let replica = Replica::new();
        let id = ClientId::parse(id).unwrap();
        let client = Client {
            id: id.clone(),
            name: "Acme".into(),
            plan: "pro".into(),
            scopes: vec![],
            sports: vec![],
            bookmakers: vec![],
            limits: LimitOverrides::default(),
            active: true,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            parent: None,
            metadata: Default::default(),
        };
        let snapshot = Snapshot {
            version: 1,
            clients: vec![client],
            ..Default::default()
        };
        replica.load(&snapshot, &|_: &str| Vec::new());
        replica.client(&id).unwrap()
    }

    fn sorted(mut rows: Vec<UsageRow>) -> Vec<(String, String, u16, u64)> {
        rows.sort_by(|a, b| {
            (&a.client_id, &a.day, a.status).cmp(&(&b.client_id, &b.day, b.status))
        });
        rows.into_iter()
            .map(|r| (r.client_id, r.day, r.status, r.requests))
            .collect()
    }

    #[test]
    fn workers_counts_are_summed_by_client_day_and_status_and_restored_after_a_failed_flush() {
        let usage = Arc::new(UsageCounter::new(2));
        let a = entry("cli_000000000000000a");
        // The same client after a change: a new entry, the same subject.
        let a_changed = entry("cli_000000000000000a");
        let b = entry("cli_000000000000000b");
        let day1 = Timestamp::from_millis(DAY_MS * 20_000 + 5);
        let day2 = Timestamp::from_millis(DAY_MS * 20_001 + 5);
        usage.record(&a, day1, 200);
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (usage, a, a_changed, b) =
                    (Arc::clone(&usage), a.clone(), a_changed.clone(), b.clone());
                std::thread::spawn(move || {
                    crate::state::per_worker::enter(w);
                    for _ in 0..10 {
                        usage.record(&a, day1, 200);
                        usage.record(&a_changed, day1, 200);
                    }
                    usage.record(&a, day2, 429);
                    usage.record(&b, day1, 200);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let expected = vec![
            ("cli_000000000000000a".to_owned(), day1.utc_day(), 200, 41),
            ("cli_000000000000000a".to_owned(), day2.utc_day(), 429, 2),
            ("cli_000000000000000b".to_owned(), day1.utc_day(), 200, 2),
        ];
        let rows = usage.drain();
        assert_eq!(sorted(rows.clone()), expected);
        assert!(usage.drain().is_empty(), "a drain takes everything");
        usage.restore(rows);
        usage.record(&b, day1, 200);
        let mut again = expected;
        again[2].3 += 1;
        assert_eq!(sorted(usage.drain()), again);
    }
}
