//! `/v1/clients/{client}/quota`: a client's quota windows as this node counts them, and an
//! operator's top-up or reset of the current window (stored, audited, and followed by every
//! node through the change feed within its feed interval; see `state::quotas`).

use axum::extract::State;
use axum::Json;
use keygate_core::limit::{LimitKind, Window};
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey};
use keygate_store::{parse_window, QuotaAdjustment};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody};
use super::openapi as doc;
use super::{store_call, AdminState};
use crate::policy::ratelimit::{ClientLimits, LimitBy};
use crate::state::quotas::current;

/// A top-up or a reset: exactly one of `add` and `reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = QuotaChange)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeBody {
    /// Units to add to the current window's allowance (1 to 1,000,000,000).
    #[schema(nullable = false, minimum = 1, maximum = 1_000_000_000)]
    add: Option<u64>,
    /// `true` zeroes the current window's count on every node.
    #[schema(nullable = false)]
    reset: Option<bool>,
    /// `hour`, `day` or `month`. A top-up defaults to `day`; a reset without one resets every
    /// window.
    #[schema(nullable = false, example = "day")]
    window: Option<String>,
}

/// One quota window of a client, as this node counts it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuotaWindow {
    #[schema(example = "day")]
    window: &'static str,
    #[schema(value_type = String, format = DateTime)]
    window_start: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    window_end: Timestamp,
    /// The plan's allowance (with the client's override).
    plan: u64,
    /// Added by top-ups for this window.
    topup: u64,
    /// `plan + topup`.
    allowance: u64,
    /// Units spent so far; `null` when the plan counts by key (each key has its own count).
    used: Option<u64>,
    remaining: Option<u64>,
    /// Resets of this window so far.
    resets: u32,
}

/// A client's quota windows.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuotaReport {
    #[schema(pattern = "^cli_[0-9a-z]{16}$")]
    client_id: String,
    /// `client` or `key`: whose counter the plan's quotas use.
    counted_by: &'static str,
    windows: Vec<QuotaWindow>,
}

/// The quota windows of a client on `plan` limits: the plan's quota windows holding `now`
/// with the `adjustments` of the current ones, and the check that reads each one's counter
/// (`None` when counted per key). `used` is left for the caller to fill.
pub(crate) fn windows(
    limits: &ClientLimits,
    client: &keygate_core::ClientId,
    adjustments: &[QuotaAdjustment],
    now: Timestamp,
) -> Vec<(QuotaWindow, Option<Check>)> {
    let subject = smol_str::format_smolstr!("c:{client}");
    let mut out = Vec::new();
    for &(slot, limit) in &limits.limits {
        let LimitKind::Quota { window } = limit.kind else {
            continue;
        };
        let (start, end) = window.bounds(now);
        let adj = current(adjustments, limit, now);
        let topup = adj.map_or(0, |a| a.topup);
        let allowance = limit.max.get().saturating_add(topup);
        let check = (limits.by != LimitBy::Key).then(|| {
            let mut check = Check::new(LimitKey::new(subject.clone(), slot), limit);
            if let Some(max) = std::num::NonZeroU64::new(allowance) {
                check.limit.max = max;
            }
            check.epoch = adj.map_or(0, |a| a.resets);
            check
        });
        out.push((
            QuotaWindow {
                window: window.as_str(),
                window_start: start,
                window_end: end,
                plan: limit.max.get(),
                topup,
                allowance,
                used: None,
                remaining: None,
                resets: adj.map_or(0, |a| a.resets),
            },
            check,
        ));
    }
    out
}

/// The report of a client from the store and configuration alone (the CLI on a database: no
/// limiter to read, so `used` is `null`).
pub fn offline_report(
    config: &crate::Config,
    client: &keygate_core::Client,
    adjustments: &[QuotaAdjustment],
    now: Timestamp,
) -> serde_json::Value {
    let limits = ClientLimits::build(&config.plan_limits(&client.plan), &client.limits);
    let windows = windows(&limits, &client.id, adjustments, now)
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    serde_json::to_value(QuotaReport {
        client_id: client.id.to_string(),
        counted_by: counted_by(&limits),
        windows,
    })
    .unwrap_or_default()
}

fn counted_by(limits: &ClientLimits) -> &'static str {
    if limits.by == LimitBy::Key {
        "key"
    } else {
        "client"
    }
}

/// Builds the report of `client` on this node: its plan's quota windows, the stored
/// adjustments of the current ones, and the limiter's counts (peeked: nothing is spent).
async fn report(state: &AdminState, client: &str) -> Result<QuotaReport, AdminError> {
    let gw = state.gateway();
    let owner = store_call(state.store.client(client)).await?;
    let (_, adjustments) = store_call(state.store.quota_adjustments(client)).await?;
    let limits = ClientLimits::build(&gw.config.plan_limits(&owner.plan), &owner.limits);
    let now = gw.clock.now();
    let mut out = Vec::new();
    for (mut window, check) in windows(&limits, &owner.id, &adjustments, now) {
        if let Some(check) = check {
            let state = gw
                .limits
                .peek(std::slice::from_ref(&check), now)
                .await
                .ok()
                .and_then(|v| v.binding)
                .map(|(_, s)| s);
            if let Some(s) = state {
                window.used = Some(window.allowance.saturating_sub(s.remaining));
                window.remaining = Some(s.remaining);
            }
        }
        out.push(window);
    }
    Ok(QuotaReport {
        client_id: owner.id.to_string(),
        counted_by: counted_by(&limits),
        windows: out,
    })
}

/// `GET /v1/clients/{client}/quota`.
#[utoipa::path(
    get,
    path = "/v1/clients/{client}/quota",
    operation_id = "client_quota",
    tag = "clients",
    summary = "A client's quota windows: allowance, top-ups, use",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The plan's quota windows in progress, as this node's limiter counts them (a shared Redis limiter: the cluster's count).", body = QuotaReport),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    ClientPath(client): ClientPath,
) -> Result<Json<QuotaReport>, AdminError> {
    Ok(Json(report(&state, &client).await?))
}

/// `POST /v1/clients/{client}/quota`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/quota",
    operation_id = "change_client_quota",
    tag = "clients",
    summary = "Top up or reset a client's current quota window",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "Stored and audited (`client.quota_topup`, `client.quota_reset`); every node applies it within its feed interval. The client's windows as this node counts them.", body = QuotaReport),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither or both of `add` and `reset`, `add` out of 1..=1000000000 (or the window's top-ups past 10^12), an unknown window, a field unknown or of the wrong type (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn change(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    JsonBody(body): JsonBody<ChangeBody>,
) -> Result<Json<QuotaReport>, AdminError> {
    let window = body
        .window
        .as_deref()
        .map(parse_window)
        .transpose()
        .map_err(|e| AdminError::invalid_value("window", e.to_string()))?;
    match (body.add, body.reset) {
        (Some(add), None) => {
            // The store bounds `add` (422 `invalid_value` on `add`, before the client lookup).
            let window = window.unwrap_or(Window::Day);
            store_call(state.store.quota_topup(&caller.actor, &client, window, add)).await?;
        }
        (None, Some(true)) => {
            let windows: Vec<Window> = match window {
                Some(w) => vec![w],
                None => Window::ALL.to_vec(),
            };
            store_call(state.store.quota_reset(&caller.actor, &client, &windows)).await?;
        }
        _ => {
            return Err(AdminError::invalid_value(
                "add",
                "give exactly one of `add` (units) and `reset` (true)",
            ))
        }
    }
    // This node applies it now rather than at its next poll.
    state.gateway().feed_wake.notify_one();
    Ok(Json(report(&state, &client).await?))
}
