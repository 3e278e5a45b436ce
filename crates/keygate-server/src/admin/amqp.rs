//! Messaging feed endpoints: a client's RabbitMQ vhost and user (`keygate_amqp`).
//!
//! The broker is called while the request waits, so its failures are the answer: 503 with the
//! step that failed and nothing half-made (the feed crate undoes its own broker changes).

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use keygate_amqp::{Drift, FeedView, Feeds, Issued, Reconciled};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody, Params};
use super::openapi as doc;
use super::AdminState;

fn feeds(state: &AdminState) -> Result<Feeds, AdminError> {
    state
        .gateway()
        .amqp
        .get()
        .map(|node| node.feeds.clone())
        .ok_or(AdminError::Feed(keygate_amqp::AmqpError::NotConfigured))
}

/// `POST /v1/clients/{client}/amqp`'s body; may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProvisionBody {
    /// The vhost and user slug (1 to 40 of `a-z`, `0-9`, inner `-`); made from the client's
    /// name when absent.
    #[schema(nullable = false, example = "acme-sportsbook")]
    slug: Option<String>,
}

/// `POST /v1/amqp/reconcile`'s body; may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileBody {
    /// Repair only this client's feed (name or id); all when absent.
    #[schema(nullable = false)]
    client: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DriftQuery {
    /// Only this client's drift (its name).
    client: Option<String>,
}

/// `POST /v1/clients/{client}/amqp`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/amqp",
    operation_id = "provision_feed",
    tag = "amqp",
    summary = "Provision the client's messaging feed; the URL with its password is shown once",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    request_body(content = Option<ProvisionBody>, content_type = "application/json"),
    responses(
        (status = 201, description = "The feed, with its `amqp://` URL (shown once).", body = doc::IssuedFeed),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already provisioned, slug taken, name on the broker not keygate's, or client disabled.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown field (`invalid_body`), a bad slug, or none can be made from the name (`invalid_slug`, `slug_required`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn provision(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    body: Option<JsonBody<ProvisionBody>>,
) -> Result<(StatusCode, Json<Issued>), AdminError> {
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let issued = feeds(&state)?
        .provision(&caller.actor, &client, body.slug.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `GET /v1/clients/{client}/amqp`.
#[utoipa::path(
    get,
    path = "/v1/clients/{client}/amqp",
    operation_id = "show_feed",
    tag = "amqp",
    summary = "Show the client's messaging feed (never its password)",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The feed.", body = doc::Feed),
        (status = 404, description = "No such client, or no feed (`client_not_found`, `feed_not_provisioned`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    ClientPath(client): ClientPath,
) -> Result<Json<FeedView>, AdminError> {
    Ok(Json(feeds(&state)?.show(&client).await?))
}

/// `POST /v1/clients/{client}/amqp/rotate`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/amqp/rotate",
    operation_id = "rotate_feed",
    tag = "amqp",
    summary = "Issue a new feed password; the old one and its connections stop at once",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The feed, with its new `amqp://` URL (shown once).", body = doc::IssuedFeed),
        (status = 404, description = "No such client, or no feed (`client_not_found`, `feed_not_provisioned`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The client is disabled (`client_inactive`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<Issued>, AdminError> {
    Ok(Json(feeds(&state)?.rotate(&caller.actor, &client).await?))
}

/// `POST /v1/clients/{client}/amqp/revoke`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/amqp/revoke",
    operation_id = "revoke_feed",
    tag = "amqp",
    summary = "Delete the client's vhost and user; its connections are closed at once",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`).")),
    responses(
        (status = 200, description = "The revoked feed.", body = doc::Feed),
        (status = 404, description = "No such client, or no feed (`client_not_found`, `feed_not_provisioned`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
) -> Result<Json<FeedView>, AdminError> {
    Ok(Json(feeds(&state)?.revoke(&caller.actor, &client).await?))
}

/// `GET /v1/amqp/drift`.
#[utoipa::path(
    get,
    path = "/v1/amqp/drift",
    operation_id = "feed_drift",
    tag = "amqp",
    summary = "Compare the broker's users and vhosts under keygate's naming with the store",
    params(DriftQuery),
    responses(
        (status = 200, description = "The differences found.", body = doc::FeedDrift),
        (status = 400, description = "An unknown query parameter (`invalid_query`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Messaging feeds are not configured on this node (`amqp_not_configured`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn drift(
    State(state): State<AdminState>,
    Params(q): Params<DriftQuery>,
) -> Result<Json<Drift>, AdminError> {
    let mut drift = feeds(&state)?.drift().await?;
    if let Some(c) = &q.client {
        drift.items.retain(|d| d.client.as_ref() == Some(c));
    }
    Ok(Json(drift))
}

/// `POST /v1/amqp/reconcile`.
#[utoipa::path(
    post,
    path = "/v1/amqp/reconcile",
    operation_id = "reconcile_feeds",
    tag = "amqp",
    summary = "Repair drift between the broker and the store",
    request_body(content = Option<ReconcileBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "What was found, repaired and left alone.", body = doc::FeedReconciled),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`), or messaging feeds are not configured on this node (`amqp_not_configured`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown field (`invalid_body`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reconcile(
    State(state): State<AdminState>,
    caller: Caller,
    body: Option<JsonBody<ReconcileBody>>,
) -> Result<Json<Reconciled>, AdminError> {
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    Ok(Json(
        feeds(&state)?
            .reconcile(&caller.actor, body.client.as_deref())
            .await?,
    ))
}
