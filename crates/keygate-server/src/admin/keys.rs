//! `/v1/keys`: issue, list, show, rotate, revoke, disable, enable, set expiry and change a
//! key's restrictions (narrowed scopes, CIDR allowlist, metadata, external id).
//!
//! Keys are issued with the gateway's own issuer, so they match the deployment's key format and
//! digest. The plaintext is in the create and rotate responses only; it is never logged, and
//! every other answer shows the masked hint.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use keygate_core::duration::parse_duration;
use keygate_core::key_restrictions::{check_external_id, parse_cidr, MAX_CIDRS, MAX_KEY_SCOPES};
use keygate_core::names::check_label;
use keygate_core::{
    ApiKey, KeyId, KeyRestrictions, KeyState, RestrictionError, RestrictionsChange, Scope,
    Timestamp,
};
use keygate_store::{IssuedKey, KeyFilter, NewKey, Once};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::AdminError;
use super::extract::{JsonBody, KeyPath, Params};
use super::idempotency::IdempotencyKey;
use super::openapi as doc;
use super::{instant, page, page_limit, store_call, AdminState};

/// A new key for a client.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[schema(as = KeyCreate)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    /// The owning client's name or id.
    client: String,
    /// Empty when absent.
    #[serde(default)]
    label: String,
    /// When the key stops working (RFC 3339); never when absent or `null`.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[serde(flatten)]
    restrictions: RestrictionsBody,
}

/// A key's restrictions as a body carries them (issue 22). In a create, absent fields leave
/// the key unrestricted; in a `PATCH`, absent fields are kept and `null` clears.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub(crate) struct RestrictionsBody {
    /// Narrow the key to these of its client's scopes (never more: a scope the client lacks is
    /// refused `invalid_value`). `null`: all of the client's scopes.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<String>>)]
    scopes: Option<Option<Vec<String>>>,
    /// Where the key may be used from: IPv4/IPv6 CIDRs or addresses, at most 32; `/0` is
    /// refused. `[]` or `null`: anywhere.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<String>>, example = json!(["203.0.113.0/24", "2001:db8::/32"]))]
    allowed_cidrs: Option<Option<Vec<String>>>,
    /// The operator's labels: at most 16, names of 1 to 64 bytes of `[A-Za-z0-9_.:-]`, values
    /// of at most 256 bytes of printable text. `{}` or `null` clears them.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    metadata: Option<Option<std::collections::BTreeMap<String, String>>>,
    /// The operator's own id for the key (1 to 128 bytes, printable, no spaces), unique among
    /// the client's keys that are not revoked. `null` clears it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    external_id: Option<Option<String>>,
}

/// A field that is present (`null` included) is `Some`; an absent one stays `None` by default.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A key's restrictions as a body changes them.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[schema(as = KeyRestrictionsChange)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchBody {
    #[serde(flatten)]
    restrictions: RestrictionsBody,
}

impl RestrictionsBody {
    /// The change the body asks for, every value parsed and bounded (`RestrictionsChange`).
    pub(crate) fn change(&self) -> Result<RestrictionsChange, AdminError> {
        let bad = |e: RestrictionError| AdminError::invalid_value(e.field(), e.to_string());
        let scopes = self
            .scopes
            .as_ref()
            .map(|s| {
                s.as_ref()
                    .map(|list| {
                        if list.len() > MAX_KEY_SCOPES {
                            return Err(bad(RestrictionError::TooManyScopes));
                        }
                        list.iter()
                            .map(|v| {
                                Scope::new(v)
                                    .map_err(|e| AdminError::invalid_value("scopes", e.to_string()))
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()
            })
            .transpose()?;
        let allowed_cidrs = self
            .allowed_cidrs
            .as_ref()
            .map(|c| {
                let list = c.as_deref().unwrap_or_default();
                if list.len() > MAX_CIDRS {
                    return Err(bad(RestrictionError::TooManyCidrs));
                }
                list.iter()
                    .map(|v| parse_cidr(v).map_err(bad))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let change = RestrictionsChange {
            scopes,
            allowed_cidrs,
            metadata: self.metadata.clone().map(Option::unwrap_or_default),
            external_id: self.external_id.clone(),
        };
        // Bounds are checked here too, so a refused body never reaches the store.
        change.apply(&KeyRestrictions::default()).map_err(bad)?;
        Ok(change)
    }
}

impl PatchBody {
    /// The change; an empty body is refused (it would change nothing and audit a change).
    pub(crate) fn validate(self) -> Result<RestrictionsChange, AdminError> {
        let change = self.restrictions.change()?;
        if change.is_empty() {
            return Err(AdminError::invalid_value(
                "body",
                "name at least one of scopes, allowed_cidrs, metadata, external_id",
            ));
        }
        Ok(change)
    }
}

/// How a rotation treats the old key.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[schema(as = KeyRotate)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    /// How long the old key keeps working, e.g. `1h`; revoked at once when absent.
    #[schema(example = "1h")]
    grace: Option<String>,
}

/// `expires_at` must be present: an instant, or `null` for none.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = KeyExpiry)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpiryBody {
    /// A future instant (RFC 3339), or `null` for no expiry.
    #[serde(deserialize_with = "required")]
    #[schema(required = true, format = DateTime)]
    expires_at: Option<String>,
}

fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only keys of this client (name or id).
    client: Option<String>,
    /// Only keys in this state.
    #[param(value_type = Option<doc::KeyState>)]
    state: Option<String>,
    /// Only keys with this external id (one per client among keys not revoked; combine with
    /// `client` for exactly one).
    #[param(max_length = 128)]
    external_id: Option<String>,
    /// The previous page's `next_after` (a key id).
    #[param(pattern = "^key_[0-9a-z]{16}$")]
    after: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

impl CreateBody {
    /// Checks the label; the expiry and restrictions it asks for.
    pub(crate) fn validate(&self) -> Result<(Option<Timestamp>, KeyRestrictions), AdminError> {
        check_label(&self.label).map_err(|e| AdminError::invalid_value("label", e.to_string()))?;
        let restrictions = self
            .restrictions
            .change()?
            .apply(&KeyRestrictions::default())
            .map_err(|e| AdminError::invalid_value(e.field(), e.to_string()))?;
        Ok((
            instant("expires_at", self.expires_at.clone())?,
            restrictions,
        ))
    }
}

impl RotateBody {
    /// How long the old key keeps working (`None`: revoked at once).
    pub(crate) fn grace(self) -> Result<Option<Duration>, AdminError> {
        self.grace
            .map(|g| {
                parse_duration(&g).map_err(|e| AdminError::invalid_value("grace", e.to_string()))
            })
            .transpose()
    }
}

impl ExpiryBody {
    /// The new expiry (`None`: never).
    pub(crate) fn validate(self) -> Result<Option<Timestamp>, AdminError> {
        instant("expires_at", self.expires_at)
    }
}

/// The issued-key document as JSON (it borrows from values local to the handler).
fn issued(doc: &IssuedKey<'_>) -> Value {
    serde_json::to_value(doc).expect("the issued-key document serializes")
}

/// `POST /v1/keys` → 201 with the plaintext key, shown this once.
#[utoipa::path(
    post,
    path = "/v1/keys",
    operation_id = "create_key",
    tag = "keys",
    summary = "Issue a key",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: a retried request with the same key returns the first answer (with `Idempotent-Replayed: true`) and issues no second key. 1 to 255 visible ASCII characters, e.g. a UUID; kept 24 hours per admin token.", max_length = 255, min_length = 1)),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new key, with its plaintext shown this once.", body = doc::IssuedKey),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`), or the Idempotency-Key is malformed (`invalid_idempotency_key`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`, `expiry_in_past`), or the Idempotency-Key was used with another request (`idempotency_key_reused`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such client (`client_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn create(
    State(state): State<AdminState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, AdminError> {
    let (expires_at, restrictions) = body.validate()?;
    let guard = idempotency.guard(
        &state.gateway().config.issuer.digester,
        &caller.actor,
        "create_key",
        &body,
    );
    let owner = store_call(state.store.client(&body.client)).await?;
    let (secret, material) = state.gateway().config.issuer.issue();
    let new = NewKey {
        material,
        label: body.label,
        expires_at,
        restrictions,
    };
    let answer =
        |key: &keygate_core::ApiKey| issued(&IssuedKey::created(key, &secret, &owner.name));
    let Some(guard) = guard else {
        let key = store_call(
            state
                .store
                .create_key(&caller.actor, owner.id.as_str(), new),
        )
        .await?;
        return Ok((StatusCode::CREATED, Json(answer(&key))).into_response());
    };
    let mut first = None;
    let once = store_call(state.store.create_key_once(
        &caller.actor,
        owner.id.as_str(),
        new,
        &guard.claim,
        |key| {
            let body = answer(key);
            let sealed = guard.seal(StatusCode::CREATED, body.to_string().as_bytes());
            first = Some(body);
            sealed
        },
    ))
    .await?;
    match (once, first) {
        (Once::Done(_), Some(body)) => Ok((StatusCode::CREATED, Json(body)).into_response()),
        (Once::Replayed(replay), _) => guard.replay(&replay),
        (Once::Done(_), None) => Err(AdminError::Internal("idempotency_seal_missing")),
    }
}

/// `GET /v1/keys?client=&state=&after=&limit=` → a page of masked keys in creation order.
#[utoipa::path(
    get,
    path = "/v1/keys",
    operation_id = "list_keys",
    tag = "keys",
    summary = "List keys in creation order",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of masked keys.", body = doc::KeyPage),
        (status = 404, description = "`client` names no client (`client_not_found`), or `after` names no key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 400, description = "An unknown query parameter (`invalid_query`), or `after` is not a key id (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A query parameter is out of range (`invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AdminState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Value>, AdminError> {
    let limit = page_limit(q.limit.as_deref())?;
    let key_state = q
        .state
        .map(|s| {
            KeyState::parse(&s).ok_or_else(|| {
                AdminError::invalid_value(
                    "state",
                    format!("`{s}` is not one of active, disabled, revoked"),
                )
            })
        })
        .transpose()?;
    let after = q
        .after
        .map(|a| KeyId::parse(&a).map_err(|e| AdminError::InvalidId(e.to_string())))
        .transpose()?;
    if let Some(e) = &q.external_id {
        check_external_id(e)
            .map_err(|e| AdminError::invalid_value("external_id", e.to_string()))?;
    }
    let filter = KeyFilter {
        client: q.client,
        state: key_state,
        external_id: q.external_id,
        after,
        limit: limit + 1,
    };
    let rows = store_call(state.store.list_keys(&filter)).await?;
    let (items, next) = page(rows, limit, |k| k.id.clone());
    Ok(Json(json!({ "items": items, "next_after": next })))
}

/// `GET /v1/keys/{id}` (masked).
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    operation_id = "show_key",
    tag = "keys",
    summary = "Show a key (masked)",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn show(
    State(state): State<AdminState>,
    KeyPath(id): KeyPath,
) -> Result<Json<ApiKey>, AdminError> {
    Ok(Json(store_call(state.store.key(&id)).await?))
}

/// `POST /v1/keys/{id}/rotate` with an optional `{"grace": "1h"}`: a new key replaces this one,
/// which is revoked at once or keeps working for the grace period.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/rotate",
    operation_id = "rotate_key",
    tag = "keys",
    summary = "Replace a key with a new one",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: a retried request with the same key returns the first answer (with `Idempotent-Replayed: true`) and issues no second key. 1 to 255 visible ASCII characters, e.g. a UUID; kept 24 hours per admin token.", max_length = 255, min_length = 1)),
    request_body(content = Option<RotateBody>, description = "Optional; without it the old key is revoked at once."),
    responses(
        (status = 201, description = "The new key, with its plaintext shown this once.", body = doc::RotatedKey),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`), the key id is malformed (`invalid_id`), or the Idempotency-Key is malformed (`invalid_idempotency_key`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`, `expiry_in_past`), or the Idempotency-Key was used with another request (`idempotency_key_reused`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`) or expired (`key_expired`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn rotate(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
    idempotency: IdempotencyKey,
    body: Option<JsonBody<RotateBody>>,
) -> Result<Response, AdminError> {
    let body = body.map(|JsonBody(b)| b).unwrap_or_default();
    let guard = idempotency.guard(
        &state.gateway().config.issuer.digester,
        &caller.actor,
        &format!("rotate_key {id}"),
        &body,
    );
    let grace = body.grace()?;
    // Everything the answer needs is read first: once the rotation commits, the plaintext must
    // reach the caller whatever else happens.
    let old = store_call(state.store.key(&id)).await?;
    let owner = store_call(state.store.client(old.client_id.as_str())).await?;
    let (secret, material) = state.gateway().config.issuer.issue();
    let answer = |r: &keygate_store::Rotation| issued(&IssuedKey::rotated(r, &secret, &owner.name));
    let Some(guard) = guard else {
        let rotation =
            store_call(state.store.rotate_key(&caller.actor, &id, material, grace)).await?;
        return Ok((StatusCode::CREATED, Json(answer(&rotation))).into_response());
    };
    // A retry finds the old key already rotated: its record is looked up before the key's
    // state is checked, inside the same transaction.
    let mut first = None;
    let once = store_call(state.store.rotate_key_once(
        &caller.actor,
        &id,
        material,
        grace,
        &guard.claim,
        |rotation| {
            let body = answer(rotation);
            let sealed = guard.seal(StatusCode::CREATED, body.to_string().as_bytes());
            first = Some(body);
            sealed
        },
    ))
    .await?;
    match (once, first) {
        (Once::Done(_), Some(body)) => Ok((StatusCode::CREATED, Json(body)).into_response()),
        (Once::Replayed(replay), _) => guard.replay(&replay),
        (Once::Done(_), None) => Err(AdminError::Internal("idempotency_seal_missing")),
    }
}

async fn set_state(
    state: &AdminState,
    caller: &Caller,
    id: &KeyId,
    to: KeyState,
) -> Result<Json<ApiKey>, AdminError> {
    let key = store_call(state.store.set_key_state(&caller.actor, id, to)).await?;
    Ok(Json(key))
}

/// `POST /v1/keys/{id}/revoke`: final.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/revoke",
    operation_id = "revoke_key",
    tag = "keys",
    summary = "Revoke a key (final)",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`) or expired (`key_expired`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn revoke(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
) -> Result<Json<ApiKey>, AdminError> {
    set_state(&state, &caller, &id, KeyState::Revoked).await
}

/// `POST /v1/keys/{id}/disable`: refused until enabled again.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/disable",
    operation_id = "disable_key",
    tag = "keys",
    summary = "Disable a key",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`) or expired (`key_expired`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn disable(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
) -> Result<Json<ApiKey>, AdminError> {
    set_state(&state, &caller, &id, KeyState::Disabled).await
}

/// `POST /v1/keys/{id}/enable`.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/enable",
    operation_id = "enable_key",
    tag = "keys",
    summary = "Enable a key",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`) or expired (`key_expired`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn enable(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
) -> Result<Json<ApiKey>, AdminError> {
    set_state(&state, &caller, &id, KeyState::Active).await
}

/// `PUT /v1/keys/{id}/expiry` with `{"expires_at": "2026-12-31T23:59:59Z"}` or `null`.
#[utoipa::path(
    put,
    path = "/v1/keys/{id}/expiry",
    operation_id = "set_key_expiry",
    tag = "keys",
    summary = "Set or clear a key's expiry",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    request_body = ExpiryBody,
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`), or the key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing, unknown or invalid (`invalid_body`, `invalid_value`, `expiry_in_past`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`) or expired (`key_expired`), or the store refused the change (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn set_expiry(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
    JsonBody(body): JsonBody<ExpiryBody>,
) -> Result<Json<ApiKey>, AdminError> {
    let at = body.validate()?;
    let key = store_call(state.store.set_key_expiry(&caller.actor, &id, at)).await?;
    Ok(Json(key))
}

/// `PATCH /v1/keys/{id}` with any of `scopes`, `allowed_cidrs`, `metadata`, `external_id`:
/// each present field replaces the key's (`null` clears). Audited as `key.restrict` and
/// followed by every node through the change feed.
#[utoipa::path(
    patch,
    path = "/v1/keys/{id}",
    operation_id = "restrict_key",
    tag = "keys",
    summary = "Change a key's restrictions",
    params(("id" = String, Path, description = "The key id (`key_...`).", pattern = "^key_[0-9a-z]{16}$")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The key, masked.", body = doc::ApiKey),
        (status = 400, description = "The body is not JSON (`malformed_json`, `unreadable_body`), or the key id is malformed (`invalid_id`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB (`body_too_large`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is unknown or invalid, out of bounds, or a scope the client lacks (`invalid_body`, `invalid_value`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key (`key_not_found`).", body = doc::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked (`key_revoked`), or another key of the client has the external id (`conflict`).", body = doc::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn restrict(
    State(state): State<AdminState>,
    caller: Caller,
    KeyPath(id): KeyPath,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Json<ApiKey>, AdminError> {
    let change = body.validate()?;
    let key = store_call(
        state
            .store
            .set_key_restrictions(&caller.actor, &id, &change),
    )
    .await?;
    Ok(Json(key))
}
