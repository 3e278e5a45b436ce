//! keygate's data plane: route match, credential extraction, authentication against the
//! in-memory replica, authorization, proxying with identity headers, the verify and
//! forward-auth APIs, and the infra endpoints.

pub mod admin;
pub mod amqp;
pub mod body;
pub mod bounded_body;
pub mod bounds;
pub mod breaker;
pub mod check;
pub mod config;
mod connection;
pub mod credential;
pub mod emergency;
pub mod exit;
pub mod fault;
pub mod feed;
pub mod gateway;
pub mod guard;
pub mod hostile;
pub mod infra;
pub mod last_used;
pub mod listen;
mod locks;
pub mod metrics;
pub mod per_worker;
pub mod profile;
pub mod proxy;
pub mod ratelimit;
pub mod repeat;
pub mod replica;
pub mod respond;
pub mod routes;
pub mod selfservice;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod upstream;
pub mod usage;
pub mod verify;
pub mod whoami;
pub mod ws;

pub use config::{Config, ConfigErrors, Overrides};
pub use server::{start, start_with_clock, Running, ServeError};
