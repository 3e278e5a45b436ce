//! `Idempotency-Key` on key creation and rotation, and on a messaging feed's provision and
//! rotation: a retried request gets the first answer back (marked `Idempotent-Replayed: true`)
//! and never issues a second key or password.
//!
//! The first answer holds a plaintext key (or a feed URL with its password), so it is kept
//! sealed: ChaCha20-Poly1305 under a key derived from the caller's idempotency key (and the
//! server secret, when configured). The store holds only the record's id (another
//! derivation), the request's fingerprint and the ciphertext; the idempotency key itself is
//! never stored, so the answer can be opened only by a caller presenting it again. Records are scoped to the admin token's name and kept for
//! [`TTL`]. Only successful answers are kept: a request that failed may be retried as new.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use keygate_core::Digester;
use keygate_store::{Actor, IdempotencyClaim, Replay, SealedAnswer};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::AdminError;

/// How long a first answer is kept for retries.
pub(crate) const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Set on a replayed answer.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest accepted idempotency key.
const MAX_LEN: usize = 255;

const NONCE_LEN: usize = 12;

/// The `Idempotency-Key` header's value, when sent: 1 to 255 visible ASCII characters.
#[derive(Debug)]
pub(crate) struct IdempotencyKey(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AdminError> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(AdminError::InvalidIdempotencyKey(
                "send the Idempotency-Key header once",
            ));
        }
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_LEN || !bytes.iter().all(u8::is_ascii_graphic) {
            return Err(AdminError::InvalidIdempotencyKey(
                "an Idempotency-Key is 1 to 255 visible ASCII characters, e.g. a UUID",
            ));
        }
        Ok(IdempotencyKey(Some(
            String::from_utf8_lossy(bytes).into_owned(),
        )))
    }
}

/// A request under an idempotency key: what the store needs, and how to seal and open its
/// answer.
pub(crate) struct Guarded {
    pub(crate) claim: IdempotencyClaim,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guarded")
    }
}

impl IdempotencyKey {
    /// The claim of this request, or `None` when no key was sent. `operation` and `request`
    /// (the parsed body) make the fingerprint: the same key with a different request is refused.
    pub(crate) fn guard(
        &self,
        digester: &Digester,
        actor: &Actor,
        operation: &str,
        request: &impl Serialize,
    ) -> Option<Guarded> {
        let key = self.0.as_deref()?;
        let scope = [actor.0.as_bytes(), key.as_bytes()];
        let id = digester.derive("keygate idempotency record", &scope);
        let seal = digester.derive("keygate idempotency seal", &scope);
        let body = serde_json::to_vec(request).unwrap_or_default();
        let mut fp = Sha256::new();
        fp.update(operation.as_bytes());
        fp.update([0]);
        fp.update(&body);
        Some(Guarded {
            claim: IdempotencyClaim {
                id: id.to_vec(),
                fingerprint: fp.finalize().to_vec(),
                ttl: TTL,
            },
            cipher: ChaCha20Poly1305::new(Key::from_slice(&seal)),
        })
    }
}

impl Guarded {
    /// Seals the first answer: a random nonce, then the ciphertext bound to the record's id.
    pub(crate) fn seal(&self, status: StatusCode, body: &[u8]) -> SealedAnswer {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS CSPRNG must be available");
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: body,
                    aad: &self.claim.id,
                },
            )
            .expect("ChaCha20-Poly1305 seals any answer under 256 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        SealedAnswer {
            status: status.as_u16(),
            sealed: out,
        }
    }

    /// The first answer again, or why it cannot be given.
    ///
    /// # Errors
    /// `idempotency_key_reused` when the key came with a different request; `conflict` when the
    /// record cannot be opened (the server secret changed since).
    pub(crate) fn replay(&self, replay: &Replay) -> Result<Response, AdminError> {
        if replay.fingerprint != self.claim.fingerprint {
            return Err(AdminError::IdempotencyKeyReused);
        }
        let sealed = &replay.answer.sealed;
        let unreadable = || {
            AdminError::Conflict(
                "the first answer under this Idempotency-Key cannot be read back (was the \
                 server secret changed?)"
                    .to_owned(),
            )
        };
        if sealed.len() < NONCE_LEN {
            return Err(unreadable());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let body = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &self.claim.id,
                },
            )
            .map_err(|_| unreadable())?;
        let status = StatusCode::from_u16(replay.answer.status).map_err(|_| unreadable())?;
        let mut resp = (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        resp.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(key: &str, request: &serde_json::Value) -> Guarded {
        IdempotencyKey(Some(key.to_owned()))
            .guard(
                &Digester::plain(),
                &Actor("admin:ops".into()),
                "create_key",
                request,
            )
            .unwrap()
    }

    #[test]
    fn a_sealed_answer_opens_only_with_the_same_key_and_request() {
        let request = serde_json::json!({ "client": "acme" });
        let g = guard("6f1c-retry", &request);
        let answer = g.seal(StatusCode::CREATED, br#"{"key":"kg_secret"}"#);
        assert!(!answer.sealed.windows(9).any(|w| w == b"kg_secret"));
        let replay = Replay {
            fingerprint: g.claim.fingerprint.clone(),
            answer: answer.clone(),
        };
        let resp = g.replay(&replay).unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()[REPLAYED], "true");

        // Another request under the same key.
        let other = guard("6f1c-retry", &serde_json::json!({ "client": "other" }));
        assert!(matches!(
            other.replay(&Replay {
                fingerprint: g.claim.fingerprint.clone(),
                answer: answer.clone(),
            }),
            Err(AdminError::IdempotencyKeyReused)
        ));
        // Another key cannot open the record (its id differs too, so the store would not even
        // find it; here the ciphertext is handed over directly).
        let stranger = guard("another-key", &request);
        assert_ne!(stranger.claim.id, g.claim.id);
        assert!(matches!(
            stranger.replay(&Replay {
                fingerprint: stranger.claim.fingerprint.clone(),
                answer,
            }),
            Err(AdminError::Conflict(_))
        ));
    }
}
