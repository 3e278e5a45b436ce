//! Key shapes of the system keygate replaces, accepted beside the deployment's own format so
//! imported keys keep working (`[[keys.legacy]]`).
//!
//! A legacy shape has a prefix, a length and a character set, and no checksum: it is what an
//! older issuer printed. The gateway still refuses anything of neither shape before a lookup,
//! so a legacy format widens what is looked up, never what is accepted without one.

use std::fmt;

use crate::key_format::{hint_of, KeyFormat, MAX_BODY_LEN, MAX_PREFIX_LEN, MIN_ENTROPY_BITS};

/// The characters a legacy key's body may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `0-9A-Za-z`.
    Base62,
    /// `0-9a-f`.
    Hex,
    /// `0-9A-Za-z-_` (RFC 4648's URL-safe base64 without padding).
    Base64Url,
}

impl Charset {
    fn contains(self, b: u8) -> bool {
        match self {
            Charset::Base62 => b.is_ascii_alphanumeric(),
            Charset::Hex => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            Charset::Base64Url => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
        }
    }

    fn bits_per_char(self) -> f64 {
        match self {
            Charset::Base62 => 62f64.log2(),
            Charset::Hex => 4.0,
            Charset::Base64Url => 6.0,
        }
    }
}

impl fmt::Display for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Charset::Base62 => "base62",
            Charset::Hex => "hex",
            Charset::Base64Url => "base64url",
        })
    }
}

/// A legacy shape that keygate will not accept.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LegacyFormatError {
    #[error(
        "legacy prefix `{0}` must be at most {MAX_PREFIX_LEN} characters of A-Z, a-z, 0-9, `_` or `-`"
    )]
    BadPrefix(String),
    #[error("a legacy body of {len} {charset} characters carries {bits:.0} bits of entropy; at least {MIN_ENTROPY_BITS} are required")]
    TooLittleEntropy {
        len: usize,
        charset: Charset,
        bits: f64,
    },
    #[error("a legacy key body may have at most {MAX_BODY_LEN} characters, not {0}")]
    BodyTooLong(usize),
    #[error("legacy format `{prefix}` + {len} characters has the length and prefix of the profile's own keys, which have no checksum to tell them apart; keys of both shapes would be ambiguous")]
    OverlapsOwnFormat { prefix: String, len: usize },
}

/// One legacy shape: `{prefix}{body}`, the body `len` characters of `charset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyFormat {
    prefix: String,
    charset: Charset,
    body_len: usize,
}

impl LegacyFormat {
    /// Builds a legacy shape, refusing unsafe prefixes and bodies under 128 bits (the same floor
    /// as the deployment's own keys: a guessable key is not worth keeping) and a shape the own
    /// format could also match with no checksum to tell them apart (their digests differ under
    /// a keyed digest, see [`crate::Digester::legacy`]).
    ///
    /// # Errors
    /// [`LegacyFormatError`] names what is wrong.
    ///
    /// ```
    /// use keygate_core::legacy_format::{Charset, LegacyFormat};
    /// use keygate_core::KeyFormat;
    /// let own = KeyFormat::default();
    /// let stripe = LegacyFormat::new("sk_live_", Charset::Base62, 24, &own).unwrap();
    /// assert!(stripe.matches("sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
    /// assert!(!stripe.matches("sk_live_4eC39HqLyjWDarjtT1zdp7d"));
    /// ```
    pub fn new(
        prefix: &str,
        charset: Charset,
        body_len: usize,
        own: &KeyFormat,
    ) -> Result<Self, LegacyFormatError> {
        let prefix_ok = prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err(LegacyFormatError::BadPrefix(prefix.to_owned()));
        }
        if body_len > MAX_BODY_LEN {
            return Err(LegacyFormatError::BodyTooLong(body_len));
        }
        let bits = body_len as f64 * charset.bits_per_char();
        if bits + 1e-9 < MIN_ENTROPY_BITS {
            return Err(LegacyFormatError::TooLittleEntropy {
                len: body_len,
                charset,
                bits,
            });
        }
        let format = LegacyFormat {
            prefix: prefix.to_owned(),
            charset,
            body_len,
        };
        let prefixes_nest = prefix.starts_with(own.prefix()) || own.prefix().starts_with(prefix);
        if !own.has_checksum() && prefixes_nest && format.key_len() == own.key_len() {
            return Err(LegacyFormatError::OverlapsOwnFormat {
                prefix: prefix.to_owned(),
                len: body_len,
            });
        }
        Ok(format)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn charset(&self) -> Charset {
        self.charset
    }

    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// Total length of every key of this shape.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + self.body_len
    }

    /// True when `candidate` has this shape: prefix, length and characters (no checksum).
    pub fn matches(&self, candidate: &str) -> bool {
        let bytes = candidate.as_bytes();
        bytes.len() == self.key_len()
            && bytes.starts_with(self.prefix.as_bytes())
            && bytes[self.prefix.len()..]
                .iter()
                .all(|&b| self.charset.contains(b))
    }

    /// The masked hint of a key of this shape: prefix, `...`, last four characters.
    pub fn hint(&self, key: &str) -> String {
        hint_of(&self.prefix, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Alphabet;

    #[test]
    fn shapes_are_checked_by_prefix_length_and_charset() {
        let own = KeyFormat::default();
        let hex = LegacyFormat::new("old_", Charset::Hex, 32, &own).unwrap();
        let body = "0123456789abcdef0123456789abcdef";
        assert!(hex.matches(&format!("old_{body}")));
        assert!(!hex.matches(&format!("new_{body}")));
        assert!(!hex.matches(&format!("old_{}", body.to_uppercase())));
        assert!(!hex.matches(&format!("old_{body}0")));
        assert!(!hex.matches("old_"));
        let url = LegacyFormat::new("", Charset::Base64Url, 22, &own).unwrap();
        assert!(url.matches("Ab-_0123456789abcdefgh"));
        assert!(!url.matches("Ab+/0123456789abcdefgh"));
        assert_eq!(hex.hint(&format!("old_{body}")), "old_...cdef");
    }

    #[test]
    fn weak_unsafe_or_ambiguous_shapes_are_refused() {
        let own = KeyFormat::default();
        assert!(matches!(
            LegacyFormat::new("x_", Charset::Hex, 31, &own),
            Err(LegacyFormatError::TooLittleEntropy { .. })
        ));
        assert!(matches!(
            LegacyFormat::new("x y", Charset::Hex, 32, &own),
            Err(LegacyFormatError::BadPrefix(_))
        ));
        assert!(matches!(
            LegacyFormat::new("x", Charset::Hex, 129, &own),
            Err(LegacyFormatError::BodyTooLong(129))
        ));
        let no_checksum = KeyFormat::new("os_live_", Alphabet::Hex, 32, false).unwrap();
        assert!(matches!(
            LegacyFormat::new("os_", Charset::Hex, 37, &no_checksum),
            Err(LegacyFormatError::OverlapsOwnFormat { .. })
        ));
        // Another length, or an own format with a checksum, tells the shapes apart.
        assert!(LegacyFormat::new("os_", Charset::Hex, 36, &no_checksum).is_ok());
        assert!(LegacyFormat::new("kg_", Charset::Base62, 36, &own).is_ok());
    }
}
