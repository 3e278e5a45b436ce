//! The server as a process: sockets and runtimes, accepted connections, the per-connection
//! service that sends each request to the HTTP path, the WebSocket side or self-service, the
//! infra endpoints, the change feed and shutdown. The top of the crate: it depends on every
//! other folder, and none depends on it.

pub(crate) mod connection;
pub(crate) mod fault;
pub(crate) mod feed;
pub(crate) mod infra;
pub(crate) mod listen;
pub(crate) mod portal_thread;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod usage_flush;
