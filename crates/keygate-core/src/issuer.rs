//! Issuing a key: generate the plaintext, keep only its digest and hint.

use crate::digest::{Digester, KeyDigest};
use crate::key_format::{KeyFormat, SecretKey};

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
}

impl Default for Digester {
    fn default() -> Self {
        Digester::plain()
    }
}

impl Issuer {
    pub fn new(format: KeyFormat, digester: Digester) -> Self {
        Issuer { format, digester }
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
    use super::*;

    #[test]
    fn issued_material_matches_the_key() {
        let issuer = Issuer::default();
        let (key, m) = issuer.issue();
        assert_eq!(issuer.format.check(key.expose()), Ok(()));
        assert_eq!(m.digest, issuer.digester.digest(key.expose()));
        assert!(key.expose().ends_with(&m.hint[m.hint.len() - 4..]));
    }
}
