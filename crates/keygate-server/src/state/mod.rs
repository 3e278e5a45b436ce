//! What every part of the server shares while it runs: the [`Gateway`](gateway::Gateway) with its
//! replica, counters, breakers, connection caps and WebSocket sessions. The request path, the
//! WebSocket side, self-service, admin and the runtime all read it; it depends only on `config`
//! and `policy`.

pub(crate) mod amqp;
pub(crate) mod breaker;
pub(crate) mod changes;
pub(crate) mod connections;
pub(crate) mod emergency;
pub(crate) mod gateway;
pub(crate) mod last_used;
pub(crate) mod live;
pub(crate) mod loaded;
pub(crate) mod locks;
pub(crate) mod metrics;
pub(crate) mod per_worker;
pub(crate) mod quotas;
pub(crate) mod reload;
pub(crate) mod replica;
pub(crate) mod sharing;
pub(crate) mod shutdown;
pub(crate) mod suspensions;
pub(crate) mod traces;
pub(crate) mod usage;
pub(crate) mod ws_sessions;
