//! The node's side of messaging feeds (`[amqp]`, crate `keygate_amqp`): the background task
//! that makes the broker follow client disables, enables, deletions and other nodes' feed
//! changes (on the one node holding the broker lease), and the feed's lines in `/status` and
//! `/metrics`. The admin endpoints are in `admin::amqp`.

use std::sync::Arc;

use keygate_amqp::{AmqpConfig, EnforcerStatus, Feeds};
use keygate_store::Store;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::state::gateway::Gateway;
use crate::state::metrics::write_gauge;

/// A node's feed operations and what its background task last saw.
#[derive(Debug)]
pub struct AmqpNode {
    pub feeds: Feeds,
    pub status: Arc<EnforcerStatus>,
}

/// Starts the feed task when the configuration has `[amqp]`.
///
/// # Errors
/// The operator's credentials are missing from the environment, or the HTTP client cannot be
/// built (the configuration was checked at load, so this is rare).
pub(crate) fn start(
    gw: &Gateway,
    store: &Store,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let Some(raw) = &gw.config.amqp else {
        return Ok(());
    };
    let config = AmqpConfig::compile(raw, &|name| std::env::var(name).ok())
        .map_err(|errors| errors.join("; "))?;
    let feeds = Feeds::new(store.clone(), config).map_err(|e| e.to_string())?;
    let status = Arc::new(EnforcerStatus::default());
    tokio::spawn(keygate_amqp::enforce(
        feeds.clone(),
        node_name(),
        Arc::clone(&status),
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
    ));
    let _ = gw.amqp.set(AmqpNode { feeds, status });
    Ok(())
}

/// This node's name in the broker lease and webhook claims: the host, the process and a
/// random part (two nodes on one host, or a restarted node, never share a name).
pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    let r: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{r}", std::process::id())
}

/// `/status`'s `amqp` section: `null` without `[amqp]`.
pub(crate) fn status(gw: &Gateway) -> Value {
    let Some(node) = gw.amqp.get() else {
        return Value::Null;
    };
    let r = node.status.report();
    json!({
        "broker": if r.broker_reachable { "reachable" } else { "unreachable" },
        "feeds": r.feeds,
        "drift": r.drift.as_ref().map(Vec::len),
        "drift_items": r.drift,
        "last_check": r.last_check,
        "last_error": r.last_error,
        "node": r.node,
        "acting_node": r.acting_node,
        "acting": r.acting,
    })
}

/// `keygate_amqp_broker_up` and `keygate_amqp_drift_items`, with `[amqp]` only.
pub(crate) fn render_metrics(gw: &Gateway, out: &mut String) {
    let Some(node) = gw.amqp.get() else {
        return;
    };
    let r = node.status.report();
    write_gauge(
        out,
        "keygate_amqp_broker_up",
        "1 when the RabbitMQ management API answered the last call.",
        u8::from(r.broker_reachable),
    );
    write_gauge(
        out,
        "keygate_amqp_drift_items",
        "Differences between the broker and the store at the last drift check.",
        r.drift.as_ref().map_or(0, Vec::len),
    );
    write_gauge(
        out,
        "keygate_amqp_acting",
        "1 when this node holds the broker lease and acts on the broker for change-feed events.",
        u8::from(r.acting),
    );
    write_gauge(
        out,
        "keygate_amqp_feeds",
        "Messaging feeds in the store (revoked ones included).",
        r.feeds,
    );
}
