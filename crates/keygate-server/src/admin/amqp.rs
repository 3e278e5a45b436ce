//! Messaging feed endpoints: a client's RabbitMQ vhost and user (`keygate_amqp`).
//!
//! The broker is called while the request waits, so its failures are the answer: 503 with the
//! step that failed and nothing half-made (the feed crate undoes its own broker changes).
//! Provision and rotate take an `Idempotency-Key` like key creation: the first answer is kept
//! sealed ([`super::idempotency`]), so a retry gets the same URL and nothing is made twice.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use keygate_amqp::{Drift, FeedView, Feeds, Issued, Reconciled, Retry};
use keygate_store::Once;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{ClientPath, JsonBody, Params};
use super::idempotency::{Guarded, IdempotencyKey};
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
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
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

/// How a provision or rotate under `guard` seals its answer (the URL's only kept form).
fn sealer(
    guard: Option<&Guarded>,
    status: StatusCode,
) -> impl Fn(&Issued) -> keygate_store::SealedAnswer + Send + Sync + '_ {
    move |issued| {
        let body = serde_json::to_vec(issued).expect("an issued feed serializes");
        let g = guard.expect("sealing is asked for only under a guard");
        g.seal(status, &body)
    }
}

/// The feed crate's retry claim of `guard`.
fn retry<'a>(
    guard: Option<&'a Guarded>,
    seal: &'a (dyn Fn(&Issued) -> keygate_store::SealedAnswer + Send + Sync),
) -> Option<Retry<'a>> {
    guard.map(|g| Retry {
        claim: &g.claim,
        seal,
    })
}

/// The answer: the feed just issued, or the first answer under the guard again.
fn answer(
    guard: Option<&Guarded>,
    status: StatusCode,
    once: Once<Issued>,
) -> Result<Response, AdminError> {
    match (once, guard) {
        (Once::Done(issued), _) => Ok((status, Json(issued)).into_response()),
        (Once::Replayed(replay), Some(g)) => g.replay(&replay),
        (Once::Replayed(_), None) => Err(AdminError::Internal("idempotency_guard_missing")),
    }
}

const IDEMPOTENCY_DOC: &str = "Makes a retry safe: a retried request with the same key returns the first answer (with `Idempotent-Replayed: true`, the same URL) and changes nothing on the broker. 1 to 255 visible ASCII characters, e.g. a UUID; kept 24 hours per admin token.";

/// `POST /v1/clients/{client}/amqp`.
#[utoipa::path(
    post,
    path = "/v1/clients/{client}/amqp",
    operation_id = "provision_feed",
    tag = "amqp",
    summary = "Provision the client's messaging feed; the URL with its password is shown once",
    params(("client" = String, Path, description = "The client's name or id (`cli_...`)."), ("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_DOC, max_length = 255, min_length = 1)),
    request_body(content = Option<ProvisionBody>, content_type = "application/json"),
    responses(
        (status = 201, description = "The feed, with its `amqp://` URL (shown once).", body = doc::IssuedFeed),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`), or the Idempotency-Key is malformed (`invalid_idempotency_key`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already provisioned, slug taken, name on the broker not keygate's, or client disabled.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown field (`invalid_body`), a bad slug, or none can be made from the name (`invalid_slug`, `slug_required`), or the Idempotency-Key was used with another request (`idempotency_key_reused`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker failed (`broker_unavailable`, `broker_error`, `broker_operator_refused`); nothing was left half-made.", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn provision(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    idempotency: IdempotencyKey,
    body: Option<JsonBody<ProvisionBody>>,
) -> Result<Response, AdminError> {
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let guard = idempotency.guard(
        &state.gateway().config.issuer.digester,
        &caller.actor,
        &format!("provision_feed {client}"),
        &body,
    );
    let status = StatusCode::CREATED;
    let seal = sealer(guard.as_ref(), status);
    let once = feeds(&state)?
        .provision_once(
            &caller.actor,
            &client,
            body.slug.as_deref(),
            retry(guard.as_ref(), &seal),
        )
        .await?;
    answer(guard.as_ref(), status, once)
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
    params(("client" = String, Path, description = "The client's name or id (`cli_...`)."), ("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_DOC, max_length = 255, min_length = 1)),
    responses(
        (status = 200, description = "The feed, with its new `amqp://` URL (shown once).", body = doc::IssuedFeed),
        (status = 400, description = "The Idempotency-Key is malformed (`invalid_idempotency_key`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client, or no feed (`client_not_found`, `feed_not_provisioned`). Also `amqp_not_configured` on a node without `[amqp]`.", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The client is disabled (`client_inactive`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The Idempotency-Key was used with another request (`idempotency_key_reused`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker failed (`broker_unavailable`, `broker_error`, `broker_operator_refused`); the old password still works.", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    ClientPath(client): ClientPath,
    idempotency: IdempotencyKey,
) -> Result<Response, AdminError> {
    let guard = idempotency.guard(
        &state.gateway().config.issuer.digester,
        &caller.actor,
        &format!("rotate_feed {client}"),
        &(),
    );
    let status = StatusCode::OK;
    let seal = sealer(guard.as_ref(), status);
    let once = feeds(&state)?
        .rotate_once(&caller.actor, &client, retry(guard.as_ref(), &seal))
        .await?;
    answer(guard.as_ref(), status, once)
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
