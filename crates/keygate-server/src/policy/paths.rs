//! The paths keygate answers itself on the public listener before any route: one list, so the
//! endpoints and the configuration's checks of other endpoints' paths agree.

pub(crate) const HEALTH: &str = "/health";
pub(crate) const READY: &str = "/ready";
pub(crate) const STATUS: &str = "/status";
pub(crate) const METRICS: &str = "/metrics";
pub(crate) const VERIFY: &str = "/v1/keys/verify";
pub(crate) const NGINX: &str = "/v1/auth/nginx";
pub(crate) const TRAEFIK: &str = "/v1/auth/traefik";
/// Envoy's contract: this path and everything below it (ext_authz appends the request's path).
pub(crate) const ENVOY: &str = "/v1/auth/envoy";

/// Whether `path` is Envoy's forward-auth contract.
pub(crate) fn is_envoy(path: &str) -> bool {
    path == ENVOY || path.starts_with("/v1/auth/envoy/")
}

/// Whether keygate answers `path` itself: an infra endpoint, or with `verify` on (the profile's
/// `verify`) the verify and forward-auth endpoints.
pub(crate) fn is_reserved(path: &str, verify: bool) -> bool {
    [HEALTH, READY, STATUS, METRICS].contains(&path)
        || (verify && ([VERIFY, NGINX, TRAEFIK].contains(&path) || is_envoy(path)))
}
