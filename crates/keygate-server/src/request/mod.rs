//! The HTTP request path, step by step: bounds on what a client may send, the credential, the
//! decision ([`check`]), forwarding ([`proxy`]), the verify and whoami endpoints, and the one exit
//! ([`exit`]). The WebSocket side (`crate::ws`) reuses these steps; nothing here depends on it.

pub mod body;
pub mod bounded_body;
pub mod bounds;
pub mod check;
pub mod credential;
pub mod exit;
pub mod proxy;
pub mod respond;
pub mod verify;
pub mod whoami;
pub mod worker;
