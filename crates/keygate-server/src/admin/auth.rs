//! Admin token authentication: `Authorization: Bearer kgadm_...`, checked against the store on
//! every request (admin traffic is rare; a revocation takes effect at once).
//!
//! The token is checked for format and checksum, digested with plain SHA-256 and looked up. Its
//! name becomes the audit actor (`admin:NAME`). Read-only tokens may only read. The token itself
//! is never logged, echoed or kept past the lookup.

use std::sync::LazyLock;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, Method};
use keygate_core::{Digester, KeyDigest, KeyFormat};
use keygate_store::Actor;

use super::error::AdminError;
use super::{store_call, AdminState};

static TOKEN_FORMAT: LazyLock<KeyFormat> = LazyLock::new(KeyFormat::admin_token);

/// Who is calling: set by [`require_token`] on every routed request.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// `admin:NAME`, as written to the audit log.
    pub(crate) actor: Actor,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AdminError> {
        // Absent only if a route were served without the middleware: refuse, never assume.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(AdminError::MissingToken)
    }
}

/// The digest of the presented token, or why there is none to look up.
fn presented(headers: &HeaderMap) -> Result<KeyDigest, AdminError> {
    let value = headers.get(AUTHORIZATION).ok_or(AdminError::MissingToken)?;
    let value = value.to_str().map_err(|_| AdminError::MalformedToken)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AdminError::MalformedToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AdminError::MalformedToken);
    }
    let token = token.trim();
    TOKEN_FORMAT
        .check(token)
        .map_err(|_| AdminError::MalformedToken)?;
    Ok(Digester::plain().digest(token))
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Authenticates the request and enforces read-only tokens, before any extractor reads the body.
///
/// # Errors
/// 401 for a missing, malformed, unknown or revoked token; 403 for a write with a read-only
/// token; 503 when the store cannot answer.
pub(crate) async fn require_token(
    State(state): State<AdminState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AdminError> {
    let digest = presented(req.headers())?;
    let token = store_call(state.store.admin_token_by_digest(&digest))
        .await?
        .ok_or(AdminError::UnknownToken)?;
    let write = !is_read(req.method());
    if write && token.read_only {
        return Err(AdminError::ReadOnlyToken);
    }
    let actor = Actor(format!("admin:{}", token.name));
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    req.extensions_mut().insert(Caller {
        actor: actor.clone(),
    });
    let resp = next.run(req).await;
    if write {
        tracing::info!(
            actor = %actor.0,
            %method,
            %path,
            status = resp.status().as_u16(),
            "Admin write."
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_parsed_strictly() {
        let token = TOKEN_FORMAT.generate();
        let digest = Digester::plain().digest(token.expose());
        assert_eq!(
            presented(&headers(&format!("Bearer {}", token.expose()))).unwrap(),
            digest
        );
        assert_eq!(
            presented(&headers(&format!("bearer  {} ", token.expose()))).unwrap(),
            digest
        );
        assert!(matches!(
            presented(&HeaderMap::new()),
            Err(AdminError::MissingToken)
        ));
        for bad in [
            "Bearer".to_owned(),
            format!("Basic {}", token.expose()),
            "Bearer kgadm_short".to_owned(),
            format!("Bearer {}x", token.expose()),
        ] {
            assert!(
                matches!(presented(&headers(&bad)), Err(AdminError::MalformedToken)),
                "{bad}"
            );
        }
    }
}
