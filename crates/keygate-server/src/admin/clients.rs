//! `/v1/clients`: create, list, show, update, disable, enable and delete clients.
//!
//! Bodies arrive as plain strings and numbers and are validated here field by field, so a bad
//! scope or limit is refused as `invalid_value` naming the field before the store is asked.

use std::num::NonZeroU64;

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use keygate_core::names::{check_client_name, check_plan};
use keygate_core::Timestamp;
use keygate_core::{Client, LimitOverrides, Scope, Slug};
use keygate_store::{
    ClientFilter, ClientUpdate, DeletedClient, LimitChange, LimitPatch, NewClient,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody, Params};
use super::openapi as doc;
use super::{page, page_limit, store_call, AdminState};

/// `Some(value)` when the field is present, even as `null`; `None` (by `default`) when absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Per-contract limits as sent: a positive integer, or `null` for the plan's value. On update,
/// an absent limit is left as it is.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[schema(as = LimitsInput)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    rps: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    per_minute: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    per_hour: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    per_day: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    per_month: Option<Option<serde_json::Number>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
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

/// A new client; only `name` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = ClientCreate)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    /// When absent, the profile's `default_plan` (`default` unless the configuration sets one).
    #[schema(nullable = false)]
    plan: Option<String>,
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    /// Sport namespaces the client may reach; empty or absent means none is restricted.
    #[schema(nullable = false)]
    sports: Option<Vec<String>>,
    /// Bookmakers the client may ask for; empty or absent means all.
    #[schema(nullable = false)]
    bookmakers: Option<Vec<String>>,
    #[schema(nullable = false)]
    limits: Option<LimitsBody>,
    /// Name or id of the parent account: the new client becomes its child ("portfolio bot"),
    /// whose keys the parent's keys may regenerate through self-service. One level only.
    #[schema(nullable = false)]
    parent: Option<String>,
}

/// A change to a client: only the fields sent change.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = ClientUpdate)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    #[schema(nullable = false)]
    name: Option<String>,
    #[schema(nullable = false)]
    plan: Option<String>,
    #[schema(nullable = false)]
    scopes: Option<Vec<String>>,
    #[schema(nullable = false)]
    sports: Option<Vec<String>>,
    #[schema(nullable = false)]
    bookmakers: Option<Vec<String>>,
    #[schema(nullable = false)]
    limits: Option<LimitsBody>,
}

impl CreateBody {
    /// Every field checked, before the store is asked.
    pub(crate) fn validate(self) -> Result<NewClient, AdminError> {
        Ok(NewClient {
            name: name(self.name)?,
            plan: plan(self.plan.unwrap_or_else(|| "default".to_owned()))?,
            scopes: scopes(self.scopes.unwrap_or_default())?,
            sports: slugs("sports", self.sports.unwrap_or_default())?,
            bookmakers: slugs("bookmakers", self.bookmakers.unwrap_or_default())?,
            limits: self.limits.unwrap_or_default().overrides()?,
            parent: self.parent,
            ..NewClient::default()
        })
    }
}

impl UpdateBody {
    /// Every field sent checked, before the store is asked.
    pub(crate) fn validate(self) -> Result<ClientUpdate, AdminError> {
        Ok(ClientUpdate {
            name: self.name.map(name).transpose()?,
            plan: self.plan.map(plan).transpose()?,
            scopes: self.scopes.map(scopes).transpose()?,
            sports: self.sports.map(|s| slugs("sports", s)).transpose()?,
            bookmakers: self
                .bookmakers
                .map(|s| slugs("bookmakers", s))
                .transpose()?,
            limits: self
                .limits
                .map(LimitsBody::patch)
                .transpose()?
                .unwrap_or_default(),
            ..ClientUpdate::default()
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only clients on this plan.
    plan: Option<String>,
    /// Only active (`true`) or disabled (`false`) clients.
    #[param(value_type = Option<bool>)]
    active: Option<String>,
    /// The previous page's `next_after`: clients named after it.
    after: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
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
#[utoipa::path(
    post,
    path = "/v1/clients",
    operation_id = "create_client",
    tag = "clients",
    summary = "Create a client",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The client.", body = doc::Client),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A client with that name exists (`duplicate_client`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    JsonBody(mut body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Client>), AdminError> {
    // Without a plan, the profile's starting plan (`[profile] default_plan`).
    let default_plan = &state.gateway().config.profile.default_plan;
    body.plan.get_or_insert_with(|| default_plan.to_string());
    let new = body.validate()?;
    let client = store_call(state.store.create_client(&caller.actor, new)).await?;
    Ok((StatusCode::CREATED, Json(client)))
}

/// `GET /v1/clients?plan=&active=&after=&limit=` → a page ordered by name.
#[utoipa::path(
    get,
    path = "/v1/clients",
    operation_id = "list_clients",
    tag = "clients",
    summary = "List clients by name",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of clients.", body = doc::ClientPage),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is out of range (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    get,
    path = "/v1/clients/{client}",
    operation_id = "show_client",
    tag = "clients",
    summary = "Show a client",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The client.", body = doc::Client),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    Ok(Json(store_call(state.store.client(&client)).await?))
}

/// `PATCH /v1/clients/{name_or_id}`: only the fields sent change.
#[utoipa::path(
    patch,
    path = "/v1/clients/{client}",
    operation_id = "update_client",
    tag = "clients",
    summary = "Change a client",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The changed client.", body = doc::Client),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A client with that name exists (`duplicate_client`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn update(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<Client>, AdminError> {
    let update = body.validate()?;
    let updated = store_call(state.store.update_client(&caller.actor, &client, update)).await?;
    Ok(Json(updated))
}

/// `POST /v1/clients/{name_or_id}/disable`: every key of the client stops working.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/disable",
    operation_id = "disable_client",
    tag = "clients",
    summary = "Disable a client and so all its keys",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The client.", body = doc::Client),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn disable(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    let c = store_call(state.store.set_client_active(&caller.actor, &client, false)).await?;
    Ok(Json(c))
}

/// `POST /v1/clients/{name_or_id}/enable`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/enable",
    operation_id = "enable_client",
    tag = "clients",
    summary = "Enable a client",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The client.", body = doc::Client),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn enable(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<Client>, AdminError> {
    let c = store_call(state.store.set_client_active(&caller.actor, &client, true)).await?;
    Ok(Json(c))
}

/// What deleting a client ended, as the admin API and `keygate client delete` answer it.
#[derive(Clone, Debug, Serialize)]
pub struct ClientDeleted {
    pub id: String,
    pub name: String,
    pub deleted_at: Timestamp,
    /// Keys revoked by the deletion.
    pub keys_revoked: u64,
    /// Portal users removed (their sessions ended).
    pub portal_users: u64,
    /// `none` (no active feed), `revoked` (user and vhost removed from the broker), or
    /// `pending` (the broker could not be reached: the node acting on the broker removes them
    /// as soon as it answers).
    pub feed: &'static str,
    /// Why the feed is `pending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed_error: Option<String>,
}

/// Finishes a deletion the store made: the client's feed leaves the broker now, from the node
/// that took the call, rather than at the acting node's next poll. Without `[amqp]` here (or
/// when the broker fails) the acting node does it from the change feed.
pub async fn finish_deletion(
    feeds: Option<&keygate_amqp::Feeds>,
    deleted: DeletedClient,
) -> ClientDeleted {
    let (feed, feed_error) = match (&deleted.feed, feeds) {
        (None, _) => ("none", None),
        (Some(f), Some(feeds)) => match feeds.remove(f).await {
            Ok(()) => ("revoked", None),
            Err(e) => {
                tracing::warn!(client = %deleted.client.name, error = %e, "A deleted client's messaging feed could not be removed from the broker yet.");
                ("pending", Some(e.to_string()))
            }
        },
        (Some(_), None) => ("pending", None),
    };
    tracing::info!(client = %deleted.client.name, keys = deleted.keys_revoked, feed, "Client deleted.");
    ClientDeleted {
        id: deleted.client.id.as_str().to_owned(),
        name: deleted.client.name,
        deleted_at: deleted.client.updated_at,
        keys_revoked: deleted.keys_revoked,
        portal_users: deleted.portal_users,
        feed,
        feed_error,
    }
}

/// `DELETE /v1/clients/{name_or_id}`: the client's keys stop on every node, its portal users'
/// sessions end, its messaging feed leaves the broker, and it is no longer listed.
#[utoipa::path(
    delete,
    path = "/v1/clients/{client}",
    operation_id = "delete_client",
    tag = "clients",
    summary = "Delete a client: its keys, portal access and messaging feed end at once",
    description = "Every key of the client is revoked (refused on every node through the change feed), its portal users and their sessions are removed, and its messaging feed's user and vhost are deleted on the broker. The client is no longer listed or found; the audit log keeps its history, and its name stays taken (a new client cannot reuse it). A client with child accounts is refused until they are deleted.",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "What the deletion ended.", body = doc::ClientDeleted),
        (status = 404, description = "No such client, or deleted before (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The client has child accounts (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<ClientDeleted>, AdminError> {
    let deleted = store_call(state.store.delete_client(&caller.actor, &client)).await?;
    let gw = state.gateway();
    let feeds = gw.amqp.get().map(|node| &node.feeds);
    Ok(Json(finish_deletion(feeds, deleted).await))
}
