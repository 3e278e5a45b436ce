//! The HTTP request path, step by step: bounds on what a client may send, the credential, the
//! decision ([`check`]), forwarding ([`proxy`]), the verify and whoami endpoints, and the one exit
//! ([`exit`]) with its access line ([`access_log`]). The WebSocket side (`crate::ws`) reuses
//! these steps; nothing here depends on it.

pub(crate) mod access_log;
pub(crate) mod body;
pub(crate) mod bounded_body;
pub(crate) mod bounds;
pub(crate) mod check;
pub(crate) mod credential;
pub(crate) mod direct;
pub(crate) mod exit;
pub(crate) mod proxy;
pub(crate) mod respond;
pub(crate) mod verify;
pub(crate) mod whoami;
pub(crate) mod worker;
