//! `GET /v1/keys/suspected`: keys suspected of being shared (`[plans.NAME.sharing]`), one
//! entry per key and hour, newest first. Ids and counts only: never a key or its digest.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::AdminError;
use super::extract::Params;
use super::openapi as doc;
use super::{store_call, AdminState};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SuspectedQuery {
    /// Only suspicions recorded at or after this instant (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

/// One key suspected in one hour.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SuspectedKey {
    key_id: String,
    client_id: String,
    /// The start of the UTC hour the networks were counted in.
    #[schema(format = DateTime)]
    hour: String,
    /// Distinct source networks counted when the threshold was reached.
    networks: u64,
    /// `flag` or `disable`.
    action: String,
    #[schema(format = DateTime)]
    created_at: String,
}

/// The suspicions, newest first (at most 1,000).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SuspectedKeys {
    items: Vec<SuspectedKey>,
}

/// `GET /v1/keys/suspected?since=` → `{"items"}`.
#[utoipa::path(
    get,
    path = "/v1/keys/suspected",
    operation_id = "list_suspected_keys",
    tag = "keys",
    summary = "List keys suspected of being shared",
    params(SuspectedQuery),
    responses(
        (status = 200, description = "The suspicions, newest first.", body = SuspectedKeys),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`since` is not an RFC 3339 instant (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<SuspectedQuery>,
) -> Result<Json<Value>, AdminError> {
    let since = super::instant("since", q.since)?;
    let items = store_call(state.store.suspected_keys(since)).await?;
    Ok(Json(json!({ "items": items })))
}
