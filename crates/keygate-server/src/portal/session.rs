//! Session and CSRF cookies.
//!
//! A session cookie holds a random token; the store keeps only its SHA-256 digest. Every form
//! carries a CSRF token that must equal the `csrf` cookie (double submit): another site can
//! neither read that cookie nor, with `SameSite=Lax` and the `__Host-` prefix under HTTPS, set
//! it. Cookies are `HttpOnly`, `SameSite=Lax`, and `Secure` when the portal is reached over
//! HTTPS.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use keygate_core::digest::hex;
use keygate_store::PortalSession;
use sha2::{Digest, Sha256};

use super::error::PortalError;
use super::PortalState;

/// A fresh random token: 32 bytes, hex.
pub(crate) fn token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS CSPRNG must be available");
    hex(&bytes)
}

/// What the store keeps of a token.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token as it may appear in a cookie or a link: 64 lowercase hex digits.
pub(crate) fn well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn cookie_name(state: &PortalState, base: &str) -> String {
    if state.settings.secure_cookies {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value; `max_age` `None` deletes the cookie.
fn set_cookie(state: &PortalState, base: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let age = max_age.unwrap_or(0);
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={age}{secure}",
        cookie_name(state, base)
    ))
    .expect("cookie values are hex")
}

/// Every visitor: the CSRF token its forms carry (a new one is set by [`Visit::finish`]) and the
/// session cookie, unchecked.
#[derive(Clone, Debug)]
pub(crate) struct Visit {
    pub(crate) csrf: String,
    new_csrf: bool,
    session_token: Option<String>,
    /// The `asked` cookie: which address this browser last asked a sign-in link for.
    asked: Option<String>,
}

impl Visit {
    pub(crate) fn from_headers(state: &PortalState, headers: &HeaderMap) -> Visit {
        let existing = cookie(headers, &cookie_name(state, "csrf")).filter(|t| well_formed(t));
        let session_token = cookie(headers, &cookie_name(state, "session"))
            .filter(|t| well_formed(t))
            .map(str::to_owned);
        let asked = cookie(headers, &cookie_name(state, "asked"))
            .filter(|t| well_formed(t))
            .map(str::to_owned);
        match existing {
            Some(t) => Visit {
                csrf: t.to_owned(),
                new_csrf: false,
                session_token,
                asked,
            },
            None => Visit {
                csrf: token(),
                new_csrf: true,
                session_token,
                asked,
            },
        }
    }

    /// Whether this browser is the one that asked for a sign-in link to `email` (within the
    /// link's lifetime). A link opened anywhere else may have been sent by someone else.
    pub(crate) fn asked_for(&self, email: &str) -> bool {
        self.asked.as_deref() == Some(asked_value(email).as_str())
    }

    /// Refuses a form whose CSRF field is not this visitor's cookie.
    ///
    /// # Errors
    /// [`PortalError::Csrf`].
    pub(crate) fn check(&self, field: &str) -> Result<(), PortalError> {
        let matches = !self.new_csrf
            && field.len() == self.csrf.len()
            && field
                .bytes()
                .zip(self.csrf.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if matches {
            Ok(())
        } else {
            Err(PortalError::Csrf)
        }
    }

    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// Sets the CSRF cookie on `resp` when this visit made a new one.
    pub(crate) fn finish(&self, state: &PortalState, mut resp: Response) -> Response {
        if self.new_csrf {
            resp.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(state, "csrf", &self.csrf, Some(86_400 * 30)),
            );
        }
        resp
    }
}

impl FromRequestParts<PortalState> for Visit {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Visit::from_headers(state, &parts.headers))
    }
}

/// A signed-in visitor: the session is live, its user and client enabled (as the store says,
/// or said for an earlier page while nothing has been written since: `super::cache`). Anyone
/// else is sent to the sign-in page.
#[derive(Clone, Debug)]
pub(crate) struct Signed {
    pub(crate) visit: Visit,
    pub(crate) session: PortalSession,
}

impl FromRequestParts<PortalState> for Signed {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        let visit = Visit::from_headers(state, &parts.headers);
        let Some(token) = visit.session_token() else {
            return Err(PortalError::SignInNeeded);
        };
        let digest = digest(token);
        let stamp = state.stamp();
        if let Some(session) = state.cache.session(&digest, stamp) {
            // Kept while nothing was written; its end passes by the clock all the same.
            if session.expires_at > state.gateway().clock.now() {
                return Ok(Signed { visit, session });
            }
            return Err(PortalError::SignInNeeded);
        }
        match super::error::store(state.store.portal_session(&digest)).await? {
            Some(session) => {
                state.cache.keep_session(digest, stamp, session.clone());
                Ok(Signed { visit, session })
            }
            None => Err(PortalError::SignInNeeded),
        }
    }
}

/// The cookie that opens a session.
pub(crate) fn session_cookie(state: &PortalState, token: &str) -> HeaderValue {
    set_cookie(
        state,
        "session",
        token,
        Some(state.settings.session_lifetime.as_secs()),
    )
}

/// What the `asked` cookie holds for an address: a digest, so the cookie does not carry it.
fn asked_value(email: &str) -> String {
    hex(&digest(&format!(
        "keygate portal sign-in asked for {}",
        email.trim().to_ascii_lowercase()
    )))
}

/// The cookie that marks this browser as having asked for a link to `email`, for as long as
/// the link lives. Only the CSRF-checked sign-in and sign-up forms set it, so another site
/// cannot make a victim's browser claim the attacker's address.
pub(crate) fn asked_cookie(state: &PortalState, email: &str) -> HeaderValue {
    set_cookie(
        state,
        "asked",
        &asked_value(email),
        Some(super::LINK_TTL.as_secs()),
    )
}

/// The cookie that ends a session.
pub(crate) fn clear_session(state: &PortalState) -> HeaderValue {
    set_cookie(state, "session", "", None)
}

#[cfg(test)]
impl Visit {
    /// A first visit (no cookies), for template tests.
    pub(crate) fn from_headers_for_tests() -> Visit {
        Visit {
            csrf: token(),
            new_csrf: true,
            session_token: None,
            asked: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_digests_differ() {
        let (a, b) = (token(), token());
        assert!(well_formed(&a) && well_formed(&b) && a != b);
        assert_ne!(digest(&a), digest(&b));
        assert!(!well_formed("ABC"));
        assert!(!well_formed(&"g".repeat(64)));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xsession=1; session=2 ; csrf=3"),
        );
        assert_eq!(cookie(&h, "session"), Some("2"));
        assert_eq!(cookie(&h, "csrf"), Some("3"));
        assert_eq!(cookie(&h, "other"), None);
    }
}
