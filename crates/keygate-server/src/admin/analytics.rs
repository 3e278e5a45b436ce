//! `GET /v1/analytics` (request counts per hour, day, client, key, route and status, as JSON
//! or CSV), `GET /v1/analytics/latency` (upstream latency histograms) and
//! `GET /v1/analytics/websocket` (sessions, messages and bytes per client), as counted by every
//! node and flushed to the store (figures lag by the flush interval). The filters are checked
//! by [`crate::policy::analytics`], the same parser `keygate usage` uses.
//!
//! Each answer is one page of at most 10,000 rows (`limit`): when rows follow, the JSON's
//! `next` holds the cursor of the next page and a `Link: <…>; rel="next"` header the whole
//! next request (the same filters, `from` and `to` as resolved, and the cursor), JSON or CSV.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE, LINK};
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
    /// Rows per page: 1 to 10000 (the default).
    limit: Option<String>,
    /// The page after the one whose answer gave this cursor (`next`); the filters must be the
    /// same.
    cursor: Option<String>,
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
    /// `json` (default) or `csv`; `Accept: text/csv` also asks for CSV.
    format: Option<String>,
    /// Histograms per page: 1 to 10000 (the default).
    limit: Option<String>,
    /// The page after the one whose answer gave this cursor (`next`).
    cursor: Option<String>,
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
    /// `json` (default) or `csv`; `Accept: text/csv` also asks for CSV.
    format: Option<String>,
    /// Clients per page: 1 to 10000 (the default).
    limit: Option<String>,
    /// The page after the one whose answer gave this cursor (`next`).
    cursor: Option<String>,
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

/// How a view renders as CSV, and its download's `Content-Disposition`.
type Csv = (fn(&serde_json::Value) -> String, &'static str);

/// A view's answer: JSON, or CSV as a download named `file`; with a `Link` to the next page
/// when there is one.
fn answer(json: serde_json::Value, csv: Option<Csv>, next: Option<HeaderValue>) -> Response {
    let mut resp = match csv {
        Some((render, file)) => {
            let mut resp = render(&json).into_response();
            let h = resp.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            h.insert(CONTENT_DISPOSITION, HeaderValue::from_static(file));
            resp
        }
        None => Json(json).into_response(),
    };
    if let Some(link) = next {
        resp.headers_mut().insert(LINK, link);
    }
    resp
}

/// `Link: <path?…&cursor=…>; rel="next"`: the request for the next page. Its parameters are
/// the caller's, checked, with `from` and `to` as resolved (a default range moves with the
/// clock, and the cursor belongs to this one) and every value percent-encoded.
fn next_link(
    path: &str,
    params: &[(&str, Option<&str>)],
    from_hour: i64,
    to_hour: i64,
    cursor: Option<String>,
) -> Option<HeaderValue> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let cursor = cursor?;
    let (from, to) = (
        analytics::hour_text(from_hour),
        analytics::hour_text(to_hour),
    );
    let mut query = String::new();
    let all = params.iter().copied().chain([
        ("from", Some(from.as_str())),
        ("to", Some(to.as_str())),
        ("cursor", Some(cursor.as_str())),
    ]);
    for (name, value) in all {
        if let Some(v) = value {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
        }
    }
    HeaderValue::from_str(&format!("<{path}?{query}>; rel=\"next\"")).ok()
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
        (status = 200, description = "One page of the groups' request counts, ordered by the grouped dimensions (JSON, or CSV with `format=csv` or `Accept: text/csv`). Keys appear by id only. When rows follow, `next` holds the next page's cursor and `Link` (rel=\"next\") the next page's request.", body = doc::Analytics, headers(("Link" = String, description = "`<…>; rel=\"next\"` while rows follow"))),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to`, a range over 366 days, a `limit` outside 1..=10000 or a cursor not of this query (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
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
        limit: q.limit,
        cursor: q.cursor,
    };
    let mut parsed = analytics::parse(&raw, state.gateway().clock.now())?;
    if let Some(c) = &parsed.client {
        parsed.query.client = Some(client_id(&state, c).await?);
    }
    let rows = store_call(state.store.analytics(&parsed.query)).await?;
    let next = parsed.paging.next(rows.more);
    let link = next_link(
        "/v1/analytics",
        &[
            ("client", parsed.client.as_deref()),
            ("key", raw.key.as_deref()),
            ("route", raw.route.as_deref()),
            ("status", raw.status.as_deref()),
            ("group_by", raw.group_by.as_deref()),
            ("format", q.format.as_deref()),
            ("limit", raw.limit.as_deref()),
        ],
        parsed.query.from_hour,
        parsed.query.to_hour,
        next.clone(),
    );
    let json = analytics::to_json(&parsed.query, &rows, next);
    let csv = csv.then_some((
        analytics::to_csv as fn(&_) -> _,
        "attachment; filename=\"keygate-analytics.csv\"",
    ));
    Ok(answer(json, csv, link))
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
        (status = 200, description = "One page of histograms, one per route and upstream over the range: count, sum, cumulative buckets and p50/p90/p99 estimated from them (JSON; CSV without the buckets with `format=csv` or `Accept: text/csv`). When histograms follow, `next` holds the next page's cursor and `Link` (rel=\"next\") the next page's request.", body = doc::Latency, headers(("Link" = String, description = "`<…>; rel=\"next\"` while histograms follow"))),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to`, a range over 366 days, a `limit` outside 1..=10000 or a cursor not of this query (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn latency(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Params(q): Params<LatencyParams>,
) -> Result<Response, AdminError> {
    let csv = wants_csv(q.format.as_deref(), &headers)?;
    let raw = RawFilters {
        from: q.from,
        to: q.to,
        route: q.route,
        upstream: q.upstream,
        limit: q.limit,
        cursor: q.cursor,
        ..RawFilters::default()
    };
    let (query, paging) = analytics::parse_latency(&raw, state.gateway().clock.now())?;
    let rows = store_call(state.store.analytics_latency(&query)).await?;
    let next = paging.next(rows.more);
    let link = next_link(
        "/v1/analytics/latency",
        &[
            ("route", query.route.as_deref()),
            ("upstream", query.upstream.as_deref()),
            ("format", q.format.as_deref()),
            ("limit", raw.limit.as_deref()),
        ],
        query.from_hour,
        query.to_hour,
        next.clone(),
    );
    let json = analytics::latency_json(&query, &rows.rows, next);
    let csv = csv.then_some((
        analytics::latency_csv as fn(&_) -> _,
        "attachment; filename=\"keygate-latency.csv\"",
    ));
    Ok(answer(json, csv, link))
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
        (status = 200, description = "One page of clients, per client over the range: sessions opened, messages and bytes delivered to the client (JSON, or CSV with `format=csv` or `Accept: text/csv`). When clients follow, `next` holds the next page's cursor and `Link` (rel=\"next\") the next page's request.", body = doc::WsActivity, headers(("Link" = String, description = "`<…>; rel=\"next\"` while clients follow"))),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed filter, `from` after `to`, a range over 366 days, a `limit` outside 1..=10000 or a cursor not of this query (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn websocket(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Params(q): Params<WsParams>,
) -> Result<Response, AdminError> {
    let csv = wants_csv(q.format.as_deref(), &headers)?;
    let raw = RawFilters {
        from: q.from,
        to: q.to,
        client: q.client,
        limit: q.limit,
        cursor: q.cursor,
        ..RawFilters::default()
    };
    let parsed = analytics::parse_ws(&raw, state.gateway().clock.now())?;
    let client = match &parsed.client {
        Some(c) => Some(client_id(&state, c).await?),
        None => None,
    };
    let (from, to) = (parsed.query.from_hour, parsed.query.to_hour);
    let rows = store_call(
        state
            .store
            .analytics_ws(from, to, client.as_deref(), parsed.query.page),
    )
    .await?;
    let next = parsed.paging.next(rows.more);
    let link = next_link(
        "/v1/analytics/websocket",
        &[
            ("client", parsed.client.as_deref()),
            ("format", q.format.as_deref()),
            ("limit", raw.limit.as_deref()),
        ],
        from,
        to,
        next.clone(),
    );
    let json = analytics::ws_json(from, to, &rows.rows, next);
    let csv = csv.then_some((
        analytics::ws_csv as fn(&_) -> _,
        "attachment; filename=\"keygate-websocket.csv\"",
    ));
    Ok(answer(json, csv, link))
}
