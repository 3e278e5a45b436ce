//! `GET /v1/clients/{client}/usage`: a client's requests by UTC day and status, and the
//! WebSocket messages and bytes delivered to it per day, as counted by every gateway node and
//! flushed to the store (figures lag by the flush interval).

use axum::extract::State;
use axum::Json;
use keygate_core::Timestamp;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::error::AdminError;
use super::extract::{ClientPath, Params};
use super::openapi as doc;
use super::{store_call, AdminState};

/// Days shown when `from` is absent.
const DEFAULT_DAYS: i64 = 30;
/// Longest range one request may ask for.
const MAX_DAYS: i64 = 366;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// First day (UTC, `YYYY-MM-DD`); 29 days before `to` when absent.
    #[param(format = Date)]
    from: Option<String>,
    /// Last day (UTC, `YYYY-MM-DD`); today when absent.
    #[param(format = Date)]
    to: Option<String>,
}

/// Parses `YYYY-MM-DD` into the instant its day starts.
fn day(field: &str, raw: &str) -> Result<Timestamp, AdminError> {
    Timestamp::parse_rfc3339(&format!("{raw}T00:00:00Z"))
        .ok()
        .filter(|t| t.utc_day() == raw)
        .ok_or_else(|| {
            AdminError::invalid_value(field, format!("`{raw}` is not a day (YYYY-MM-DD)"))
        })
}

/// `GET /v1/clients/{client}/usage?from=&to=`.
#[utoipa::path(
    get,
    path = "/v1/clients/{client}/usage",
    operation_id = "client_usage",
    tag = "clients",
    summary = "A client's requests by day and status",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`)."), UsageQuery),
    responses(
        (status = 200, description = "Requests per UTC day and status, and WebSocket messages and bytes delivered per day; days with neither are left out.", body = doc::Usage),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A day is malformed, `from` is after `to`, or the range is over 366 days (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    ClientPath(client): ClientPath,
    Params(q): Params<UsageQuery>,
) -> Result<Json<Value>, AdminError> {
    let to = match &q.to {
        Some(raw) => day("to", raw)?,
        None => day("to", &state.gateway().clock.now().utc_day())?,
    };
    let from = match &q.from {
        Some(raw) => day("from", raw)?,
        None => Timestamp::from_millis(to.as_millis() - (DEFAULT_DAYS - 1) * DAY_MS),
    };
    if from > to {
        return Err(AdminError::invalid_value("from", "`from` is after `to`"));
    }
    if (to.as_millis() - from.as_millis()) / DAY_MS >= MAX_DAYS {
        return Err(AdminError::invalid_value(
            "from",
            format!("a range is at most {MAX_DAYS} days"),
        ));
    }
    let owner = store_call(state.store.client(&client)).await?;
    let (from, to) = (from.utc_day(), to.utc_day());
    let rows = store_call(state.store.usage(&owner.id, &from, &to)).await?;
    let ws = store_call(state.store.usage_ws(&owner.id, &from, &to)).await?;
    Ok(Json(crate::state::usage::report(
        &owner, &from, &to, &rows, &ws,
    )))
}
