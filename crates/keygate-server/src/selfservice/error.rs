//! Why a self-service request is refused, mapped once to the profile's reasons.

use keygate_core::decision::{Denial, Reason};
use keygate_store::StoreError;

/// A refused self-service request. Each variant becomes one profile reason (so the
/// provider's status and body apply), with a detail precise enough to fix the request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SelfServiceError {
    /// Not JSON, not UTF-8, the wrong content type, or a body cut off (400).
    #[error("{0}")]
    Malformed(String),
    /// Larger than `[selfservice] max_body_bytes` (413).
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Well-formed JSON whose content is refused (422).
    #[error("{0}")]
    Invalid(String),
    /// The account name is taken (409).
    #[error("the name `{0}` is already taken")]
    NameTaken(String),
    /// No such account, or not one the caller may act on (404, the same answer for both).
    #[error("no such account")]
    NotFound,
    /// The caller's key stopped being valid while the request ran (401).
    #[error("the key is no longer valid")]
    KeyGone,
    /// The store cannot take the change now (503).
    #[error("the store is unavailable")]
    StoreUnavailable,
}

impl SelfServiceError {
    /// The profile reason and subject this refusal is rendered with.
    pub(crate) fn denial(&self) -> Denial {
        match self {
            SelfServiceError::Malformed(m) => Denial::about(Reason::BadRequest, m),
            SelfServiceError::TooLarge(n) => Denial::about(Reason::PayloadTooLarge, &n.to_string()),
            SelfServiceError::Invalid(m) => Denial::about(Reason::InvalidBody, m),
            SelfServiceError::NameTaken(_) => Denial::about(Reason::Conflict, &self.to_string()),
            SelfServiceError::NotFound => Denial::new(Reason::NotFound),
            SelfServiceError::KeyGone => Denial::new(Reason::UnknownKey),
            SelfServiceError::StoreUnavailable => Denial::new(Reason::StoreUnavailable),
        }
    }
}

impl From<StoreError> for SelfServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateClient(name) => SelfServiceError::NameTaken(name),
            StoreError::ClientNotFound(_) | StoreError::KeyNotFound(_) => {
                SelfServiceError::NotFound
            }
            StoreError::KeyRevoked(_) | StoreError::KeyExpired(..) => SelfServiceError::KeyGone,
            StoreError::Invalid(e) => SelfServiceError::Invalid(e.to_string()),
            other => {
                tracing::warn!(error = %other, code = other.code(), "A self-service store call failed.");
                SelfServiceError::StoreUnavailable
            }
        }
    }
}
