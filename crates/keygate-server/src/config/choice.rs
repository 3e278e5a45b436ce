//! Settings with a closed set of spellings (`backend = "redis"`, `by = "key"`, ...), typed as
//! enums when the file is read.
//!
//! A value outside the set is kept as [`Choice::Other`] rather than failing the parse: serde
//! stops a whole file at its first unknown variant, while compile reports every problem of the
//! file in one pass, each with its own message and line.

use std::ops::Range;

use serde::{Deserialize, Deserializer};

use super::errors::Errors;
use keygate_core::key_format::Alphabet;
use keygate_core::legacy_format::Charset;

use crate::policy::ratelimit::LimitBy;
use crate::policy::ws::{AuthMode, ClientMessages, OnSuspend, OnViolation};

/// One of `T`'s spellings, or what the file wrote instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice<T> {
    Known(T),
    Other(String),
}

/// A type whose values a configuration names by fixed words.
pub(crate) trait Spelled: Sized + Copy + PartialEq + 'static {
    const SPELLINGS: &'static [(&'static str, Self)];

    /// How a file writes this value (for messages about it).
    fn spelling(self) -> &'static str {
        Self::SPELLINGS
            .iter()
            .find(|(_, value)| *value == self)
            .map_or("", |(name, _)| name)
    }
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

impl<T: Spelled> Choice<T> {
    /// The choice `what` wrote, or `None` with an error at `span` naming every spelling
    /// (`limits.backend `x` is not `local` or `redis``): one message for every closed set.
    pub(super) fn read(
        raw: Option<&Choice<T>>,
        what: &str,
        span: Option<&Range<usize>>,
        errors: &mut Errors<'_>,
    ) -> Option<T> {
        match raw? {
            Choice::Known(value) => Some(*value),
            Choice::Other(other) => {
                let names: Vec<String> =
                    T::SPELLINGS.iter().map(|(n, _)| format!("`{n}`")).collect();
                let listed = match names.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                };
                errors.at(span, format!("{what} `{other}` is not {listed}"));
                None
            }
        }
    }
}

/// `[limits] backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Local,
    Redis,
}

/// `[server] upstream_engine`.
impl Spelled for crate::policy::upstream::Engine {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("hyper", crate::policy::upstream::Engine::Hyper),
        ("direct", crate::policy::upstream::Engine::Direct),
    ];
}

impl Spelled for Backend {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("local", Backend::Local), ("redis", Backend::Redis)];
}

/// `[leak_reports] action`.
impl Spelled for keygate_store::LeakAction {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("revoke", keygate_store::LeakAction::Revoke),
        ("flag", keygate_store::LeakAction::Flag),
    ];
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

impl Spelled for AuthMode {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("handshake", AuthMode::Handshake),
        ("login_message", AuthMode::LoginMessage),
        ("close_code", AuthMode::CloseCode),
    ];
}

impl Spelled for OnViolation {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("error", OnViolation::Error), ("close", OnViolation::Close)];
}

impl Spelled for OnSuspend {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("notify", OnSuspend::Notify), ("close", OnSuspend::Close)];
}

impl Spelled for ClientMessages {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("json", ClientMessages::Json), ("any", ClientMessages::Any)];
}

/// `[profile.ws] unknown_channels`: what a channel the map does not name gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnknownChannels {
    Refuse,
    Allow,
}

impl Spelled for UnknownChannels {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("refuse", UnknownChannels::Refuse),
        ("allow", UnknownChannels::Allow),
    ];
}

/// `connections_per_day_by`: a WebSocket day counts per client or per key (not per source:
/// a session always has a key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DayBy(pub(crate) LimitBy);

impl Spelled for DayBy {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("client", DayBy(LimitBy::Client)),
        ("key", DayBy(LimitBy::Key)),
    ];
}

impl Spelled for Alphabet {
    const SPELLINGS: &'static [(&'static str, Self)] =
        &[("base62", Alphabet::Base62), ("hex", Alphabet::Hex)];
}

impl Spelled for Charset {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("base62", Charset::Base62),
        ("hex", Charset::Hex),
        ("base64url", Charset::Base64Url),
    ];
}

/// A route's `selfservice` action, before its other keys (`child_param`) are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SelfServiceWord {
    Register,
    Me,
    RegenerateKey,
    RegenerateChildKey,
}

impl Spelled for SelfServiceWord {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("register", SelfServiceWord::Register),
        ("me", SelfServiceWord::Me),
        ("regenerate_key", SelfServiceWord::RegenerateKey),
        ("regenerate_child_key", SelfServiceWord::RegenerateChildKey),
    ];
}

impl Spelled for super::compile_portal::CpuPriority {
    const SPELLINGS: &'static [(&'static str, Self)] = &[
        ("idle", Self::Idle),
        ("low", Self::Low),
        ("normal", Self::Normal),
    ];
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
