//! The node's background task: it follows the store's change feed and makes the broker match
//! every feed whose client was disabled, enabled, deleted, or whose feed another node or the CLI
//! changed, and runs the periodic drift check that `/status` and `/metrics` report.
//!
//! Exactly one node acts on the broker for change-feed events: the holder of the store's
//! `amqp_lease` row, renewed every second for [`LEASE_TTL`]. The others follow the feed too,
//! without broker calls, so a node taking over (the holder stopped, or could not renew) knows
//! what was already done: it applies every feed once (all broker calls are idempotent) and
//! audits only what changed since it last looked, so each change has one audit row. A change
//! made in the holder's last moments may be applied by the new holder without its audit row.
//! The node (or CLI) that runs a provision, rotation, revocation or deletion makes that
//! broker change itself, at once, before its store write; this task applies only what
//! changes access (a client disabled or enabled, a feed revoked) and, at start or on a
//! take-over, every feed. The feed version is polled every 100 ms (one indexed row), which keeps a
//! client disable well inside the providers' one second on any backend.

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

/// How long the broker lease lasts unrenewed: how soon another node acts after the holder
/// stops without giving the lease up.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often the lease is taken or renewed.
const RENEW: Duration = Duration::from_secs(1);

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
    /// This node's name in the broker lease.
    pub node: String,
    /// The node acting on the broker for change-feed events, as last read.
    pub acting_node: Option<String>,
    /// Whether this node is that node.
    pub acting: bool,
}

impl EnforcerStatus {
    pub fn report(&self) -> StatusReport {
        self.inner.lock().expect("status lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        f(&mut self.inner.lock().expect("status lock"));
    }
}

/// Runs until `shutdown` completes; `node` names this node in the broker lease.
pub async fn enforce(
    feeds: Feeds,
    node: String,
    status: Arc<EnforcerStatus>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let actor = Actor("keygate:amqp".to_owned());
    status.update(|s| s.node = node.clone());
    let mut seen_state: HashMap<String, Seen> = HashMap::new();
    let mut seen = None;
    let mut retry = false;
    let mut acting = false;
    // Whether the first pass over the store is done: feeds first seen after it are new since
    // the node started, so a disabled client among them is a change to audit, not the state
    // the node found at start.
    let mut started = false;
    let mut next_check = Instant::now();
    let mut next_renew = Instant::now();
    // Until when this node's lease surely lasts (its last successful renewal plus the TTL,
    // less a renewal's worth of margin): a renewal that fails (a busy store) does not make it
    // stop acting, and then take over again with a full pass, before then.
    let mut held_until: Option<Instant> = None;
    // The first pass runs at once, so the state found at start is taken in before the node
    // answers requests that could change it.
    loop {
        let mut take_over = false;
        if Instant::now() >= next_renew {
            let asked = Instant::now();
            next_renew = asked + RENEW;
            let now_acting = match feeds.store().amqp_lease(&node, LEASE_TTL).await {
                Ok(lease) => {
                    status.update(|s| s.acting_node.clone_from(&lease.holder));
                    held_until = lease.held.then(|| asked + LEASE_TTL - RENEW);
                    lease.held
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "The broker lease could not be renewed; retrying.");
                    held_until.is_some_and(|until| Instant::now() < until)
                }
            };
            if now_acting && !acting {
                tracing::info!(node = %node, "This node now acts on the broker for messaging feeds.");
                take_over = true;
            }
            acting = now_acting;
            status.update(|s| s.acting = acting);
        }
        if let Ok(version) = feeds.store().version().await {
            if seen != Some(version) || retry || take_over {
                seen = Some(version);
                let pass = Pass {
                    act: acting,
                    all: take_over,
                    started,
                };
                retry = !follow(&feeds, &status, &actor, &mut seen_state, pass).await;
                started |= !retry;
            }
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + feeds.config().check_interval;
            check(&feeds, &status).await;
        }
        tokio::select! {
            () = &mut shutdown => {
                if acting {
                    let _ = feeds.store().release_amqp_lease(&node).await;
                }
                return;
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// What the node last saw of a feed: its state, its client's, its password hash.
type Seen = (FeedState, bool, String);

/// How one pass over the stored feeds runs.
#[derive(Clone, Copy, Debug)]
struct Pass {
    /// Whether this node acts on the broker (holds the lease).
    act: bool,
    /// Apply every feed, changed or not (this node just took the lease over).
    all: bool,
    /// Whether the first pass is done.
    started: bool,
}

/// Applies every feed that changed since it was last seen (all of them on a take-over) when the
/// node acts, or only notes them when it does not; `false` when a call failed (the next poll
/// tries again).
async fn follow(
    feeds: &Feeds,
    status: &EnforcerStatus,
    actor: &Actor,
    applied: &mut HashMap<String, Seen>,
    pass: Pass,
) -> bool {
    let Ok(all) = feeds.store().amqp_feeds().await else {
        return false;
    };
    status.update(|s| s.feeds = all.len());
    let mut ok = true;
    for f in &all {
        let now = (f.feed.state, f.client_active, f.feed.password_hash.clone());
        let before = applied.get(&f.feed.client_id);
        if before == Some(&now) && !pass.all {
            continue;
        }
        // A provision or rotation is on the broker before its store write (the node or CLI
        // that ran it made it); granting it again from a read taken before a newer rotation
        // would put an old password back for a moment. So only what changes access is applied:
        // a client disabled or enabled, a feed revoked; and every feed at start or take-over.
        let changes_access = match before {
            None => !(f.feed.state == FeedState::Active && f.client_active),
            Some(b) => b.0 != now.0 || b.1 != now.1,
        };
        if !pass.act || !(pass.all || !pass.started || changes_access) {
            applied.insert(f.feed.client_id.clone(), now);
            continue;
        }
        match feeds.apply(f, false).await {
            Ok(()) => {
                // A feed provisioned and disabled between two polls is first seen disabled.
                let access_changed = match before {
                    Some(b) => b.1 != now.1,
                    None => pass.started && !f.client_active,
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
