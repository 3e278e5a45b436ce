//! Key format: `{prefix}{body}{checksum}`, generation from the OS CSPRNG, and the offline parser.
//!
//! The parser runs on every request before any lookup, so a malformed key costs a length
//! comparison and one pass over its bytes, never a digest or a map probe. The optional checksum
//! is CRC-32 of prefix + body, encoded in the key's own alphabet (6 base62 or 8 hex characters).
//! CRC-32 detects every burst error of up to 32 bits, so any single changed character (at most 8
//! changed bits) is always caught; secret scanners and the gateway can reject typos and fakes
//! without the store.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The characters a key body (and checksum) may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `0-9A-Za-z`, about 5.95 bits per character.
    Base62,
    /// `0-9a-f`, 4 bits per character.
    Hex,
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Keys below this entropy are refused at configuration time.
pub const MIN_ENTROPY_BITS: f64 = 128.0;
/// Longest prefix a format may declare.
pub const MAX_PREFIX_LEN: usize = 32;
/// Longest body a format may declare.
pub const MAX_BODY_LEN: usize = 128;

impl Alphabet {
    fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Base62 => BASE62,
            Alphabet::Hex => HEX,
        }
    }

    fn contains(self, b: u8) -> bool {
        match self {
            Alphabet::Base62 => b.is_ascii_alphanumeric(),
            Alphabet::Hex => b.is_ascii_digit() | (b'a'..=b'f').contains(&b),
        }
    }

    /// Whether every byte is of the alphabet: one pass with no early exit and one loop per
    /// alphabet, which the compiler turns into vector compares (the per-byte `position` it
    /// replaces was most of a key's offline check, and runs on every request).
    fn contains_all(self, bytes: &[u8]) -> bool {
        match self {
            Alphabet::Base62 => bytes
                .iter()
                .fold(true, |ok, &b| ok & Alphabet::Base62.contains(b)),
            Alphabet::Hex => bytes
                .iter()
                .fold(true, |ok, &b| ok & Alphabet::Hex.contains(b)),
        }
    }

    fn bits_per_char(self) -> f64 {
        (self.symbols().len() as f64).log2()
    }

    /// Characters needed to encode a 32-bit checksum.
    fn checksum_len(self) -> usize {
        match self {
            Alphabet::Base62 => 6, // 62^6 ≈ 5.7e10 > 2^32
            Alphabet::Hex => 8,
        }
    }

    fn encode_u32(self, value: u32, out: &mut [u8]) {
        // A constant radix per alphabet: division by a constant is a multiplication, by a
        // variable a hardware divide per character.
        fn encode<const RADIX: usize>(symbols: &[u8; RADIX], mut value: u32, out: &mut [u8]) {
            for slot in out.iter_mut().rev() {
                *slot = symbols[value as usize % RADIX];
                value /= RADIX as u32;
            }
        }
        match self {
            Alphabet::Base62 => encode(BASE62, value, out),
            Alphabet::Hex => encode(HEX, value, out),
        }
    }
}

impl fmt::Display for Alphabet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Alphabet::Base62 => "base62",
            Alphabet::Hex => "hex",
        })
    }
}

/// Why a candidate key was rejected offline. Each variant has a stable [`code`](Self::code).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not start with the expected prefix `{expected}`")]
    WrongPrefix { expected: String },
    #[error("the key has {actual} characters where {expected} are expected")]
    WrongLength { expected: usize, actual: usize },
    #[error("the key has a character outside the {alphabet} alphabet at position {position}")]
    BadCharacter { alphabet: Alphabet, position: usize },
    #[error("the key's checksum does not match (a typo or a made-up key)")]
    BadChecksum,
}

impl KeyFormatError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyFormatError::WrongPrefix { .. } => "wrong_prefix",
            KeyFormatError::WrongLength { .. } => "wrong_length",
            KeyFormatError::BadCharacter { .. } => "bad_character",
            KeyFormatError::BadChecksum => "bad_checksum",
        }
    }
}

/// A format that cannot produce safe, parseable keys.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FormatConfigError {
    #[error(
        "key prefix `{0}` must be at most {MAX_PREFIX_LEN} characters of A-Z, a-z, 0-9, `_` or `-`"
    )]
    BadPrefix(String),
    #[error("a body of {len} {alphabet} characters carries {bits:.0} bits of entropy; at least {MIN_ENTROPY_BITS} are required")]
    TooLittleEntropy {
        len: usize,
        alphabet: Alphabet,
        bits: f64,
    },
    #[error("a key body may have at most {MAX_BODY_LEN} characters, not {0}")]
    BodyTooLong(usize),
}

/// How keys of one deployment look: prefix, alphabet, body length, checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFormat {
    prefix: String,
    alphabet: Alphabet,
    body_len: usize,
    checksum: bool,
}

impl Default for KeyFormat {
    /// `kg_` + 30 base62 characters (≈178 bits) + a 6-character checksum.
    fn default() -> Self {
        KeyFormat {
            prefix: "kg_".to_owned(),
            alphabet: Alphabet::Base62,
            body_len: 30,
            checksum: true,
        }
    }
}

impl KeyFormat {
    /// Builds a format, refusing prefixes with unsafe characters and bodies under 128 bits.
    ///
    /// # Errors
    /// [`FormatConfigError`] names the setting that is wrong.
    ///
    /// ```
    /// use keygate_core::{Alphabet, KeyFormat};
    /// let oddsstream = KeyFormat::new("os_live_", Alphabet::Hex, 32, false).unwrap();
    /// assert!(oddsstream.check("os_live_a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4").is_ok());
    /// assert!(KeyFormat::new("x_", Alphabet::Hex, 16, false).is_err()); // 64 bits: too weak
    /// ```
    pub fn new(
        prefix: &str,
        alphabet: Alphabet,
        body_len: usize,
        checksum: bool,
    ) -> Result<Self, FormatConfigError> {
        let prefix_ok = prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return Err(FormatConfigError::BadPrefix(prefix.to_owned()));
        }
        if body_len > MAX_BODY_LEN {
            return Err(FormatConfigError::BodyTooLong(body_len));
        }
        let bits = body_len as f64 * alphabet.bits_per_char();
        // Tolerance for floating point: 32 hex characters are exactly 128 bits.
        if bits + 1e-9 < MIN_ENTROPY_BITS {
            return Err(FormatConfigError::TooLittleEntropy {
                len: body_len,
                alphabet,
                bits,
            });
        }
        Ok(KeyFormat {
            prefix: prefix.to_owned(),
            alphabet,
            body_len,
            checksum,
        })
    }

    /// The format of admin tokens: `kgadm_` + 32 base62 characters + checksum. Fixed, so the
    /// admin plane never depends on a profile's key format.
    pub fn admin_token() -> KeyFormat {
        KeyFormat {
            prefix: "kgadm_".to_owned(),
            alphabet: Alphabet::Base62,
            body_len: 32,
            checksum: true,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn alphabet(&self) -> Alphabet {
        self.alphabet
    }

    pub fn body_len(&self) -> usize {
        self.body_len
    }

    pub fn has_checksum(&self) -> bool {
        self.checksum
    }

    /// The regular expression that finds keys of this format in text, for secret scanners
    /// (GitHub's partner program asks for one): the prefix, then exactly the body and checksum
    /// characters, bounded so a longer token does not match. With the checksum a match is
    /// almost always a real key: the scanner can drop the rest offline (one in 2^32 made-up
    /// strings passes).
    ///
    /// ```
    /// let f = keygate_core::KeyFormat::default();
    /// assert_eq!(f.pattern(), r"\bkg_[0-9A-Za-z]{36}\b");
    /// ```
    pub fn pattern(&self) -> String {
        let class = match self.alphabet {
            Alphabet::Base62 => "[0-9A-Za-z]",
            Alphabet::Hex => "[0-9a-f]",
        };
        // A prefix is word characters and `-` only (checked in `new`); `-` needs no escape
        // outside a class.
        format!(
            r"\b{}{class}{{{}}}\b",
            self.prefix,
            self.key_len() - self.prefix.len()
        )
    }

    /// Total length of every key of this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len()
            + self.body_len
            + if self.checksum {
                self.alphabet.checksum_len()
            } else {
                0
            }
    }

    /// Generates a fresh key from the OS CSPRNG.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes; issuing a key without real entropy
    /// would be worse than stopping.
    pub fn generate(&self) -> SecretKey {
        self.generate_with(|buf| getrandom::fill(buf).expect("the OS CSPRNG must be available"))
    }

    /// Generates a key drawing random bytes from `fill` (tests pass a seeded source).
    pub fn generate_with(&self, mut fill: impl FnMut(&mut [u8])) -> SecretKey {
        let symbols = self.alphabet.symbols();
        let n = symbols.len();
        // Rejection sampling keeps every symbol equally likely.
        let limit = 256 - (256 % n);
        let mut out = Vec::with_capacity(self.key_len());
        out.extend_from_slice(self.prefix.as_bytes());
        let mut pool = [0u8; 64];
        while out.len() < self.prefix.len() + self.body_len {
            fill(&mut pool);
            for &b in &pool {
                if (b as usize) < limit && out.len() < self.prefix.len() + self.body_len {
                    out.push(symbols[b as usize % n]);
                }
            }
        }
        if self.checksum {
            let crc = crc32fast::hash(&out);
            let start = out.len();
            out.resize(start + self.alphabet.checksum_len(), 0);
            self.alphabet.encode_u32(crc, &mut out[start..]);
        }
        SecretKey(String::from_utf8(out).expect("key symbols are ASCII"))
    }

    /// Checks a candidate offline: prefix, length, alphabet and checksum, in that order.
    ///
    /// # Errors
    /// The first [`KeyFormatError`] found.
    pub fn check(&self, candidate: &str) -> Result<(), KeyFormatError> {
        let bytes = candidate.as_bytes();
        let prefix = self.prefix.as_bytes();
        // An empty prefix is not compared: libc's `memcmp` of an empty slice (whose pointer is
        // dangling) cost more than the whole check on the benchmark machine, likely an AVX-512
        // masked load's fault assist (BENCHMARKS.md, the decision).
        if !prefix.is_empty() && !bytes.starts_with(prefix) {
            return Err(KeyFormatError::WrongPrefix {
                expected: self.prefix.clone(),
            });
        }
        let expected = self.key_len();
        if bytes.len() != expected {
            return Err(KeyFormatError::WrongLength {
                expected,
                actual: candidate.chars().count(),
            });
        }
        let rest = &bytes[self.prefix.len()..];
        if !self.alphabet.contains_all(rest) {
            let position = rest
                .iter()
                .position(|&b| !self.alphabet.contains(b))
                .unwrap_or(0);
            return Err(KeyFormatError::BadCharacter {
                alphabet: self.alphabet,
                position: self.prefix.len() + position,
            });
        }
        if self.checksum {
            let split = self.prefix.len() + self.body_len;
            let mut want = [0u8; 8];
            let want = &mut want[..self.alphabet.checksum_len()];
            self.alphabet
                .encode_u32(crc32fast::hash(&bytes[..split]), want);
            if &bytes[split..] != want {
                return Err(KeyFormatError::BadChecksum);
            }
        }
        Ok(())
    }

    /// The masked hint shown in listings: prefix, `...`, last four characters.
    pub fn hint(&self, key: &SecretKey) -> String {
        hint_of(&self.prefix, key.expose())
    }
}

/// `prefix...wxyz`; the prefix is printed only if the key really starts with it.
pub fn hint_of(prefix: &str, key: &str) -> String {
    let tail_start = key.len().saturating_sub(4);
    let tail = key.get(tail_start..).unwrap_or("");
    let shown_prefix = if key.starts_with(prefix) { prefix } else { "" };
    format!("{shown_prefix}...{tail}")
}

/// A plaintext key. It exists in memory only between generation and the one response that
/// shows it; `Debug` prints nothing secret so it can never leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key received from a caller.
    pub fn new(key: impl Into<String>) -> Self {
        SecretKey(key.into())
    }

    /// The plaintext, for the one place that must show or digest it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", hint_of("", &self.0))
    }
}

#[cfg(test)]
mod tests;
