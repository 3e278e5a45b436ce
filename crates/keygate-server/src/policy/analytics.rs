//! Analytics queries as the admin API (`GET /v1/analytics`, `/v1/analytics/latency`) and
//! `keygate usage` ask them: one strict parser of the filters, and one rendering each for JSON
//! and CSV, so both surfaces accept and answer exactly the same. Every filter is hostile input:
//! values are checked here and bound as SQL parameters by the store; `group_by` names map to
//! constant columns.

use base64::Engine as _;
use keygate_core::{KeyId, Timestamp};
use keygate_store::{
    AnalyticsQuery, AnalyticsRows, Dimension, GroupValue, LatencyCount, LatencyQuery, Page,
    WsCount, HOUR_MS, LATENCY_BOUNDS_MS, MAX_ANALYTICS_ROWS,
};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

/// The longest range one query may span.
pub const MAX_DAYS: i64 = 366;

/// Hours shown when `from` is absent: the last day.
const DEFAULT_HOURS: i64 = 24;

/// The longest route, upstream or client name a filter may hold.
const MAX_NAME: usize = 200;

/// A filter the caller gave, unchecked: every value as text, so a bad one gets a precise answer.
#[derive(Clone, Debug, Default)]
pub struct RawFilters {
    pub from: Option<String>,
    pub to: Option<String>,
    pub client: Option<String>,
    pub key: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub status: Option<String>,
    pub group_by: Option<String>,
    /// Rows per page (1 to [`MAX_ANALYTICS_ROWS`], the default).
    pub limit: Option<String>,
    /// Where the page starts: the `next` of the previous page's answer.
    pub cursor: Option<String>,
}

/// Why a filter is refused: the parameter and what is wrong with it (never echoing more than
/// a bounded, control-free part of the value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FilterError {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> FilterError {
    FilterError {
        field,
        reason: reason.into(),
    }
}

/// At most 40 characters of `raw` for a message, control characters replaced.
fn quoted(raw: &str) -> String {
    let shown: String = raw
        .chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if raw.chars().count() > 40 {
        format!("`{shown}…`")
    } else {
        format!("`{shown}`")
    }
}

/// `YYYY-MM-DD` (the day's first hour, or its last for `to`) or an RFC 3339 instant on a whole
/// hour; hours since the epoch.
fn hour(field: &'static str, raw: &str, end: bool) -> Result<i64, FilterError> {
    let bad = || {
        refuse(
            field,
            format!(
                "{} is not a day (YYYY-MM-DD) or a whole hour (YYYY-MM-DDTHH:00:00Z)",
                quoted(raw)
            ),
        )
    };
    if raw.len() == 10 {
        let t = Timestamp::parse_rfc3339(&format!("{raw}T00:00:00Z")).map_err(|_| bad())?;
        if t.utc_day() != raw {
            return Err(bad());
        }
        let h = t.as_millis().div_euclid(HOUR_MS);
        return Ok(if end { h + 23 } else { h });
    }
    if raw.len() > 40 || raw != raw.trim() {
        return Err(bad());
    }
    let t = Timestamp::parse_rfc3339(raw).map_err(|_| bad())?;
    if t.as_millis().rem_euclid(HOUR_MS) != 0 {
        return Err(refuse(
            field,
            format!("{} is not on a whole hour", quoted(raw)),
        ));
    }
    Ok(t.as_millis().div_euclid(HOUR_MS))
}

/// A name filter: 1 to 200 characters, none a control character.
fn name(field: &'static str, raw: &str) -> Result<String, FilterError> {
    if raw.is_empty() || raw.chars().count() > MAX_NAME {
        return Err(refuse(field, format!("must be 1 to {MAX_NAME} characters")));
    }
    if raw.chars().any(char::is_control) {
        return Err(refuse(field, "must not hold control characters"));
    }
    Ok(raw.to_owned())
}

/// `from..=to` in hours: defaults (the last 24 hours to the current one), order and span.
fn range(raw: &RawFilters, now: Timestamp) -> Result<(i64, i64), FilterError> {
    let to = match &raw.to {
        Some(t) => hour("to", t, true)?,
        None => now.as_millis().div_euclid(HOUR_MS),
    };
    let from = match &raw.from {
        Some(f) => hour("from", f, false)?,
        None => to - (DEFAULT_HOURS - 1),
    };
    if from > to {
        return Err(refuse("from", "`from` is after `to`"));
    }
    if to - from >= MAX_DAYS * 24 {
        return Err(refuse(
            "from",
            format!("a range is at most {MAX_DAYS} days"),
        ));
    }
    Ok((from, to))
}

/// `group_by`: comma-separated dimensions, each once, not both `hour` and `day`.
fn group_by(raw: Option<&str>) -> Result<Vec<Dimension>, FilterError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut dims = Vec::new();
    for part in raw.split(',') {
        let d = Dimension::parse(part).ok_or_else(|| {
            refuse(
                "group_by",
                format!(
                    "{} is not one of hour, day, client, key, route, status",
                    quoted(part)
                ),
            )
        })?;
        if dims.contains(&d) {
            return Err(refuse("group_by", format!("`{}` is named twice", d.name())));
        }
        dims.push(d);
    }
    if dims.contains(&Dimension::Hour) && dims.contains(&Dimension::Day) {
        return Err(refuse("group_by", "`hour` and `day` exclude each other"));
    }
    Ok(dims)
}

/// A checked request-count query. `client` is the caller's text (a name or `cli_…` id), for
/// the caller to resolve to an id through the store.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub query: AnalyticsQuery,
    pub client: Option<String>,
    pub paging: Paging,
}

/// The furthest a cursor may point: far past any real answer, and bounded.
const MAX_OFFSET: u64 = 1_000_000_000;

/// A cursor's layout version (its first byte).
const CURSOR_VERSION: u8 = 1;

/// A page of an analytics answer, and the query it belongs to.
///
/// A cursor is `base64url(version, offset, the first 8 bytes of SHA-256 of the query)`: opaque
/// to callers, tied to one query (its view and every filter as resolved, `from` and `to`
/// included), so a cursor of another query, or garbled, or pointing past [`MAX_OFFSET`], is
/// refused rather than answering some other page. It is no secret and grants nothing (an
/// admin token is needed to use it); a caller who forges one reads a page it could ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub page: Page,
    query: [u8; 8],
}

impl Paging {
    /// The cursor of the page after this one, when there is one.
    pub fn next(&self, more: bool) -> Option<String> {
        let limit = u64::try_from(self.page.limit).unwrap_or(u64::MAX);
        let offset = self.page.offset.saturating_add(limit);
        (more && offset <= MAX_OFFSET).then(|| {
            let mut bytes = [0u8; 17];
            bytes[0] = CURSOR_VERSION;
            bytes[1..9].copy_from_slice(&offset.to_be_bytes());
            bytes[9..].copy_from_slice(&self.query);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        })
    }
}

/// The identity of a query for its cursors: each part tagged, `None` apart from empty.
fn fingerprint(parts: &[(&str, Option<&str>)]) -> [u8; 8] {
    let mut h = Sha256::new();
    for (name, value) in parts {
        h.update(name.as_bytes());
        match value {
            Some(v) => {
                h.update(b"=");
                h.update(u64::try_from(v.len()).unwrap_or(u64::MAX).to_be_bytes());
                h.update(v.as_bytes());
            }
            None => h.update(b"-"),
        }
    }
    let digest = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// `limit` and `cursor` of the query whose fingerprint is `query`.
fn paging(raw: &RawFilters, query: [u8; 8]) -> Result<Paging, FilterError> {
    let limit = match &raw.limit {
        Some(l) => (l.len() <= 5 && !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .then(|| l.parse::<usize>().ok())
            .flatten()
            .filter(|n| (1..=MAX_ANALYTICS_ROWS).contains(n))
            .ok_or_else(|| {
                refuse(
                    "limit",
                    format!(
                        "{} is not a whole number from 1 to {MAX_ANALYTICS_ROWS}",
                        quoted(l)
                    ),
                )
            })?,
        None => MAX_ANALYTICS_ROWS,
    };
    let offset = match &raw.cursor {
        Some(c) => {
            // Never echoed: a cursor is opaque, and a garbled one says nothing useful.
            let foreign = || {
                refuse(
                    "cursor",
                    "is not a cursor of this query: pass the `next` of the previous page with the same filters (and `from` and `to` as that answer states them)",
                )
            };
            let bytes = (c.len() == 23)
                .then(|| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(c)
                        .ok()
                })
                .flatten()
                .filter(|b| b.len() == 17 && b[0] == CURSOR_VERSION)
                .ok_or_else(foreign)?;
            if bytes[9..] != query {
                return Err(foreign());
            }
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&bytes[1..9]);
            let offset = u64::from_be_bytes(offset);
            if offset > MAX_OFFSET {
                return Err(foreign());
            }
            offset
        }
        None => 0,
    };
    Ok(Paging {
        page: Page { offset, limit },
        query,
    })
}

/// Checks the filters of a request-count query (`upstream` is refused: it names latency rows).
///
/// # Errors
/// The first refused filter.
pub fn parse(raw: &RawFilters, now: Timestamp) -> Result<Parsed, FilterError> {
    if raw.upstream.is_some() {
        return Err(refuse(
            "upstream",
            "request counts are not kept per upstream (see /v1/analytics/latency)",
        ));
    }
    let (from_hour, to_hour) = range(raw, now)?;
    let key = match &raw.key {
        Some(k) => Some(
            KeyId::parse(k)
                .map_err(|_| refuse("key", format!("{} is not a key id (key_…)", quoted(k))))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let status = match &raw.status {
        Some(s) => {
            let n = (s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u16>().ok())
                .flatten()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(|| {
                    refuse("status", format!("{} is not a status (100-599)", quoted(s)))
                })?;
            Some(n)
        }
        None => None,
    };
    let client = raw
        .client
        .as_deref()
        .map(|c| name("client", c))
        .transpose()?;
    let route = raw.route.as_deref().map(|r| name("route", r)).transpose()?;
    let group_by = group_by(raw.group_by.as_deref())?;
    let dims: Vec<&str> = group_by.iter().map(|d| d.name()).collect();
    let (from, to, status_text) = (
        from_hour.to_string(),
        to_hour.to_string(),
        status.map(|s| s.to_string()),
    );
    let paging = paging(
        raw,
        fingerprint(&[
            ("view", Some("requests")),
            ("from", Some(from.as_str())),
            ("to", Some(to.as_str())),
            ("client", client.as_deref()),
            ("key", key.as_deref()),
            ("route", route.as_deref()),
            ("status", status_text.as_deref()),
            ("group_by", Some(dims.join(",").as_str())),
        ]),
    )?;
    Ok(Parsed {
        client,
        query: AnalyticsQuery {
            from_hour,
            to_hour,
            page: paging.page,
            client: None,
            key,
            route,
            status,
            group_by,
        },
        paging,
    })
}

/// Checks the filters of a WebSocket activity query (`client`, `from`, `to` only).
///
/// # Errors
/// The first refused filter.
pub fn parse_ws(raw: &RawFilters, now: Timestamp) -> Result<Parsed, FilterError> {
    for (field, v) in [
        ("key", &raw.key),
        ("route", &raw.route),
        ("upstream", &raw.upstream),
        ("status", &raw.status),
        ("group_by", &raw.group_by),
    ] {
        if v.is_some() {
            return Err(refuse(field, "WebSocket activity is kept per client only"));
        }
    }
    let (from_hour, to_hour) = range(raw, now)?;
    let client = raw
        .client
        .as_deref()
        .map(|c| name("client", c))
        .transpose()?;
    let (from, to) = (from_hour.to_string(), to_hour.to_string());
    let paging = paging(
        raw,
        fingerprint(&[
            ("view", Some("websocket")),
            ("from", Some(from.as_str())),
            ("to", Some(to.as_str())),
            ("client", client.as_deref()),
        ]),
    )?;
    Ok(Parsed {
        client,
        query: AnalyticsQuery {
            from_hour,
            to_hour,
            page: paging.page,
            ..AnalyticsQuery::default()
        },
        paging,
    })
}

/// Checks the filters of a latency query (`route`, `upstream`, `from`, `to` only).
///
/// # Errors
/// The first refused filter.
pub fn parse_latency(
    raw: &RawFilters,
    now: Timestamp,
) -> Result<(LatencyQuery, Paging), FilterError> {
    for (field, v) in [
        ("client", &raw.client),
        ("key", &raw.key),
        ("status", &raw.status),
        ("group_by", &raw.group_by),
    ] {
        if v.is_some() {
            return Err(refuse(field, "latency is kept per route and upstream only"));
        }
    }
    let (from_hour, to_hour) = range(raw, now)?;
    let route = raw.route.as_deref().map(|r| name("route", r)).transpose()?;
    let upstream = raw
        .upstream
        .as_deref()
        .map(|u| name("upstream", u))
        .transpose()?;
    let (from, to) = (from_hour.to_string(), to_hour.to_string());
    let paging = paging(
        raw,
        fingerprint(&[
            ("view", Some("latency")),
            ("from", Some(from.as_str())),
            ("to", Some(to.as_str())),
            ("route", route.as_deref()),
            ("upstream", upstream.as_deref()),
        ]),
    )?;
    Ok((
        LatencyQuery {
            from_hour,
            to_hour,
            page: paging.page,
            route,
            upstream,
        },
        paging,
    ))
}

/// An hour as RFC 3339 (`2026-12-06T13:00:00Z`).
pub fn hour_text(hour: i64) -> String {
    Timestamp::from_millis(hour.saturating_mul(HOUR_MS)).to_rfc3339()
}

fn group_json(d: Dimension, v: &GroupValue) -> Value {
    match (d, v) {
        (Dimension::Hour, GroupValue::Number(h)) => json!(hour_text(*h)),
        (Dimension::Day, GroupValue::Number(day)) => {
            json!(Timestamp::from_millis(day.saturating_mul(24 * HOUR_MS)).utc_day())
        }
        (_, GroupValue::Number(n)) => json!(n),
        (_, GroupValue::Text(t)) => json!(t),
    }
}

/// The JSON answer: the range, the grouping, one object per row, the page's total and the
/// cursor of the next page (`null` on the last).
pub fn to_json(q: &AnalyticsQuery, rows: &AnalyticsRows, next: Option<String>) -> Value {
    let mut total: u64 = 0;
    let out: Vec<Value> = rows
        .rows
        .iter()
        .map(|r| {
            total = total.saturating_add(r.requests);
            let mut o = Map::new();
            for (d, v) in q.group_by.iter().zip(&r.groups) {
                o.insert(d.name().to_owned(), group_json(*d, v));
            }
            o.insert("requests".to_owned(), json!(r.requests));
            Value::Object(o)
        })
        .collect();
    json!({
        "from": hour_text(q.from_hour),
        "to": hour_text(q.to_hour + 1),
        "group_by": q.group_by.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "requests": total,
        "rows": out,
        "next": next,
    })
}

/// One CSV cell (RFC 4180), safe to open in a spreadsheet: a cell a spreadsheet would read as
/// a formula (`=`, `+`, `-`, `@`, a tab or a carriage return first) gets a leading `'`.
pub fn csv_cell(text: &str) -> String {
    let mut cell = String::with_capacity(text.len() + 3);
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        cell.push('\'');
    }
    cell.push_str(text);
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// The CSV form of a [`to_json`] answer (the admin API's and the CLI's, local or remote): a
/// header of the grouped dimensions and `requests`, then one line per row.
pub fn to_csv(answer: &Value) -> String {
    let columns: Vec<&str> = answer["group_by"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::new();
    for c in &columns {
        out.push_str(&csv_cell(c));
        out.push(',');
    }
    out.push_str("requests\r\n");
    for row in answer["rows"].as_array().into_iter().flatten() {
        for c in columns.iter().copied().chain(["requests"]) {
            let text = match &row[c] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            out.push_str(&csv_cell(&text));
            out.push(if c == "requests" { '\r' } else { ',' });
        }
        out.push('\n');
    }
    out
}

/// A CSV table (RFC 4180, spreadsheet-safe cells): `columns`, then one line per row.
fn csv_table<'a>(columns: &[&str], rows: impl Iterator<Item = &'a Value>) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.map(|c| csv_cell(&c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    line(&mut out, &mut columns.iter().map(|c| (*c).to_owned()));
    for row in rows {
        line(&mut out, &mut columns.iter().map(|c| text(&row[*c])));
    }
    out
}

/// The CSV form of a [`latency_json`] answer: one line per route and upstream with the count,
/// the sum, the mean and the p50/p90/p99 estimates (the buckets stay in JSON).
pub fn latency_csv(answer: &Value) -> String {
    csv_table(
        &[
            "route", "upstream", "count", "sum_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
        ],
        answer["histograms"].as_array().into_iter().flatten(),
    )
}

/// The CSV form of a [`ws_json`] answer: one line per client.
pub fn ws_csv(answer: &Value) -> String {
    csv_table(
        &["client", "sessions", "messages", "bytes"],
        answer["clients"].as_array().into_iter().flatten(),
    )
}

/// The latency estimated at quantile `q` from a histogram, as Prometheus's
/// `histogram_quantile` does: linear within the bucket the rank falls in; the highest finite
/// bound when it falls in `+Inf`; `None` without observations.
pub fn quantile_ms(h: &LatencyCount, q: f64) -> Option<f64> {
    if h.count == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let rank = q * h.count as f64;
    let mut below = 0u64;
    for (i, &n) in h.buckets.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let reached = (below + n) as f64;
        if n > 0 && reached >= rank {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return LATENCY_BOUNDS_MS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            #[allow(clippy::cast_precision_loss)]
            let into = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * into);
        }
        below += n;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

/// The JSON answer of a latency query: per route and upstream, the count, the sum and mean,
/// cumulative buckets (`le` in milliseconds, as Prometheus) and p50/p90/p99 estimates.
pub fn latency_json(q: &LatencyQuery, rows: &[LatencyCount], next: Option<String>) -> Value {
    let histograms: Vec<Value> = rows
        .iter()
        .map(|h| {
            let mut cumulative = 0;
            let buckets: Vec<Value> = h
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    cumulative += n;
                    let le = LATENCY_BOUNDS_MS
                        .get(i)
                        .map_or_else(|| "+Inf".to_owned(), ToString::to_string);
                    json!({ "le_ms": le, "count": cumulative })
                })
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let sum_ms = h.sum_us as f64 / 1000.0;
            #[allow(clippy::cast_precision_loss)]
            let mean_ms = (h.count > 0).then(|| sum_ms / h.count as f64);
            json!({
                "route": h.route,
                "upstream": h.upstream,
                "count": h.count,
                "sum_ms": sum_ms,
                "mean_ms": mean_ms,
                "p50_ms": quantile_ms(h, 0.5),
                "p90_ms": quantile_ms(h, 0.9),
                "p99_ms": quantile_ms(h, 0.99),
                "buckets": buckets,
            })
        })
        .collect();
    json!({
        "from": hour_text(q.from_hour),
        "to": hour_text(q.to_hour + 1),
        "histograms": histograms,
        "next": next,
    })
}

/// The JSON answer of a WebSocket query: per client, sessions opened and messages and bytes
/// delivered.
pub fn ws_json(from_hour: i64, to_hour: i64, rows: &[WsCount], next: Option<String>) -> Value {
    json!({
        "from": hour_text(from_hour),
        "to": hour_text(to_hour + 1),
        "clients": rows.iter().map(|w| json!({
            "client": w.client_id,
            "sessions": w.sessions,
            "messages": w.messages,
            "bytes": w.bytes,
        })).collect::<Vec<_>>(),
        "next": next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn raw(pairs: &[(&str, &str)]) -> RawFilters {
        let mut r = RawFilters::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "from" => r.from = v,
                "to" => r.to = v,
                "client" => r.client = v,
                "key" => r.key = v,
                "route" => r.route = v,
                "upstream" => r.upstream = v,
                "status" => r.status = v,
                "group_by" => r.group_by = v,
                "limit" => r.limit = v,
                "cursor" => r.cursor = v,
                _ => unreachable!(),
            }
        }
        r
    }

    fn refused(pairs: &[(&str, &str)]) -> FilterError {
        parse(&raw(pairs), Timestamp::from_millis(NOW)).unwrap_err()
    }

    #[test]
    fn days_and_hours_parse_strictly() {
        let p = parse(
            &raw(&[("from", "2026-12-01"), ("to", "2026-12-02")]),
            Timestamp::from_millis(NOW),
        )
        .unwrap();
        assert_eq!(hour_text(p.query.from_hour), "2026-12-01T00:00:00Z");
        assert_eq!(hour_text(p.query.to_hour), "2026-12-02T23:00:00Z");
        let p = parse(
            &raw(&[
                ("from", "2026-12-01T05:00:00Z"),
                ("to", "2026-12-01T05:00:00Z"),
            ]),
            Timestamp::from_millis(NOW),
        )
        .unwrap();
        assert_eq!(p.query.from_hour, p.query.to_hour);
        for bad in [
            "2026-02-30",
            "2026-12-1",
            "yesterday",
            "2026-12-01T05:30:00Z",
            "2026-12-01 ",
            "'; DROP TABLE analytics_requests; --",
        ] {
            assert_eq!(refused(&[("from", bad)]).field, "from", "{bad}");
        }
        assert!(refused(&[("from", "2026-12-02"), ("to", "2026-12-01")])
            .reason
            .contains("after"));
        assert!(refused(&[("from", "2020-01-01"), ("to", "2026-01-01")])
            .reason
            .contains("366"));
    }

    #[test]
    fn filters_and_groups_are_checked() {
        assert_eq!(refused(&[("status", "2000")]).field, "status");
        assert_eq!(refused(&[("status", "099")]).field, "status");
        assert_eq!(refused(&[("status", "+20")]).field, "status");
        assert_eq!(refused(&[("key", "key_' OR 1=1 --")]).field, "key");
        assert_eq!(refused(&[("route", "")]).field, "route");
        assert_eq!(refused(&[("route", "a\u{0}b")]).field, "route");
        assert_eq!(refused(&[("route", &"r".repeat(201))]).field, "route");
        assert_eq!(refused(&[("group_by", "minute")]).field, "group_by");
        assert_eq!(refused(&[("group_by", "route,route")]).field, "group_by");
        assert_eq!(refused(&[("group_by", "hour,day")]).field, "group_by");
        assert_eq!(refused(&[("group_by", "route,")]).field, "group_by");
        assert_eq!(refused(&[("upstream", "x")]).field, "upstream");
        let p = parse(
            &raw(&[
                ("group_by", "route,status"),
                ("status", "429"),
                ("route", "odds"),
            ]),
            Timestamp::from_millis(NOW),
        )
        .unwrap();
        assert_eq!(p.query.group_by, [Dimension::Route, Dimension::Status]);
        assert_eq!(p.query.status, Some(429));
        assert_eq!(p.query.to_hour - p.query.from_hour, 23);
    }

    fn parsed(pairs: &[(&str, &str)]) -> Parsed {
        parse(&raw(pairs), Timestamp::from_millis(NOW)).unwrap()
    }

    #[test]
    fn cursors_continue_their_own_query_only() {
        let q = [
            ("group_by", "route"),
            ("from", "2026-12-01"),
            ("to", "2026-12-02"),
        ];
        let first = parsed(&[q[0], q[1], q[2], ("limit", "100")]);
        assert_eq!(
            first.paging.page,
            Page {
                offset: 0,
                limit: 100
            }
        );
        assert_eq!(first.paging.next(false), None);
        let next = first.paging.next(true).unwrap();
        let second = parsed(&[
            q[0],
            q[1],
            q[2],
            ("limit", "100"),
            ("cursor", next.as_str()),
        ]);
        assert_eq!(second.paging.page.offset, 100);
        // The limit may change between pages; the filters may not.
        assert_eq!(
            parsed(&[q[0], q[1], q[2], ("cursor", next.as_str())])
                .paging
                .page
                .offset,
            100
        );
        for other in [
            vec![q[0], q[1], ("to", "2026-12-03")],
            vec![("group_by", "key"), q[1], q[2]],
            vec![q[0], q[1], q[2], ("route", "odds")],
            vec![q[0], q[1], q[2], ("status", "200")],
        ] {
            let mut pairs = other.clone();
            pairs.push(("cursor", next.as_str()));
            assert_eq!(refused(&pairs).field, "cursor", "{other:?}");
        }
        // Another view's cursor.
        let (_, lat) = parse_latency(&raw(&[q[1], q[2]]), Timestamp::from_millis(NOW)).unwrap();
        let foreign = lat.next(true).unwrap();
        assert_eq!(
            refused(&[q[0], q[1], q[2], ("cursor", foreign.as_str())]).field,
            "cursor"
        );
        // Garbled and forged: every one refused, none echoed.
        let mut flipped = next.clone().into_bytes();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let mut far = [0u8; 17];
        far[0] = 1;
        far[1..9].copy_from_slice(&(MAX_OFFSET + 1).to_be_bytes());
        far[9..].copy_from_slice(&first.paging.query);
        let far = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(far);
        for bad in [
            String::new(),
            "garbage".into(),
            flipped,
            far,
            format!("{next}="),
            next.to_uppercase(),
            "x".repeat(5000),
            "' OR 1=1 --".into(),
        ] {
            let e = refused(&[q[0], q[1], q[2], ("cursor", bad.as_str())]);
            assert_eq!(e.field, "cursor", "{bad}");
            assert!(bad.len() < 4 || !e.reason.contains(&bad), "{bad}");
        }
        for bad in ["0", "10001", "-1", "1e3", "99999999999999999999", " 10", ""] {
            assert_eq!(refused(&[("limit", bad)]).field, "limit", "{bad}");
        }
    }

    #[test]
    fn csv_cells_cannot_become_formulas() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("odds"), "odds");
    }

    #[test]
    fn quantiles_are_estimated_within_their_bucket() {
        let mut h = LatencyCount {
            hour: 0,
            route: "r".into(),
            upstream: "u".into(),
            count: 100,
            sum_us: 0,
            buckets: [0; keygate_store::LATENCY_BUCKETS],
        };
        // 50 in (0, 1] ms, 50 in (5, 10] ms.
        h.buckets[0] = 50;
        h.buckets[3] = 50;
        assert_eq!(quantile_ms(&h, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&h, 0.9), Some(9.0));
        h.buckets[3] = 0;
        h.buckets[keygate_store::LATENCY_BUCKETS - 1] = 50;
        assert_eq!(quantile_ms(&h, 0.99), Some(10000.0));
        h.count = 0;
        assert_eq!(quantile_ms(&h, 0.5), None);
    }
}
