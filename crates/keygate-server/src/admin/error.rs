//! Every way an admin request can fail, and the one place each becomes an RFC 9457 problem.
//!
//! Handlers and extractors return [`AdminError`]; its `code()` is the stable, machine-readable
//! name clients match on, its `Display` the `detail` people read. Store errors and axum's
//! rejections are mapped here and nowhere else, so a new failure cannot leak as a bare 500.

use crate::state::reload::ReloadError;
use axum::extract::rejection::{
    BytesRejection, FailedToBufferBody, JsonRejection, PathRejection, QueryRejection,
};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;
use keygate_core::{KeyId, NameError, Timestamp};
use keygate_store::StoreError;
use serde_json::json;

/// What `detail` says when the store cannot be reached.
pub const STORE_UNAVAILABLE_DETAIL: &str =
    "The store is unreachable; changes cannot be made right now. The gateway keeps serving.";

/// What `detail` says when the store cannot grow.
pub const STORE_FULL_DETAIL: &str =
    "The store is full (its disk or size limit is reached); changes cannot be made until space is freed. The gateway keeps serving.";

/// A refused or failed admin request.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("This endpoint needs an admin token: `Authorization: Bearer kgadm_...`.")]
    MissingToken,
    #[error("The Authorization header does not hold an admin token (`Bearer kgadm_...`).")]
    MalformedToken,
    #[error("The admin token is unknown or revoked.")]
    UnknownToken,
    #[error("This admin token is read-only; it cannot make changes.")]
    ReadOnlyToken,
    #[error("{0}.")]
    MalformedJson(String),
    #[error("{0}.")]
    InvalidBody(String),
    #[error("The body must be JSON, sent with `Content-Type: application/json`.")]
    UnsupportedMediaType,
    #[error("The body is larger than the 64 KiB limit.")]
    BodyTooLarge,
    #[error("{0}.")]
    UnreadableBody(String),
    #[error("{0}.")]
    InvalidId(String),
    #[error("{0}.")]
    InvalidQuery(String),
    #[error("Field `{field}`: {reason}.")]
    InvalidValue { field: String, reason: String },
    #[error("No client named or numbered `{0}`.")]
    ClientNotFound(String),
    #[error("No key `{0}`.")]
    KeyNotFound(String),
    #[error("No suspension `{0}`.")]
    SuspensionNotFound(String),
    #[error("No webhook delivery {0}.")]
    DeliveryNotFound(i64),
    #[error("A client named `{0}` already exists.")]
    DuplicateClient(String),
    #[error("Key {0} is revoked; a revoked key can never be used or changed again.")]
    KeyRevoked(KeyId),
    #[error("Key {0} expired at {1}; give it a future expiry first or create a new key.")]
    KeyExpired(KeyId, Timestamp),
    #[error(
        "Expiry {0} is in the past; give a future instant, or revoke or disable the key instead."
    )]
    ExpiryInPast(Timestamp),
    #[error("The store refused the change: {0}.")]
    Conflict(String),
    #[error("{STORE_UNAVAILABLE_DETAIL}")]
    StoreUnavailable,
    #[error("{STORE_FULL_DETAIL}")]
    StoreFull,
    #[error("No plan named `{0}` in this deployment's configuration.")]
    PlanNotFound(String),
    #[error("Invalid Idempotency-Key: {0}.")]
    InvalidIdempotencyKey(&'static str),
    #[error(
        "This Idempotency-Key was used with a different request; use a new key for a new request."
    )]
    IdempotencyKeyReused,
    #[error("No such admin endpoint.")]
    NotFound,
    #[error("This endpoint does not accept that method.")]
    MethodNotAllowed,
    /// A messaging feed operation failed; the feed crate's error says which step and why.
    #[error("{0}")]
    Feed(#[from] keygate_amqp::AmqpError),
    /// A configuration reload that did not happen; the configuration in force keeps serving.
    #[error("{0}")]
    Reload(#[from] crate::state::reload::ReloadError),
    #[error("The customer portal is not configured on this node (no [portal] listen).")]
    PortalNotConfigured,
    #[error("The sign-in link could not be mailed: {0}.")]
    MailFailed(String),
    /// A store failure no request can cause (corrupt row, schema); logged where it is made.
    #[error("The store failed unexpectedly ({0}); see the gateway log.")]
    Internal(&'static str),
}

impl AdminError {
    /// A value that is well-formed JSON but not acceptable.
    pub fn invalid_value(field: impl Into<String>, reason: impl Into<String>) -> AdminError {
        AdminError::InvalidValue {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        use AdminError as E;
        match self {
            E::MissingToken | E::MalformedToken | E::UnknownToken => StatusCode::UNAUTHORIZED,
            E::ReadOnlyToken => StatusCode::FORBIDDEN,
            E::MalformedJson(_)
            | E::UnreadableBody(_)
            | E::InvalidId(_)
            | E::InvalidQuery(_)
            | E::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            E::InvalidBody(_)
            | E::InvalidValue { .. }
            | E::ExpiryInPast(_)
            | E::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            E::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            E::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            E::ClientNotFound(_)
            | E::KeyNotFound(_)
            | E::SuspensionNotFound(_)
            | E::DeliveryNotFound(_)
            | E::PlanNotFound(_)
            | E::NotFound => StatusCode::NOT_FOUND,
            E::DuplicateClient(_) | E::KeyRevoked(_) | E::KeyExpired(..) | E::Conflict(_) => {
                StatusCode::CONFLICT
            }
            E::StoreUnavailable | E::StoreFull => StatusCode::SERVICE_UNAVAILABLE,
            E::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            E::Feed(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            E::Reload(ReloadError::NoFile) => StatusCode::CONFLICT,
            E::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::PortalNotConfigured => StatusCode::NOT_FOUND,
            E::MailFailed(_) => StatusCode::BAD_GATEWAY,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        use AdminError as E;
        match self {
            E::MissingToken => "missing_token",
            E::MalformedToken => "malformed_token",
            E::UnknownToken => "unknown_token",
            E::ReadOnlyToken => "read_only_token",
            E::MalformedJson(_) => "malformed_json",
            E::InvalidBody(_) => "invalid_body",
            E::UnsupportedMediaType => "unsupported_media_type",
            E::BodyTooLarge => "body_too_large",
            E::UnreadableBody(_) => "unreadable_body",
            E::InvalidId(_) => "invalid_id",
            E::InvalidQuery(_) => "invalid_query",
            E::InvalidValue { .. } => "invalid_value",
            E::ClientNotFound(_) => "client_not_found",
            E::KeyNotFound(_) => "key_not_found",
            E::SuspensionNotFound(_) => "suspension_not_found",
            E::DeliveryNotFound(_) => "delivery_not_found",
            E::DuplicateClient(_) => "duplicate_client",
            E::KeyRevoked(_) => "key_revoked",
            E::KeyExpired(..) => "key_expired",
            E::ExpiryInPast(_) => "expiry_in_past",
            E::Conflict(_) => "conflict",
            E::StoreUnavailable => "store_unavailable",
            E::StoreFull => "store_full",
            E::PlanNotFound(_) => "plan_not_found",
            E::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            E::IdempotencyKeyReused => "idempotency_key_reused",
            E::NotFound => "not_found",
            E::MethodNotAllowed => "method_not_allowed",
            E::Feed(e) => e.code(),
            E::Reload(ReloadError::NoFile) => "no_config_file",
            E::Reload(ReloadError::Unreadable { .. }) => "config_unreadable",
            E::Reload(ReloadError::Invalid(_)) => "invalid_config",
            E::Reload(ReloadError::Tls(_)) => "tls_files_refused",
            E::PortalNotConfigured => "portal_not_configured",
            E::MailFailed(_) => "mail_failed",
            E::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "code": self.code(),
        });
        if let AdminError::InvalidValue { field, .. } = &self {
            body["field"] = json!(field);
        }
        if let AdminError::Reload(ReloadError::Invalid(errors)) = &self {
            // Each problem with its file and line, as `keygate check-config` prints them.
            let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            body["errors"] = json!(list);
        }
        tracing::debug!(
            status = status.as_u16(),
            code = self.code(),
            "Admin request refused."
        );
        let mut resp = (status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
            );
        }
        resp
    }
}

/// The field a name error is about.
fn name_field(e: &NameError) -> &'static str {
    match e {
        NameError::ClientName(_) => "name",
        NameError::Label(_) => "label",
        NameError::Plan(_) => "plan",
        NameError::Slug(_) => "slug",
        NameError::Notice => "message",
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ClientNotFound(c) => AdminError::ClientNotFound(c),
            StoreError::KeyNotFound(k) => AdminError::KeyNotFound(k),
            StoreError::SuspensionNotFound(id) => AdminError::SuspensionNotFound(id),
            e @ StoreError::UntilInPast(_) => AdminError::invalid_value("until", e.to_string()),
            e @ StoreError::TooManySuspensions(_) => AdminError::Conflict(e.to_string()),
            StoreError::DeliveryNotFound(id) => AdminError::DeliveryNotFound(id),
            StoreError::DuplicateClient(c) => AdminError::DuplicateClient(c),
            StoreError::KeyRevoked(id) => AdminError::KeyRevoked(id),
            StoreError::KeyExpired(id, at) => AdminError::KeyExpired(id, at),
            StoreError::ExpiryInPast(at) => AdminError::ExpiryInPast(at),
            StoreError::Invalid(n) => AdminError::invalid_value(name_field(&n), n.to_string()),
            StoreError::InvalidRestriction(r) => {
                AdminError::invalid_value(r.field(), r.to_string())
            }
            e @ StoreError::ScopeNotGranted(_) => {
                AdminError::invalid_value("scopes", e.to_string())
            }
            e @ StoreError::DuplicateExternalId(_) => AdminError::Conflict(e.to_string()),
            StoreError::InvalidQuota(m) => AdminError::invalid_value("add", m),
            StoreError::Conflict(m) => AdminError::Conflict(m),
            StoreError::InvalidParent(m) => AdminError::invalid_value("parent", m),
            StoreError::InvalidEmail(m) => AdminError::invalid_value("email", m),
            e @ StoreError::PortalUserTaken(_) => AdminError::Conflict(e.to_string()),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "The admin API cannot reach the store.");
                AdminError::StoreUnavailable
            }
            StoreError::Full(cause) => {
                tracing::error!(error = %cause, "The store is full; admin writes fail.");
                AdminError::StoreFull
            }
            other => {
                tracing::error!(error = %other, code = other.code(), "An admin store call failed.");
                AdminError::Internal(other.code())
            }
        }
    }
}

impl From<JsonRejection> for AdminError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => AdminError::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => AdminError::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => AdminError::UnsupportedMediaType,
            JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(
                FailedToBufferBody::LengthLimitError(_),
            )) => AdminError::BodyTooLarge,
            JsonRejection::BytesRejection(e) => AdminError::UnreadableBody(e.body_text()),
            other => AdminError::UnreadableBody(other.body_text()),
        }
    }
}

impl From<QueryRejection> for AdminError {
    fn from(r: QueryRejection) -> Self {
        AdminError::InvalidQuery(r.body_text())
    }
}

impl From<PathRejection> for AdminError {
    fn from(r: PathRejection) -> Self {
        AdminError::InvalidId(r.body_text())
    }
}
