//! The node's background task: it follows the store's change feed and makes the broker match
//! every feed whose client was disabled, enabled, or whose feed another node or the CLI changed,
//! and runs the periodic drift check that `/status` and `/metrics` report.
//!
//! Every broker call is idempotent, so several nodes doing the same step is harmless (a second
//! close finds no connection); that is why no node needs to be elected for it. The feed version
//! is polled every 100 ms (one indexed row), which keeps a client disable well inside the
//! providers' one second on any backend.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygate_core::Timestamp;
use keygate_store::{Actor, FeedState};
use serde::Serialize;
use serde_json::json;

use crate::drift::DriftItem;
use crate::feeds::Feeds;

/// How often the feed version is read.
const POLL: Duration = Duration::from_millis(100);

/// What the last drift check and the last broker call said, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct EnforcerStatus {
    inner: Mutex<StatusReport>,
}

/// One reading of [`EnforcerStatus`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    /// Whether the management API answered the last call.
    pub broker_reachable: bool,
    /// Differences found by the last drift check (`None` before the first).
    pub drift: Option<Vec<DriftItem>>,
    pub last_check: Option<Timestamp>,
    /// The last broker failure, as one sentence (never a credential).
    pub last_error: Option<String>,
    /// Feeds the store holds (revoked ones included).
    pub feeds: usize,
}

impl EnforcerStatus {
    pub fn report(&self) -> StatusReport {
        self.inner.lock().expect("status lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        f(&mut self.inner.lock().expect("status lock"));
    }
}

/// Runs until `shutdown` completes.
pub async fn enforce(
    feeds: Feeds,
    status: Arc<EnforcerStatus>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let actor = Actor("keygate:amqp".to_owned());
    let mut applied: HashMap<String, (FeedState, bool, String)> = HashMap::new();
    let mut seen = None;
    let mut retry = false;
    // Whether the first pass over the store is done: feeds first seen after it are new since
    // the node started, so a disabled client among them is a change to audit, not the state
    // the node found at start.
    let mut started = false;
    let mut next_check = Instant::now();
    // The first pass runs at once, so the state found at start is taken in before the node
    // answers requests that could change it.
    loop {
        if let Ok(version) = feeds.store().version().await {
            if seen != Some(version) || retry {
                seen = Some(version);
                retry = !follow(&feeds, &status, &actor, &mut applied, started).await;
                started |= !retry;
            }
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + feeds.config().check_interval;
            check(&feeds, &status).await;
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Applies every feed that changed since it was last applied; `false` when a call failed (the
/// next poll tries again).
async fn follow(
    feeds: &Feeds,
    status: &EnforcerStatus,
    actor: &Actor,
    applied: &mut HashMap<String, (FeedState, bool, String)>,
    started: bool,
) -> bool {
    let Ok(all) = feeds.store().amqp_feeds().await else {
        return false;
    };
    status.update(|s| s.feeds = all.len());
    let mut ok = true;
    for f in &all {
        let now = (f.feed.state, f.client_active, f.feed.password_hash.clone());
        let before = applied.get(&f.feed.client_id);
        if before == Some(&now) {
            continue;
        }
        match feeds.apply(f, false).await {
            Ok(()) => {
                // A feed provisioned and disabled between two polls is first seen disabled.
                let access_changed = match before {
                    Some(b) => b.1 != now.1,
                    None => started && !f.client_active,
                } && f.feed.state == FeedState::Active;
                if access_changed {
                    let action = if f.client_active { "resume" } else { "suspend" };
                    let detail = json!({
                        "client": f.client_name,
                        "user": f.feed.username,
                        "connections_closed": !f.client_active,
                    });
                    let _ = feeds
                        .store()
                        .audit_amqp(actor, action, &f.feed.client_id, detail)
                        .await;
                    tracing::info!(client = %f.client_name, user = %f.feed.username, action, "Messaging feed follows its client.");
                }
                applied.insert(f.feed.client_id.clone(), now);
                status.update(|s| s.broker_reachable = true);
            }
            Err(e) => {
                ok = false;
                tracing::warn!(client = %f.client_name, error = %e, "Messaging feed could not be applied on the broker; retrying.");
                status.update(|s| {
                    s.broker_reachable = false;
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }
    ok
}

async fn check(feeds: &Feeds, status: &EnforcerStatus) {
    let now = feeds.store().now();
    match feeds.drift().await {
        Ok(d) => {
            if !d.is_empty() {
                tracing::warn!(
                    items = d.items.len(),
                    "Messaging feeds drifted from the store; `keygate amqp reconcile` repairs it."
                );
            }
            status.update(|s| {
                s.broker_reachable = true;
                s.drift = Some(d.items);
                s.last_check = Some(now);
                s.last_error = None;
            });
        }
        Err(e) => status.update(|s| {
            s.broker_reachable = false;
            s.last_check = Some(now);
            s.last_error = Some(e.to_string());
        }),
    }
}
