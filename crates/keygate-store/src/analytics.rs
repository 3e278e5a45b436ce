//! Analytics (issue 23): requests per hour, client, key, route and status; upstream latency
//! histograms per hour, route and upstream; WebSocket sessions, messages and bytes per hour and
//! client. Added by each gateway's usage flush in the same transaction as [`crate::UsageRow`]s,
//! additively, and pruned past the retention by one node at a time. Telemetry like usage: no
//! feed version, no audit entry. Keys appear by id only, never by plaintext or digest.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Store, StoreError, UsageRow, UsageWsRow};

/// Milliseconds in an hour: the store's time unit for analytics (`hour` = ms / this).
pub const HOUR_MS: i64 = 3_600_000;

/// Upper bounds (`le`, milliseconds) of the upstream latency buckets; one more bucket, `+Inf`,
/// follows. Fixed, so histograms from every node and every hour add up bucket by bucket.
pub const LATENCY_BOUNDS_MS: [f64; 13] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Buckets per histogram: the bounds and `+Inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The most rows one analytics query answers; a query that would answer more is refused
/// ([`AnalyticsRows::more`]) so the caller narrows it, rather than being cut silently.
pub const MAX_ANALYTICS_ROWS: usize = 10_000;

/// Requests of one key on one route answered with one status in one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCount {
    pub hour: i64,
    pub client_id: String,
    pub key_id: String,
    /// The route's name; empty when the request matched no route.
    pub route: String,
    pub status: u16,
    pub requests: u64,
}

/// One hour's upstream latency histogram for a route and an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyCount {
    pub hour: i64,
    pub route: String,
    pub upstream: String,
    pub count: u64,
    pub sum_us: u64,
    /// Per bucket, not cumulative: `buckets[i]` counts latencies in
    /// `(LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]]`, the last one those above every bound.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl LatencyCount {
    /// The bucket a latency of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        #[allow(clippy::cast_precision_loss)] // microseconds of a request fit an f64 exactly
        let ms = us as f64 / 1000.0;
        LATENCY_BOUNDS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BOUNDS_MS.len())
    }
}

/// One hour's WebSocket activity of a client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WsCount {
    pub hour: i64,
    pub client_id: String,
    pub sessions: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// What one flush adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnalyticsBatch {
    pub requests: Vec<RequestCount>,
    pub latency: Vec<LatencyCount>,
    pub ws: Vec<WsCount>,
}

impl AnalyticsBatch {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.latency.is_empty() && self.ws.is_empty()
    }
}

/// What analytics rows can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Hour,
    Day,
    Client,
    Key,
    Route,
    Status,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::Hour,
        Dimension::Day,
        Dimension::Client,
        Dimension::Key,
        Dimension::Route,
        Dimension::Status,
    ];

    /// The name callers give and columns are labelled with.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Hour => "hour",
            Dimension::Day => "day",
            Dimension::Client => "client",
            Dimension::Key => "key",
            Dimension::Route => "route",
            Dimension::Status => "status",
        }
    }

    /// The dimension called `name`, exactly.
    pub fn parse(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The SQL expression grouped by: a constant per variant, never caller text.
    fn column(self) -> &'static str {
        match self {
            Dimension::Hour => "hour",
            Dimension::Day => "hour / 24",
            Dimension::Client => "client_id",
            Dimension::Key => "key_id",
            Dimension::Route => "route",
            Dimension::Status => "status",
        }
    }
}

/// Which rows of a query's ordered answer to return: `limit` (at most
/// [`MAX_ANALYTICS_ROWS`]) after skipping `offset`. The order is total (every query orders by
/// all its grouped columns), so consecutive pages neither repeat nor skip a row while the
/// counts in them stand still.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Page {
        Page {
            offset: 0,
            limit: MAX_ANALYTICS_ROWS,
        }
    }
}

impl Page {
    /// ` LIMIT … OFFSET …`, one row past the page to tell whether there is more. Both are
    /// numbers, never caller text.
    fn sql(self) -> String {
        let limit = self.limit.clamp(1, MAX_ANALYTICS_ROWS) + 1;
        format!(" LIMIT {limit} OFFSET {}", self.offset.min(1 << 62))
    }

    /// The page's rows of `fetched` (one past the page when there is more).
    fn cut<T>(self, mut fetched: Vec<T>) -> Paged<T> {
        let limit = self.limit.clamp(1, MAX_ANALYTICS_ROWS);
        let more = fetched.len() > limit;
        fetched.truncate(limit);
        Paged {
            rows: fetched,
            more,
        }
    }
}

/// One page of a query's rows; `more` when rows follow it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub more: bool,
}

/// A query of request counts: hours `from_hour..=to_hour`, exact-match filters, grouped by
/// `group_by` in that order (none: one total).
#[derive(Clone, Debug, Default)]
pub struct AnalyticsQuery {
    pub from_hour: i64,
    pub to_hour: i64,
    pub page: Page,
    pub client: Option<String>,
    pub key: Option<String>,
    pub route: Option<String>,
    pub status: Option<u16>,
    pub group_by: Vec<Dimension>,
}

/// One group's count: the value of each dimension grouped by, in the query's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyticsRow {
    pub groups: Vec<GroupValue>,
    pub requests: u64,
}

/// A dimension's value in one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupValue {
    /// Hours (for `hour`) or days (for `day`) since the epoch, or a status.
    Number(i64),
    Text(String),
}

/// A page of a request-count query's rows.
pub type AnalyticsRows = Paged<AnalyticsRow>;

/// A query of latency histograms: hours `from_hour..=to_hour`, optionally one route and one
/// upstream; one histogram per route and upstream summed over the hours.
#[derive(Clone, Debug, Default)]
pub struct LatencyQuery {
    pub from_hour: i64,
    pub to_hour: i64,
    pub page: Page,
    pub route: Option<String>,
    pub upstream: Option<String>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn count(row: &AnyRow, column: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(column)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("analytics {column} {n}")))
}

/// `, b0, b1, …`: the bucket columns.
fn bucket_columns() -> String {
    let mut s = String::new();
    for i in 0..LATENCY_BUCKETS {
        let _ = write!(s, ", b{i}");
    }
    s
}

/// `, CAST(SUM(b0) AS BIGINT) AS b0, …`: the bucket columns summed.
fn bucket_sums() -> String {
    let mut s = String::new();
    for i in 0..LATENCY_BUCKETS {
        let _ = write!(s, ", CAST(SUM(b{i}) AS BIGINT) AS b{i}");
    }
    s
}

impl Store {
    /// Adds usage rows and analytics counts in one transaction, so a flush is all or nothing
    /// and a retried flush never counts twice.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]; the caller keeps the counts and retries.
    pub async fn add_counts(
        &self,
        usage: &[UsageRow],
        usage_ws: &[UsageWsRow],
        analytics: &AnalyticsBatch,
    ) -> Result<(), StoreError> {
        if usage.is_empty() && usage_ws.is_empty() && analytics.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        crate::usage::add_in(&mut tx, usage).await?;
        crate::usage::add_ws_in(&mut tx, usage_ws).await?;
        for r in &analytics.requests {
            sqlx::query(
                "INSERT INTO analytics_requests (hour, client_id, key_id, route, status, requests) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (hour, client_id, key_id, route, status) \
                 DO UPDATE SET requests = analytics_requests.requests + excluded.requests",
            )
            .bind(r.hour)
            .bind(r.client_id.as_str())
            .bind(r.key_id.as_str())
            .bind(r.route.as_str())
            .bind(i64::from(r.status))
            .bind(to_i64(r.requests))
            .execute(&mut *tx)
            .await?;
        }
        if !analytics.latency.is_empty() {
            let mut values = String::new();
            let mut updates = String::new();
            for i in 0..LATENCY_BUCKETS {
                let _ = write!(values, ", ${}", 6 + i);
                let _ = write!(updates, ", b{i} = analytics_latency.b{i} + excluded.b{i}");
            }
            let sql = format!(
                "INSERT INTO analytics_latency (hour, route, upstream, count, sum_us{}) \
                 VALUES ($1, $2, $3, $4, $5{values}) \
                 ON CONFLICT (hour, route, upstream) DO UPDATE SET \
                 count = analytics_latency.count + excluded.count, \
                 sum_us = analytics_latency.sum_us + excluded.sum_us{updates}",
                bucket_columns()
            );
            for l in &analytics.latency {
                let mut q = sqlx::query(&sql)
                    .bind(l.hour)
                    .bind(l.route.as_str())
                    .bind(l.upstream.as_str())
                    .bind(to_i64(l.count))
                    .bind(to_i64(l.sum_us));
                for &b in &l.buckets {
                    q = q.bind(to_i64(b));
                }
                q.execute(&mut *tx).await?;
            }
        }
        for w in &analytics.ws {
            sqlx::query(
                "INSERT INTO analytics_ws (hour, client_id, sessions, messages, bytes) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hour, client_id) DO UPDATE SET \
                 sessions = analytics_ws.sessions + excluded.sessions, \
                 messages = analytics_ws.messages + excluded.messages, \
                 bytes = analytics_ws.bytes + excluded.bytes",
            )
            .bind(w.hour)
            .bind(w.client_id.as_str())
            .bind(to_i64(w.sessions))
            .bind(to_i64(w.messages))
            .bind(to_i64(w.bytes))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Request counts for `q`, grouped and ordered by its dimensions. Filters are bound as
    /// parameters; the SQL holds only constants.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn analytics(&self, q: &AnalyticsQuery) -> Result<AnalyticsRows, StoreError> {
        let mut select = String::new();
        let mut group = String::new();
        for (i, d) in q.group_by.iter().enumerate() {
            let _ = write!(select, "{} AS g{i}, ", d.column());
            let _ = write!(group, "{}{}", if i == 0 { "" } else { ", " }, d.column());
        }
        let mut sql = format!(
            "SELECT {select}CAST(SUM(requests) AS BIGINT) AS requests FROM analytics_requests \
             WHERE hour >= $1 AND hour <= $2"
        );
        let mut n = 2;
        let mut text = Vec::new();
        for (column, value) in [
            ("client_id", &q.client),
            ("key_id", &q.key),
            ("route", &q.route),
        ] {
            if let Some(v) = value {
                n += 1;
                let _ = write!(sql, " AND {column} = ${n}");
                text.push(v.as_str());
            }
        }
        if q.status.is_some() {
            n += 1;
            let _ = write!(sql, " AND status = ${n}");
        }
        if !group.is_empty() {
            let _ = write!(sql, " GROUP BY {group} ORDER BY {group}");
        } else {
            // One total row, or none when nothing matched.
            sql.push_str(" HAVING COUNT(*) > 0");
        }
        sql.push_str(&q.page.sql());
        let mut query = sqlx::query(&sql).bind(q.from_hour).bind(q.to_hour);
        for v in text {
            query = query.bind(v);
        }
        if let Some(status) = q.status {
            query = query.bind(i64::from(status));
        }
        let fetched = q.page.cut(query.fetch_all(&self.pool).await?);
        let rows = fetched
            .rows
            .iter()
            .map(|row| {
                let groups = q
                    .group_by
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let column = format!("g{i}");
                        Ok(match d {
                            Dimension::Hour | Dimension::Day | Dimension::Status => {
                                GroupValue::Number(row.try_get(column.as_str())?)
                            }
                            _ => GroupValue::Text(row.try_get(column.as_str())?),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(AnalyticsRow {
                    groups,
                    requests: count(row, "requests")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(AnalyticsRows {
            rows,
            more: fetched.more,
        })
    }

    /// Upstream latency histograms for `q`, one per route and upstream (summed over the
    /// hours; `hour` is the query's first), ordered by route and upstream.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn analytics_latency(
        &self,
        q: &LatencyQuery,
    ) -> Result<Paged<LatencyCount>, StoreError> {
        let mut sql = format!(
            "SELECT route, upstream, CAST(SUM(count) AS BIGINT) AS count, \
             CAST(SUM(sum_us) AS BIGINT) AS sum_us{} FROM analytics_latency \
             WHERE hour >= $1 AND hour <= $2",
            bucket_sums()
        );
        let mut n = 2;
        if q.route.is_some() {
            n += 1;
            let _ = write!(sql, " AND route = ${n}");
        }
        if q.upstream.is_some() {
            n += 1;
            let _ = write!(sql, " AND upstream = ${n}");
        }
        sql.push_str(" GROUP BY route, upstream ORDER BY route, upstream");
        sql.push_str(&q.page.sql());
        let mut query = sqlx::query(&sql).bind(q.from_hour).bind(q.to_hour);
        for v in [&q.route, &q.upstream].into_iter().flatten() {
            query = query.bind(v.as_str());
        }
        let fetched = q.page.cut(query.fetch_all(&self.pool).await?);
        let rows = fetched
            .rows
            .iter()
            .map(|row| {
                let mut buckets = [0; LATENCY_BUCKETS];
                for (i, b) in buckets.iter_mut().enumerate() {
                    *b = count(row, &format!("b{i}"))?;
                }
                Ok(LatencyCount {
                    hour: q.from_hour,
                    route: row.try_get("route")?,
                    upstream: row.try_get("upstream")?,
                    count: count(row, "count")?,
                    sum_us: count(row, "sum_us")?,
                    buckets,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Paged {
            rows,
            more: fetched.more,
        })
    }

    /// WebSocket activity over hours `from_hour..=to_hour`, one row per client (optionally
    /// one client), summed over the hours (`hour` is the query's first), ordered by client.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Corrupt`].
    pub async fn analytics_ws(
        &self,
        from_hour: i64,
        to_hour: i64,
        client: Option<&str>,
        page: Page,
    ) -> Result<Paged<WsCount>, StoreError> {
        let mut sql = String::from(
            "SELECT client_id, CAST(SUM(sessions) AS BIGINT) AS sessions, \
             CAST(SUM(messages) AS BIGINT) AS messages, CAST(SUM(bytes) AS BIGINT) AS bytes \
             FROM analytics_ws WHERE hour >= $1 AND hour <= $2",
        );
        if client.is_some() {
            sql.push_str(" AND client_id = $3");
        }
        sql.push_str(" GROUP BY client_id ORDER BY client_id");
        sql.push_str(&page.sql());
        let mut query = sqlx::query(&sql).bind(from_hour).bind(to_hour);
        if let Some(c) = client {
            query = query.bind(c);
        }
        let fetched = page.cut(query.fetch_all(&self.pool).await?);
        let rows = fetched
            .rows
            .iter()
            .map(|row| {
                Ok(WsCount {
                    hour: from_hour,
                    client_id: row.try_get("client_id")?,
                    sessions: count(row, "sessions")?,
                    messages: count(row, "messages")?,
                    bytes: count(row, "bytes")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Paged {
            rows,
            more: fetched.more,
        })
    }

    /// Deletes analytics older than `retention` when it is this node's turn: one conditional
    /// `UPDATE` claims the prune for `holder` until `every` from now, so one node deletes per
    /// period whichever node asks first. Returns the rows deleted, or `None` when another
    /// node's claim still holds.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn prune_analytics(
        &self,
        holder: &str,
        retention: Duration,
        every: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.now().as_millis();
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let claimed = sqlx::query(
            "UPDATE analytics_prune SET holder = $1, next_at = $2 WHERE id = 1 AND next_at <= $3",
        )
        .bind(holder)
        .bind(now.saturating_add(every_ms))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Ok(None);
        }
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(retention_ms).div_euclid(HOUR_MS);
        let mut deleted = 0;
        let mut tx = self.pool.begin().await?;
        for table in ["analytics_requests", "analytics_latency", "analytics_ws"] {
            deleted += sqlx::query(&format!("DELETE FROM {table} WHERE hour < $1"))
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(Some(deleted))
    }
}
