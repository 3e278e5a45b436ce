//! Issuing a key: generate the plaintext, keep only its digest and hint; and the one rule for
//! which digest a presented or imported key has (own format, or a legacy shape).

use crate::digest::{Digester, KeyDigest};
use crate::key_format::{KeyFormat, KeyFormatError, SecretKey};
use crate::legacy_format::LegacyFormat;

/// What the store keeps of a freshly issued key: never the plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMaterial {
    pub digest: KeyDigest,
    pub hint: String,
}

/// A deployment's key format and digest, used by everything that issues or checks keys (CLI,
/// admin API, self-service, the gateway), so they always agree.
#[derive(Clone, Debug, Default)]
pub struct Issuer {
    pub format: KeyFormat,
    pub digester: Digester,
    /// Shapes of imported keys accepted beside `format` (`[[keys.legacy]]`); never issued.
    pub legacy: Vec<LegacyFormat>,
}

/// Why a digest given without its key (an import's `sha256`) cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestImportError {
    /// With a keyed digest only legacy-shaped keys are stored by their SHA-256 (see
    /// [`Digester::legacy`]); the own format's digests are HMACs of the key itself.
    #[error("the deployment digests keys with a secret (HMAC), so a SHA-256 can be imported only for keys of a `[[keys.legacy]]` shape, and none is configured")]
    KeyedWithoutLegacy,
}

impl Default for Digester {
    fn default() -> Self {
        Digester::plain()
    }
}

impl Issuer {
    pub fn new(format: KeyFormat, digester: Digester) -> Self {
        Issuer {
            format,
            digester,
            legacy: Vec::new(),
        }
    }

    /// The digest of a presented key, checked offline first: the own format (with its
    /// checksum), else a legacy shape. Anything else is refused before it costs a digest.
    ///
    /// # Errors
    /// The own format's [`KeyFormatError`] when the key has neither shape.
    pub fn digest_presented(&self, key: &str) -> Result<KeyDigest, KeyFormatError> {
        match self.format.check(key) {
            Ok(()) => Ok(self.digester.digest(key)),
            Err(_) if self.legacy.iter().any(|l| l.matches(key)) => {
                Ok(self.digester.digest_legacy(key))
            }
            Err(e) => Err(e),
        }
    }

    /// What the store keeps of an imported plaintext key: its digest as the gateway will
    /// compute it ([`Issuer::digest_presented`]) and its hint.
    ///
    /// # Errors
    /// The key has neither the own format nor a legacy shape: the gateway would refuse it.
    pub fn material_of(&self, key: &SecretKey) -> Result<KeyMaterial, KeyFormatError> {
        let plain = key.expose();
        let digest = self.digest_presented(plain)?;
        let hint = match self.legacy.iter().find(|l| l.matches(plain)) {
            Some(l) if self.format.check(plain).is_err() => l.hint(plain),
            _ => self.format.hint(key),
        };
        Ok(KeyMaterial { digest, hint })
    }

    /// What the store keeps of a key imported as its SHA-256: the digest a legacy-shaped key
    /// is looked up by, and `hint` or else the shape's prefix (`sk_live_...`) when there is
    /// one legacy shape (or, with none, the own prefix: a plain-SHA-256 deployment's own keys).
    ///
    /// # Errors
    /// [`DigestImportError::KeyedWithoutLegacy`].
    pub fn material_of_sha256(
        &self,
        sha256: &[u8; 32],
        hint: Option<&str>,
    ) -> Result<KeyMaterial, DigestImportError> {
        if self.digester.is_keyed() && self.legacy.is_empty() {
            return Err(DigestImportError::KeyedWithoutLegacy);
        }
        let hint = match (hint, self.legacy.as_slice()) {
            (Some(h), _) => h.to_owned(),
            (None, [only]) => format!("{}...", only.prefix()),
            (None, []) => format!("{}...", self.format.prefix()),
            (None, _) => "...".to_owned(),
        };
        Ok(KeyMaterial {
            digest: self.digester.legacy(sha256),
            hint,
        })
    }

    /// A fresh key: the plaintext to show once, and the material to store.
    pub fn issue(&self) -> (SecretKey, KeyMaterial) {
        let key = self.format.generate();
        let material = KeyMaterial {
            digest: self.digester.digest(key.expose()),
            hint: self.format.hint(&key),
        };
        (key, material)
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;
    use crate::legacy_format::Charset;

    #[test]
    fn issued_material_matches_the_key() {
        let issuer = Issuer::default();
        let (key, m) = issuer.issue();
        assert_eq!(issuer.format.check(key.expose()), Ok(()));
        assert_eq!(m.digest, issuer.digester.digest(key.expose()));
        assert!(key.expose().ends_with(&m.hint[m.hint.len() - 4..]));
    }

    fn with_legacy(digester: Digester) -> Issuer {
        let format = KeyFormat::default();
        let legacy = LegacyFormat::new("sk_live_", Charset::Base62, 24, &format).unwrap();
        Issuer {
            legacy: vec![legacy],
            ..Issuer::new(format, digester)
        }
    }

    #[test]
    fn presented_keys_are_digested_by_their_shape() {
        let legacy_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        for digester in [Digester::plain(), Digester::keyed(b"0123456789abcdef")] {
            let issuer = with_legacy(digester.clone());
            let (own, m) = issuer.issue();
            assert_eq!(issuer.digest_presented(own.expose()), Ok(m.digest));
            assert_eq!(issuer.material_of(&own), Ok(m));
            let sha: [u8; 32] = sha2::Sha256::digest(legacy_key.as_bytes()).into();
            let by_sha = issuer.material_of_sha256(&sha, None).unwrap();
            assert_eq!(issuer.digest_presented(legacy_key), Ok(by_sha.digest));
            assert_eq!(by_sha.hint, "sk_live_...");
            let plain = issuer.material_of(&SecretKey::new(legacy_key)).unwrap();
            assert_eq!(plain.digest, by_sha.digest);
            assert_eq!(plain.hint, "sk_live_...p7dc");
            // Neither shape: refused offline, as before legacy shapes existed.
            assert!(issuer
                .digest_presented("sk_live_4eC39HqLyjWDarjtT1zdp7d")
                .is_err());
            assert!(issuer
                .material_of(&SecretKey::new("sk_test_4eC39HqLyjWDarjtT1zdp7dc"))
                .is_err());
        }
    }

    #[test]
    fn a_keyed_digest_imports_sha256_only_for_legacy_shapes() {
        let sha = [7u8; 32];
        let keyed = Issuer::new(KeyFormat::default(), Digester::keyed(b"0123456789abcdef"));
        assert_eq!(
            keyed.material_of_sha256(&sha, None),
            Err(DigestImportError::KeyedWithoutLegacy)
        );
        let plain = Issuer::default();
        let m = plain.material_of_sha256(&sha, Some("kg_...wxyz")).unwrap();
        assert_eq!((m.digest, m.hint.as_str()), (KeyDigest(sha), "kg_...wxyz"));
        assert_eq!(plain.material_of_sha256(&sha, None).unwrap().hint, "kg_...");
    }
}
