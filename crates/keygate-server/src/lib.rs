//! keygate's data plane: route match, credential extraction, authentication against the
//! in-memory replica, authorization, proxying with identity headers, the verify and
//! forward-auth APIs, and the infra endpoints.

pub mod admin;
pub mod config;
pub mod hostile;
pub mod policy;
pub mod request;
pub mod runtime;
pub mod selfservice;
pub mod state;
pub mod ws;

pub use config::{Config, ConfigErrors, Overrides};
pub use request::check;
pub use runtime::feed;
pub use runtime::server::{start, start_with_clock, Running, ServeError};
pub use state::{gateway, metrics, replica, usage};
