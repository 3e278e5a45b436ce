//! Two DER fields no crate of ours exposes: a certificate's not-after time, for `/status`, by a
//! minimal walk over the fixed start of `TBSCertificate` (RFC 5280 §4.1); and the point of a
//! P-256 public key in a `SubjectPublicKeyInfo` (RFC 5480), which ring verifies with but does
//! not parse. Each is a few fixed elements: a DER crate would add more than it saves.

/// One DER element at the start of `input`: (tag, contents, rest). Lengths up to 4 bytes.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
/// `id-ecPublicKey` (1.2.840.10045.2.1) then `secp256r1` (1.2.840.10045.3.1.7), as DER.
const EC_P256_ALGORITHM: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
    0x03, 0x01, 0x07,
];

/// The uncompressed point (`04 || X || Y`) of a P-256 `SubjectPublicKeyInfo`; `None` for any
/// other algorithm or shape. ring checks that the point is on the curve when it verifies.
pub(crate) fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, info, []) = element(spki)? else {
        return None;
    };
    let (SEQUENCE, algorithm, rest) = element(info)? else {
        return None;
    };
    if algorithm != EC_P256_ALGORITHM {
        return None;
    }
    let (BIT_STRING, bits, []) = element(rest)? else {
        return None;
    };
    match bits {
        [0, point @ ..] if point.len() == 65 && point[0] == 4 => Some(point),
        _ => None,
    }
}
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's not-after time as RFC 3339 (`2027-01-31T12:00:00Z`); `None` when the
/// DER does not have the shape RFC 5280 gives it.
pub(crate) fn not_after(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    let (_serial, _, rest) = element(rest)?;
    let (_signature, _, rest) = element(rest)?;
    let (_issuer, _, rest) = element(rest)?;
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (_not_before, _, validity) = element(validity)?;
    let (tag, time, _) = element(validity)?;
    let time = std::str::from_utf8(time).ok()?;
    let digits = time.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // UTCTime: YY < 50 is 20YY (RFC 5280 §4.1.2.5.1).
        (UTC_TIME, 12) => {
            let century = if &digits[..2] < "50" { "20" } else { "19" };
            format!("{century}{digits}")
        }
        (GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_not_after_of_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()).as_deref(),
            Some("2031-07-09T00:00:00Z")
        );
        // GeneralizedTime from 2050 on.
        params.not_after = rcgen::date_time_ymd(2061, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()).as_deref(),
            Some("2061-01-02T00:00:00Z")
        );
    }

    #[test]
    fn reads_the_point_of_a_p256_key_and_nothing_else() {
        use rcgen::PublicKeyData as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = key.subject_public_key_info();
        let point = p256_point(&spki).unwrap();
        assert_eq!(point, key.der_bytes());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(p256_point(&p384.subject_public_key_info()), None);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(p256_point(&ed.subject_public_key_info()), None);
        let mut trailing = spki.clone();
        trailing.push(0);
        assert_eq!(p256_point(&trailing), None);
        assert_eq!(p256_point(&spki[..spki.len() - 1]), None);
        assert_eq!(p256_point(b""), None);
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
