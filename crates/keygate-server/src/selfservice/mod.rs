//! Self-service accounts: registration, the caller's own profile, key regeneration, and the
//! regeneration of a child account's key by its parent (seed 002's `/api/register`, `/api/me`,
//! `/api/me/regenerate-key`, `/api/portfolio/bots/{agent_id}/regenerate-key`).
//!
//! Off unless the configuration has `[selfservice]` and routes naming an [`Action`]. These
//! routes go through the ordinary hot path first (route, credential, authentication, per-route
//! limits, by source address for registration), then keygate answers instead of forwarding.
//! Every change is a store write, so the change feed carries it to every node and the audit
//! log records it as `self:<client id>`; the answer waits until this node's replica has it,
//! so a regenerated key's predecessor is refused here as soon as the answer is out.

mod account;
mod body;
mod error;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use keygate_core::{ClientId, KeyId};
use keygate_store::{Actor, ClientUpdate, NewClient, NewKey, Store, StoreError};
use serde_json::json;

use crate::policy::routes::RouteMatch;
use crate::request::body::Body;
use crate::state::gateway::{Admitted, Gateway};

pub(crate) use crate::policy::selfservice::{Action, SelfService};
pub(crate) use error::SelfServiceError;

/// Longest wait for one store call; past it the answer is 503 and nothing is promised.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for this node's replica to apply the answer's own change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a self-service request that passed authentication and limits. `who` is `None`
/// only for registration.
pub(crate) async fn answer(
    gw: &Gateway,
    action: &Action,
    req: Request<Incoming>,
    who: Option<&Admitted>,
    remote: SocketAddr,
) -> Result<Response<Body>, SelfServiceError> {
    let (Some(config), Some(store)) = (gw.config.selfservice.as_ref(), gw.writer.get()) else {
        return Err(SelfServiceError::StoreUnavailable);
    };
    let method = req.method().clone();
    match (action, who) {
        (Action::Register, _) => register(gw, config, store, req, remote).await,
        (Action::Me, Some(who)) if method == Method::PATCH => {
            update(gw, config, store, req, who).await
        }
        (Action::Me, Some(who)) => {
            let client = call(store.client(who.client.policy.id.as_str())).await?;
            Ok(account::json_response(
                StatusCode::OK,
                account::profile(&client, Some(who.key.id())),
            ))
        }
        (Action::RegenerateKey, Some(who)) => regenerate(gw, store, who).await,
        (Action::RegenerateChildKey { param }, Some(who)) => {
            let child = child_param(gw, &method, req.uri().path(), param)?;
            regenerate_child(gw, config, store, who, &child).await
        }
        (_, None) => Err(SelfServiceError::NotFound),
    }
}

/// The audit actor of a caller's own changes.
fn actor(id: &ClientId) -> Actor {
    Actor(format!("self:{id}"))
}

async fn register(
    gw: &Gateway,
    config: &SelfService,
    store: &Store,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, SelfServiceError> {
    let fields = body::read(config, req).await?;
    let new = body::registration(config, fields)?;
    let id = ClientId::generate();
    let (secret, material) = gw.config.issuer.issue();
    let (client, key) = call(store.create_client_with_key(
        &actor(&id),
        NewClient {
            id: Some(id),
            name: new.name,
            plan: config.plan.clone(),
            scopes: config.scopes.clone(),
            metadata: new.metadata,
            ..NewClient::default()
        },
        NewKey {
            material,
            label: config.key_label.clone(),
            expires_at: None,
            restrictions: Default::default(),
        },
    ))
    .await?;
    tracing::info!(client = %client.id, key_id = %key.id, source = %remote.ip(), "Self-service registration.");
    caught_up(gw, store).await;
    let mut doc = account::profile(&client, Some(key.id.as_str()));
    doc["api_key"] = json!(secret.expose());
    Ok(account::no_store(account::json_response(
        StatusCode::CREATED,
        doc,
    )))
}

async fn update(
    gw: &Gateway,
    config: &SelfService,
    store: &Store,
    req: Request<Incoming>,
    who: &Admitted,
) -> Result<Response<Body>, SelfServiceError> {
    let fields = body::read(config, req).await?;
    let patch = body::patch(config, fields)?;
    let id = &who.client.policy.id;
    let client = call(store.update_client(
        &actor(id),
        id.as_str(),
        ClientUpdate {
            name: patch.name,
            metadata: patch.metadata,
            ..ClientUpdate::default()
        },
    ))
    .await?;
    caught_up(gw, store).await;
    Ok(account::json_response(
        StatusCode::OK,
        account::profile(&client, Some(who.key.id())),
    ))
}

async fn regenerate(
    gw: &Gateway,
    store: &Store,
    who: &Admitted,
) -> Result<Response<Body>, SelfServiceError> {
    let key_id = KeyId::parse(who.key.id()).map_err(|_| SelfServiceError::NotFound)?;
    let (secret, material) = gw.config.issuer.issue();
    let rotation =
        call(store.rotate_key(&actor(&who.client.policy.id), &key_id, material, None)).await?;
    tracing::info!(old = %rotation.old.id, new = %rotation.new.id, "Self-service key regeneration.");
    caught_up(gw, store).await;
    Ok(account::issued_key(secret.expose()))
}

async fn regenerate_child(
    gw: &Gateway,
    config: &SelfService,
    store: &Store,
    who: &Admitted,
    child: &ClientId,
) -> Result<Response<Body>, SelfServiceError> {
    let (secret, material) = gw.config.issuer.issue();
    let parent = &who.client.policy.id;
    let replaced = call(store.replace_keys(
        &actor(parent),
        child,
        Some(parent),
        material,
        &config.key_label,
    ))
    .await?;
    tracing::info!(child = %child, new = %replaced.new.id, revoked = replaced.revoked.len(), "Child key regeneration.");
    caught_up(gw, store).await;
    Ok(account::issued_key(secret.expose()))
}

/// The child account named in the path; anything that is not an account id is "not found".
fn child_param(
    gw: &Gateway,
    method: &Method,
    path: &str,
    param: &str,
) -> Result<ClientId, SelfServiceError> {
    let RouteMatch::Found { params, .. } = gw.config.routes.find(method, path) else {
        return Err(SelfServiceError::NotFound);
    };
    params
        .get(param)
        .and_then(|v| ClientId::parse(v).ok())
        .ok_or(SelfServiceError::NotFound)
}

/// A store call bounded by [`STORE_TIMEOUT`].
async fn call<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, SelfServiceError> {
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(result) => result.map_err(SelfServiceError::from),
        Err(_) => Err(SelfServiceError::StoreUnavailable),
    }
}

/// Waits (bounded) until this node's replica has applied everything up to the store's current
/// version, waking the feed follower instead of waiting for its next poll. Other nodes follow
/// through the change feed within their interval.
pub(crate) async fn caught_up(gw: &Gateway, store: &Store) {
    let Ok(Ok(target)) = tokio::time::timeout(APPLY_TIMEOUT, store.version()).await else {
        return;
    };
    gw.feed_wake.notify_one();
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    while gw.replica.version() < target {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                target,
                "The replica did not apply a self-service change in time."
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        gw.feed_wake.notify_one();
    }
}
