//! Every refusal of the portal, mapped to a status and a short page in one place.

use std::future::Future;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_store::StoreError;

/// How long a store call may take before the page answers 503.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A portal request that could not be served as asked.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("not found")]
    NotFound,
    /// No live session: the visitor is sent to the sign-in page.
    #[error("sign-in needed")]
    SignInNeeded,
    #[error("the form's CSRF token is missing or wrong")]
    Csrf,
    /// Signed in, but this provider does not let customers do it.
    #[error("{0}")]
    Forbidden(String),
    /// The messaging broker failed; nothing was changed (the detail is logged, not shown).
    #[error("the messaging feed service is unavailable right now and nothing was changed; please try again in a few minutes")]
    BrokerUnavailable,
    #[error("{0}")]
    Invalid(String),
    #[error("too many sign-in attempts; try again later")]
    TooManyAttempts,
    /// Past `[portal] requests_per_source`; `retry_after` in whole seconds.
    #[error("too many requests from your address; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("this form is larger than the portal accepts")]
    TooLarge,
    #[error("the store is unavailable")]
    StoreUnavailable,
    #[error("the store refused: {0}")]
    Store(#[source] StoreError),
    #[error("a page could not be rendered: {0}")]
    Template(#[from] minijinja::Error),
}

impl From<StoreError> for PortalError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ClientNotFound(_) | StoreError::KeyNotFound(_) => PortalError::NotFound,
            StoreError::Unavailable(_) => PortalError::StoreUnavailable,
            StoreError::Invalid(n) => PortalError::Invalid(n.to_string()),
            e @ (StoreError::KeyRevoked(_)
            | StoreError::KeyExpired(..)
            | StoreError::ExpiryInPast(_)
            | StoreError::InvalidEmail(_)
            | StoreError::DuplicateClient(_)
            | StoreError::InvalidParent(_)) => PortalError::Invalid(e.to_string()),
            other => PortalError::Store(other),
        }
    }
}

impl From<keygate_amqp::AmqpError> for PortalError {
    fn from(e: keygate_amqp::AmqpError) -> Self {
        use keygate_amqp::AmqpError as A;
        match e {
            A::Store(e) => e.into(),
            A::NotProvisioned(_) | A::NotConfigured => PortalError::NotFound,
            A::ClientInactive(_) => PortalError::Invalid(
                "Your account is disabled; its messaging feed cannot be changed.".to_owned(),
            ),
            A::AlreadyProvisioned(_) => {
                PortalError::Invalid("Your account already has a messaging feed.".to_owned())
            }
            e if e.status() == 503 => {
                tracing::warn!(error = %e, code = e.code(), "A portal feed operation failed on the broker.");
                PortalError::BrokerUnavailable
            }
            // Naming conflicts are the operator's to settle; the customer gets the code only.
            e => {
                tracing::warn!(error = %e, code = e.code(), "A portal feed operation was refused.");
                PortalError::Invalid(format!(
                    "The messaging feed could not be set up here ({}); please ask your provider.",
                    e.code()
                ))
            }
        }
    }
}

/// A store call bounded by the portal's budget.
///
/// # Errors
/// The store's error as a [`PortalError`]; [`PortalError::StoreUnavailable`] on timeout.
pub(crate) async fn store<T>(
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, PortalError> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(r) => r.map_err(PortalError::from),
        Err(_) => Err(PortalError::StoreUnavailable),
    }
}

impl PortalError {
    fn status(&self) -> StatusCode {
        match self {
            PortalError::NotFound => StatusCode::NOT_FOUND,
            PortalError::SignInNeeded => StatusCode::SEE_OTHER,
            PortalError::Csrf | PortalError::Forbidden(_) => StatusCode::FORBIDDEN,
            PortalError::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PortalError::TooManyAttempts | PortalError::TooManyRequests { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            PortalError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            PortalError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::Store(_) | PortalError::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Escapes text for HTML (the error page is the one page rendered without a template, so it
/// can be shown when templates themselves fail).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::SEE_OTHER {
            return (status, [(header::LOCATION, "/sign-in")]).into_response();
        }
        let shown = match &self {
            PortalError::Store(e) => {
                tracing::error!(error = %e, code = e.code(), "A portal store call failed.");
                "Something went wrong on our side. Please try again.".to_owned()
            }
            PortalError::Template(e) => {
                tracing::error!(error = %e, "A portal page could not be rendered.");
                "Something went wrong on our side. Please try again.".to_owned()
            }
            PortalError::Csrf => {
                "This form has expired or was not sent from this site. Go back, reload the page and try again.".to_owned()
            }
            other => {
                let mut s = other.to_string();
                if let Some(first) = s.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                s
            }
        };
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><link rel=\"stylesheet\" href=\"/assets/portal.css\"><title>{code}</title></head><body><main><h1>{reason}</h1><p role=\"alert\">{msg}</p><p><a href=\"/\">Back</a></p></main></body></html>",
            code = status.as_u16(),
            reason = status.canonical_reason().unwrap_or("Error"),
            msg = escape(&shown),
        );
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response();
        if let PortalError::TooManyRequests { retry_after } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        }
        resp
    }
}
