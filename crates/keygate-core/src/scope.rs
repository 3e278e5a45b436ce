//! Scope tokens: `live_scores`, `cs2:matches:read`, `cs2:stream:markets`.
//!
//! A scope is one or more segments joined by `:`; each segment is lowercase ASCII letters,
//! digits, `_`, `-` or `.`. The grammar is strict so that a typo in an operator's command line
//! (`cs2 matches read`, `cs2::read`) is refused instead of silently granting nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted scope.
pub const MAX_SCOPE_LEN: usize = 128;

/// A validated scope token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Box<str>);

/// A string that is not a scope token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a scope; scopes are tokens like `live_scores` or `cs2:matches:read` (lowercase letters, digits, `_`, `-`, `.`, segments joined by `:`)")]
pub struct ScopeError {
    pub input: String,
}

impl Scope {
    /// Validates a scope token.
    ///
    /// # Errors
    /// [`ScopeError`] quoting the input.
    ///
    /// ```
    /// use keygate_core::Scope;
    /// assert!(Scope::new("cs2:matches:read").is_ok());
    /// assert!(Scope::new("cs2::read").is_err());
    /// ```
    pub fn new(input: &str) -> Result<Self, ScopeError> {
        let ok = !input.is_empty()
            && input.len() <= MAX_SCOPE_LEN
            && input.split(':').all(|seg| {
                !seg.is_empty()
                    && seg.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'_' | b'-' | b'.')
                    })
            });
        if ok {
            Ok(Scope(input.into()))
        } else {
            Err(ScopeError {
                input: input.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::new(s)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn seed_scopes_are_valid() {
        for s in [
            "cs2:matches:list",
            "cs2:markets:settlements",
            "cs2:stream:markets",
            "fixtures",
            "live_scores",
            "live_scores_statistics",
            "final_scores",
        ] {
            assert_eq!(Scope::new(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for s in [
            "",
            ":",
            "cs2:",
            ":cs2",
            "cs2::read",
            "Live",
            "a b",
            "a,b",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(Scope::new(s).is_err(), "{s:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in ".{0,40}") {
            if let Ok(scope) = Scope::new(&s) {
                prop_assert_eq!(scope.as_str(), s.as_str());
            }
        }
    }
}
