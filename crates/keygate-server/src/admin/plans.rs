//! `/v1/plans`: the plans of this deployment's configuration, read-only (plans are
//! configuration, changed by editing the file and restarting or reloading).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::AdminError;
use super::openapi as doc;
use super::AdminState;

/// `GET /v1/plans` → every configured plan, by name.
#[utoipa::path(
    get,
    path = "/v1/plans",
    operation_id = "list_plans",
    tag = "plans",
    summary = "List the configured plans",
    responses(
        (status = 200, description = "Every plan, by name.", body = doc::PlanList),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(State(state): State<AdminState>) -> Json<Value> {
    let items: Vec<Value> = state
        .gateway()
        .config
        .plans
        .iter()
        .map(|(name, plan)| plan.to_json(name))
        .collect();
    Json(json!({ "items": items }))
}

/// `GET /v1/plans/{name}`.
#[utoipa::path(
    get,
    path = "/v1/plans/{name}",
    operation_id = "show_plan",
    tag = "plans",
    summary = "Show a configured plan",
    params(("name" = String, Path, description = "The plan's name.")),
    responses(
        (status = 200, description = "The plan.", body = doc::Plan),
        (status = 404, description = "No such plan (`plan_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AdminError> {
    state
        .gateway()
        .config
        .plans
        .get(&name)
        .map(|plan| Json(plan.to_json(&name)))
        .ok_or(AdminError::PlanNotFound(name))
}
