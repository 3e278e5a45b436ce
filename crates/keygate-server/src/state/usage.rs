//! Usage counting: requests per client, UTC day and status, WebSocket egress (messages and
//! bytes delivered) per client and UTC day, and (with `[analytics] enabled`)
//! per key, route, status and hour, upstream latency histograms per route and upstream, and
//! WebSocket activity per client: counted in memory on the hot path and added to the store by
//! a periodic flush (and a last one at shutdown), which also writes keys' last uses. A flush
//! that fails puts its counts back, so a store outage delays the figures but loses none.
//!
//! One map entry per request, as before analytics: the daily usage rows are sums of the hourly
//! counts, made at the flush. Keys are inline subjects and interned route and upstream ids, so
//! a request clones no reference count and allocates nothing once its entry exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use keygate_core::{Client, Timestamp};
use keygate_store::{
    AnalyticsBatch, LatencyCount, RequestCount, Store, UsageRow, UsageWsRow, WsCount, HOUR_MS,
    LATENCY_BUCKETS,
};
use serde_json::{json, Value};
use smol_str::SmolStr;

use crate::state::last_used::LastUsed;
use crate::state::locks::lock;
use crate::state::per_worker::PerWorker;
use crate::state::replica::ClientEntry;

const DAY_MS: i64 = 86_400_000;

/// What one request count is of: the client's limit subject (`c:cli_…`, inline), the key's
/// (`k:key_…`; empty with analytics off), the hour (hours since the epoch; with analytics off
/// the day's first hour, so the map is no larger than a daily one), the interned route (0: no
/// route or analytics off) and the status.
type UsageKey = (SmolStr, SmolStr, i64, u32, u16);

/// An hour's latency histogram of an interned route and upstream.
type LatencyKey = (i64, u32, u32);

/// A latency histogram: count, sum (µs), and one count per bucket (not cumulative).
#[derive(Clone, Copy, Debug, Default)]
struct Histogram {
    count: u64,
    sum_us: u64,
    buckets: [u64; LATENCY_BUCKETS],
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        self.count += other.count;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b += o;
        }
    }
}

/// A client's WebSocket activity in an hour: sessions opened, messages and bytes delivered.
type WsKey = (SmolStr, i64);

/// Counts of one worker thread.
#[derive(Debug, Default)]
struct Shard {
    requests: HashMap<UsageKey, u64, foldhash::fast::RandomState>,
    latency: HashMap<LatencyKey, Histogram, foldhash::fast::RandomState>,
    ws: HashMap<WsKey, [u64; 3], foldhash::fast::RandomState>,
}

/// The lock is the worker's own but for the flush's moment.
type Counts = Mutex<Shard>;

/// Route and upstream names by small id, so counts are keyed by a `u32` instead of a shared
/// string. Interned when a configuration is loaded (never on a request); id 0 is "none". Names
/// are never forgotten: a node sees as many as its configurations ever named.
#[derive(Debug)]
struct Names {
    by_id: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

impl Default for Names {
    fn default() -> Self {
        let none: Arc<str> = Arc::from("");
        Names {
            by_id: vec![Arc::clone(&none)],
            ids: HashMap::from([(none, 0)]),
        }
    }
}

/// The interned ids of one configuration's routes and upstreams, in its tables' order.
#[derive(Clone, Debug, Default)]
pub struct AnalyticsIds {
    routes: Box<[u32]>,
    upstreams: Box<[u32]>,
}

impl AnalyticsIds {
    /// Route `i`'s id (0 for none).
    pub fn route(&self, i: Option<usize>) -> u32 {
        i.and_then(|i| self.routes.get(i)).copied().unwrap_or(0)
    }

    /// Upstream `i`'s id.
    pub fn upstream(&self, i: usize) -> u32 {
        self.upstreams.get(i).copied().unwrap_or(0)
    }
}

/// Counts not yet flushed, one map set per worker thread (`crate::state::per_worker`): a shared
/// map's locks and counters bounced between the cores on every request. A flush empties the
/// maps, so memory is bounded by what is in use between two flushes.
#[derive(Debug)]
pub struct UsageCounter {
    counts: PerWorker<Counts>,
    names: Mutex<Names>,
}

/// Counts taken by a drain, summed over the workers: written by a flush, or put back.
#[derive(Debug, Default)]
pub struct Drained {
    requests: HashMap<UsageKey, u64>,
    latency: HashMap<LatencyKey, Histogram>,
    ws: HashMap<WsKey, [u64; 3]>,
}

fn hour_of(now: Timestamp) -> i64 {
    now.as_millis().div_euclid(HOUR_MS)
}

fn strip(subject: &str) -> String {
    subject.get(2..).unwrap_or_default().to_owned()
}

impl UsageCounter {
    /// Counters for `workers` worker threads (and any other).
    pub fn new(workers: usize) -> Self {
        UsageCounter {
            counts: PerWorker::new(workers, Counts::default),
            names: Mutex::default(),
        }
    }

    /// Interns the names of `routes` and `upstreams` (a configuration's, at load and reload).
    pub fn ids<'a>(
        &self,
        routes: impl Iterator<Item = &'a str>,
        upstreams: impl Iterator<Item = &'a str>,
    ) -> AnalyticsIds {
        let mut names = lock(&self.names);
        let mut intern = |name: &str| {
            if let Some(&id) = names.ids.get(name) {
                return id;
            }
            let id = u32::try_from(names.by_id.len()).unwrap_or(0);
            let name: Arc<str> = Arc::from(name);
            names.by_id.push(Arc::clone(&name));
            names.ids.insert(name, id);
            id
        };
        AnalyticsIds {
            routes: routes.map(&mut intern).collect(),
            upstreams: upstreams.map(&mut intern).collect(),
        }
    }

    fn name(&self, id: u32) -> String {
        let names = lock(&self.names);
        names
            .by_id
            .get(id as usize)
            .map_or_else(String::new, |n| n.to_string())
    }

    /// Counts one answered request of `client`: by day only when `key` is `None` (analytics
    /// off), else by `key`, interned `route` and hour.
    pub fn record(
        &self,
        client: &ClientEntry,
        key: Option<&SmolStr>,
        route: u32,
        now: Timestamp,
        status: u16,
    ) {
        let entry = match key {
            Some(key) => (
                client.limit_subject.clone(),
                key.clone(),
                hour_of(now),
                route,
                status,
            ),
            None => (
                client.limit_subject.clone(),
                SmolStr::default(),
                now.as_millis().div_euclid(DAY_MS) * 24,
                0,
                status,
            ),
        };
        *lock(self.counts.local()).requests.entry(entry).or_default() += 1;
    }

    /// Counts one upstream answer's latency (request sent to response head).
    pub fn record_latency(&self, route: u32, upstream: u32, now: Timestamp, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut shard = lock(self.counts.local());
        let h = shard
            .latency
            .entry((hour_of(now), route, upstream))
            .or_default();
        h.count += 1;
        h.sum_us = h.sum_us.saturating_add(us);
        h.buckets[LatencyCount::bucket_of(us)] += 1;
    }

    /// Counts WebSocket activity of `client`: sessions opened, messages and bytes delivered.
    pub fn record_ws(
        &self,
        client: &ClientEntry,
        now: Timestamp,
        sessions: u64,
        messages: u64,
        bytes: u64,
    ) {
        let mut shard = lock(self.counts.local());
        let c = shard
            .ws
            .entry((client.limit_subject.clone(), hour_of(now)))
            .or_default();
        c[0] += sessions;
        c[1] += messages;
        c[2] += bytes;
    }

    /// Takes every count so far, summed over the workers.
    pub fn drain(&self) -> Drained {
        let mut d = Drained::default();
        for counts in self.counts.iter() {
            let mut shard = lock(counts);
            for (key, n) in shard.requests.drain() {
                *d.requests.entry(key).or_default() += n;
            }
            for (key, h) in shard.latency.drain() {
                d.latency.entry(key).or_default().add(&h);
            }
            for (key, c) in shard.ws.drain() {
                let t = d.ws.entry(key).or_default();
                for (t, c) in t.iter_mut().zip(c) {
                    *t += c;
                }
            }
        }
        d
    }

    /// What `drained` writes: usage rows per client, day and status (summed over keys,
    /// routes and hours), WebSocket egress per client and day (summed over hours), and the
    /// analytics batch (its WebSocket rows only when `analytics` is on: the egress counts are
    /// taken either way, once, and written in both shapes).
    pub fn rows(
        &self,
        drained: &Drained,
        analytics: bool,
    ) -> (Vec<UsageRow>, Vec<UsageWsRow>, AnalyticsBatch) {
        let mut daily: HashMap<(&SmolStr, i64, u16), u64> = HashMap::new();
        let mut batch = AnalyticsBatch::default();
        for ((client, key, hour, route, status), &n) in &drained.requests {
            if n == 0 {
                continue;
            }
            *daily
                .entry((client, hour.div_euclid(24), *status))
                .or_default() += n;
            if !key.is_empty() {
                batch.requests.push(RequestCount {
                    hour: *hour,
                    client_id: strip(client),
                    key_id: strip(key),
                    route: self.name(*route),
                    status: *status,
                    requests: n,
                });
            }
        }
        for (&(hour, route, upstream), h) in &drained.latency {
            batch.latency.push(LatencyCount {
                hour,
                route: self.name(route),
                upstream: self.name(upstream),
                count: h.count,
                sum_us: h.sum_us,
                buckets: h.buckets,
            });
        }
        let mut egress: HashMap<(&SmolStr, i64), [u64; 2]> = HashMap::new();
        for ((client, hour), c) in &drained.ws {
            if c[1] > 0 {
                let e = egress.entry((client, hour.div_euclid(24))).or_default();
                e[0] += c[1];
                e[1] = e[1].saturating_add(c[2]);
            }
            if analytics {
                batch.ws.push(WsCount {
                    hour: *hour,
                    client_id: strip(client),
                    sessions: c[0],
                    messages: c[1],
                    bytes: c[2],
                });
            }
        }
        let usage_ws = egress
            .into_iter()
            .map(|((client, day), [messages, bytes])| UsageWsRow {
                client_id: strip(client),
                day: Timestamp::from_millis(day * DAY_MS).utc_day(),
                messages,
                bytes,
            })
            .collect();
        let usage = daily
            .into_iter()
            .map(|((client, day, status), requests)| UsageRow {
                client_id: strip(client),
                day: Timestamp::from_millis(day * DAY_MS).utc_day(),
                status,
                requests,
            })
            .collect();
        (usage, usage_ws, batch)
    }

    /// Puts back counts whose flush failed.
    fn restore(&self, drained: Drained) {
        let mut shard = lock(self.counts.local());
        for (key, n) in drained.requests {
            *shard.requests.entry(key).or_default() += n;
        }
        for (key, h) in drained.latency {
            shard.latency.entry(key).or_default().add(&h);
        }
        for (key, c) in drained.ws {
            let t = shard.ws.entry(key).or_default();
            for (t, c) in t.iter_mut().zip(c) {
                *t += c;
            }
        }
    }
}

/// What a flush writes, and all it may touch of the gateway: the usage counts and keys' last uses.
#[derive(Clone, Copy, Debug)]
pub struct Unflushed<'a> {
    pub usage: &'a UsageCounter,
    pub last_used: &'a LastUsed,
    /// `[analytics] enabled`: write the hourly WebSocket rows too.
    pub analytics: bool,
}

/// Adds what was counted to the store (usage and analytics in one transaction), and keys'
/// last uses ([`crate::state::last_used`]); on failure keeps what was not written for the next
/// flush. Returns how many rows were written (usage rows plus keys whose last use moved).
///
/// # Errors
/// The store's error (already logged by the caller's policy).
pub async fn flush<'a>(
    unflushed: impl Into<Unflushed<'a>>,
    store: &Store,
) -> Result<usize, keygate_store::StoreError> {
    let Unflushed {
        usage,
        last_used,
        analytics,
    } = unflushed.into();
    let uses = last_used.flush(store).await;
    let drained = usage.drain();
    let (rows, usage_ws, batch) = usage.rows(&drained, analytics);
    let n = rows.len() + usage_ws.len();
    match store.add_counts(&rows, &usage_ws, &batch).await {
        Ok(()) => Ok(n + uses?),
        Err(e) => {
            usage.restore(drained);
            Err(e)
        }
    }
}

/// A client's usage over `from..=to` as the admin API, the CLI and the portal show it:
/// requests per day with a count per status, WebSocket messages and bytes delivered per day
/// (days with neither left out), and the totals.
pub fn report(
    client: &Client,
    from: &str,
    to: &str,
    rows: &[UsageRow],
    ws: &[UsageWsRow],
) -> Value {
    #[derive(Default)]
    struct Day {
        statuses: BTreeMap<String, u64>,
        ws: [u64; 2],
    }
    let mut days: BTreeMap<&str, Day> = BTreeMap::new();
    for r in rows {
        *days
            .entry(&r.day)
            .or_default()
            .statuses
            .entry(r.status.to_string())
            .or_default() += r.requests;
    }
    for w in ws {
        let d = &mut days.entry(&w.day).or_default().ws;
        d[0] += w.messages;
        d[1] = d[1].saturating_add(w.bytes);
    }
    let (mut total, mut messages, mut bytes) = (0, 0u64, 0u64);
    let days: Vec<Value> = days
        .into_iter()
        .map(|(day, d)| {
            let sum: u64 = d.statuses.values().sum();
            total += sum;
            messages += d.ws[0];
            bytes = bytes.saturating_add(d.ws[1]);
            json!({
                "day": day,
                "requests": sum,
                "by_status": d.statuses,
                "ws_messages": d.ws[0],
                "ws_bytes": d.ws[1],
            })
        })
        .collect();
    json!({
        "client_id": client.id,
        "client": client.name,
        "from": from,
        "to": to,
        "requests": total,
        "ws_messages": messages,
        "ws_bytes": bytes,
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
        usage.record(&a, None, 0, day1, 200);
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (usage, a, a_changed, b) =
                    (Arc::clone(&usage), a.clone(), a_changed.clone(), b.clone());
                std::thread::spawn(move || {
                    crate::state::per_worker::enter(w);
                    for _ in 0..10 {
                        usage.record(&a, None, 0, day1, 200);
                        usage.record(&a_changed, None, 0, day1, 200);
                    }
                    usage.record(&a, None, 0, day2, 429);
                    usage.record(&b, None, 0, day1, 200);
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
        let drained = usage.drain();
        assert_eq!(sorted(usage.rows(&drained, false).0), expected);
        assert!(
            usage.rows(&usage.drain(), false).0.is_empty(),
            "a drain takes everything"
        );
        usage.restore(drained);
        usage.record(&b, None, 0, day1, 200);
        let mut again = expected;
        again[2].3 += 1;
        assert_eq!(sorted(usage.rows(&usage.drain(), false).0), again);
    }

    #[test]
    fn analytics_counts_are_kept_per_key_route_and_hour_and_daily_usage_is_their_sum() {
        let usage = UsageCounter::new(1);
        let ids = usage.ids(["odds", "scores"].into_iter(), ["feed"].into_iter());
        assert_eq!(ids.route(None), 0, "no route");
        let again = usage.ids(["scores"].into_iter(), std::iter::empty());
        assert_eq!(
            again.route(Some(0)),
            ids.route(Some(1)),
            "a name keeps its id"
        );
        let a = entry("cli_000000000000000a");
        let key: SmolStr = "k:key_000000000000000a".into();
        let h = Timestamp::from_millis(HOUR_MS * 500_000 + 5);
        let next = Timestamp::from_millis(HOUR_MS * 500_001 + 5);
        usage.record(&a, Some(&key), ids.route(Some(0)), h, 200);
        usage.record(&a, Some(&key), ids.route(Some(0)), h, 200);
        usage.record(&a, Some(&key), ids.route(Some(1)), next, 429);
        usage.record_latency(
            ids.route(Some(0)),
            ids.upstream(0),
            h,
            Duration::from_micros(700),
        );
        usage.record_latency(
            ids.route(Some(0)),
            ids.upstream(0),
            h,
            Duration::from_millis(7),
        );
        usage.record_ws(&a, h, 1, 0, 0);
        usage.record_ws(&a, h, 0, 2, 30);
        let drained = usage.drain();
        let (daily, egress, batch) = usage.rows(&drained, true);
        assert_eq!(
            egress,
            [UsageWsRow {
                client_id: "cli_000000000000000a".into(),
                day: h.utc_day(),
                messages: 2,
                bytes: 30,
            }],
            "egress per day, from the same counts as the hourly rows"
        );
        assert_eq!(
            sorted(daily),
            [
                ("cli_000000000000000a".to_owned(), h.utc_day(), 200, 2),
                ("cli_000000000000000a".to_owned(), h.utc_day(), 429, 1),
            ]
        );
        let mut requests: Vec<_> = batch
            .requests
            .iter()
            .map(|r| {
                (
                    r.hour,
                    r.key_id.as_str(),
                    r.route.as_str(),
                    r.status,
                    r.requests,
                )
            })
            .collect();
        requests.sort_unstable();
        assert_eq!(
            requests,
            [
                (500_000, "key_000000000000000a", "odds", 200, 2),
                (500_001, "key_000000000000000a", "scores", 429, 1),
            ]
        );
        let l = &batch.latency[0];
        assert_eq!(
            (l.route.as_str(), l.upstream.as_str(), l.count, l.sum_us),
            ("odds", "feed", 2, 7_700)
        );
        assert_eq!(
            (l.buckets[0], l.buckets[3]),
            (1, 1),
            "0.7 ms ≤ 1 ms; 7 ms in (5, 10]"
        );
        let w = &batch.ws[0];
        assert_eq!((w.sessions, w.messages, w.bytes), (1, 2, 30));
        // A failed flush puts everything back.
        usage.restore(drained);
        let (_, egress, again) = usage.rows(&usage.drain(), true);
        assert_eq!(
            (again.requests.len(), again.latency.len(), again.ws.len()),
            (2, 1, 1)
        );
        assert_eq!(egress.len(), 1);
        // Analytics off: the egress is still kept with usage; no hourly WebSocket rows.
        usage.record_ws(&a, h, 0, 3, 9);
        let (_, egress, batch) = usage.rows(&usage.drain(), false);
        assert_eq!((egress[0].messages, egress[0].bytes), (3, 9));
        assert!(batch.ws.is_empty());
    }
}
