//! Usage counting: requests per client, UTC day and status, counted in memory on the hot path
//! and added to the store by a periodic flush (and a last one at shutdown), which also writes
//! keys' last uses. A flush that fails puts its counts back, so a store outage delays usage
//! figures but loses none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use dashmap::DashMap;
use keygate_core::{Client, Timestamp};
use keygate_store::{Store, UsageRow};
use serde_json::{json, Value};
use smol_str::SmolStr;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::replica::ClientEntry;

const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct UsageKey {
    /// The client's limit subject (`c:cli_…`): inline, so counting allocates nothing.
    subject: SmolStr,
    /// Days since the epoch, UTC.
    day: i64,
    status: u16,
}

/// Counts not yet flushed. Entries of past days are dropped once flushed, so memory is bounded
/// by clients × statuses in use × days since the last flush.
#[derive(Debug, Default)]
pub struct UsageCounter {
    counts: DashMap<UsageKey, AtomicU64>,
}

impl UsageCounter {
    /// Counts one answered request of `client`.
    pub fn record(&self, client: &ClientEntry, now: Timestamp, status: u16) {
        let key = UsageKey {
            subject: client.limit_subject.clone(),
            day: now.as_millis().div_euclid(DAY_MS),
            status,
        };
        if let Some(n) = self.counts.get(&key) {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes every count so far, leaving zeros (entries of days before `now`'s are removed).
    pub fn drain(&self, now: Timestamp) -> Vec<UsageRow> {
        let today = now.as_millis().div_euclid(DAY_MS);
        let mut rows = Vec::new();
        self.counts.retain(|key, n| {
            let requests = n.swap(0, Ordering::AcqRel);
            if requests > 0 {
                rows.push(UsageRow {
                    client_id: key
                        .subject
                        .strip_prefix("c:")
                        .unwrap_or(&key.subject)
                        .to_owned(),
                    day: Timestamp::from_millis(key.day * DAY_MS).utc_day(),
                    status: key.status,
                    requests,
                });
            }
            key.day >= today
        });
        rows
    }

    /// Puts back counts whose flush failed.
    fn restore(&self, rows: Vec<UsageRow>) {
        for r in rows {
            let day = Timestamp::parse_rfc3339(&format!("{}T00:00:00Z", r.day))
                .map_or(0, |t| t.as_millis().div_euclid(DAY_MS));
            let key = UsageKey {
                subject: format!("c:{}", r.client_id).into(),
                day,
                status: r.status,
            };
            self.counts
                .entry(key)
                .or_default()
                .fetch_add(r.requests, Ordering::Relaxed);
        }
    }
}

/// Adds what was counted to the store, and keys' last uses ([`crate::last_used`]); on failure
/// keeps what was not written for the next flush. Returns how many rows were written (usage
/// rows plus keys whose last use moved).
///
/// # Errors
/// The store's error (already logged by the caller's policy).
pub async fn flush(gw: &Gateway, store: &Store) -> Result<usize, keygate_store::StoreError> {
    let uses = gw.last_used.flush(store).await;
    let rows = gw.usage.drain(gw.clock.now());
    let n = rows.len();
    match store.add_usage(&rows).await {
        Ok(()) => Ok(n + uses?),
        Err(e) => {
            gw.usage.restore(rows);
            Err(e)
        }
    }
}

/// Flushes every `interval` until shutdown, then once more.
pub async fn run(
    gw: Arc<Gateway>,
    store: Store,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(e) = flush(&gw, &store).await {
            tracing::warn!(error = %e, "Cannot write usage counts or last uses; keeping them for the next flush.");
        }
        if stop {
            return;
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
