//! The digest a key is stored and looked up by.
//!
//! Keys carry at least 128 bits of entropy, so a single fast SHA-256 is the right tool (as GitHub,
//! Stripe and Unkey do): guessing is hopeless without a slow hash, and the hot path stays in the
//! sub-microsecond range. A deployment may add a server secret, turning the digest into
//! HMAC-SHA-256, so a stolen database alone cannot even confirm a leaked key.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// SHA-256 or HMAC-SHA-256 of a plaintext key.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a digest read from the store.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(KeyDigest)
    }

    /// Lowercase hex, for diagnostics.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    out
}

/// Appends `bytes` to `out` as lowercase hex: the workspace's one hex encoder (digests, tokens,
/// idempotency keys), written out because it is a table lookup no crate makes shorter.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes identify a digest in logs without printing the whole thing.
        write!(f, "KeyDigest({}…)", &self.to_hex()[..16])
    }
}

/// Computes key digests; clone it freely (the keyed state is prepared once).
#[derive(Clone)]
pub struct Digester {
    keyed: Option<Hmac<Sha256>>,
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digester")
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

impl Digester {
    /// Plain SHA-256.
    pub fn plain() -> Self {
        Digester { keyed: None }
    }

    /// HMAC-SHA-256 with a server secret. Every node and the CLI must use the same secret.
    pub fn keyed(secret: &[u8]) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Digester { keyed: Some(mac) }
    }

    pub fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }

    /// A 32-byte value derived from `parts` for the purpose named by `label`: keyed with the
    /// server secret when there is one. Parts are length-prefixed, so no two different lists
    /// of parts collide.
    pub fn derive(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        fn feed(update: &mut impl FnMut(&[u8]), label: &str, parts: &[&[u8]]) {
            update(label.as_bytes());
            update(&[0]);
            for p in parts {
                update(&(p.len() as u64).to_be_bytes());
                update(p);
            }
        }
        match &self.keyed {
            None => {
                let mut h = Sha256::new();
                feed(&mut |b: &[u8]| h.update(b), label, parts);
                h.finalize().into()
            }
            Some(mac) => {
                let mut mac = mac.clone();
                feed(&mut |b: &[u8]| mac.update(b), label, parts);
                mac.finalize().into_bytes().into()
            }
        }
    }

    /// The digest a key of a legacy shape is stored under, from the key's SHA-256 (all an
    /// import of the old system's digests has). Plain: that SHA-256 itself, as
    /// [`Digester::digest`] gives for any key. Keyed: HMAC of that SHA-256 under a label of its
    /// own ([`Digester::derive`]), so digests imported without their keys are keyed like every
    /// other, and can never equal the digest of an own-format key. It is sound because
    /// SHA-256 is one-way and collision-resistant: the HMAC over it is as unforgeable without
    /// the secret as the HMAC over the key, for one more hash per legacy key presented.
    pub fn legacy(&self, sha256: &[u8; 32]) -> KeyDigest {
        match &self.keyed {
            None => KeyDigest(*sha256),
            Some(_) => KeyDigest(self.derive("keygate-legacy-sha256", &[sha256])),
        }
    }

    /// [`Digester::legacy`] of a plaintext key of a legacy shape.
    pub fn digest_legacy(&self, key: &str) -> KeyDigest {
        self.legacy(&Sha256::digest(key.as_bytes()).into())
    }

    pub fn digest(&self, key: &str) -> KeyDigest {
        match &self.keyed {
            None => KeyDigest(Sha256::digest(key.as_bytes()).into()),
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                KeyDigest(mac.finalize().into_bytes().into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_separate_labels_parts_and_secrets() {
        let plain = Digester::plain();
        let a = plain.derive("seal", &[b"ab", b"c"]);
        assert_ne!(a, plain.derive("seal", &[b"a", b"bc"]));
        assert_ne!(a, plain.derive("id", &[b"ab", b"c"]));
        assert_eq!(a, plain.derive("seal", &[b"ab", b"c"]));
        let keyed = Digester::keyed(b"secret");
        assert_ne!(a, keyed.derive("seal", &[b"ab", b"c"]));
        assert_ne!(
            keyed.derive("seal", &[b"ab", b"c"]),
            Digester::keyed(b"other").derive("seal", &[b"ab", b"c"])
        );
    }

    #[test]
    fn plain_digest_is_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            Digester::plain().digest("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keyed_digest_is_hmac_and_depends_on_the_secret() {
        // RFC 4231 test case 2.
        let d = Digester::keyed(b"Jefe").digest("what do ya want for nothing?");
        assert_eq!(
            d.to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(
            Digester::keyed(b"other").digest("k"),
            Digester::keyed(b"Jefe").digest("k")
        );
    }

    #[test]
    fn legacy_digests_are_sha256_or_keyed_apart_from_own_digests() {
        let plain = Digester::plain();
        assert_eq!(plain.digest_legacy("abc"), plain.digest("abc"));
        let keyed = Digester::keyed(b"secret");
        let sha: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(keyed.digest_legacy("abc"), keyed.legacy(&sha));
        assert_ne!(keyed.digest_legacy("abc"), keyed.digest("abc"));
        assert_ne!(keyed.legacy(&sha), KeyDigest(sha));
        assert_ne!(keyed.legacy(&sha), Digester::keyed(b"other").legacy(&sha));
    }

    #[test]
    fn debug_is_short() {
        let d = Digester::plain().digest("abc");
        assert_eq!(format!("{d:?}"), "KeyDigest(ba7816bf8f01cfea…)");
        assert_eq!(KeyDigest::from_slice(d.as_bytes()), Some(d));
        assert_eq!(KeyDigest::from_slice(&[1, 2]), None);
    }
}
