//! Settings with a closed set of spellings (`backend = "redis"`, `by = "key"`, ...), typed as
//! enums when the file is read.
//!
//! A value outside the set is kept as [`Choice::Other`] rather than failing the parse: serde
//! stops a whole file at its first unknown variant, while compile reports every problem of the
//! file in one pass, each with its own message and line.

use serde::{Deserialize, Deserializer};

use crate::policy::ratelimit::LimitBy;

/// One of `T`'s spellings, or what the file wrote instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice<T> {
    Known(T),
    Other(String),
}

/// A type whose values a configuration names by fixed words.
pub(crate) trait Spelled: Sized + Copy + 'static {
    const SPELLINGS: &'static [(&'static str, Self)];
}

impl<'de, T: Spelled> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = String::deserialize(d)?;
        Ok(T::SPELLINGS
            .iter()
            .find(|(name, _)| *name == written)
            .map_or(Choice::Other(written), |&(_, value)| Choice::Known(value)))
    }
}

/// `[limits] backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Local,
    Redis,
}

impl Spelled for Backend {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("local", Backend::Local), ("redis", Backend::Redis)];
}

impl Spelled for LimitBy {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("client", LimitBy::Client),
        ("key", LimitBy::Key),
        ("source", LimitBy::Source),
    ];
}

/// `[profile.rate_limit_headers] reset`: an epoch timestamp or seconds from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reset {
    Epoch,
    Delta,
}

impl Spelled for Reset {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("epoch", Reset::Epoch), ("delta", Reset::Delta)];
}

/// `[profile.rate_limit_headers] when`: on answers the limiter counted, or on every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    Limited,
    Always,
}

impl Spelled for When {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("limited", When::Limited), ("always", When::Always)];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        by: Choice<LimitBy>,
        backend: Choice<Backend>,
    }

    #[test]
    fn a_known_word_is_typed_and_any_other_is_kept_for_the_message() {
        let doc: Doc = toml::from_str("by = \"key\"\nbackend = \"Redis \"").unwrap();
        assert_eq!(doc.by, Choice::Known(LimitBy::Key));
        assert_eq!(doc.backend, Choice::Other("Redis ".to_owned()));
        // Not a string at all is still the parser's error.
        assert!(toml::from_str::<Doc>("by = 1\nbackend = \"local\"").is_err());
    }
}
