//! `GET /v1/audit`: the audit log, newest first, paged by entry id.

use axum::extract::State;
use axum::Json;
use keygate_store::AuditFilter;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::AdminError;
use super::extract::Params;
use super::openapi as doc;
use super::{page, page_before, page_limit, store_call, AdminState};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The previous page's `next_before`: only older entries.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Only this actor's entries, e.g. `admin:ops`.
    actor: Option<String>,
    /// An exact action (`key.rotate`) or a family (`key.`).
    action: Option<String>,
    /// Only entries about this target.
    target: Option<String>,
}

/// `GET /v1/audit?limit=&before=&actor=&action=&target=` → `{"items", "next_before"}`.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "list_audit",
    tag = "audit",
    summary = "Read the audit log, newest first",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries.", body = doc::AuditPage),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is out of range (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<AuditQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = page_limit(q.limit.as_deref())?;
    let before = page_before(q.before, "an audit entry id")?;
    let filter = AuditFilter {
        limit: limit + 1,
        before,
        actor: q.actor,
        action: q.action,
        target: q.target,
    };
    let rows = store_call(state.store.audit(&filter)).await?;
    let (items, next) = page(rows, limit, |e| e.id);
    Ok(Json(json!({ "items": items, "next_before": next })))
}
