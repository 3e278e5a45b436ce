//! The Keys page: every key of the client, masked; create, rotate and revoke.
//!
//! Each change is the store operation the admin API uses (`create_key`, `rotate_key`,
//! `set_key_state`), with the portal user as the audit actor, so it reaches every node through
//! the change feed. A new key's plaintext is in the answer to the POST that made it and nowhere
//! else: not in a redirect, a log line or the store.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use keygate_core::{ApiKey, KeyId, KeyState, SecretKey, Timestamp};
use keygate_store::NewKey;
use minijinja::{context, Value};
use serde::{Deserialize, Serialize};

use super::error::{store, PortalError};
use super::pages::{page, Pages};
use super::session::Signed;
use super::{actor, PortalState};

/// A key as the page shows it: masked. Serialized straight into the template's values (no
/// JSON value in between: building one per row was a fifth of a Keys page's time).
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    hint: &'a str,
    label: &'a str,
    created: String,
    last_used: String,
    expires: String,
    state: &'static str,
    live: bool,
}

fn row(k: &ApiKey, now: Timestamp) -> Row<'_> {
    let state = match k.state {
        KeyState::Active if k.expires_at.is_some_and(|at| at <= now) => "expired",
        KeyState::Active => "active",
        KeyState::Disabled => "disabled",
        KeyState::Revoked => "revoked",
    };
    Row {
        id: k.id.as_str(),
        hint: &k.hint,
        label: &k.label,
        created: day_time(Some(k.created_at)),
        last_used: day_time(k.last_used_at),
        expires: day_time(k.expires_at),
        state,
        live: state == "active",
    }
}

/// `2026-09-21 14:03 UTC`, or an empty string.
pub(crate) fn day_time(at: Option<Timestamp>) -> String {
    at.map(|t| {
        let s = t.to_rfc3339();
        format!("{} {} UTC", &s[..10], &s[11..16])
    })
    .unwrap_or_default()
}

/// A client's keys as read from the store, with their table rows rendered once for every page
/// that shows this listing: the rows were most of a Keys page's template time (21 keys: 36 of
/// 43 µs), and a listing is kept until anything is written (`super::cache`).
pub(crate) struct Listing {
    keys: Vec<ApiKey>,
    rows: OnceLock<Rows>,
}

/// Rendered rows, and the first moment they are wrong: an active key's expiry, which turns its
/// state to "expired" without a write.
struct Rows {
    html: Value,
    until: Option<Timestamp>,
}

impl Listing {
    pub(crate) fn new(keys: Vec<ApiKey>) -> Listing {
        Listing {
            keys,
            rows: OnceLock::new(),
        }
    }

    /// The table's rows at `now`: as rendered for an earlier page while no key has expired
    /// since, else rendered afresh (and kept, if none was yet).
    fn rows(&self, pages: &Pages, now: Timestamp) -> Result<Value, PortalError> {
        let kept = self.rows.get();
        if let Some(kept) = kept.filter(|k| k.until.is_none_or(|until| now < until)) {
            return Ok(kept.html.clone());
        }
        let rows = self.render(pages, now)?;
        let html = rows.html.clone();
        // Kept only if none was: rows past an expiry are rendered per page until the listing
        // is read again (at most `super::cache::MAX_AGE`). Two first pages at once render the
        // same markup; either is kept.
        let _ = self.rows.set(rows);
        Ok(html)
    }

    fn render(&self, pages: &Pages, now: Timestamp) -> Result<Rows, PortalError> {
        // Every key, newest first; revoked ones stay listed (masked, no actions) so the
        // customer sees what stopped and when it was made.
        let rows: Vec<Row<'_>> = self.keys.iter().rev().map(|k| row(k, now)).collect();
        let until = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .filter_map(|k| k.expires_at)
            .filter(|&at| at > now)
            .min();
        Ok(Rows {
            html: pages.render_fragment("key_rows.html", context! { keys => rows })?,
            until,
        })
    }
}

/// The signed-in client's keys: by its id, which the session's query found enabled (one
/// query per page less than a listing by name or id), or as read for an earlier page while
/// nothing has been written since (`super::cache`).
async fn client_keys(state: &PortalState, signed: &Signed) -> Result<Arc<Listing>, PortalError> {
    let client = &signed.session.user.client_id;
    let stamp = state.stamp();
    if let Some(listing) = state.cache.keys(client, stamp) {
        return Ok(listing);
    }
    let listing = Arc::new(Listing::new(
        store(state.store.keys_of_client(client)).await?,
    ));
    state
        .cache
        .keep_keys(client.clone(), stamp, Arc::clone(&listing));
    Ok(listing)
}

/// The key `id` if it belongs to the signed-in client; any other id is "not found".
async fn own_key(state: &PortalState, signed: &Signed, id: &str) -> Result<ApiKey, PortalError> {
    let id = KeyId::parse(id).map_err(|_| PortalError::NotFound)?;
    let key = store(state.store.key(&id)).await?;
    if key.client_id != signed.session.user.client_id {
        return Err(PortalError::NotFound);
    }
    Ok(key)
}

/// Renders the Keys page, with `shown` (a key just made, in full) when there is one.
async fn keys_page(
    state: &PortalState,
    signed: &Signed,
    status: StatusCode,
    shown: Option<(&ApiKey, &SecretKey, &str)>,
) -> Result<Response, PortalError> {
    let now = state.gateway().clock.now();
    let rows = client_keys(state, signed).await?.rows(&state.pages, now)?;
    let shown = shown.map(|(k, secret, note)| {
        context! { key => secret.expose(), label => k.label.as_str(), note => note }
    });
    page(
        state,
        &signed.visit,
        Some(&signed.session.user.email),
        status,
        "keys.html",
        context! { rows => rows, shown => shown, rotate_grace => state.settings.rotate_grace.is_some() },
    )
}

/// `GET /keys`.
pub(crate) async fn list(
    State(state): State<PortalState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    keys_page(&state, &signed, StatusCode::OK, None).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label: String,
    /// `YYYY-MM-DD` (the end of that day, UTC) or empty.
    #[serde(default)]
    expires: String,
}

/// `POST /keys`: a new key, shown once in the answer.
pub(crate) async fn create(
    State(state): State<PortalState>,
    signed: Signed,
    Form(f): Form<CreateForm>,
) -> Result<Response, PortalError> {
    signed.visit.check(&f.csrf)?;
    let label = f.label.trim().to_owned();
    keygate_core::names::check_label(&label).map_err(|e| PortalError::Invalid(e.to_string()))?;
    let expires_at = match f.expires.trim() {
        "" => None,
        day => Some(
            Timestamp::parse_rfc3339(&format!("{day}T23:59:59Z")).map_err(|_| {
                PortalError::Invalid(format!("`{day}` is not a date like 2027-01-31"))
            })?,
        ),
    };
    let (secret, material) = state.gateway().config.issuer.issue();
    let user = &signed.session.user;
    let key = store(state.store.create_key(
        &actor(&user.id, &user.email),
        user.client_id.as_str(),
        NewKey {
            material,
            label,
            expires_at,
            restrictions: Default::default(),
        },
    ))
    .await?;
    tracing::info!(key = %key.id, user = %user.id, "Portal key created.");
    crate::selfservice::caught_up(&state.gateway(), &state.store).await;
    keys_page(
        &state,
        &signed,
        StatusCode::CREATED,
        Some((&key, &secret, "created")),
    )
    .await
}

/// `GET /keys/{id}/rotate`: the two modes, explained, with their buttons.
pub(crate) async fn rotate_form(
    State(state): State<PortalState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let key = own_key(&state, &signed, &id).await?;
    let grace = state
        .settings
        .rotate_grace
        .map(keygate_core::duration::format_duration);
    page(
        &state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "rotate.html",
        context! { key => row(&key, state.gateway().clock.now()), grace => grace },
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct RotateForm {
    #[serde(default)]
    csrf: String,
    /// `now` (the old key stops at once) or `grace` (it keeps working for the operator's grace).
    #[serde(default)]
    mode: String,
}

/// `POST /keys/{id}/rotate`: a new key with the same label; the old one stops now or after the
/// grace the operator allows.
pub(crate) async fn rotate(
    State(state): State<PortalState>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<RotateForm>,
) -> Result<Response, PortalError> {
    signed.visit.check(&f.csrf)?;
    let key = own_key(&state, &signed, &id).await?;
    let grace: Option<Duration> = match f.mode.as_str() {
        "now" | "" => None,
        "grace" => Some(state.settings.rotate_grace.ok_or_else(|| {
            PortalError::Invalid("This provider does not allow a grace period.".to_owned())
        })?),
        other => {
            return Err(PortalError::Invalid(format!(
                "`{other}` is not a rotation mode"
            )))
        }
    };
    let (secret, material) = state.gateway().config.issuer.issue();
    let user = &signed.session.user;
    let rotation = store(state.store.rotate_key(
        &actor(&user.id, &user.email),
        &key.id,
        material,
        grace,
    ))
    .await?;
    tracing::info!(old = %rotation.old.id, new = %rotation.new.id, user = %user.id, "Portal key rotated.");
    crate::selfservice::caught_up(&state.gateway(), &state.store).await;
    let note = match rotation.old_valid_until() {
        Some(until) if grace.is_some() => {
            format!("rotated; the old key works until {}", day_time(Some(until)))
        }
        _ => "rotated; the old key has stopped working".to_owned(),
    };
    keys_page(
        &state,
        &signed,
        StatusCode::CREATED,
        Some((&rotation.new, &secret, &note)),
    )
    .await
}

/// `GET /keys/{id}/revoke`: the confirmation page.
pub(crate) async fn revoke_form(
    State(state): State<PortalState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let key = own_key(&state, &signed, &id).await?;
    page(
        &state,
        &signed.visit,
        Some(&signed.session.user.email),
        StatusCode::OK,
        "revoke.html",
        context! { key => row(&key, state.gateway().clock.now()) },
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /keys/{id}/revoke`: the key stops working for good.
pub(crate) async fn revoke(
    State(state): State<PortalState>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Result<Response, PortalError> {
    signed.visit.check(&f.csrf)?;
    let key = own_key(&state, &signed, &id).await?;
    let user = &signed.session.user;
    store(
        state
            .store
            .set_key_state(&actor(&user.id, &user.email), &key.id, KeyState::Revoked),
    )
    .await?;
    tracing::info!(key = %key.id, user = %user.id, "Portal key revoked.");
    crate::selfservice::caught_up(&state.gateway(), &state.store).await;
    keys_page(&state, &signed, StatusCode::OK, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::{ClientId, KeyDigest};

    fn key(id: &str, label: &str, state: KeyState, expires_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: KeyId::parse(id).unwrap(),
            client_id: ClientId::parse("cli_0123456789abcdef").unwrap(),
            digest: KeyDigest([0; 32]),
            hint: "kg_ab…yz".into(),
            label: label.into(),
            state,
            expires_at: expires_at.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(0),
            rotated_at: None,
            replaced_by: None,
            last_used_at: None,
            restrictions: Default::default(),
        }
    }

    #[test]
    fn rows_are_rendered_once_and_again_when_a_key_expires() {
        let pages = Pages::for_tests("Bench");
        let listing = Listing::new(vec![
            key(
                "key_0000000000000001",
                "<b>prod</b>",
                KeyState::Active,
                None,
            ),
            key("key_0000000000000002", "ci", KeyState::Active, Some(10_000)),
            key(
                "key_0000000000000003",
                "old",
                KeyState::Revoked,
                Some(5_000),
            ),
        ]);
        let first = listing.rows(&pages, Timestamp::from_millis(1_000)).unwrap();
        let html = first.as_str().unwrap().to_owned();
        // Newest first, escaped, actions only on live keys.
        assert!(
            html.find("ci").unwrap() < html.find("&lt;b&gt;prod").unwrap(),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");
        assert_eq!(html.matches(">Rotate</a>").count(), 2, "{html}");
        assert_eq!(html.matches("<td>revoked</td>").count(), 1, "{html}");
        // Kept: the same markup, not rendered again, until the next expiry.
        let again = listing.rows(&pages, Timestamp::from_millis(9_999)).unwrap();
        assert!(std::ptr::eq(
            again.as_str().unwrap(),
            first.as_str().unwrap()
        ));
        assert_eq!(
            listing.rows.get().unwrap().until,
            Some(Timestamp::from_millis(10_000))
        );
        // At the expiry the row is "expired" without any write.
        let after = listing
            .rows(&pages, Timestamp::from_millis(10_000))
            .unwrap();
        let after = after.as_str().unwrap();
        assert_eq!(after.matches("<td>expired</td>").count(), 1, "{after}");
        assert_eq!(after.matches(">Rotate</a>").count(), 1, "{after}");
    }

    #[test]
    fn an_empty_listing_says_so() {
        let pages = Pages::for_tests("Bench");
        let rows = Listing::new(Vec::new())
            .rows(&pages, Timestamp::from_millis(0))
            .unwrap();
        assert!(rows.as_str().unwrap().contains("No keys yet."));
    }
}
