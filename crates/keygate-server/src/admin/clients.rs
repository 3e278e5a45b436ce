//! `/v1/clients`: create, list, show, update, disable and enable clients.
//!
//! Bodies arrive as plain strings and numbers and are validated here field by field, so a bad
//! scope or limit is refused as `invalid_value` naming the field before the store is asked.

use std::num::NonZeroU64;

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use keygate_core::names::{check_client_name, check_plan};
use keygate_core::{Client, LimitOverrides, Scope, Slug};
use keygate_store::{ClientFilter, ClientUpdate, LimitChange, LimitPatch, NewClient};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody, Params};
use super::{page, page_limit, store_call, AdminState};

/// `Some(value)` when the field is present, even as `null`; `None` (by `default`) when absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Per-contract limits as sent: a positive integer, or `null`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsBody {
    #[serde(default, deserialize_with = "present")]
    rps: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    per_minute: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    per_hour: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    per_day: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    per_month: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    ws_connections: Option<Option<serde_json::Number>>,
}

impl LimitsBody {
    /// Each limit's change: absent leaves it, `null` returns it to the plan's value.
    fn patch(self) -> Result<LimitPatch, AdminError> {
        let change = |field: &str,
                      v: Option<Option<serde_json::Number>>|
         -> Result<LimitChange, AdminError> {
            match v {
                None => Ok(None),
                Some(None) => Ok(Some(None)),
                Some(Some(n)) => n
                    .as_u64()
                    .and_then(NonZeroU64::new)
                    .map(|n| Some(Some(n)))
                    .ok_or_else(|| {
                        AdminError::invalid_value(
                            format!("limits.{field}"),
                            format!("`{n}` is not a positive whole number (use null for the plan's value)"),
                        )
                    }),
            }
        };
        Ok(LimitPatch {
            rps: change("rps", self.rps)?,
            per_minute: change("per_minute", self.per_minute)?,
            per_hour: change("per_hour", self.per_hour)?,
            per_day: change("per_day", self.per_day)?,
            per_month: change("per_month", self.per_month)?,
            ws_connections: change("ws_connections", self.ws_connections)?,
        })
    }

    /// The overrides of a new client (`null` and absent both mean the plan's value).
    fn overrides(self) -> Result<LimitOverrides, AdminError> {
        let p = self.patch()?;
        let set = |c: LimitChange| c.flatten();
        Ok(LimitOverrides {
            rps: set(p.rps),
            per_minute: set(p.per_minute),
            per_hour: set(p.per_hour),
            per_day: set(p.per_day),
            per_month: set(p.per_month),
            ws_connections: set(p.ws_connections),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    plan: Option<String>,
    scopes: Option<Vec<String>>,
    sports: Option<Vec<String>>,
    bookmakers: Option<Vec<String>>,
    limits: Option<LimitsBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    name: Option<String>,
    plan: Option<String>,
    scopes: Option<Vec<String>>,
    sports: Option<Vec<String>>,
    bookmakers: Option<Vec<String>>,
    limits: Option<LimitsBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    plan: Option<String>,
    active: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

fn name(raw: String) -> Result<String, AdminError> {
    check_client_name(&raw).map_err(|e| AdminError::invalid_value("name", e.to_string()))?;
    Ok(raw)
}

fn plan(raw: String) -> Result<String, AdminError> {
    check_plan(&raw).map_err(|e| AdminError::invalid_value("plan", e.to_string()))?;
    Ok(raw)
}

fn scopes(raw: Vec<String>) -> Result<Vec<Scope>, AdminError> {
    raw.iter()
        .map(|s| Scope::new(s).map_err(|e| AdminError::invalid_value("scopes", e.to_string())))
        .collect()
}

fn slugs(field: &'static str, raw: Vec<String>) -> Result<Vec<Slug>, AdminError> {
    raw.iter()
        .map(|s| Slug::new(s).map_err(|e| AdminError::invalid_value(field, e.to_string())))
        .collect()
}

/// `POST /v1/clients` → 201 with the client.
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Client>), AdminError> {
    let new = NewClient {
        name: name(body.name)?,
        plan: plan(body.plan.unwrap_or_else(|| "default".to_owned()))?,
        scopes: scopes(body.scopes.unwrap_or_default())?,
        sports: slugs("sports", body.sports.unwrap_or_default())?,
        bookmakers: slugs("bookmakers", body.bookmakers.unwrap_or_default())?,
        limits: body.limits.unwrap_or_default().overrides()?,
    };
    let client = store_call(state.store.create_client(&caller.actor, new)).await?;
    Ok((StatusCode::CREATED, Json(client)))
}

/// `GET /v1/clients?plan=&active=&after=&limit=` → a page ordered by name.
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = page_limit(q.limit.as_deref())?;
    let active = match q.active.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(AdminError::invalid_value(
                "active",
                format!("`{other}` is neither true nor false"),
            ))
        }
    };
    let filter = ClientFilter {
        plan: q.plan,
        active,
        after: q.after,
        limit: limit + 1,
    };
    let rows = store_call(state.store.list_clients(&filter)).await?;
    let (items, next) = page(rows, limit, |c| c.name.clone());
    Ok(Json(json!({ "items": items, "next_after": next })))
}

/// `GET /v1/clients/{name_or_id}`.
pub(crate) async fn show(
    State(state): State<AdminState>,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    Ok(Json(store_call(state.store.client(&client)).await?))
}

/// `PATCH /v1/clients/{name_or_id}`: only the fields sent change.
pub(crate) async fn update(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<Client>, AdminError> {
    let update = ClientUpdate {
        name: body.name.map(name).transpose()?,
        plan: body.plan.map(plan).transpose()?,
        scopes: body.scopes.map(scopes).transpose()?,
        sports: body.sports.map(|s| slugs("sports", s)).transpose()?,
        bookmakers: body
            .bookmakers
            .map(|s| slugs("bookmakers", s))
            .transpose()?,
        limits: body
            .limits
            .map(LimitsBody::patch)
            .transpose()?
            .unwrap_or_default(),
    };
    let updated = store_call(state.store.update_client(&caller.actor, &client, update)).await?;
    Ok(Json(updated))
}

/// `POST /v1/clients/{name_or_id}/disable`: every key of the client stops working.
pub(crate) async fn disable(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    let c = store_call(state.store.set_client_active(&caller.actor, &client, false)).await?;
    Ok(Json(c))
}

/// `POST /v1/clients/{name_or_id}/enable`.
pub(crate) async fn enable(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    let c = store_call(state.store.set_client_active(&caller.actor, &client, true)).await?;
    Ok(Json(c))
}
