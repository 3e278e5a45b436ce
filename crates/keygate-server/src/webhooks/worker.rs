//! The node's outbox task: every `[outbox] poll` it fans new events out to the configured
//! webhooks, looks for keys about to expire (every minute), deletes what is past `retention`
//! (every hour), and claims due deliveries, each sent by its own task so that a receiver that
//! hangs holds one slot for its timeout and never the others, nor the gateway.
//!
//! It reads the gateway in force at each round, so a reload's webhooks take effect at the
//! next one; deliveries are recorded by webhook name, so a changed URL or secret applies to
//! pending ones too.

use std::sync::Arc;
use std::time::Duration;

use keygate_core::Timestamp;
use keygate_store::{DueDelivery, EventType, Outcome, Store};
use tokio::sync::{watch, Semaphore};

use super::{jitter, retry_delay, send, WebhookSpec};
use crate::state::gateway::Gateway;
use crate::state::live::Live;

/// Deliveries in flight at once on one node.
const IN_FLIGHT: usize = 64;
/// Events fanned out per store transaction.
const FAN_OUT_BATCH: u32 = 200;
/// How long a claim outlasts the slowest webhook's timeout: the margin for settling it.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
const EXPIRY_SCAN_EVERY: Duration = Duration::from_secs(60);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// When the periodic steps last ran.
#[derive(Default)]
struct Schedule {
    expiry_scan: Option<Timestamp>,
    prune: Option<Timestamp>,
}

fn due(last: &mut Option<Timestamp>, now: Timestamp, every: Duration) -> bool {
    let is_due = last.is_none_or(|at| at.plus(every) <= now);
    if is_due {
        *last = Some(now);
    }
    is_due
}

/// Runs until `stop`; attempts in flight then end with the process.
pub(crate) async fn run(
    live: Arc<Live>,
    store: Store,
    node: String,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut schedule = Schedule::default();
    loop {
        let gw = live.load();
        if let Err(e) = round(&gw, &store, &node, &slots, &mut schedule).await {
            tracing::warn!(error = %e, "Cannot work the webhook outbox; trying again at the next poll.");
        }
        tokio::select! {
            () = tokio::time::sleep(gw.config.outbox.poll) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// The webhooks whose filter takes `event_type`.
fn route(hooks: &[WebhookSpec], event_type: &str) -> Vec<String> {
    let Some(event) = EventType::parse(event_type) else {
        return Vec::new();
    };
    hooks
        .iter()
        .filter(|h| h.events.contains(&event))
        .map(|h| h.name.clone())
        .collect()
}

async fn round(
    gw: &Arc<Gateway>,
    store: &Store,
    node: &str,
    slots: &Arc<Semaphore>,
    schedule: &mut Schedule,
) -> Result<(), keygate_store::StoreError> {
    let hooks = &gw.config.webhooks;
    let settings = &gw.config.outbox;
    let now = gw.clock.now();
    if due(&mut schedule.prune, now, PRUNE_EVERY) {
        let cutoff = Timestamp::from_millis(
            now.as_millis()
                .saturating_sub(i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX)),
        );
        let pruned = store.prune_webhook_events(cutoff).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "Deleted webhook events past their retention.");
        }
    }
    // A node without webhooks leaves new events to nodes that have some: it would otherwise
    // mark them handled with no delivery while another node's reload is still coming.
    if hooks.is_empty() {
        return Ok(());
    }
    let wants_expiring = hooks
        .iter()
        .any(|h| h.events.contains(&EventType::KeyExpiring));
    if wants_expiring && due(&mut schedule.expiry_scan, now, EXPIRY_SCAN_EVERY) {
        store.enqueue_expiring(settings.key_expiring_ahead).await?;
    }
    while store
        .fan_out_events(FAN_OUT_BATCH, &|t| route(hooks, t))
        .await?
        == FAN_OUT_BATCH as usize
    {}
    let free = slots.available_permits();
    if free == 0 {
        return Ok(());
    }
    let slowest = hooks.iter().map(|h| h.timeout).max().unwrap_or_default();
    let claimed = store
        .claim_deliveries(node, free as u32, slowest + CLAIM_MARGIN)
        .await?;
    for delivery in claimed {
        let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
            break; // cannot happen: at most `free` were claimed; the claim runs out unsent
        };
        let hook = hooks.iter().find(|h| h.name == delivery.webhook).cloned();
        let (gw, store, node) = (Arc::clone(gw), store.clone(), node.to_owned());
        tokio::spawn(async move {
            let _slot = slot;
            deliver(&gw, &store, &node, hook.as_ref(), &delivery).await;
        });
    }
    Ok(())
}

/// One attempt at a claimed delivery, and its settlement.
async fn deliver(
    gw: &Gateway,
    store: &Store,
    node: &str,
    hook: Option<&WebhookSpec>,
    delivery: &DueDelivery,
) {
    let outcome = match hook {
        None => Outcome::Dead {
            status: None,
            error: format!(
                "webhook `{}` is no longer in the configuration",
                delivery.webhook
            ),
        },
        Some(hook) => attempt(gw, hook, delivery).await,
    };
    match &outcome {
        Outcome::Delivered { status } => tracing::debug!(
            webhook = %delivery.webhook, event = %delivery.event_type, event_id = %delivery.event_id,
            delivery = delivery.id, status, "Webhook delivered."
        ),
        Outcome::Retry { error, at, .. } => tracing::info!(
            webhook = %delivery.webhook, event = %delivery.event_type, event_id = %delivery.event_id,
            delivery = delivery.id, attempt = delivery.attempts + 1, error = %error, retry_at = %at,
            "Webhook delivery failed; it will be retried."
        ),
        Outcome::Dead { error, .. } => tracing::warn!(
            webhook = %delivery.webhook, event = %delivery.event_type, event_id = %delivery.event_id,
            delivery = delivery.id, attempts = delivery.attempts + 1, error = %error,
            "Webhook delivery is dead; `keygate webhooks replay` sends it again."
        ),
    }
    // A settlement the store misses would have the delivery sent again once the claim runs
    // out: try a few times before leaving it to that.
    for wait in [1, 2, 4] {
        match store.settle_delivery(delivery.id, node, &outcome).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(delivery = delivery.id, "A webhook delivery's claim ran out before it was settled; another node may send it again.");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery = delivery.id, "Cannot record a webhook attempt; retrying.");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }
    }
}

async fn attempt(gw: &Gateway, hook: &WebhookSpec, delivery: &DueDelivery) -> Outcome {
    let now = gw.clock.now();
    let (status, error) = match send::post(hook, delivery, now.as_secs()).await {
        Ok(status) if (200..300).contains(&status) => return Outcome::Delivered { status },
        Ok(status) => (Some(status), format!("the receiver answered {status}")),
        Err(e) => (None, e.to_string()),
    };
    let made = u32::try_from(delivery.attempts + 1).unwrap_or(u32::MAX);
    if made >= hook.max_attempts {
        Outcome::Dead { status, error }
    } else {
        Outcome::Retry {
            status,
            error,
            at: gw
                .clock
                .now()
                .plus(retry_delay(hook.backoff, made, jitter())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_steps_run_first_then_every_interval() {
        let mut last = None;
        let t = Timestamp::from_millis(1_000_000);
        let every = Duration::from_secs(60);
        assert!(due(&mut last, t, every));
        assert!(!due(&mut last, t.plus(Duration::from_secs(59)), every));
        assert!(due(&mut last, t.plus(every), every));
    }
}
