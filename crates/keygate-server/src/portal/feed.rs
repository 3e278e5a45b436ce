//! The Messaging feed page (a node with `[portal]` and `[amqp]`): the client's RabbitMQ feed
//! (seed 001: "AMQP — Provisioned per tenant on request — see the Messaging Feed page"), its
//! rotation, and a request for one when the operator lets customers provision their own
//! (`[portal] feed_requests`; off by default, then the page says to ask the provider).
//!
//! Each change is the admin API's feed operation (`keygate_amqp::Feeds`) with the portal user as
//! the audit actor: the broker first, the store last, nothing half-made when the broker fails.
//! The feed is always the signed-in client's own (no id in the path), and the password appears
//! only in the answer to the POST that issued it, in the same shown-once section as new keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use keygate_amqp::{AmqpError, FeedView, Feeds, Issued};
use keygate_store::FeedState;
use minijinja::{context, Value};
use serde::Deserialize;

use super::error::PortalError;
use super::keys::day_time;
use super::pages::page;
use super::session::Signed;
use super::{actor, PortalState};

/// The node's feed operations; without `[amqp]` the section does not exist.
fn feeds(state: &PortalState) -> Result<Feeds, PortalError> {
    state
        .gateway()
        .amqp
        .get()
        .map(|node| node.feeds.clone())
        .ok_or(PortalError::NotFound)
}

/// The signed-in client's feed, if it ever had one.
async fn own_feed(feeds: &Feeds, signed: &Signed) -> Result<Option<FeedView>, PortalError> {
    match feeds.show(signed.session.user.client_id.as_str()).await {
        Ok(view) => Ok(Some(view)),
        Err(AmqpError::NotProvisioned(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A feed as the page shows it (never the password).
fn row(f: &FeedView) -> Value {
    let live = f.state == FeedState::Active && f.client_active;
    let state_text = match (f.state, f.client_active) {
        (FeedState::Revoked, _) => "revoked",
        (FeedState::Active, true) => "active",
        (FeedState::Active, false) => "suspended while your account is disabled",
    };
    Value::from_serialize(serde_json::json!({
        "user": f.user,
        "vhost": f.vhost,
        "address": f.address,
        "url_hint": f.url_hint,
        "state": f.state,
        "state_text": state_text,
        "created": day_time(Some(f.created_at)),
        "rotated": day_time(f.rotated_at),
        "live": live,
    }))
}

/// Renders the page, with `shown` (a URL just issued, in full) when there is one.
async fn feed_page(
    state: &PortalState,
    signed: &Signed,
    status: StatusCode,
    shown: Option<(&Issued, &str)>,
) -> Result<Response, PortalError> {
    let feeds = feeds(state)?;
    let feed = own_feed(&feeds, signed).await?;
    let shown = shown.map(|(issued, note)| context! { url => issued.url.as_str(), note => note });
    page(
        state,
        &signed.visit,
        Some(&signed.session.user.email),
        status,
        "feed.html",
        context! {
            feed => feed.as_ref().map(row),
            shown => shown,
            can_request => state.settings.feed_requests,
        },
    )
}

/// `GET /feed`.
pub(crate) async fn show(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    feed_page(&state, &signed, StatusCode::OK, None).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /feed/request`: provisions the client's feed when the operator allows it.
pub(crate) async fn request(
    State(state): State<PortalState>,
    signed: Signed,
    Form(f): Form<ActionForm>,
) -> Result<Response, PortalError> {
    signed.visit.check(&f.csrf)?;
    let feeds = feeds(&state)?;
    if !state.settings.feed_requests {
        return Err(PortalError::Forbidden(format!(
            "Messaging feeds are provisioned on request: ask {} to provision yours.",
            state.settings.name
        )));
    }
    let user = &signed.session.user;
    let issued = feeds
        .provision(&actor(&user.id, &user.email), user.client_id.as_str(), None)
        .await?;
    tracing::info!(user = %user.id, vhost = %issued.vhost, "Portal messaging feed provisioned.");
    feed_page(
        &state,
        &signed,
        StatusCode::CREATED,
        Some((&issued, "provisioned")),
    )
    .await
}

/// `GET /feed/rotate`: the confirmation page.
pub(crate) async fn rotate_form(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let feed = own_feed(&feeds(&state)?, &signed)
        .await?
        .filter(|f| f.state == FeedState::Active)
        .ok_or(PortalError::NotFound)?;
    page(
        &state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "feed_rotate.html",
        context! { feed => row(&feed) },
    )
}

/// `POST /feed/rotate`: a new password; the old one and its connections stop at once.
pub(crate) async fn rotate(
    State(state): State<PortalState>,
    signed: Signed,
    Form(f): Form<ActionForm>,
) -> Result<Response, PortalError> {
    signed.visit.check(&f.csrf)?;
    let user = &signed.session.user;
    let issued = feeds(&state)?
        .rotate(&actor(&user.id, &user.email), user.client_id.as_str())
        .await?;
    tracing::info!(user = %user.id, vhost = %issued.vhost, "Portal messaging feed rotated.");
    feed_page(
        &state,
        &signed,
        StatusCode::CREATED,
        Some((&issued, "rotated; the old password has stopped working")),
    )
    .await
}
