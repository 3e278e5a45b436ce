//! The periodic flush of usage counts and keys' last uses to the store, and its last run at
//! shutdown's start (the very last flush, after the workers stop, is `server`'s).

use std::sync::Arc;
use std::time::Duration;

use keygate_store::Store;
use tokio::sync::watch;

use crate::state::gateway::Gateway;
use crate::state::usage::flush;

/// Flushes every `interval` until shutdown, then once more.
pub(crate) async fn run(
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
        if let Err(e) = flush(&*gw, &store).await {
            tracing::warn!(error = %e, "Cannot write usage counts or last uses; keeping them for the next flush.");
        }
        if let Err(e) = gw.sharing.flush(&gw.limits, &store, gw.clock.now()).await {
            tracing::warn!(error = %e, "Cannot record a key suspected of sharing; counting again at the next flush.");
        }
        if stop {
            return;
        }
    }
}
