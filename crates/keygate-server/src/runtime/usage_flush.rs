//! The periodic flush of usage counts and keys' last uses to the store, and its last run at
//! shutdown's start (the very last flush, after the workers stop, is `server`'s); with
//! `[analytics]` on, also the prune of hourly rows past `retention_days`.

use std::sync::Arc;
use std::time::Duration;

use keygate_store::Store;
use tokio::sync::watch;

use crate::state::gateway::Gateway;
use crate::state::usage::flush;

/// How often one node (whichever claims it first, [`Store::prune_analytics`]) deletes
/// analytics past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often each node asks whether it is its turn to prune (one conditional `UPDATE`).
const PRUNE_ASK: Duration = Duration::from_secs(60);

/// Flushes every `interval` until shutdown, then once more.
pub(crate) async fn run(
    gw: Arc<Gateway>,
    store: Store,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = crate::state::amqp::node_name();
    let mut next_prune = tokio::time::Instant::now();
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(e) = flush(&*gw, &store).await {
            tracing::warn!(error = %e, "Cannot write usage counts or last uses; keeping them for the next flush.");
        }
        if let Err(e) = gw.sharing.flush(&gw.limits, &store, gw.clock.now()).await {
            tracing::warn!(error = %e, "Cannot record a key suspected of sharing; counting again at the next flush.");
        }
        if stop {
            return;
        }
        let analytics = gw.config.analytics;
        if analytics.enabled && tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + PRUNE_ASK;
            match store
                .prune_analytics(&node, analytics.retention, PRUNE_EVERY)
                .await
            {
                Ok(Some(rows)) => {
                    tracing::info!(rows, "Deleted analytics past their retention.");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "Cannot delete old analytics."),
            }
        }
    }
}
