//! The signature receivers verify: `Keygate-Signature: t=<unix seconds>,v1=<hex>`, where the hex
//! is HMAC-SHA256 keyed with the webhook's secret over `"<t>.<body>"`. The timestamp is signed
//! with the body, so a receiver that refuses old timestamps also refuses replays of a captured
//! request; `v1` names the scheme so another can be added beside it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub const SIGNATURE_HEADER: &str = "Keygate-Signature";

/// The header's value for `body` sent at `t` (Unix seconds).
pub fn signature_header(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("t={t},v1={}", keygate_core::digest::hex(&tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_vector() {
        // `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test`
        assert_eq!(
            signature_header(b"whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }
}
