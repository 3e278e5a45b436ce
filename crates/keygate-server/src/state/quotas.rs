//! Quota top-ups, resets and threshold events as this node sees them.
//!
//! Top-ups and resets are made by an operator (`keygate client quota`, the admin API), stored,
//! and followed by every node through the change feed ([`QuotaSet::set`]). A request of a
//! client with one reads it while listing its checks: the current window's allowance is the
//! plan's plus the top-up, and its counter is the reset's generation (`Check::epoch`). While no
//! client has one, a request pays one relaxed atomic load.
//!
//! Crossing 80 % or 100 % of a quota is noticed from the counts the limiter returns anyway
//! (`Verdict::crossed`) and handed to a background task ([`run_events`]) through a bounded
//! channel; the task enqueues `quota.80` / `quota.100` in the webhook outbox, deduplicated by
//! client, window and threshold, so two nodes crossing together make one event. The request
//! path never waits on the store for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use keygate_core::limit::{Limit, LimitKind, Window};
use keygate_core::{ClientId, Timestamp};
use keygate_limits::Check;
use keygate_store::{EventType, QuotaAdjustment, Store};
use smallvec::SmallVec;
use tokio::sync::mpsc;

/// Crossings waiting for the background task; past this, further ones are dropped (counted):
/// a burst of crossings is as many clients reaching a threshold in one instant.
const QUEUE: usize = 4096;

type ByClient = HashMap<ClientId, SmallVec<[QuotaAdjustment; 1]>>;

/// The quota adjustments in force on this node, and the queue of threshold crossings.
#[derive(Debug)]
pub struct QuotaSet {
    /// True while any client has an adjustment: the one load a request pays otherwise.
    any: AtomicBool,
    by_client: ArcSwap<ByClient>,
    events: mpsc::Sender<Crossing>,
    receiver: Mutex<Option<mpsc::Receiver<Crossing>>>,
    /// Crossings whose event was not enqueued: the queue was full, or the store refused it.
    /// Shared with the background task ([`run_events`]).
    pub dropped: Arc<AtomicU64>,
}

impl Default for QuotaSet {
    fn default() -> Self {
        let (events, receiver) = mpsc::channel(QUEUE);
        QuotaSet {
            any: AtomicBool::new(false),
            by_client: ArcSwap::default(),
            events,
            receiver: Mutex::new(Some(receiver)),
            dropped: Arc::default(),
        }
    }
}

/// One client quota window that reached a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub client: ClientId,
    pub window: Window,
    pub window_start: Timestamp,
    pub used: u64,
    pub allowance: u64,
    /// `quota.80` or `quota.100`.
    pub event: EventType,
}

impl QuotaSet {
    /// Follows the stored adjustments (those of the windows in progress).
    pub fn set(&self, stored: &[QuotaAdjustment]) {
        let mut map = ByClient::new();
        for a in stored {
            map.entry(a.client_id.clone()).or_default().push(a.clone());
        }
        let any = !map.is_empty();
        self.by_client.store(Arc::new(map));
        self.any.store(any, Ordering::Release);
    }

    /// Whether any client has an adjustment.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// `client`'s adjustments held (any window, current or not).
    pub fn of(&self, client: &ClientId) -> SmallVec<[QuotaAdjustment; 1]> {
        self.by_client
            .load()
            .get(client)
            .cloned()
            .unwrap_or_default()
    }

    /// Applies `client`'s adjustments of the windows holding `now` to its plan's quota checks
    /// (the top-up to the allowance, the reset generation to the counter).
    pub fn apply(&self, client: &ClientId, checks: &mut [Check], now: Timestamp) {
        let map = self.by_client.load();
        let Some(list) = map.get(client) else { return };
        for check in checks {
            if let Some(a) = current(list, check.limit, now) {
                let max = check.limit.max.get().saturating_add(a.topup);
                check.limit.max = std::num::NonZeroU64::new(max).unwrap_or(check.limit.max);
                check.epoch = a.resets;
            }
        }
    }

    /// Queues a crossing for the background task; never waits.
    pub fn crossed(&self, crossing: Crossing) {
        if self.events.try_send(crossing).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `keygate_quota_events_dropped_total`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP keygate_quota_events_dropped_total Quota threshold crossings (quota.80, quota.100) whose webhook event was not enqueued: this node's queue was full, or the store refused the write.\n\
             # TYPE keygate_quota_events_dropped_total counter\n\
             keygate_quota_events_dropped_total {}\n",
            self.dropped.load(Ordering::Relaxed),
        );
    }

    /// The receiving end, for the one background task ([`run_events`]).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Crossing>> {
        crate::state::locks::lock(&self.receiver).take()
    }
}

/// The adjustment of `limit`'s window that holds `now`, if `limit` is a quota and has one.
pub(crate) fn current(
    list: &[QuotaAdjustment],
    limit: Limit,
    now: Timestamp,
) -> Option<&QuotaAdjustment> {
    let LimitKind::Quota { window } = limit.kind else {
        return None;
    };
    let (start, _) = window.bounds(now);
    list.iter()
        .find(|a| a.window == window && a.window_start == start)
}

/// The body of a crossing's event: the client, its window, what it used and its allowance.
/// No key, no token: the event names the client, not the caller.
fn data(c: &Crossing) -> serde_json::Value {
    serde_json::json!({
        "client": { "id": c.client },
        "window": c.window.as_str(),
        "window_start": c.window_start,
        "used": c.used,
        "allowance": c.allowance,
    })
}

/// Enqueues each crossing's event in the outbox, once per client, window and threshold across
/// the cluster (the outbox's dedupe key); a store error is logged and the crossing dropped
/// (the threshold is crossed once, and a late event is worth less than a stalled queue).
pub(crate) async fn run_events(
    mut rx: mpsc::Receiver<Crossing>,
    store: Store,
    dropped: Arc<AtomicU64>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let crossing = tokio::select! {
            next = rx.recv() => match next {
                Some(c) => c,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let dedupe = format!(
            "{}:{}:{}:{}",
            crossing.event.name(),
            crossing.client,
            crossing.window.as_str(),
            crossing.window_start.as_millis()
        );
        match store
            .enqueue_event(crossing.event, data(&crossing), Some(&dedupe))
            .await
        {
            Ok(Some(id)) => tracing::info!(
                client = %crossing.client,
                event = crossing.event.name(),
                window = crossing.window.as_str(),
                used = crossing.used,
                allowance = crossing.allowance,
                event_id = id,
                "Quota threshold crossed."
            ),
            Ok(None) => {}
            Err(e) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    client = %crossing.client,
                    event = crossing.event.name(),
                    error = %e,
                    "Cannot enqueue a quota event."
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crossing() -> Crossing {
        Crossing {
            client: ClientId::parse("cli_000000000000000a").unwrap(),
            window: Window::Day,
            window_start: Timestamp::from_millis(0),
            used: 80,
            allowance: 100,
            event: EventType::Quota80,
        }
    }

    /// A crossing past the full queue is dropped and counted in `/metrics`, never waited for.
    #[test]
    fn crossings_past_the_queue_are_counted_as_dropped() {
        let quotas = QuotaSet::default();
        let metric = |q: &QuotaSet| {
            let mut text = String::new();
            q.render(&mut text);
            text.lines()
                .find_map(|l| l.strip_prefix("keygate_quota_events_dropped_total "))
                .map(str::to_owned)
        };
        assert_eq!(metric(&quotas).as_deref(), Some("0"));
        for _ in 0..QUEUE + 3 {
            quotas.crossed(crossing());
        }
        assert_eq!(metric(&quotas).as_deref(), Some("3"));
        // The task's receiver holds what was queued.
        let mut rx = quotas.take_receiver().unwrap();
        assert_eq!(rx.try_recv().unwrap(), crossing());
    }
}
