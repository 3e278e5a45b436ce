//! keygate's data plane: route match, credential extraction, authentication against the
//! in-memory replica, authorization, proxying with identity headers, the verify and
//! forward-auth APIs, and the infra endpoints.

pub mod admin;
pub mod config;
#[cfg(any(test, feature = "fuzz"))]
pub mod hostile;
pub mod leak_reports;
pub(crate) mod policy;
pub mod portal;
pub(crate) mod request;
pub(crate) mod runtime;
pub(crate) mod selfservice;
pub(crate) mod state;
pub mod tls;
pub mod webhooks;
pub(crate) mod ws;

pub use config::{Config, ConfigErrors, Overrides, Source};
pub use runtime::server::{start, start_on, start_with_clock, Running, ServeError, Sockets};

// What the binary, the integration tests and the benches reach inside the crate, by the paths
// they have always used; everything else stays crate-private so the compiler reports dead code.

/// The access line: its log target and its formatter (the binary installs it).
pub mod access_log {
    pub use crate::request::access_log::{AccessFirst, TARGET};
}

/// Analytics queries: the filters' parser and the JSON and CSV answers, shared by the admin
/// API and `keygate usage`.
pub mod analytics {
    pub use crate::policy::analytics::*;
}

/// The per-request decision (the benches time it).
pub mod check {
    pub use crate::policy::profile::IdentityHeaders;
    pub use crate::request::check::decide;
    pub use crate::request::exit::bench_forwarded;
    pub use crate::state::gateway::Admitted;
}

/// The plans the change feed loads into the replica (the benches build a replica with them).
pub mod feed {
    pub use crate::state::gateway::Plans;
}

/// The gateway's shared state.
pub mod gateway {
    pub use crate::state::gateway::{Gateway, Node};
    pub use crate::state::live::Live;
    pub use crate::state::reload::{ReloadError, Reloaded};
}

/// What the access log and metrics record of an exit.
pub mod metrics {
    pub use crate::state::metrics::Outcome;
}

/// The in-memory replica of keys and clients.
pub mod traces {
    pub use crate::state::traces::Tracer;
}

pub mod replica {
    pub use crate::state::replica::Replica;
}

/// Usage counts: the flush to the store and the report the admin API and CLI give.
pub mod usage {
    pub use crate::state::usage::{flush, report};
}
