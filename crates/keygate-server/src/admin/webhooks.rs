//! `/v1/webhooks`: the webhooks this node sends to, and the outbox's deliveries (list, show
//! with the body sent, replay a dead or delivered one).

use axum::extract::{FromRequestParts, Path, State};
use axum::Json;
use http::request::Parts;
use keygate_store::{DeliveryFilter, DeliveryState};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::auth::Caller;
use super::error::AdminError;
use super::extract::Params;
use super::openapi as doc;
use super::{page, page_before, page_limit, store_call, AdminState};

/// A delivery id from the path.
#[derive(Debug)]
pub(crate) struct DeliveryPath(i64);

impl<S: Send + Sync> FromRequestParts<S> for DeliveryPath {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        raw.parse::<i64>()
            .ok()
            .filter(|&id| id > 0)
            .map(DeliveryPath)
            .ok_or_else(|| AdminError::InvalidId(format!("`{raw}` is not a delivery id")))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryQuery {
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The previous page's `next_before`: only older deliveries.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// `pending`, `delivered` or `dead`.
    state: Option<String>,
    /// Only this webhook's deliveries (its `name`).
    webhook: Option<String>,
    /// Only this event type, e.g. `key.revoked`.
    event: Option<String>,
    /// Only this event's deliveries (`evt_...`).
    event_id: Option<String>,
}

/// `GET /v1/webhooks`: the configured webhooks (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    summary = "List the webhooks this node sends to",
    responses(
        (status = 200, description = "The configured webhooks, without secrets.", body = doc::WebhookList),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list_webhooks(State(state): State<AdminState>) -> Json<Value> {
    let gw = state.gateway();
    let items: Vec<Value> = gw
        .config
        .webhooks
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "events": h.events.iter().map(|e| e.name()).collect::<Vec<_>>(),
                "timeout_ms": h.timeout.as_millis() as u64,
                "max_attempts": h.max_attempts,
                "backoff_ms": h.backoff.as_millis() as u64,
            })
        })
        .collect();
    Json(json!({ "items": items }))
}

/// `GET /v1/webhooks/deliveries?state=&webhook=&event=&event_id=&limit=&before=`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    summary = "List webhook deliveries, newest first",
    params(DeliveryQuery),
    responses(
        (status = 200, description = "A page of deliveries.", body = doc::DeliveryPage),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is out of range (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<DeliveryQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = page_limit(q.limit.as_deref())?;
    let before = page_before(q.before, "a delivery id")?;
    let delivery_state = q
        .state
        .map(|s| {
            DeliveryState::parse(&s).ok_or_else(|| {
                AdminError::invalid_value(
                    "state",
                    format!("`{s}` is not one of pending, delivered, dead"),
                )
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        limit: limit + 1,
        before,
        state: delivery_state,
        webhook: q.webhook,
        event_type: q.event,
        event_id: q.event_id,
    };
    let rows = store_call(state.store.deliveries(&filter)).await?;
    let (items, next) = page(rows, limit, |d| d.id);
    Ok(Json(json!({ "items": items, "next_before": next })))
}

/// `GET /v1/webhooks/deliveries/{id}`: one delivery and the event body it sends.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries/{id}",
    operation_id = "show_webhook_delivery",
    tag = "webhooks",
    summary = "Show a delivery and the body it sends",
    params(("id" = i64, Path, description = "The delivery id.", minimum = 1)),
    responses(
        (status = 200, description = "The delivery, with `body`: the event as sent.", body = doc::Delivery),
        (status = 400, description = "The id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery (`delivery_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    DeliveryPath(id): DeliveryPath,
) -> Result<Json<Value>, AdminError> {
    let delivery = store_call(state.store.delivery(id)).await?;
    let body = store_call(state.store.delivery_body(id)).await?;
    let mut out = json!(delivery);
    out["body"] = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok(Json(out))
}

/// `POST /v1/webhooks/deliveries/{id}/replay`: send a dead or delivered delivery again.
#[utoipa::path(
    post,
    path = "/v1/webhooks/deliveries/{id}/replay",
    operation_id = "replay_webhook_delivery",
    tag = "webhooks",
    summary = "Send a dead or delivered delivery again",
    params(("id" = i64, Path, description = "The delivery id.", minimum = 1)),
    responses(
        (status = 200, description = "The delivery, pending and due now.", body = doc::Delivery),
        (status = 400, description = "The id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such delivery (`delivery_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is still pending (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn replay(
    State(state): State<AdminState>,
    caller: Caller,
    DeliveryPath(id): DeliveryPath,
) -> Result<Json<Value>, AdminError> {
    let delivery = store_call(state.store.replay_delivery(&caller.actor, id)).await?;
    Ok(Json(json!(delivery)))
}
