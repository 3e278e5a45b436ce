//! `/v1/emergency`: read or switch emergency mode. While it is on, every gateway node answers
//! every non-infra request with 503 (within its feed interval); the admin API keeps working.

use axum::extract::State;
use axum::Json;
use keygate_store::Emergency;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::AdminError;
use super::extract::JsonBody;
use super::openapi as doc;
use super::{store_call, AdminState};

/// The switch.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = EmergencySwitch)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchBody {
    /// On refuses every non-infra request with 503; off serves again.
    on: bool,
    /// What callers read in the refusal (1 to 500 printable characters); the default sentence
    /// when absent. Ignored when switching off.
    #[schema(min_length = 1, max_length = 500)]
    message: Option<String>,
}

/// `GET /v1/emergency`.
#[utoipa::path(
    get,
    path = "/v1/emergency",
    operation_id = "show_emergency",
    tag = "emergency",
    summary = "Show emergency mode",
    responses(
        (status = 200, description = "Emergency mode as stored.", body = doc::EmergencyState),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(State(state): State<AdminState>) -> Result<Json<Emergency>, AdminError> {
    Ok(Json(store_call(state.store.emergency()).await?))
}

/// `PUT /v1/emergency` with `{"on": true, "message": "…"}` or `{"on": false}`.
#[utoipa::path(
    put,
    path = "/v1/emergency",
    operation_id = "set_emergency",
    tag = "emergency",
    summary = "Switch emergency mode on or off",
    request_body = SwitchBody,
    responses(
        (status = 200, description = "Emergency mode as now stored; every node follows within its feed interval.", body = doc::EmergencyState),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn set(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(body): JsonBody<SwitchBody>,
) -> Result<Json<Emergency>, AdminError> {
    let stored = store_call(state.store.set_emergency(
        &caller.actor,
        body.on,
        body.message.as_deref().filter(|_| body.on),
    ))
    .await?;
    Ok(Json(stored))
}
