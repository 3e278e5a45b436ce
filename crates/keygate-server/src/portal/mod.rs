//! The customer portal: the provider's customers sign in with a mailed link and manage their
//! own keys, see their plan and usage, pick bookmakers, regenerate child bots' keys and (with
//! `[amqp]`) see and rotate their messaging feed.
//!
//! Served by every node on its own listener (`[portal] listen`), from the same store as the
//! gateway: sessions and sign-in links are store rows, so any node serves any user, and every
//! key change is the admin API's store operation, reaching every node through the change feed
//! and audited with the portal user as actor. Pages are rendered on the server from templates
//! and assets embedded in the binary; they work without JavaScript except the Copy button, whose
//! script is an embedded file (so the Content-Security-Policy allows no inline script at all).

mod account;
mod cache;
mod error;
mod feed;
mod keys;
mod mail;
mod pages;
mod session;
mod sign_in;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use keygate_core::model::PortalUserId;
use keygate_store::{Actor, Store, StoreError};

use crate::config::PortalSettings;
use crate::state::gateway::Gateway;
use crate::state::live::Live;

pub use error::PortalError;
pub use mail::{MailError, Mailer};

/// How long a mailed sign-in link works.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// Largest form the portal reads; past it, 413.
pub const FORM_LIMIT: usize = 16 * 1024;

/// What the portal's handlers share.
#[derive(Clone)]
pub struct PortalState {
    /// The gateway in force (a reload replaces it: plans, profile, key format).
    pub live: Arc<Live>,
    pub store: Store,
    pub(crate) settings: Arc<PortalSettings>,
    pub(crate) pages: Arc<pages::Pages>,
    pub(crate) mailer: Mailer,
    /// Requests per source address (`[portal] requests_per_source`), in this process's memory:
    /// a refusal costs no store call and no Redis round trip.
    pub(crate) sources: Arc<keygate_limits::LocalLimiter>,
    /// Sessions and key listings read for earlier pages, while nothing has been written.
    pub(crate) cache: Arc<cache::PageCache>,
}

impl std::fmt::Debug for PortalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl PortalState {
    /// The portal of `settings` over this gateway and store.
    ///
    /// # Errors
    /// A template does not compile (a build defect, caught by the tests).
    pub fn new(
        live: Arc<Live>,
        store: Store,
        settings: PortalSettings,
    ) -> Result<PortalState, PortalError> {
        let pages = pages::Pages::new(&settings)?;
        Ok(PortalState {
            live,
            store,
            mailer: Mailer::new(settings.smtp.clone()),
            settings: Arc::new(settings),
            pages: Arc::new(pages),
            sources: Arc::new(keygate_limits::LocalLimiter::new()),
            cache: Arc::new(cache::PageCache::new()),
        })
    }
}

impl PortalState {
    /// The gateway in force.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.load()
    }

    /// Where the store stands as far as this node knows, noted before a read the portal keeps.
    pub(crate) fn stamp(&self) -> cache::Stamp {
        cache::Stamp::now(self.gateway().replica.version(), &self.store)
    }
}

/// The portal's routes, with its security headers on every answer.
pub fn router(state: PortalState) -> Router {
    Router::new()
        .route("/", get(sign_in::home))
        .route("/sign-in", get(sign_in::form).post(sign_in::request))
        .route("/sign-in/link", get(sign_in::confirm).post(sign_in::redeem))
        .route(
            "/sign-up",
            get(sign_in::sign_up_form).post(sign_in::sign_up),
        )
        .route("/sign-out", post(sign_in::sign_out))
        .route("/keys", get(keys::list).post(keys::create))
        .route(
            "/keys/{id}/rotate",
            get(keys::rotate_form).post(keys::rotate),
        )
        .route(
            "/keys/{id}/revoke",
            get(keys::revoke_form).post(keys::revoke),
        )
        .route("/feed", get(feed::show))
        .route("/feed/request", post(feed::request))
        .route("/feed/rotate", get(feed::rotate_form).post(feed::rotate))
        .route("/account", get(account::show))
        .route("/usage", get(account::usage))
        .route("/usage.csv", get(account::usage_csv))
        .route(
            "/bookmakers",
            get(account::bookmakers).post(account::pick_bookmakers),
        )
        .route("/bots", get(account::bots))
        .route("/bots/{id}/regenerate", post(account::regenerate_bot))
        .route("/assets/{name}", get(pages::asset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn(refuse_oversized))
        .layer(middleware::from_fn_with_state(state.clone(), limit_sources))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn not_found() -> PortalError {
    PortalError::NotFound
}

/// The Content-Security-Policy: same-origin scripts, styles and images only (and the logo as a
/// `data:` image); no inline script, no framing, forms post only to the portal.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A body declared larger than [`FORM_LIMIT`] is refused on its head, before a byte of it is
/// read, and the connection closed after the answer (its body is never read). Bodies without a
/// length are cut at the limit by `DefaultBodyLimit`.
async fn refuse_oversized(req: axum::extract::Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > FORM_LIMIT as u64) {
        let mut resp = axum::response::IntoResponse::into_response(PortalError::TooLarge);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

/// The window of `[portal] requests_per_source`.
const SOURCE_WINDOW: Duration = Duration::from_secs(60);

/// Counts every request against its source's `requests_per_source` a minute, before anything
/// else of the portal runs: past it, a 429 from memory. A person clicking through pages stays far
/// below the default; a flood from one address costs the node a counter, not a session lookup,
/// a store query and a page each.
async fn limit_sources(
    axum::extract::State(state): axum::extract::State<PortalState>,
    sign_in::Source(source): sign_in::Source,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let check = [keygate_limits::Check::new(
        keygate_limits::LimitKey::new(format!("portal:r:{source}"), 0),
        sign_in::per_window(state.settings.requests_per_source, SOURCE_WINDOW),
    )];
    let verdict = state.sources.check(&check, state.gateway().clock.now());
    if verdict.allowed {
        return next.run(req).await;
    }
    let retry_after = verdict
        .binding
        .map_or(SOURCE_WINDOW, |(_, s)| s.retry_after)
        .as_secs()
        .max(1);
    axum::response::IntoResponse::into_response(PortalError::TooManyRequests { retry_after })
}

/// Forgets the per-source counters that no longer hold anything, once a minute, so addresses
/// seen once (a scan over many of them) do not stay in memory.
pub(crate) async fn sweep_sources(
    state: PortalState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SOURCE_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.sources.sweep(state.gateway().clock.now());
            }
            _ = stop.changed() => return,
        }
    }
}

async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A sign-in link made for an invitation: mailed when mail is configured, and returned.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Invitation {
    pub link: String,
    pub email: String,
    pub client_id: String,
    pub expires_at: keygate_core::Timestamp,
    pub mailed: bool,
}

/// Why an invitation failed.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the sign-in link was made but could not be mailed: {0}")]
    Mail(#[from] MailError),
}

/// Makes `email` a portal user of `client` (when it is not one already), and mails it a
/// sign-in link. Shared by the admin API and `keygate portal invite`.
///
/// # Errors
/// [`InviteError`]: the store refused (unknown client, bad address, address of another
/// client), or the mail could not be sent (the link is returned in neither case).
pub async fn invite(
    store: &Store,
    settings: &PortalSettings,
    actor: &Actor,
    client: &str,
    email: &str,
) -> Result<Invitation, InviteError> {
    let user = store.ensure_portal_user(actor, client, email).await?;
    let (link, expires_at) = sign_in::make_link(store, settings, &user.id).await?;
    let mailer = Mailer::new(settings.smtp.clone());
    let mailed = mailer.is_configured();
    if mailed {
        mailer.send_sign_in(settings, &user.email, &link).await?;
    }
    Ok(Invitation {
        link,
        email: user.email,
        client_id: user.client_id.to_string(),
        expires_at,
        mailed,
    })
}

/// The audit actor of a portal user's changes.
fn actor(user: &PortalUserId, email: &str) -> Actor {
    Actor(format!("portal:{email} ({user})"))
}
