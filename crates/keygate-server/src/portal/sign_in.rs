//! Sign-in by mailed link, sign-up where the profile allows it, and sign-out.
//!
//! Asking for a link answers the same page whether or not the address is known, and the mail
//! goes out after the answer, so neither the page nor its timing tells who has an account.
//! Requests are rate-limited per address and per source with the gateway's own limiter. A link
//! opens a confirmation page first and is spent only by its "Sign in" button, so a mail
//! scanner that follows links does not use it up.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keygate_core::limit::Limit;
use keygate_core::model::PortalUserId;
use keygate_core::Timestamp;
use keygate_limits::{Check, LimitKey};
use keygate_store::{Actor, NewClient, Store, StoreError};
use minijinja::context;
use serde::Deserialize;

use super::error::{store, PortalError};
use super::pages::page;
use super::session::{self, Signed, Visit};
use super::{PortalState, LINK_TTL};
use crate::config::PortalSettings;

/// The window of the sign-in rate limits.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The address the request came from: the connection's peer or, from one of `[guard]
/// trusted_proxies` (a TLS proxy in front of the portal), the client it reports, read by the
/// guard's own rule.
pub(crate) struct Source(pub(crate) IpAddr);

impl FromRequestParts<PortalState> for Source {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let caller = crate::policy::guard::Caller {
            peer,
            headers: &parts.headers,
        };
        Ok(Source(state.gateway().guard.source(caller)))
    }
}

/// Makes a single-use sign-in link for `user`, valid [`LINK_TTL`].
///
/// # Errors
/// [`StoreError`].
pub(crate) async fn make_link(
    store: &Store,
    settings: &PortalSettings,
    user: &PortalUserId,
) -> Result<(String, Timestamp), StoreError> {
    let token = session::token();
    let expires = store
        .create_sign_in_link(user, &session::digest(&token), LINK_TTL)
        .await?;
    Ok((
        format!("{}/sign-in/link?token={token}", settings.base_url),
        expires,
    ))
}

/// `n` requests per `window` (a configured count is at least 1).
pub(super) fn per_window(n: u32, window: Duration) -> Limit {
    Limit::rate(
        NonZeroU64::new(u64::from(n)).unwrap_or(NonZeroU64::MIN),
        window,
    )
}

/// Counts one sign-in (or sign-up) attempt against the address's and the source's limits.
async fn admit(state: &PortalState, email: &str, source: IpAddr) -> Result<(), PortalError> {
    let s = &state.settings;
    let limit = |n: u32| per_window(n, ATTEMPT_WINDOW);
    let address =
        keygate_core::digest::hex(&session::digest(&email.trim().to_ascii_lowercase())[..12]);
    let checks = [
        Check::new(
            LimitKey::new(format!("portal:a:{address}"), 0),
            limit(s.sign_in_per_address),
        ),
        Check::new(
            LimitKey::new(format!("portal:s:{source}"), 0),
            limit(s.sign_in_per_source),
        ),
    ];
    match state
        .gateway()
        .limits
        .check(&checks, state.gateway().clock.now())
        .await
    {
        Ok(v) if v.allowed => Ok(()),
        // A limiter that cannot answer refuses: sign-in mail is not worth an open relay.
        _ => Err(PortalError::TooManyAttempts),
    }
}

/// `GET /`: the keys page when signed in, else the sign-in page.
pub(crate) async fn home(signed: Result<Signed, PortalError>) -> Response {
    let to = if signed.is_ok() { "/keys" } else { "/sign-in" };
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// `GET /sign-in`.
pub(crate) async fn form(
    State(state): State<PortalState>,
    visit: Visit,
) -> Result<Response, PortalError> {
    page(
        &state,
        &visit,
        None,
        StatusCode::OK,
        "sign_in.html",
        context! {},
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmailForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-in`: mails a link to a known address; the same answer for any address.
pub(crate) async fn request(
    State(state): State<PortalState>,
    visit: Visit,
    Source(source): Source,
    Form(f): Form<EmailForm>,
) -> Result<Response, PortalError> {
    visit.check(&f.csrf)?;
    admit(&state, &f.email, source).await?;
    let user = store(state.store.active_portal_user(&f.email)).await?;
    if let Some(user) = user {
        let bg = state.clone();
        tokio::spawn(async move { send_link(&bg, &user.id, &user.email).await });
    }
    sent(&state, &visit, &f.email)
}

/// The "check your mail" page, the same for every address; it marks this browser as the one
/// that asked for `email`'s link (see [`session::asked_cookie`]).
fn sent(state: &PortalState, visit: &Visit, email: &str) -> Result<Response, PortalError> {
    let mut resp = page(state, visit, None, StatusCode::OK, "sent.html", context! {})?;
    resp.headers_mut()
        .append(header::SET_COOKIE, session::asked_cookie(state, email));
    Ok(resp)
}

/// Makes and mails a link; failures are logged (the visitor's answer never depends on them).
async fn send_link(state: &PortalState, user: &PortalUserId, email: &str) {
    match make_link(&state.store, &state.settings, user).await {
        Ok((link, _)) => {
            if let Err(e) = state
                .mailer
                .send_sign_in(&state.settings, email, &link)
                .await
            {
                tracing::warn!(user = %user, error = %e, "Cannot mail a portal sign-in link.");
            }
        }
        Err(e) => tracing::warn!(user = %user, error = %e, "Cannot make a portal sign-in link."),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LinkQuery {
    #[serde(default)]
    token: String,
}

/// The one answer to a link that cannot sign anyone in, whatever the reason.
fn link_refused() -> PortalError {
    PortalError::Invalid(
        "This sign-in link is used, expired or not valid. Ask for a new one.".to_owned(),
    )
}

/// `GET /sign-in/link?token=…`: a page with the "Sign in" button that spends the link. It
/// names the account the link opens and, when this browser did not ask for that address's
/// link, warns that someone else may have sent it (login CSRF: being signed in to an
/// attacker's account, and typing one's own secrets into it). The link stays usable from
/// another device, as a mailed link must.
pub(crate) async fn confirm(
    State(state): State<PortalState>,
    visit: Visit,
    Query(q): Query<LinkQuery>,
) -> Result<Response, PortalError> {
    if !session::well_formed(&q.token) {
        return Err(link_refused());
    }
    let Some(user) = store(state.store.sign_in_link_user(&session::digest(&q.token))).await? else {
        return Err(link_refused());
    };
    page(
        &state,
        &visit,
        None,
        StatusCode::OK,
        "confirm.html",
        context! {
            token => q.token,
            email => user.email,
            asked_here => visit.asked_for(&user.email),
        },
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct RedeemForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-in/link`: spends the link and opens a session.
pub(crate) async fn redeem(
    State(state): State<PortalState>,
    visit: Visit,
    Form(f): Form<RedeemForm>,
) -> Result<Response, PortalError> {
    visit.check(&f.csrf)?;
    if !session::well_formed(&f.token) {
        return Err(link_refused());
    }
    let token = session::token();
    let redeemed = state
        .store
        .redeem_sign_in_link(
            &session::digest(&f.token),
            &session::digest(&token),
            state.settings.session_lifetime,
        )
        .await;
    match redeemed {
        Ok(s) => {
            tracing::info!(user = %s.user.id, "Portal sign-in.");
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/keys")]).into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, session::session_cookie(&state, &token));
            Ok(visit.finish(&state, resp))
        }
        Err(StoreError::SignInRefused(why)) => {
            tracing::info!(reason = %why, "Portal sign-in refused.");
            Err(link_refused())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// `POST /sign-out`: ends the session here and in the store.
pub(crate) async fn sign_out(
    State(state): State<PortalState>,
    visit: Visit,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    visit.check(&f.csrf)?;
    if let Some(token) = visit.session_token() {
        store(state.store.revoke_portal_session(&session::digest(token))).await?;
    }
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/sign-in")]).into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, session::clear_session(&state));
    Ok(resp)
}

/// `GET /sign-up` where the profile allows it.
pub(crate) async fn sign_up_form(
    State(state): State<PortalState>,
    visit: Visit,
) -> Result<Response, PortalError> {
    if !state.settings.sign_up {
        return Err(PortalError::NotFound);
    }
    page(
        &state,
        &visit,
        None,
        StatusCode::OK,
        "sign_up.html",
        context! {},
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignUpForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-up`: a new client on the profile's default plan, its first portal user, and a
/// sign-in link by mail. An address that already has an account gets a sign-in link instead,
/// and the same page.
pub(crate) async fn sign_up(
    State(state): State<PortalState>,
    visit: Visit,
    Source(source): Source,
    Form(f): Form<SignUpForm>,
) -> Result<Response, PortalError> {
    if !state.settings.sign_up {
        return Err(PortalError::NotFound);
    }
    visit.check(&f.csrf)?;
    let email = keygate_store::normalize_email(&f.email)
        .map_err(|e| PortalError::Invalid(e.to_string()))?;
    keygate_core::names::check_client_name(f.name.trim())
        .map_err(|e| PortalError::Invalid(e.to_string()))?;
    admit(&state, &email, source).await?;
    if let Some(user) = store(state.store.active_portal_user(&email)).await? {
        let bg = state.clone();
        tokio::spawn(async move { send_link(&bg, &user.id, &user.email).await });
        return sent(&state, &visit, &email);
    }
    let config = &state.gateway().config;
    let actor = Actor(format!("portal-sign-up:{email}"));
    let new = NewClient {
        name: f.name.trim().to_owned(),
        plan: config.profile.default_plan.to_string(),
        scopes: config
            .selfservice
            .as_ref()
            .map(|s| s.scopes.clone())
            .unwrap_or_default(),
        ..NewClient::default()
    };
    let client = match store(state.store.create_client(&actor, new)).await {
        Ok(c) => c,
        // A taken name (or one the store refuses) is the visitor's to change.
        Err(PortalError::Invalid(_)) => {
            return Err(PortalError::Invalid(
                "That account name is taken or not allowed; choose another.".to_owned(),
            ))
        }
        Err(e) => return Err(e),
    };
    let user = store(
        state
            .store
            .ensure_portal_user(&actor, client.id.as_str(), &email),
    )
    .await?;
    tracing::info!(client = %client.id, user = %user.id, "Portal sign-up.");
    let bg = state.clone();
    tokio::spawn(async move { send_link(&bg, &user.id, &user.email).await });
    sent(&state, &visit, &email)
}
