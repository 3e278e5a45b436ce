//! Short-lived, single-use WebSocket tokens (seed 003's "WS token" endpoint).
//!
//! Browsers cannot set headers on a WebSocket upgrade, and a long-lived key in a URL ends up
//! in proxy logs and browser history. `POST /v1/ws-token` (authenticated with the key as any
//! request is) returns a token that stands for that key for a few seconds and for one upgrade.
//!
//! A token is `wst_` + hex of `expiry (8) | nonce (16) | key digest (32) | MAC (16)`, the MAC
//! an HMAC-SHA-256 under the profile's token secret. Any node holding the secret can check it
//! without a lookup; single use is a lease on the nonce held until the token expires, taken in
//! the shared limiter (Redis when configured), so a token replayed on another node fails too.
//! The key's digest is what the key is stored as; it cannot authenticate anywhere by itself.

use std::time::Duration;

use hmac::{Hmac, Mac};
use keygate_core::decision::Reason;
use keygate_core::digest::push_hex;
use keygate_core::{KeyDigest, Timestamp};
use keygate_limits::LimitKey;
use sha2::Sha256;

use crate::policy::ws::TokenSecret;

/// Every token starts with this, so a token is never taken for a key and vice versa.
pub(crate) const PREFIX: &str = "wst_";
const PAYLOAD: usize = 8 + 16 + 32;
const MAC: usize = 16;
/// Length of a token in characters.
pub(crate) const TOKEN_LEN: usize = PREFIX.len() + 2 * (PAYLOAD + MAC);

/// A token that does not admit anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not in the expected format")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was already used")]
    Used,
    #[error("the shared limiter is unavailable")]
    Unavailable,
}

impl From<TokenError> for Reason {
    fn from(e: TokenError) -> Reason {
        match e {
            TokenError::Malformed | TokenError::BadSignature => Reason::MalformedKey,
            TokenError::Expired => Reason::KeyExpired,
            TokenError::Used => Reason::UnknownKey,
            TokenError::Unavailable => Reason::LimiterUnavailable,
        }
    }
}

fn mac(secret: &TokenSecret, payload: &[u8]) -> [u8; MAC] {
    let mut m = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    m.update(b"keygate-ws-token-v1");
    m.update(payload);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC];
    out.copy_from_slice(&full[..MAC]);
    out
}

fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(())
}

/// A checked token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claims {
    pub digest: KeyDigest,
    pub expires: Timestamp,
    pub nonce: [u8; 16],
}

/// Issues a token for `digest`, valid until `now + ttl`.
pub(crate) fn issue(
    secret: &TokenSecret,
    digest: &KeyDigest,
    now: Timestamp,
    ttl: Duration,
) -> String {
    let mut payload = [0u8; PAYLOAD];
    payload[..8].copy_from_slice(&now.plus(ttl).as_millis().to_be_bytes());
    getrandom::fill(&mut payload[8..24]).expect("the OS provides randomness");
    payload[24..].copy_from_slice(digest.as_bytes());
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(PREFIX);
    push_hex(&payload, &mut token);
    push_hex(&mac(secret, &payload), &mut token);
    token
}

/// Checks a token's form, signature and expiry (not whether it was used).
///
/// # Errors
/// [`TokenError`] saying why it does not admit.
pub(crate) fn check(
    secret: &TokenSecret,
    token: &str,
    now: Timestamp,
) -> Result<Claims, TokenError> {
    let body = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    if token.len() != TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (payload_hex, mac_hex) = body.as_bytes().split_at(2 * PAYLOAD);
    let mut payload = [0u8; PAYLOAD];
    let mut given = [0u8; MAC];
    unhex(payload_hex, &mut payload).ok_or(TokenError::Malformed)?;
    unhex(mac_hex, &mut given).ok_or(TokenError::Malformed)?;
    let expected = mac(secret, &payload);
    // Constant time: a timing oracle on the MAC would let a forger find it byte by byte.
    if given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Err(TokenError::BadSignature);
    }
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&payload[..8]);
    let expires = Timestamp::from_millis(i64::from_be_bytes(expiry));
    if expires <= now {
        return Err(TokenError::Expired);
    }
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&payload[8..24]);
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&payload[24..]);
    Ok(Claims {
        digest: KeyDigest(digest),
        expires,
        nonce,
    })
}

/// Checks a token under `secret` at `now` and uses it up in `limits`: a second redemption, on
/// any node sharing the limiter, fails.
///
/// # Errors
/// [`TokenError`].
pub(crate) async fn redeem(
    secret: &TokenSecret,
    limits: &keygate_limits::Limits,
    now: Timestamp,
    token: &str,
) -> Result<KeyDigest, TokenError> {
    let claims = check(secret, token, now)?;
    let mut subject = String::with_capacity(4 + 32);
    subject.push_str("wst:");
    push_hex(&claims.nonce, &mut subject);
    // The lease outlives the token, so the nonce stays taken for as long as it could be used.
    let ttl = Duration::from_millis(
        u64::try_from(claims.expires.as_millis() - now.as_millis()).unwrap_or(0) + 1_000,
    );
    let mut holder = [0u8; 8];
    getrandom::fill(&mut holder).expect("the OS provides randomness");
    let state = limits
        .acquire_lease(
            &LimitKey::new(subject, 0),
            1,
            u64::from_le_bytes(holder),
            ttl,
            now,
        )
        .await
        .map_err(|_| TokenError::Unavailable)?;
    if state.allowed {
        Ok(claims.digest)
    } else {
        Err(TokenError::Used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_check_and_tamper() {
        let secret = TokenSecret([9; 32]);
        let digest = KeyDigest([3; 32]);
        let now = Timestamp::from_millis(1_000_000);
        let token = issue(&secret, &digest, now, Duration::from_secs(30));
        assert_eq!(token.len(), TOKEN_LEN);
        let claims = check(&secret, &token, now).unwrap();
        assert_eq!(claims.digest, digest);
        assert_eq!(claims.expires, now.plus(Duration::from_secs(30)));
        assert_eq!(
            check(&secret, &token, now.plus(Duration::from_secs(30))),
            Err(TokenError::Expired)
        );
        assert_eq!(
            check(&TokenSecret([8; 32]), &token, now),
            Err(TokenError::BadSignature)
        );
        let mut forged = token.clone().into_bytes();
        let i = PREFIX.len() + 70; // inside the digest
        forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            check(&secret, &String::from_utf8(forged).unwrap(), now),
            Err(TokenError::BadSignature)
        );
        for bad in [
            "",
            "wst_",
            "kg_abc",
            &token[..TOKEN_LEN - 1],
            &token.to_uppercase(),
        ] {
            assert_eq!(
                check(&secret, bad, now),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let other = issue(&secret, &digest, now, Duration::from_secs(30));
        assert_ne!(token, other, "each token has its own nonce");
    }
}
