//! The rules `Config` compiles into and every request consults: routes, the profile's contract,
//! limits, the brute-force guard, upstreams, and the WebSocket contract; and the analytics
//! query rules the admin API and the CLI share. Nothing here holds the
//! [`Gateway`](crate::state::gateway::Gateway) or does I/O, so `config` can build these types
//! without depending on the server that runs them.

pub(crate) mod analytics;
pub(crate) mod channels;
pub(crate) mod delay;
pub(crate) mod guard;
pub(crate) mod leak_reports;
pub(crate) mod paths;
pub(crate) mod profile;
pub(crate) mod ratelimit;
pub(crate) mod repeat;
pub(crate) mod routes;
pub(crate) mod scanner_keys;
pub(crate) mod selfservice;
pub(crate) mod sharing;
pub(crate) mod upstream;
pub(crate) mod webhooks;
pub(crate) mod ws;
