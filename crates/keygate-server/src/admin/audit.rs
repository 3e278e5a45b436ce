//! `GET /v1/audit`: the audit log, newest first, paged by entry id.

use axum::extract::State;
use axum::Json;
use keygate_store::AuditFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::AdminError;
use super::extract::Params;
use super::{page, page_limit, store_call, AdminState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    limit: Option<String>,
    before: Option<String>,
    actor: Option<String>,
    /// An exact action (`key.rotate`) or a family (`key.`).
    action: Option<String>,
    target: Option<String>,
}

/// `GET /v1/audit?limit=&before=&actor=&action=&target=` → `{"items", "next_before"}`.
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<AuditQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = page_limit(q.limit.as_deref())?;
    let before = q
        .before
        .map(|b| {
            b.parse::<i64>().ok().filter(|&id| id > 0).ok_or_else(|| {
                AdminError::invalid_value("before", format!("`{b}` is not an audit entry id"))
            })
        })
        .transpose()?;
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
