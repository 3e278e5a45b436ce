//! What every part of the server shares while it runs: the [`Gateway`](gateway::Gateway) with its
//! replica, counters, breakers, connection caps and WebSocket sessions. The request path, the
//! WebSocket side, self-service, admin and the runtime all read it; it depends only on `config`
//! and `policy`.

pub mod breaker;
pub mod connections;
pub mod emergency;
pub mod gateway;
pub mod last_used;
pub mod locks;
pub mod metrics;
pub mod per_worker;
pub mod replica;
pub mod shutdown;
pub mod usage;
pub mod ws_sessions;
