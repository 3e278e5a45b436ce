//! Channel authorization: each channel a client asks for maps to a scope (profile
//! `[profile.ws.channels]`); channels whose scope the client lacks are refused one by one and
//! never reach the upstream.
//!
//! A channel's scope may name the session's sport, `{sport}:stream:matches` (seed 001's
//! scopes are per sport namespace, and its stream is `/{sport}/v1/stream`): it is the value of
//! the route's `sport_param` in the upgrade's path. A session without a sport, or whose sport
//! is not one run of scope characters, is granted no such channel.

use keygate_core::policy::Grantee;

use super::ws::{ChannelMap, ChannelRule};

/// Most channels one message may name.
pub(crate) const MAX_CHANNELS_PER_MESSAGE: usize = 64;
/// Most channels one session may hold at once.
pub(crate) const MAX_CHANNELS_PER_SESSION: usize = 256;
/// Longest channel name.
pub(crate) const MAX_CHANNEL_LEN: usize = 256;

/// A `channels` value that is not a list of channel names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelListError;

/// Reads a channel list: one name, or an array of names (bounded in count and length).
///
/// # Errors
/// [`ChannelListError`] for anything else.
pub(crate) fn channel_list(value: &serde_json::Value) -> Result<Vec<String>, ChannelListError> {
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= MAX_CHANNEL_LEN => {
            Ok(s.clone())
        }
        _ => Err(ChannelListError),
    };
    match value {
        serde_json::Value::Array(items) if items.len() <= MAX_CHANNELS_PER_MESSAGE => {
            items.iter().map(one).collect()
        }
        serde_json::Value::Array(_) => Err(ChannelListError),
        v => one(v).map(|c| vec![c]),
    }
}

/// A channel refused, and the scope it needed (none for a channel the map does not know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub channel: String,
    pub scope: Option<String>,
    /// The client has the scope and its key was narrowed without it: `key_scope_missing`,
    /// as on REST (`keygate_core::policy::check_scopes`), not `scope_missing`.
    pub by_key: bool,
}

impl Refused {
    /// The refusal's reason code.
    pub(crate) fn reason(&self) -> keygate_core::decision::Reason {
        use keygate_core::decision::Reason;
        if self.by_key {
            Reason::KeyScopeMissing
        } else {
            Reason::ScopeMissing
        }
    }
}

/// Channels split into those the client may see and those it may not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    pub granted: Vec<String>,
    pub refused: Vec<Refused>,
}

impl Grant {
    pub(crate) fn refused_names(&self) -> Vec<String> {
        self.refused.iter().map(|r| r.channel.clone()).collect()
    }
}

/// The placeholder a channel's scope may use for the session's sport.
pub(crate) const SPORT: &str = "{sport}";

/// A channel scope with the session's sport filled in; `None` when it names the sport and the
/// session has none (or one that is no run of scope characters), so it is never granted.
fn resolve<'s>(scope: &'s str, sport: Option<&str>) -> Option<std::borrow::Cow<'s, str>> {
    if !scope.contains(SPORT) {
        return Some(scope.into());
    }
    let sport = sport.filter(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
    })?;
    Some(scope.replace(SPORT, sport).into())
}

/// Whether a client may see one channel in a session on `sport` (the route's `sport_param`).
pub(crate) fn allowed<'a>(
    map: &ChannelMap,
    who: impl Into<Grantee<'a>>,
    sport: Option<&str>,
    channel: &str,
) -> Result<(), Refused> {
    let who = who.into();
    match map.rule(channel) {
        ChannelRule::Open => Ok(()),
        ChannelRule::Scope(s) => match resolve(s, sport) {
            Some(scope) if who.has_scope(&scope) => Ok(()),
            resolved => Err(Refused {
                channel: channel.to_owned(),
                by_key: resolved
                    .as_deref()
                    .is_some_and(|scope| who.client.has_scope(scope)),
                scope: Some(resolved.map_or_else(|| s.to_owned(), |r| r.into_owned())),
            }),
        },
        ChannelRule::Unknown => Err(Refused {
            channel: channel.to_owned(),
            scope: None,
            by_key: false,
        }),
    }
}

/// Splits `channels` by what `client` may see in a session on `sport`, keeping their order
/// (duplicates dropped).
pub(crate) fn grant<'a>(
    map: &ChannelMap,
    who: impl Into<Grantee<'a>>,
    sport: Option<&str>,
    channels: Vec<String>,
) -> Grant {
    let who = who.into();
    let mut g = Grant::default();
    for c in channels {
        if g.granted.contains(&c) || g.refused.iter().any(|r| r.channel == c) {
            continue;
        }
        match allowed(map, who, sport, &c) {
            Ok(()) => g.granted.push(c),
            Err(r) => g.refused.push(r),
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keygate_core::policy::ClientPolicy;
    use keygate_core::{ClientId, LimitOverrides};

    use super::*;

    fn client(scopes: &[&str]) -> ClientPolicy {
        ClientPolicy {
            id: ClientId::generate(),
            name: "Acme".into(),
            plan: "pro".into(),
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            sports: vec![],
            bookmakers: vec![],
            features: vec![],
            limits: LimitOverrides::default(),
            active: true,
            selects_bookmakers: false,
        }
    }

    #[test]
    fn lists() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(channel_list(&v(r#""a""#)), Ok(vec!["a".to_owned()]));
        assert_eq!(channel_list(&v(r#"["a","b"]"#)).unwrap().len(), 2);
        assert_eq!(channel_list(&v("[]")), Ok(vec![]));
        for bad in [r#"[1]"#, r#""""#, "{}", "3", r#"[["a"]]"#] {
            assert_eq!(channel_list(&v(bad)), Err(ChannelListError), "{bad}");
        }
        let many = serde_json::Value::Array(vec!["a".into(); MAX_CHANNELS_PER_MESSAGE + 1]);
        assert_eq!(channel_list(&many), Err(ChannelListError));
        let long = serde_json::Value::String("a".repeat(MAX_CHANNEL_LEN + 1));
        assert_eq!(channel_list(&long), Err(ChannelListError));
    }

    #[test]
    fn a_scope_may_name_the_sessions_sport() {
        let mut m = BTreeMap::new();
        m.insert("matches".to_owned(), "{sport}:stream:matches".to_owned());
        let map = ChannelMap::new(&m, false);
        let c = client(&["cs2:stream:matches"]);
        assert_eq!(allowed(&map, &c, Some("cs2"), "matches"), Ok(()));
        let refused = |sport| allowed(&map, &c, sport, "matches").unwrap_err().scope;
        assert_eq!(
            refused(Some("dota2")).as_deref(),
            Some("dota2:stream:matches")
        );
        assert_eq!(refused(None).as_deref(), Some("{sport}:stream:matches"));
        assert_eq!(
            refused(Some("cs2:admin")).as_deref(),
            Some("{sport}:stream:matches")
        );
        assert_eq!(refused(Some("")).as_deref(), Some("{sport}:stream:matches"));
    }

    #[test]
    fn grants_by_scope() {
        // Seed 001's stream scopes: cs2:stream:matches, cs2:stream:markets.
        let mut m = BTreeMap::new();
        m.insert("matches".to_owned(), "cs2:stream:matches".to_owned());
        m.insert("markets".to_owned(), "cs2:stream:markets".to_owned());
        let map = ChannelMap::new(&m, false);
        let g = grant(
            &map,
            &client(&["cs2:stream:matches"]),
            None,
            vec![
                "matches".into(),
                "markets".into(),
                "other".into(),
                "matches".into(),
            ],
        );
        assert_eq!(g.granted, ["matches"]);
        assert_eq!(
            g.refused,
            [
                Refused {
                    channel: "markets".into(),
                    scope: Some("cs2:stream:markets".into()),
                    by_key: false,
                },
                Refused {
                    channel: "other".into(),
                    scope: None,
                    by_key: false,
                }
            ]
        );
    }

    #[test]
    fn a_scope_the_key_was_narrowed_away_from_is_the_keys_refusal() {
        use keygate_core::decision::Reason;
        use keygate_core::policy::KeyRules;
        let mut m = BTreeMap::new();
        m.insert("matches".to_owned(), "cs2:stream:matches".to_owned());
        m.insert("markets".to_owned(), "cs2:stream:markets".to_owned());
        let map = ChannelMap::new(&m, false);
        // Sorted, as the replica keeps a client's scopes.
        let c = client(&["cs2:stream:markets", "cs2:stream:matches"]);
        let rules = KeyRules {
            scopes: Some(vec!["cs2:stream:matches".into()]),
            source: keygate_core::key_restrictions::KeyRestrictions::default(),
        };
        let who = Grantee {
            client: &c,
            key: Some(&rules),
        };
        assert_eq!(allowed(&map, who, None, "matches"), Ok(()));
        let refused = allowed(&map, who, None, "markets").unwrap_err();
        assert!(refused.by_key);
        assert_eq!(refused.reason(), Reason::KeyScopeMissing);
        let unscoped = client(&["cs2:stream:matches"]);
        let refused = allowed(&map, &unscoped, None, "markets").unwrap_err();
        assert_eq!(refused.reason(), Reason::ScopeMissing);
    }
}
