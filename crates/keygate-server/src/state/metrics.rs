//! Request counters and the decision-latency histogram, exposed as Prometheus text.
//!
//! Written here rather than through a metrics facade because every request touches it: a
//! per-route array of atomics indexed by outcome costs one relaxed add, with no label hashing
//! or allocation on the hot path, and each worker thread adds to its own copy
//! (`crate::state::per_worker`), summed when read. The exposition format is a few lines of text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::decision::Reason;

use crate::state::per_worker::PerWorker;

/// What happened to a request, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Public,
    Denied(Reason),
    /// Answered by keygate itself (whoami, verify, infra).
    Local,
}

const OUTCOMES: usize = 3 + Reason::ALL.len();

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Forwarded => 0,
            Outcome::Public => 1,
            Outcome::Local => 2,
            Outcome::Denied(r) => 3 + r.index(),
        }
    }

    /// The outcome as the metrics and spans name it: `forwarded`, `public`, `local` or the
    /// refusal's reason code.
    pub(crate) fn name(self) -> &'static str {
        Outcome::label(self.index())
    }

    fn label(i: usize) -> &'static str {
        match i {
            0 => "forwarded",
            1 => "public",
            2 => "local",
            _ => Reason::ALL[i - 3].code(),
        }
    }
}

/// Status codes are counted in classes 1xx..5xx, plus the exact codes keygate itself emits.
const STATUS_SLOTS: usize = 600;

/// Upper bounds of the decision-latency buckets, in nanoseconds.
const BUCKETS_NS: [u64; 10] = [
    500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 1_000_000,
];

struct RouteCounters {
    outcomes: [AtomicU64; OUTCOMES],
    statuses: Box<[AtomicU64]>,
}

impl RouteCounters {
    fn new() -> Self {
        RouteCounters {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The decision-latency histogram one worker thread writes.
struct Decisions {
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// The counters one worker thread writes. Shared (`Arc`) with the next configuration's
/// metrics after a reload, route by route name, so requests still running on the old
/// configuration count in the same cells as the new ones and nothing is copied or lost.
struct Shard {
    /// One per route, plus one for requests that matched no route.
    routes: Vec<Arc<RouteCounters>>,
    decisions: Arc<Decisions>,
}

impl Shard {
    fn new(routes: usize) -> Self {
        Shard {
            routes: (0..=routes)
                .map(|_| Arc::new(RouteCounters::new()))
                .collect(),
            decisions: Arc::new(Decisions {
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_ns: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }),
        }
    }
}

/// All counters of one gateway process.
pub struct Metrics {
    route_names: Vec<String>,
    shards: PerWorker<Shard>,
    /// Request handlers that panicked and were answered 500 (`crate::runtime::service::guard_panics`).
    panics: Arc<AtomicU64>,
    /// Tokens in leak reports: reported, ours (true positives), revoked by the report.
    leaks: Arc<[AtomicU64; 3]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.route_names)
            .finish()
    }
}

/// Gauges read at exposition time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub limiter: Option<keygate_limits::LimitStats>,
    pub replica_keys: usize,
    pub replica_clients: usize,
    pub feed_version: i64,
    pub feed_lag_seconds: f64,
    pub store_up: bool,
    pub store_down_seconds: f64,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// Counters for `route_names` written by `workers` worker threads (and any other).
    pub fn new(route_names: Vec<String>, workers: usize) -> Self {
        let routes = route_names.len();
        Metrics {
            route_names,
            shards: PerWorker::new(workers, || Shard::new(routes)),
            panics: Arc::new(AtomicU64::new(0)),
            leaks: Arc::default(),
        }
    }

    /// The route names counted, in the route table's order.
    pub fn route_names(&self) -> &[String] {
        &self.route_names
    }

    /// Counters for a reloaded route table: each route named as before keeps its counters
    /// (shared, so `/metrics` stays monotonic and requests finishing on the old configuration
    /// are counted too), new routes start from zero; the decision histogram, the unmatched
    /// requests and the panics are the same counters.
    pub fn carried_to(&self, route_names: Vec<String>, workers: usize) -> Metrics {
        let mut old = self.shards.iter();
        let shards = PerWorker::new(workers, || {
            let Some(old) = old.next() else {
                return Shard::new(route_names.len());
            };
            let mut routes: Vec<Arc<RouteCounters>> = route_names
                .iter()
                .map(
                    |name| match self.route_names.iter().position(|n| n == name) {
                        Some(o) => Arc::clone(&old.routes[o]),
                        None => Arc::new(RouteCounters::new()),
                    },
                )
                .collect();
            routes.push(Arc::clone(&old.routes[self.route_names.len()]));
            Shard {
                routes,
                decisions: Arc::clone(&old.decisions),
            }
        });
        Metrics {
            route_names,
            shards,
            panics: Arc::clone(&self.panics),
            leaks: Arc::clone(&self.leaks),
        }
    }

    /// Counts one request; `route` is `None` when no route matched.
    pub fn record(&self, route: Option<usize>, outcome: Outcome, status: u16) {
        let routes = &self.shards.local().routes;
        let counters = &routes[route
            .unwrap_or(self.route_names.len())
            .min(self.route_names.len())];
        counters.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = counters.statuses.get(usize::from(status)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request whose handler panicked.
    pub fn record_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the tokens of one leak report (`crate::leak_reports`).
    pub fn record_leak_reports(&self, reported: usize, ours: usize, revoked: usize) {
        for (counter, n) in self.leaks.iter().zip([reported, ours, revoked]) {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Records how long the authentication and authorization decision took.
    pub fn observe_decision(&self, nanos: u64) {
        let bucket = BUCKETS_NS
            .iter()
            .position(|&b| nanos <= b)
            .unwrap_or(BUCKETS_NS.len());
        let shard = self.shards.local();
        shard.decisions.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.decisions.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        shard.decisions.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Total requests counted with an outcome, over all routes.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.routes)
            .map(|r| r.outcomes[outcome.index()].load(Ordering::Relaxed))
            .sum()
    }

    /// One counter summed over the workers' copies.
    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let name_of = |i: usize| self.route_names.get(i).map_or("(none)", String::as_str);
        out.push_str("# HELP keygate_requests_total Requests by route and outcome (forwarded, public, local, or a refusal reason).\n");
        out.push_str("# TYPE keygate_requests_total counter\n");
        for i in 0..=self.route_names.len() {
            for o in 0..OUTCOMES {
                let v = self.sum(|s| &s.routes[i].outcomes[o]);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_requests_total{{route=\"{}\",outcome=\"{}\"}} {v}",
                        escape(name_of(i)),
                        Outcome::label(o)
                    );
                }
            }
        }
        out.push_str("# HELP keygate_responses_total Responses by route and status code.\n");
        out.push_str("# TYPE keygate_responses_total counter\n");
        for i in 0..=self.route_names.len() {
            for status in 0..STATUS_SLOTS {
                let v = self.sum(|s| &s.routes[i].statuses[status]);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "keygate_responses_total{{route=\"{}\",status=\"{status}\"}} {v}",
                        escape(name_of(i))
                    );
                }
            }
        }
        out.push_str(
            "# HELP keygate_handler_panics_total Requests whose handler panicked (answered 500).\n",
        );
        out.push_str("# TYPE keygate_handler_panics_total counter\n");
        let _ = writeln!(
            out,
            "keygate_handler_panics_total {}",
            self.panics.load(Ordering::Relaxed)
        );
        out.push_str("# HELP keygate_leak_report_tokens_total Tokens reported leaked by a secret scanner: every one, those that are keys of ours, and those the report revoked.\n");
        out.push_str("# TYPE keygate_leak_report_tokens_total counter\n");
        for (kind, counter) in ["reported", "ours", "revoked"]
            .iter()
            .zip(self.leaks.iter())
        {
            let _ = writeln!(
                out,
                "keygate_leak_report_tokens_total{{kind=\"{kind}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        // Counted with the requests (the reason `request_body_failed`), shown on its own too:
        // a caller's broken body is the caller's failure, apart from every upstream metric.
        out.push_str("# HELP keygate_client_body_errors_total Forwarded requests whose caller's body failed (closed or reset mid-body, malformed, or too slow); never counted by a circuit breaker.\n");
        out.push_str("# TYPE keygate_client_body_errors_total counter\n");
        let _ = writeln!(
            out,
            "keygate_client_body_errors_total {}",
            self.count(Outcome::Denied(Reason::RequestBodyFailed))
        );
        out.push_str(
            "# HELP keygate_decision_seconds Time to authenticate and authorize a request.\n",
        );
        out.push_str("# TYPE keygate_decision_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_NS.iter().enumerate() {
            cumulative += self.sum(|s| &s.decisions.buckets[i]);
            let _ = writeln!(
                out,
                "keygate_decision_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e9
            );
        }
        cumulative += self.sum(|s| &s.decisions.buckets[BUCKETS_NS.len()]);
        let _ = writeln!(
            out,
            "keygate_decision_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "keygate_decision_seconds_sum {}",
            self.sum(|s| &s.decisions.sum_ns) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "keygate_decision_seconds_count {}",
            self.sum(|s| &s.decisions.count)
        );
        for (name, help, value) in [
            (
                "keygate_replica_keys",
                "Live keys held in memory.",
                gauges.replica_keys as f64,
            ),
            (
                "keygate_replica_clients",
                "Clients held in memory.",
                gauges.replica_clients as f64,
            ),
            (
                "keygate_feed_version",
                "Version of the last change applied from the store.",
                gauges.feed_version as f64,
            ),
            (
                "keygate_feed_lag_seconds",
                "Seconds since the change feed last read the store.",
                gauges.feed_lag_seconds,
            ),
            (
                "keygate_store_up",
                "1 when the store answered the last poll.",
                f64::from(u8::from(gauges.store_up)),
            ),
            (
                "keygate_store_down_seconds",
                "Seconds the store has been unreachable (0 when up).",
                gauges.store_down_seconds,
            ),
            (
                "keygate_uptime_seconds",
                "Seconds since the process started.",
                gauges.uptime_seconds,
            ),
            (
                "keygate_limiter_degraded",
                "1 while the shared limiter is unreachable (from the start, or since it failed).",
                f64::from(u8::from(gauges.limiter.is_some_and(|l| l.degraded))),
            ),
        ] {
            write_gauge(&mut out, name, help, value);
        }
        let _ = writeln!(
            out,
            "# HELP keygate_limiter_fallbacks_total Limit checks the shared limiter did not answer (answered locally, or refused when fail-closed).\n\
             # TYPE keygate_limiter_fallbacks_total counter\n\
             keygate_limiter_fallbacks_total {}",
            gauges.limiter.map_or(0, |l| l.fallbacks)
        );
        out
    }
}

/// Escapes a Prometheus label value.
pub(crate) fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One unlabelled gauge family, declared and valued.
pub(crate) fn write_gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::new(vec!["matches".into()], 1);
        m.record(Some(0), Outcome::Forwarded, 200);
        m.record(Some(0), Outcome::Denied(Reason::UnknownKey), 401);
        m.record(None, Outcome::Denied(Reason::NotFound), 404);
        m.record(Some(0), Outcome::Denied(Reason::RequestBodyFailed), 400);
        m.observe_decision(700);
        let text = m.render(&Gauges {
            replica_keys: 3,
            store_up: true,
            ..Gauges::default()
        });
        assert!(
            text.contains("keygate_requests_total{route=\"matches\",outcome=\"forwarded\"} 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "keygate_client_body_errors_total 1"),
            "{text}"
        );
        assert!(
            text.contains("keygate_requests_total{route=\"matches\",outcome=\"unknown_key\"} 1")
        );
        assert!(text.contains("keygate_responses_total{route=\"(none)\",status=\"404\"} 1"));
        assert!(text.contains("keygate_decision_seconds_bucket{le=\"0.000001\"} 1"));
        assert!(text.contains("keygate_replica_keys 3"));
        assert!(text.contains("keygate_limiter_fallbacks_total 0"), "{text}");
        assert!(text.contains("keygate_store_up 1"));
        assert_eq!(m.count(Outcome::Forwarded), 1);
    }
}
