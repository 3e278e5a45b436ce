//! Feed passwords: generated here, shown once, and kept (by the store and the broker) only in
//! RabbitMQ's salted SHA-256 form, `rabbit_password_hashing_sha256`.
//!
//! keygate hands the broker the hash, not the password: the plaintext crosses no network and no
//! log on its way to the broker, and the same hash lets a node restore a user that drifted away.
//! The password is 190 bits of CSPRNG output, so a fast salted digest is right here, as it is for
//! keys.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Characters of a password: 32 base62 characters, about 190 bits.
pub(crate) const LENGTH: usize = 32;

/// A fresh password: base62 only, so it needs no escaping in an `amqp://` URL.
pub(crate) fn generate() -> String {
    let mut out = String::with_capacity(LENGTH);
    while out.len() < LENGTH {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        // Rejection sampling keeps every character equally likely (248 = 4 × 62).
        for b in bytes {
            if b < 248 && out.len() < LENGTH {
                out.push(ALPHABET[usize::from(b % 62)] as char);
            }
        }
    }
    out
}

/// RabbitMQ's stored form of `password`: base64(salt ‖ SHA-256(salt ‖ password)), with a fresh
/// 4-byte salt.
pub(crate) fn rabbit_hash(password: &str) -> String {
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).expect("the OS random source works");
    rabbit_hash_with_salt(salt, password)
}

fn rabbit_hash_with_salt(salt: [u8; 4], password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&hasher.finalize());
    base64(&raw)
}

/// Standard base64 with padding; a dozen lines rather than a dependency.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn hashes_are_rabbitmqs_form() {
        // RabbitMQ's documented example: salt 908D C60A, password "test12".
        assert_eq!(
            rabbit_hash_with_salt([0x90, 0x8d, 0xc6, 0x0a], "test12"),
            "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
        );
    }

    #[test]
    fn passwords_are_long_and_url_safe() {
        let a = generate();
        assert_eq!(a.len(), LENGTH);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate());
    }
}
