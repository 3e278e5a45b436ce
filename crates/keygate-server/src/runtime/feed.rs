//! Keeps the replica current from the store's change feed by polling the feed version (one
//! indexed single-row read per interval), so a CLI or another node writing the same database is
//! seen within one poll. Store outages are logged once per incident; the replica keeps serving.

use std::sync::Arc;
use std::time::Duration;

use keygate_store::Store;
use tokio::sync::{watch, Notify};

use crate::state::gateway::Plans;
use crate::state::live::Live;
use crate::state::locks::lock;
use crate::state::suspensions::Changes;

/// Loads the initial snapshot, retrying until the store answers.
pub(crate) async fn load(live: &Live, store: &Store, mut shutdown: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let gw = live.load();
        match store.snapshot().await {
            Ok(snapshot) => {
                gw.emergency.set(&snapshot.emergency);
                gw.suspensions
                    .set(snapshot.suspensions.clone(), gw.clock.now());
                gw.quotas.set(&snapshot.quotas);
                {
                    let _writes = lock(&gw.replica_writes);
                    let current = live.load();
                    current.replica.load(&snapshot, &Plans(&current.config));
                }
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

/// Longest wait for one read of the feed before the store counts as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for a read past [`READ_TIMEOUT`], the store already counted as unreachable.
const SLOW_READ_LIMIT: Duration = Duration::from_secs(10);

/// Wakes the poller whenever the store announces a change (PostgreSQL LISTEN), reconnecting
/// after failures. Returns at once on SQLite, which has no announcements.
async fn listen(store: Store, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match store.listen().await {
            Ok(None) => return,
            Ok(Some(mut listener)) => loop {
                tokio::select! {
                    next = listener.next() => match next {
                        // A version, or a reconnect after which anything may have been missed:
                        // either way, read the feed now.
                        Ok(_) => wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "Change listener lost its connection.");
                            break;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            },
            Err(e) => tracing::debug!(error = %e, "Cannot open the change listener; polling only."),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Follows the change feed until shutdown: reads it when the store announces a change, and
/// every `poll` regardless (a lost announcement costs at most one interval).
pub(crate) async fn follow(
    live: Arc<Live>,
    store: Store,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = Arc::clone(&live.load().feed_wake);
    tokio::spawn(listen(store.clone(), Arc::clone(&wake), shutdown.clone()));
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        let gw = live.load();
        let now = gw.clock.now();
        // An `until` passes by the clock, store or no store; the sessions told of it hear.
        let ran_out = gw.suspensions.refresh(now);
        if !ran_out.is_empty() {
            gw.ws_sessions.resumed(&gw, &ran_out);
        }
        let down = |e: &str| {
            if gw.store.mark_down(now) {
                tracing::error!(error = %e, "Store unreachable; serving from the replica.");
            }
        };
        let late = "the store did not answer in time";
        let read = store.delta_since(gw.replica.version());
        tokio::pin!(read);
        // An outage is noticed within a second rather than a pool timeout, but the read goes
        // on (up to SLOW_READ_LIMIT): dropping it would also drop a connection being opened,
        // and on a store slower than that to connect (a starved machine) every later read was
        // dropped the same way, so the node never caught up.
        let result = match tokio::time::timeout(READ_TIMEOUT.max(poll), &mut read).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => {
                down(late);
                tokio::select! {
                    finished = tokio::time::timeout(SLOW_READ_LIMIT, &mut read) => match finished {
                        Ok(result) => result.map_err(|e| e.to_string()),
                        Err(_) => Err(late.to_owned()),
                    },
                    _ = shutdown.changed() => return,
                }
            }
        };
        match result {
            Ok(delta) => {
                if let Some(since) = gw.store.down_since() {
                    tracing::warn!(
                        down_seconds = (now.as_millis() - since.as_millis()) / 1000,
                        "Store reachable again; catching up."
                    );
                }
                gw.store.mark_ok(now);
                if let Some(emergency) = &delta.emergency {
                    gw.emergency.set(emergency);
                }
                if let Some(quotas) = &delta.quotas {
                    gw.quotas.set(quotas);
                }
                let changes = match &delta.suspensions {
                    Some(stored) => gw.suspensions.set(stored.clone(), now),
                    None => Changes::default(),
                };
                let current = {
                    // Under the plans in force, even if a reload landed during the read.
                    let _writes = lock(&gw.replica_writes);
                    let current = live.load();
                    current.replica.apply(&delta, &Plans(&current.config));
                    current
                };
                if !changes.added.is_empty() {
                    // Sessions a new suspension holds are told or closed now.
                    current.ws_sessions.suspended(&current, &changes.added);
                }
                if !changes.ended.is_empty() {
                    current.ws_sessions.resumed(&current, &changes.ended);
                }
                if !delta.is_empty() {
                    // Sessions of keys this change made invalid close now, not at the sweep.
                    current.ws_sessions.revalidate(&current);
                    tracing::debug!(
                        version = delta.version,
                        keys = delta.keys.len(),
                        clients = delta.clients.len(),
                        "Applied changes."
                    );
                }
            }
            Err(e) => down(&e),
        }
    }
}
