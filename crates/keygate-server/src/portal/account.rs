//! Account, Usage, Bookmakers and Child bots pages.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keygate_core::{Client, ClientId, Slug, Timestamp};
use keygate_store::{ClientFilter, ClientUpdate, UsageRow, UsageWsRow};
use minijinja::{context, Value};
use serde::Deserialize;

use super::error::{store, PortalError};
use super::keys::day_time;
use super::pages::page;
use super::session::Signed;
use super::{actor, PortalState};

/// Days on the Usage page.
const USAGE_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

async fn own_client(state: &PortalState, signed: &Signed) -> Result<Client, PortalError> {
    store(state.store.client(signed.session.user.client_id.as_str())).await
}

fn slugs(list: &[Slug]) -> Vec<&str> {
    list.iter().map(Slug::as_str).collect()
}

/// `GET /account`: plan, features, limits, scopes and allowlists.
pub(crate) async fn show(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let client = own_client(&state, &signed).await?;
    let config = &state.gateway().config;
    let plan = config
        .plans
        .get(&client.plan)
        .map(|p| p.to_json(&client.plan))
        .unwrap_or_else(
            || serde_json::json!({ "name": client.plan, "features": [], "limits": {} }),
        );
    let limits = &plan["limits"];
    let o = &client.limits;
    let pick = |own: Option<std::num::NonZeroU64>, field: &str| {
        own.map(|n| serde_json::json!(n.get()))
            .or_else(|| limits.get(field).cloned())
    };
    let effective = serde_json::json!({
        "rps": pick(o.rps, "rps"),
        "rate_limit_rpm": pick(o.per_minute, "per_minute"),
        "per_hour": pick(o.per_hour, "per_hour"),
        "per_day": pick(o.per_day, "per_day"),
        "per_month": pick(o.per_month, "per_month"),
    });
    let scopes: Vec<&str> = client.scopes.iter().map(|s| s.as_str()).collect();
    page(
        &state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "account.html",
        context! {
            client => client.name.as_str(),
            plan => Value::from_serialize(&plan),
            limits => Value::from_serialize(&effective),
            scopes => scopes,
            sports => slugs(&client.sports),
            bookmakers => slugs(&client.bookmakers),
        },
    )
}

/// The `YYYY-MM-DD` days of the usage window, oldest first.
fn days(now: Timestamp) -> Vec<String> {
    (0..USAGE_DAYS)
        .rev()
        .map(|back| Timestamp::from_millis(now.as_millis() - back * DAY_MS).utc_day())
        .collect()
}

/// The window's days, its request counts and its WebSocket egress.
type UsageWindow = (Vec<String>, Vec<UsageRow>, Vec<UsageWsRow>);

async fn usage_rows(state: &PortalState, client: &ClientId) -> Result<UsageWindow, PortalError> {
    let days = days(state.gateway().clock.now());
    let (from, to) = (days[0].clone(), days[days.len() - 1].clone());
    let rows = store(state.store.usage(client, &from, &to)).await?;
    let ws = store(state.store.usage_ws(client, &from, &to)).await?;
    Ok((days, rows, ws))
}

/// A day's WebSocket messages and bytes delivered.
fn egress(ws: &[UsageWsRow], day: &str) -> (u64, u64) {
    ws.iter()
        .find(|w| w.day == day)
        .map_or((0, 0), |w| (w.messages, w.bytes))
}

/// Per day: requests answered 2xx/3xx, 4xx and 5xx.
fn per_day(days: &[String], rows: &[UsageRow]) -> Vec<(String, [u64; 3])> {
    days.iter()
        .map(|d| {
            let mut sums = [0u64; 3];
            for r in rows.iter().filter(|r| &r.day == d) {
                let class = match r.status {
                    500.. => 2,
                    400..=499 => 1,
                    _ => 0,
                };
                sums[class] += r.requests;
            }
            (d.clone(), sums)
        })
        .collect()
}

/// The table: every status answered in the window (a column each, ascending), and per day,
/// newest first, the day's total, its WebSocket messages and bytes delivered, and its count
/// of each status.
fn per_status(days: &[String], rows: &[UsageRow], ws: &[UsageWsRow]) -> (Vec<u16>, Vec<Value>) {
    let statuses: Vec<u16> = rows
        .iter()
        .map(|r| r.status)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let table = days
        .iter()
        .rev()
        .map(|d| {
            let counts: Vec<u64> = statuses
                .iter()
                .map(|&s| {
                    rows.iter()
                        .filter(|r| &r.day == d && r.status == s)
                        .map(|r| r.requests)
                        .sum()
                })
                .collect();
            let total: u64 = counts.iter().sum();
            let (messages, bytes) = egress(ws, d);
            Value::from_serialize(serde_json::json!({
                "day": d,
                "total": total,
                "ws_messages": messages,
                "ws_bytes": bytes,
                "counts": counts,
            }))
        })
        .collect();
    (statuses, table)
}

/// The bar chart, drawn here: one stacked bar a day (ok, client errors, server errors).
fn chart(series: &[(String, [u64; 3])]) -> String {
    const W: u64 = 600;
    const H: u64 = 200;
    let max = series
        .iter()
        .map(|(_, s)| s.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let bar = W / series.len().max(1) as u64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"chart-title\" class=\"chart\"><title id=\"chart-title\">Requests per day for the last {USAGE_DAYS} days</title>"
    );
    for (i, (day, sums)) in series.iter().enumerate() {
        let mut y = H;
        for (class, &n) in sums.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let h = (n * (H - 10) / max).max(1);
            y -= h;
            svg.push_str(&format!(
                "<rect class=\"s{class}\" x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{h}\"><title>{day}: {n}</title></rect>",
                i as u64 * bar + 1,
                bar.saturating_sub(2).max(1),
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

/// `GET /usage`: 30 days as a chart and a table, today's count against the daily quota.
pub(crate) async fn usage(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let client = own_client(&state, &signed).await?;
    let (days, rows, ws) = usage_rows(&state, &client.id).await?;
    let series = per_day(&days, &rows);
    let today: u64 = series.last().map_or(0, |(_, s)| s.iter().sum());
    let quota = client
        .limits
        .per_day
        .or(state.gateway().config.plan_limits(&client.plan).per_day)
        .map(std::num::NonZeroU64::get);
    let (statuses, table) = per_status(&days, &rows, &ws);
    page(
        &state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "usage.html",
        context! {
            chart => Value::from_safe_string(chart(&series)),
            today => today,
            quota => quota,
            statuses => statuses,
            days => table,
        },
    )
}

/// `GET /usage.csv`: the Usage page's table, one line per day with any activity, oldest
/// first: day, requests, WebSocket messages and bytes delivered, then a column per status.
pub(crate) async fn usage_csv(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let (days, rows, ws) = usage_rows(&state, &signed.session.user.client_id).await?;
    let (statuses, _) = per_status(&[], &rows, &ws);
    let mut csv = String::from("day,requests,ws_messages,ws_bytes");
    for s in &statuses {
        csv.push_str(&format!(",{s}"));
    }
    csv.push('\n');
    for d in &days {
        let counts: Vec<u64> = statuses
            .iter()
            .map(|&s| {
                rows.iter()
                    .filter(|r| &r.day == d && r.status == s)
                    .map(|r| r.requests)
                    .sum()
            })
            .collect();
        let (messages, bytes) = egress(&ws, d);
        let total: u64 = counts.iter().sum();
        if total == 0 && messages == 0 {
            continue;
        }
        csv.push_str(&format!("{d},{total},{messages},{bytes}"));
        for n in counts {
            csv.push_str(&format!(",{n}"));
        }
        csv.push('\n');
    }
    let mut resp = (StatusCode::OK, csv).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"usage.csv\""),
    );
    Ok(resp)
}

/// The most bookmakers the client's plan lets it pick, when the portal offers selection.
fn selection(state: &PortalState, client: &Client) -> Result<u32, PortalError> {
    let max = state
        .gateway()
        .config
        .plans
        .get(&client.plan)
        .and_then(|p| p.bookmaker_selection);
    match max {
        Some(n) if state.settings.bookmaker_selection => Ok(n),
        _ => Err(PortalError::NotFound),
    }
}

async fn bookmakers_page(
    state: &PortalState,
    signed: &Signed,
    client: &Client,
    saved: bool,
) -> Result<Response, PortalError> {
    let max = selection(state, client)?;
    let options: Vec<Value> = state
        .settings
        .bookmakers
        .iter()
        .map(|b| {
            Value::from_serialize(
                serde_json::json!({ "slug": b.as_str(), "picked": client.bookmakers.contains(b) }),
            )
        })
        .collect();
    page(
        state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "bookmakers.html",
        context! { options => options, max => max, single => max == 1, saved => saved },
    )
}

/// `GET /bookmakers`.
pub(crate) async fn bookmakers(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let client = own_client(&state, &signed).await?;
    bookmakers_page(&state, &signed, &client, false).await
}

/// `POST /bookmakers`: the picks become the client's bookmaker allowlist at once.
pub(crate) async fn pick_bookmakers(
    State(state): State<PortalState>,
    signed: Signed,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, PortalError> {
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    signed.visit.check(csrf)?;
    let client = own_client(&state, &signed).await?;
    let max = selection(&state, &client)?;
    let mut picked = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "bookmaker") {
        let offered = state.settings.bookmakers.iter().find(|b| b.as_str() == v);
        match offered {
            Some(b) if !picked.contains(b) => picked.push(b.clone()),
            Some(_) => {}
            None => {
                return Err(PortalError::Invalid(format!(
                    "`{v}` is not a bookmaker offered here"
                )))
            }
        }
    }
    if picked.is_empty() {
        return Err(PortalError::Invalid("Pick a bookmaker.".to_owned()));
    }
    if picked.len() > max as usize {
        return Err(PortalError::Invalid(format!(
            "Your plan lets you pick {max} bookmaker(s)."
        )));
    }
    let user = &signed.session.user;
    let updated = store(state.store.update_client(
        &actor(&user.id, &user.email),
        client.id.as_str(),
        ClientUpdate {
            bookmakers: Some(picked),
            ..ClientUpdate::default()
        },
    ))
    .await?;
    tracing::info!(client = %client.id, user = %user.id, "Portal bookmaker selection.");
    crate::selfservice::caught_up(&state.gateway(), &state.store).await;
    bookmakers_page(&state, &signed, &updated, true).await
}

async fn children(state: &PortalState, parent: &ClientId) -> Result<Vec<Client>, PortalError> {
    let all = store(state.store.list_clients(&ClientFilter::default())).await?;
    Ok(all
        .into_iter()
        .filter(|c| c.parent.as_ref() == Some(parent))
        .collect())
}

async fn bots_page(
    state: &PortalState,
    signed: &Signed,
    shown: Option<(&str, &str)>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    if !state.settings.child_bots {
        return Err(PortalError::NotFound);
    }
    let bots: Vec<Value> = children(state, &signed.session.user.client_id)
        .await?
        .iter()
        .map(|c| {
            Value::from_serialize(serde_json::json!({
                "id": c.id.as_str(),
                "name": c.name,
                "active": c.active,
                "created": day_time(Some(c.created_at)),
            }))
        })
        .collect();
    let shown = shown.map(|(name, key)| context! { name => name, key => key });
    page(
        state,
        &signed.visit,
        Some(&signed.session.user.email),
        status,
        "bots.html",
        context! { bots => bots, shown => shown },
    )
}

/// `GET /bots`: the client's child accounts.
pub(crate) async fn bots(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    bots_page(&state, &signed, None, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /bots/{id}/regenerate`: every key of the child is replaced by one new key, shown once
/// (the store operation self-service's child regeneration uses, which checks the parent).
pub(crate) async fn regenerate_bot(
    State(state): State<PortalState>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    if !state.settings.child_bots {
        return Err(PortalError::NotFound);
    }
    signed.visit.check(&f.csrf)?;
    let child = ClientId::parse(&id).map_err(|_| PortalError::NotFound)?;
    let parent = &signed.session.user.client_id;
    let name = children(&state, parent)
        .await?
        .into_iter()
        .find(|c| c.id == child)
        .map(|c| c.name)
        .ok_or(PortalError::NotFound)?;
    let label = state
        .gateway()
        .config
        .selfservice
        .as_ref()
        .map_or("portal", |s| s.key_label.as_str())
        .to_owned();
    let (secret, material) = state.gateway().config.issuer.issue();
    let user = &signed.session.user;
    let replaced = store(state.store.replace_keys(
        &actor(&user.id, &user.email),
        &child,
        Some(parent),
        material,
        &label,
    ))
    .await?;
    tracing::info!(child = %child, new = %replaced.new.id, revoked = replaced.revoked.len(), user = %user.id, "Portal child key regeneration.");
    crate::selfservice::caught_up(&state.gateway(), &state.store).await;
    bots_page(
        &state,
        &signed,
        Some((&name, secret.expose())),
        StatusCode::CREATED,
    )
    .await
}
