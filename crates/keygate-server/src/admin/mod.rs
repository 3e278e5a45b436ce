//! The admin API: clients, keys, usage, plans, emergency mode, suspensions, the audit log and
//! webhook deliveries as JSON under
//! `/v1/`, for operators' tools.
//!
//! It runs on the admin listener beside the infra endpoints (`crate::runtime::infra`), which it does not
//! serve itself. Every route needs an admin token ([`auth`]); read-only tokens may only read.
//! The exception is `GET /openapi.json`, the API's OpenAPI 3.1 document ([`openapi`]).
//! Each write is one store transaction with an audit entry naming the token, and reaches the
//! gateways through the change feed like a CLI write. Requests are validated completely before
//! the store is asked, so a refused request changes nothing. Failures are RFC 9457 problems,
//! mapped in one place ([`AdminError`]).

mod amqp;
mod analytics;
mod audit;
mod auth;
mod clients;
mod config;
mod emergency;
mod error;
mod extract;
mod idempotency;
mod keys;
mod openapi;
mod plans;
mod portal;
pub mod quotas;
mod sharing;
mod suspensions;
mod usage;
mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{middleware, Router};
use keygate_core::Timestamp;
use keygate_store::{Store, StoreError};

use crate::state::gateway::Gateway;
use crate::state::live::Live;

pub use clients::{finish_deletion, ClientDeleted};
pub use error::{AdminError, STORE_FULL_DETAIL, STORE_UNAVAILABLE_DETAIL};
pub use idempotency::{HEADER as IDEMPOTENCY_HEADER, REPLAYED as IDEMPOTENT_REPLAYED};

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a store call may take before the request is answered 503.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Page sizes for listings.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The running gateway, replaced by reloads (its key issuer, so admin-issued keys match
    /// the deployment's format; its plans).
    pub live: Arc<Live>,
    pub store: Store,
}

impl AdminState {
    /// The gateway in force.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.load()
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The admin API's routes, with a 404 problem for unknown paths and a 405 problem for a wrong
/// method. Merge the infra routes into this router (it carries the fallback, so the other
/// router must not have one).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/clients", post(clients::create).get(clients::list))
        .route(
            "/v1/clients/{client}",
            get(clients::show)
                .patch(clients::update)
                .delete(clients::delete),
        )
        .route("/v1/clients/{client}/disable", post(clients::disable))
        .route("/v1/clients/{client}/enable", post(clients::enable))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", get(keys::show).patch(keys::restrict))
        .route("/v1/keys/suspected", get(sharing::list))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/keys/{id}/revoke", post(keys::revoke))
        .route("/v1/keys/{id}/disable", post(keys::disable))
        .route("/v1/keys/{id}/enable", post(keys::enable))
        .route("/v1/keys/{id}/expiry", put(keys::set_expiry))
        .route("/v1/clients/{client}/usage", get(usage::show))
        .route(
            "/v1/clients/{client}/quota",
            get(quotas::show).post(quotas::change),
        )
        .route("/v1/analytics", get(analytics::requests))
        .route("/v1/analytics/latency", get(analytics::latency))
        .route("/v1/analytics/websocket", get(analytics::websocket))
        .route("/v1/plans", get(plans::list))
        .route("/v1/plans/{name}", get(plans::show))
        .route("/v1/emergency", get(emergency::show).put(emergency::set))
        .route(
            "/v1/suspensions",
            post(suspensions::create).get(suspensions::list),
        )
        .route(
            "/v1/suspensions/{id}",
            get(suspensions::show).delete(suspensions::lift),
        )
        .route("/v1/audit", get(audit::list))
        .route(
            "/v1/clients/{client}/amqp",
            post(amqp::provision).get(amqp::show),
        )
        .route("/v1/clients/{client}/amqp/rotate", post(amqp::rotate))
        .route("/v1/clients/{client}/amqp/revoke", post(amqp::revoke))
        .route("/v1/amqp/drift", get(amqp::drift))
        .route("/v1/amqp/reconcile", post(amqp::reconcile))
        .route("/v1/reload", post(config::reload))
        .route("/v1/clients/{client}/portal/invite", post(portal::invite))
        .route("/v1/webhooks", get(webhooks::list_webhooks))
        .route("/v1/webhooks/deliveries", get(webhooks::list))
        .route("/v1/webhooks/deliveries/{id}", get(webhooks::show))
        .route(
            "/v1/webhooks/deliveries/{id}/replay",
            post(webhooks::replay),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // After `route_layer`, so not behind the token check.
        .route("/openapi.json", get(openapi::serve))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> AdminError {
    AdminError::NotFound
}

async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}

/// Feeds untrusted bytes to every admin request body as the handlers read them: strict JSON
/// deserialization, then field validation, and for a refusal its problem document (always a
/// 4xx). For the fuzz targets and hostile-input tests; returns how many body types accepted
/// the bytes. Never panics on any input: that is the property under test.
pub fn check_bodies(data: &[u8]) -> usize {
    fn run<T: serde::de::DeserializeOwned, U>(
        data: &[u8],
        validate: impl FnOnce(T) -> Result<U, AdminError>,
    ) -> bool {
        let Ok(body) = serde_json::from_slice::<T>(data) else {
            return false;
        };
        match validate(body) {
            Ok(_) => true,
            Err(e) => {
                let status = axum::response::IntoResponse::into_response(e).status();
                assert!(status.is_client_error(), "a body refusal answered {status}");
                false
            }
        }
    }
    [
        run(data, clients::CreateBody::validate),
        run(data, clients::UpdateBody::validate),
        run(data, |b: keys::CreateBody| b.validate()),
        run(data, keys::RotateBody::grace),
        run(data, keys::ExpiryBody::validate),
        run(data, keys::PatchBody::validate),
        run(data, |b: amqp::ProvisionBody| Ok::<_, AdminError>(b)),
        run(data, |b: portal::InviteBody| Ok::<_, AdminError>(b)),
        run(data, suspensions::CreateBody::validate),
    ]
    .into_iter()
    .filter(|&accepted| accepted)
    .count()
}

/// Runs a store call with the [`STORE_TIMEOUT`] budget. A call cut short is rolled back by the
/// store (its transaction is dropped uncommitted).
///
/// # Errors
/// The store's error mapped to an [`AdminError`]; `StoreUnavailable` on timeout.
pub(crate) async fn store_call<T>(
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, AdminError> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(result) => result.map_err(AdminError::from),
        Err(_) => {
            tracing::warn!(
                timeout_ms = STORE_TIMEOUT.as_millis() as u64,
                "An admin store call timed out."
            );
            Err(AdminError::StoreUnavailable)
        }
    }
}

/// A `limit` query parameter: 1 to 1000, 100 when absent.
///
/// # Errors
/// `invalid_value` naming `limit`.
pub(crate) fn page_limit(raw: Option<&str>) -> Result<u32, AdminError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| {
            AdminError::invalid_value(
                "limit",
                format!("`{raw}` is not a page size from 1 to {MAX_PAGE}"),
            )
        })
}

/// An optional RFC 3339 instant parameter or field (`since`, `until`, `expires_at`, …); 422
/// `invalid_value` naming `field` otherwise.
pub(crate) fn instant(field: &str, raw: Option<String>) -> Result<Option<Timestamp>, AdminError> {
    raw.map(|s| {
        Timestamp::parse_rfc3339(&s).map_err(|e| AdminError::invalid_value(field, e.to_string()))
    })
    .transpose()
}

/// The `before` cursor of a listing keyed by positive numeric ids (`what` names the id in the
/// message: "an audit entry id").
///
/// # Errors
/// `invalid_value` naming `before`.
pub(crate) fn page_before(raw: Option<String>, what: &str) -> Result<Option<i64>, AdminError> {
    raw.map(|b| {
        b.parse::<i64>()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| AdminError::invalid_value("before", format!("`{b}` is not {what}")))
    })
    .transpose()
}

/// Cuts a listing fetched with one extra row down to `limit`, and names the cursor of the next
/// page when that extra row shows there is one.
pub(crate) fn page<T, C>(
    mut rows: Vec<T>,
    limit: u32,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let limit = limit as usize;
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(cursor);
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits() {
        assert_eq!(page_limit(None).unwrap(), 100);
        assert_eq!(page_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "-1", "1001", "ten", ""] {
            assert_eq!(page_limit(Some(bad)).unwrap_err().code(), "invalid_value");
        }
    }

    #[test]
    fn pages() {
        assert_eq!(page(vec![1, 2, 3], 2, |n| *n), (vec![1, 2], Some(2)));
        assert_eq!(page(vec![1, 2], 2, |n| *n), (vec![1, 2], None));
    }
}
