//! What one worker thread owns, for the HTTP path and the WebSocket side alike.

use std::sync::Arc;

use crate::policy::profile::IdentityHeaders;
use crate::request::proxy::Upstreams;
use crate::state::gateway::Gateway;

/// What one worker thread owns: the shared gateway and its own upstream connection pools.
#[derive(Debug)]
pub(crate) struct Worker {
    pub gw: Arc<Gateway>,
    pub upstreams: Upstreams,
    /// This worker's copy of the profile's identity header names ([`IdentityHeaders::copied`]).
    pub identity: IdentityHeaders,
}
