//! The rules `Config` compiles into and every request consults: routes, the profile's contract,
//! limits, the brute-force guard, upstreams, and the WebSocket contract. Nothing here holds the
//! [`Gateway`](crate::state::gateway::Gateway) or does I/O, so `config` can build these types
//! without depending on the server that runs them.

pub mod channels;
pub mod guard;
pub mod profile;
pub mod ratelimit;
pub mod repeat;
pub mod routes;
pub mod selfservice;
pub mod upstream;
pub mod ws;
