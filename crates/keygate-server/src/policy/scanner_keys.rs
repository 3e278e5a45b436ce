//! The scanner's public keys and the check of a report's signature.
//!
//! GitHub publishes its keys at `https://api.github.com/meta/public_keys/secret_scanning` as
//! `{"public_keys": [{"key_identifier": …, "key": "-----BEGIN PUBLIC KEY-----…", "is_current":
//! …}]}`; the operator saves that document to `[leak_reports] public_keys_file` (a node never
//! fetches anything from the internet on its own) and reloads after refreshing it. A report
//! names its key in `Github-Public-Key-Identifier` and carries an ECDSA P-256 / SHA-256
//! signature of the raw body, DER and then base64, in `Github-Public-Key-Signature`.

use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;

/// The header naming the key a report was signed with.
pub(crate) const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header carrying the report's signature.
pub(crate) const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// Keys reports may be signed with.
#[derive(Clone, Debug)]
pub struct ScannerKeys {
    keys: Vec<ScannerKey>,
}

#[derive(Clone, Debug)]
struct ScannerKey {
    id: String,
    /// The uncompressed P-256 point.
    point: Vec<u8>,
}

/// Why a keys document cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("not GitHub's public keys document ({0})")]
    NotTheDocument(String),
    #[error("the document lists no keys")]
    Empty,
    #[error("key `{0}` is not a PEM public key")]
    NotPem(String),
    #[error("key `{0}` is not an ECDSA P-256 key")]
    NotP256(String),
}

/// Why a report's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the report has no Github-Public-Key-Identifier or Github-Public-Key-Signature header"
    )]
    Missing,
    #[error("the report names a key that is not configured")]
    UnknownKey,
    #[error("the signature is not base64")]
    NotBase64,
    #[error("the signature does not match the body")]
    Mismatch,
}

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<DocumentKey>,
}

#[derive(Deserialize)]
struct DocumentKey {
    key_identifier: String,
    key: String,
}

impl ScannerKeys {
    /// Reads GitHub's keys document.
    ///
    /// # Errors
    /// [`KeysError`] for anything but a list of P-256 keys in PEM.
    pub fn parse(document: &[u8]) -> Result<Self, KeysError> {
        let doc: Document = serde_json::from_slice(document)
            .map_err(|e| KeysError::NotTheDocument(e.to_string()))?;
        if doc.public_keys.is_empty() {
            return Err(KeysError::Empty);
        }
        let keys = doc
            .public_keys
            .into_iter()
            .map(|k| {
                let der = SubjectPublicKeyInfoDer::from_pem_slice(k.key.as_bytes())
                    .map_err(|_| KeysError::NotPem(k.key_identifier.clone()))?;
                let point = crate::tls::der::p256_point(der.as_ref())
                    .ok_or_else(|| KeysError::NotP256(k.key_identifier.clone()))?;
                Ok(ScannerKey {
                    id: k.key_identifier,
                    point: point.to_vec(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ScannerKeys { keys })
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true for a parsed document; for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `body` against the signature the report carries, by the key it names.
    ///
    /// # Errors
    /// [`SignatureError`]; an unknown key identifier is refused before any cryptography.
    pub fn verify(
        &self,
        key_id: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(SignatureError::Missing);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == key_id)
            .ok_or(SignatureError::UnknownKey)?;
        // A DER ECDSA P-256 signature is at most 72 bytes (96 in base64): anything longer is
        // refused before decoding.
        if signature.len() > 128 {
            return Err(SignatureError::NotBase64);
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| SignatureError::NotBase64)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
            .verify(body, &der)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    struct Signer {
        pair: EcdsaKeyPair,
        pem: String,
    }

    fn signer() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let rc = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        Signer {
            pair,
            pem: rc.public_key_pem(),
        }
    }

    impl Signer {
        fn sign(&self, body: &[u8]) -> String {
            let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
            base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
        }
    }

    fn document(keys: &[(&str, &str)]) -> Vec<u8> {
        let list: Vec<_> = keys
            .iter()
            .map(|(id, pem)| serde_json::json!({"key_identifier": id, "key": pem, "is_current": true}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "public_keys": list })).unwrap()
    }

    #[test]
    fn a_report_signed_by_a_listed_key_verifies_and_nothing_else_does() {
        let (current, old, stranger) = (signer(), signer(), signer());
        let keys =
            ScannerKeys::parse(&document(&[("k1", &current.pem), ("k0", &old.pem)])).unwrap();
        assert_eq!(keys.len(), 2);
        let body = br#"[{"token":"x","type":"t","url":"","source":"content"}]"#;
        let ok = |id: &str, sig: &str, body: &[u8]| {
            keys.verify(Some(id.as_bytes()), Some(sig.as_bytes()), body)
        };
        assert_eq!(ok("k1", &current.sign(body), body), Ok(()));
        assert_eq!(ok("k0", &old.sign(body), body), Ok(()));
        // Signed by another listed key than the one named, by an unlisted key, or of another body.
        assert_eq!(
            ok("k1", &old.sign(body), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok("k1", &stranger.sign(body), body),
            Err(SignatureError::Mismatch)
        );
        let mut altered = body.to_vec();
        altered[11] = b'y';
        assert_eq!(
            ok("k1", &current.sign(body), &altered),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok("k9", &current.sign(body), body),
            Err(SignatureError::UnknownKey)
        );
        assert_eq!(ok("k1", "%%%", body), Err(SignatureError::NotBase64));
        assert_eq!(
            ok("k1", &"A".repeat(4096), body),
            Err(SignatureError::NotBase64)
        );
        assert_eq!(ok("k1", "", body), Err(SignatureError::Mismatch));
        assert_eq!(
            keys.verify(None, Some(b"x"), body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(Some(b"k1"), None, body),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_document_of_anything_but_p256_keys_is_refused() {
        assert!(matches!(
            ScannerKeys::parse(b"[]"),
            Err(KeysError::NotTheDocument(_))
        ));
        assert_eq!(
            ScannerKeys::parse(br#"{"public_keys": []}"#).unwrap_err(),
            KeysError::Empty
        );
        assert_eq!(
            ScannerKeys::parse(&document(&[("a", "not pem")])).unwrap_err(),
            KeysError::NotPem("a".to_owned())
        );
        let rsa_like = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            ScannerKeys::parse(&document(&[("ed", &rsa_like.public_key_pem())])).unwrap_err(),
            KeysError::NotP256("ed".to_owned())
        );
    }
}
