//! Keeps the replica current from the store's change feed by polling the feed version (one
//! indexed single-row read per interval), so a CLI or another node writing the same database is
//! seen within one poll. Store outages are logged once per incident; the replica keeps serving.

use std::sync::Arc;
use std::time::Duration;

use keygate_store::Store;
use tokio::sync::watch;

use crate::gateway::Gateway;

/// The configuration's plans, as the replica sees them when compiling clients.
pub struct Plans<'a>(pub &'a crate::config::Config);

impl crate::replica::PlanCatalog for Plans<'_> {
    fn features(&self, plan: &str) -> Vec<String> {
        self.0.plan_features(plan).to_vec()
    }

    fn limits(&self, plan: &str) -> crate::ratelimit::LimitSet {
        self.0.plan_limits(plan)
    }
}

/// Loads the initial snapshot, retrying until the store answers.
pub async fn load(gw: &Gateway, store: &Store, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.snapshot().await {
            Ok(snapshot) => {
                gw.replica.load(&snapshot, &Plans(&gw.config));
                gw.store.mark_ok(gw.clock.now());
                tracing::info!(
                    keys = snapshot.keys.len(),
                    clients = snapshot.clients.len(),
                    version = snapshot.version,
                    "Replica loaded."
                );
                return;
            }
            Err(e) => {
                if gw.store.mark_down(gw.clock.now()) {
                    tracing::error!(error = %e, "Cannot load keys from the store; retrying.");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Polls for changes until shutdown.
pub async fn follow(
    gw: Arc<Gateway>,
    store: Store,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
        let now = gw.clock.now();
        match store.delta_since(gw.replica.version()).await {
            Ok(delta) => {
                if let Some(since) = gw.store.down_since() {
                    tracing::warn!(
                        down_seconds = (now.as_millis() - since.as_millis()) / 1000,
                        "Store reachable again; catching up."
                    );
                }
                gw.store.mark_ok(now);
                if !delta.is_empty() {
                    gw.replica.apply(&delta, &Plans(&gw.config));
                    tracing::debug!(
                        version = delta.version,
                        keys = delta.keys.len(),
                        clients = delta.clients.len(),
                        "Applied changes."
                    );
                }
            }
            Err(e) => {
                if gw.store.mark_down(now) {
                    tracing::error!(error = %e, "Store unreachable; serving from the replica.");
                }
            }
        }
    }
}
