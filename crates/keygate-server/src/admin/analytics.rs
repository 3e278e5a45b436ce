//! `GET /v1/analytics` (request counts per hour, day, client, key, route and status, as JSON
//! or CSV), `GET /v1/analytics/latency` (upstream latency histograms) and
//! `GET /v1/analytics/websocket` (sessions, messages and bytes per client), as counted by every
//! node and flushed to the store (figures lag by the flush interval). The filters are checked
//! by [`crate::policy::analytics`], the same parser `keygate usage` uses.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::AdminError;
use super::extract::Params;
use super::openapi as doc;
use super::{store_call, AdminState};
use crate::policy::analytics::{self, FilterError, RawFilters};

impl From<FilterError> for AdminError {
    fn from(e: FilterError) -> Self {
        AdminError::invalid_value(e.field, e.reason)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnalyticsParams {
    /// First hour: a UTC day (`YYYY-MM-DD`, its first hour) or an RFC 3339 instant on a whole
    /// hour; 23 hours before `to` when absent.
    from: Option<String>,
    /// Last hour, included: a UTC day (its last hour) or an instant on a whole hour; the
    /// current hour when absent. At most 366 days after `from`.
    to: Option<String>,
    /// A client's name or id (`cli_...`).
    client: Option<String>,
    /// A key id (`key_...`).
    key: Option<String>,
    /// A route's configured name (1 to 200 characters).
    route: Option<String>,
    /// An HTTP status (100-599).
    status: Option<String>,
    /// Comma-separated dimensions to group by: `hour`, `day`, `client`, `key`, `route`,
    /// `status` (each once; not both `hour` and `day`). None: one total.
    group_by: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` also asks for CSV.
    format: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatencyParams {
    /// First hour (as for `/v1/analytics`).
    from: Option<String>,
    /// Last hour, included (as for `/v1/analytics`).
    to: Option<String>,
    /// A route's configured name.
    route: Option<String>,
    /// An upstream's configured name.
    upstream: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WsParams {
    /// First hour (as for `/v1/analytics`).
    from: Option<String>,
    /// Last hour, included (as for `/v1/analytics`).
    to: Option<String>,
    /// A client's name or id (`cli_...`).
    client: Option<String>,
}

/// Whether the caller asked for CSV (`format=csv`, or `Accept: text/csv` without `format`).
fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool, AdminError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(_) => Err(AdminError::invalid_value(
            "format",
            "must be `json` or `csv`",
        )),
        None => Ok(headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().split(';').next() == Some("text/csv"))),
    }
}

/// A client's id from its name or id; `client_not_found` otherwise.
async fn client_id(state: &AdminState, client: &str) -> Result<String, AdminError> {
    Ok(store_call(state.store.client(client))
        .await?
        .id
        .as_str()
        .to_owned())
}

/// `GET /v1/analytics`.
#[utoipa::path(
    get,
    path = "/v1/analytics",
    operation_id = "analytics",
    tag = "analytics",
    summary = "Requests per hour, day, client, key, route and status",
    params(AnalyticsParams),
    responses(
        (status = 200, description = "The groups' request counts, ordered by the grouped dimensions (JSON, or CSV with `format=csv` or `Accept: text/csv`). Keys appear by id only.", body = doc::Analytics),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to`, a range over 366 days (`invalid_value`), or more than 10,000 rows (`too_many_rows`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn requests(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Params(q): Params<AnalyticsParams>,
) -> Result<Response, AdminError> {
    let csv = wants_csv(q.format.as_deref(), &headers)?;
    let raw = RawFilters {
        from: q.from,
        to: q.to,
        client: q.client,
        key: q.key,
        route: q.route,
        upstream: None,
        status: q.status,
        group_by: q.group_by,
    };
    let mut parsed = analytics::parse(&raw, state.gateway().clock.now())?;
    if let Some(c) = &parsed.client {
        parsed.query.client = Some(client_id(&state, c).await?);
    }
    let rows = store_call(state.store.analytics(&parsed.query)).await?;
    if rows.more {
        return Err(AdminError::TooManyRows(analytics::too_many_rows()));
    }
    let answer = analytics::to_json(&parsed.query, &rows);
    if csv {
        let mut resp = analytics::to_csv(&answer).into_response();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        h.insert(
            CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"keygate-analytics.csv\""),
        );
        return Ok(resp);
    }
    Ok(Json(answer).into_response())
}

/// `GET /v1/analytics/latency`.
#[utoipa::path(
    get,
    path = "/v1/analytics/latency",
    operation_id = "analytics_latency",
    tag = "analytics",
    summary = "Upstream latency histograms per route and upstream",
    params(LatencyParams),
    responses(
        (status = 200, description = "One histogram per route and upstream over the range: count, sum, cumulative buckets and p50/p90/p99 estimated from them.", body = doc::Latency),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to` or a range over 366 days (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn latency(
    State(state): State<AdminState>,
    Params(q): Params<LatencyParams>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let raw = RawFilters {
        from: q.from,
        to: q.to,
        route: q.route,
        upstream: q.upstream,
        ..RawFilters::default()
    };
    let query = analytics::parse_latency(&raw, state.gateway().clock.now())?;
    let rows = store_call(state.store.analytics_latency(&query)).await?;
    Ok(Json(analytics::latency_json(&query, &rows)))
}

/// `GET /v1/analytics/websocket`.
#[utoipa::path(
    get,
    path = "/v1/analytics/websocket",
    operation_id = "analytics_websocket",
    tag = "analytics",
    summary = "WebSocket sessions, messages and bytes per client",
    params(WsParams),
    responses(
        (status = 200, description = "Per client over the range: sessions opened, messages and bytes delivered to the client.", body = doc::WsActivity),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to` or a range over 366 days (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn websocket(
    State(state): State<AdminState>,
    Params(q): Params<WsParams>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let raw = RawFilters {
        from: q.from,
        to: q.to,
        client: q.client,
        ..RawFilters::default()
    };
    let parsed = analytics::parse(&raw, state.gateway().clock.now())?;
    let client = match &parsed.client {
        Some(c) => Some(client_id(&state, c).await?),
        None => None,
    };
    let (from, to) = (parsed.query.from_hour, parsed.query.to_hour);
    let rows = store_call(state.store.analytics_ws(from, to, client.as_deref())).await?;
    Ok(Json(analytics::ws_json(from, to, &rows)))
}
