//! The scopes a route requires: fixed tokens, or templates over the route's path parameters.
//!
//! `{sport}:matches:list` on `/{sport}/v1/matches` asks a request to `/dota2/v1/matches` for
//! `dota2:matches:list`: one scope bundle per namespace, written once (seed 001's
//! `/{sport}/v1/*`). A template is parsed when the configuration loads, against the route's
//! parameter names, into text and parameter positions. A request is checked by comparing those
//! pieces, joined in place, with the client's sorted scopes: no string is built. Only a refusal
//! spells the resolved scope out, to name it.
//!
//! A parameter's value is used only when it is one run of scope characters (lowercase
//! letters, digits, `_`, `-`, `.`). Anything else, a `:` above all, can never be granted: with
//! `{sport}:read`, a path naming the sport `cs2:admin` must not resolve to a client's
//! `cs2:admin:read`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use crate::scope::{Scope, ScopeError};

/// One scope a route requires.
#[derive(Clone, PartialEq, Eq)]
pub enum ScopeNeed {
    /// A scope token, the same on every request (`cs2:matches:list`).
    Exact(Box<str>),
    /// A scope with path parameters in it (`{sport}:matches:list`).
    Template(ScopeTemplate),
}

/// A scope written with path parameters, parsed against a route's pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeTemplate {
    written: Box<str>,
    pieces: Box<[Piece]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    /// Position of the parameter among the route pattern's parameters.
    Param(usize),
}

/// A path parameter a template may name: its name, and whether it is a catch-all (`{*rest}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathParam<'a> {
    pub name: &'a str,
    pub catch_all: bool,
}

/// A scope in configuration that cannot be required.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeNeedError {
    /// Not a scope token (and no template).
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The template names a parameter the path does not have.
    #[error(
        "scope `{template}` names `{{{name}}}`, which is not a parameter of the path ({known})"
    )]
    UnknownParam {
        template: String,
        name: String,
        /// The parameters the path has, for the message.
        known: String,
    },
    /// The template names a catch-all, whose value may span segments.
    #[error("scope `{template}` names the catch-all `{{*{name}}}`; a scope can take only a one-segment parameter like `{{{name}}}`")]
    CatchAll { template: String, name: String },
    /// Braces that do not enclose a parameter name.
    #[error("scope `{template}` has a `{{` or `}}` that does not enclose a parameter name")]
    Malformed { template: String },
    /// Filled in, the template would not be a scope (`{sport}::list`).
    #[error("scope `{template}` is not a scope once its parameters are filled in; scopes are tokens like `{{sport}}:matches:read` (lowercase letters, digits, `_`, `-`, `.`, segments joined by `:`)")]
    Shape { template: String },
}

/// Whether `value` may stand for a parameter in a scope: one run of scope characters.
fn is_chunk(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

/// Compares `granted` with the concatenation of `parts`, byte by byte (as `str` orders).
fn cmp_joined<'p>(granted: &str, parts: impl Iterator<Item = &'p str>) -> Ordering {
    let mut rest = granted.as_bytes();
    for part in parts {
        let part = part.as_bytes();
        let n = part.len().min(rest.len());
        match rest[..n].cmp(&part[..n]) {
            Ordering::Equal if rest.len() < part.len() => return Ordering::Less,
            Ordering::Equal => rest = &rest[n..],
            other => return other,
        }
    }
    if rest.is_empty() {
        Ordering::Equal
    } else {
        Ordering::Greater
    }
}

fn known(params: &[PathParam<'_>]) -> String {
    let names: Vec<String> = params
        .iter()
        .map(|p| {
            if p.catch_all {
                format!("`{{*{}}}`", p.name)
            } else {
                format!("`{{{}}}`", p.name)
            }
        })
        .collect();
    if names.is_empty() {
        "the path has no parameters".to_owned()
    } else {
        format!("its parameters: {}", names.join(", "))
    }
}

impl ScopeTemplate {
    /// Parses `template` against the route's parameters, in the order of its pattern.
    ///
    /// # Errors
    /// [`ScopeNeedError`] naming what is wrong: an unknown or catch-all parameter, stray
    /// braces, or a shape that is not a scope.
    pub fn parse(template: &str, params: &[PathParam<'_>]) -> Result<Self, ScopeNeedError> {
        let malformed = || ScopeNeedError::Malformed {
            template: template.to_owned(),
        };
        let mut pieces = Vec::new();
        let mut filled = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (before, after) = rest.split_at(open);
            if before.contains('}') {
                return Err(malformed());
            }
            if !before.is_empty() {
                pieces.push(Piece::Text(before.into()));
                filled.push_str(before);
            }
            let close = after.find('}').ok_or_else(malformed)?;
            let inner = &after[1..close];
            let name = inner.strip_prefix('*').unwrap_or(inner);
            if name.is_empty() || name.contains('{') {
                return Err(malformed());
            }
            let index = params.iter().position(|p| p.name == name).ok_or_else(|| {
                ScopeNeedError::UnknownParam {
                    template: template.to_owned(),
                    name: name.to_owned(),
                    known: known(params),
                }
            })?;
            if params[index].catch_all || inner.starts_with('*') {
                return Err(ScopeNeedError::CatchAll {
                    template: template.to_owned(),
                    name: name.to_owned(),
                });
            }
            pieces.push(Piece::Param(index));
            filled.push('x');
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(malformed());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.into()));
            filled.push_str(rest);
        }
        if Scope::new(&filled).is_err() {
            return Err(ScopeNeedError::Shape {
                template: template.to_owned(),
            });
        }
        Ok(ScopeTemplate {
            written: template.into(),
            pieces: pieces.into(),
        })
    }

    /// The template as configured.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The pieces with `params` (a request's parameter values, in pattern order) in place.
    fn parts<'s>(&'s self, params: &'s [&'s str]) -> impl Iterator<Item = &'s str> + 's {
        self.pieces.iter().map(move |p| match p {
            Piece::Text(t) => &**t,
            Piece::Param(i) => params.get(*i).copied().unwrap_or(""),
        })
    }

    /// Whether `granted` (sorted, as `ClientPolicy::scopes`) holds this scope for `params`.
    pub fn is_granted(&self, granted: &[Box<str>], params: &[&str]) -> bool {
        let usable = self.pieces.iter().all(|p| match p {
            Piece::Text(_) => true,
            Piece::Param(i) => params.get(*i).is_some_and(|v| is_chunk(v)),
        });
        usable
            && granted
                .binary_search_by(|g| cmp_joined(g, self.parts(params)))
                .is_ok()
    }

    /// The scope for `params`, spelled out.
    pub fn resolve(&self, params: &[&str]) -> String {
        self.parts(params).collect()
    }
}

impl ScopeNeed {
    /// A scope as configuration writes it: a template when it has braces, else a token.
    /// `params` are the route pattern's parameters in order.
    ///
    /// ```
    /// use keygate_core::scope_need::{PathParam, ScopeNeed};
    ///
    /// let sport = [PathParam { name: "sport", catch_all: false }];
    /// let need = ScopeNeed::parse("{sport}:matches:list", &sport).unwrap();
    /// let granted: Vec<Box<str>> = vec!["dota2:matches:list".into()];
    /// assert!(need.is_granted(&granted, &["dota2"]));
    /// assert!(!need.is_granted(&granted, &["cs2"]));
    /// assert_eq!(need.resolve(&["cs2"]), "cs2:matches:list");
    /// assert!(ScopeNeed::parse("{league}:matches:list", &sport).is_err());
    /// ```
    ///
    /// # Errors
    /// [`ScopeNeedError`]: not a scope, or a template that cannot be resolved on this path.
    pub fn parse(text: &str, params: &[PathParam<'_>]) -> Result<Self, ScopeNeedError> {
        if text.contains(['{', '}']) {
            ScopeTemplate::parse(text, params).map(ScopeNeed::Template)
        } else {
            Ok(ScopeNeed::Exact(Scope::new(text)?.as_str().into()))
        }
    }

    /// Whether `granted` (sorted) holds this scope for a request with `params`.
    pub fn is_granted(&self, granted: &[Box<str>], params: &[&str]) -> bool {
        match self {
            ScopeNeed::Exact(s) => granted.binary_search_by(|g| (**g).cmp(&**s)).is_ok(),
            ScopeNeed::Template(t) => t.is_granted(granted, params),
        }
    }

    /// The scope a request with `params` needs, spelled out (for a refusal to name).
    pub fn resolve(&self, params: &[&str]) -> Cow<'_, str> {
        match self {
            ScopeNeed::Exact(s) => Cow::Borrowed(s),
            ScopeNeed::Template(t) => Cow::Owned(t.resolve(params)),
        }
    }

    /// The scope as configured.
    pub fn as_written(&self) -> &str {
        match self {
            ScopeNeed::Exact(s) => s,
            ScopeNeed::Template(t) => t.as_written(),
        }
    }

    pub fn is_template(&self) -> bool {
        matches!(self, ScopeNeed::Template(_))
    }
}

impl From<&str> for ScopeNeed {
    /// A fixed scope, taken as it is (configuration validates with [`ScopeNeed::parse`]).
    fn from(s: &str) -> Self {
        ScopeNeed::Exact(s.into())
    }
}

impl fmt::Debug for ScopeNeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_written(), f)
    }
}

impl fmt::Debug for ScopeTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.written, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ROUTE: [PathParam<'static>; 3] = [
        PathParam {
            name: "sport",
            catch_all: false,
        },
        PathParam {
            name: "id",
            catch_all: false,
        },
        PathParam {
            name: "rest",
            catch_all: true,
        },
    ];

    fn sorted(scopes: &[&str]) -> Vec<Box<str>> {
        let mut v: Vec<Box<str>> = scopes.iter().map(|s| (*s).into()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn templates_resolve_per_request_without_splicing() {
        let granted = sorted(&[
            "cs2:admin:read",
            "dota2:matches:list",
            "dota2:matches:read",
            "dota2_live:read",
            "x",
        ]);
        let need = ScopeNeed::parse("{sport}:matches:list", &ROUTE).unwrap();
        assert!(need.is_template());
        assert!(need.is_granted(&granted, &["dota2", "1", ""]));
        assert!(!need.is_granted(&granted, &["cs2", "1", ""]));
        assert_eq!(need.resolve(&["cs2"]), "cs2:matches:list");
        // Parameters inside a segment, and several of them.
        let live = ScopeNeed::parse("{sport}_live:read", &ROUTE).unwrap();
        assert!(live.is_granted(&granted, &["dota2"]));
        let both = ScopeNeed::parse("{sport}:matches:{id}", &ROUTE).unwrap();
        assert!(both.is_granted(&granted, &["dota2", "read"]));
        assert!(!both.is_granted(&granted, &["dota2", "write"]));
        // A value that is not one run of scope characters is never granted.
        let read = ScopeNeed::parse("{sport}:read", &ROUTE).unwrap();
        assert!(!read.is_granted(&granted, &["cs2:admin"]));
        assert_eq!(read.resolve(&["cs2:admin"]), "cs2:admin:read");
        for bad in ["", "CS2", "a b", "a%3Ab", "ü"] {
            let held = format!("{bad}:read");
            assert!(!read.is_granted(&sorted(&[held.as_str()]), &[bad]));
        }
        // Missing values (never from the router) are empty, never granted.
        assert!(!need.is_granted(&granted, &[]));
        assert!(ScopeNeed::parse("{sport}", &ROUTE)
            .unwrap()
            .is_granted(&granted, &["x"]));
    }

    #[test]
    fn exact_scopes_are_tokens() {
        let need = ScopeNeed::parse("cs2:matches:list", &ROUTE).unwrap();
        assert_eq!(need, ScopeNeed::Exact("cs2:matches:list".into()));
        assert!(need.is_granted(&sorted(&["cs2:matches:list"]), &[]));
        assert!(!need.is_granted(&sorted(&["cs2:matches"]), &[]));
        assert_eq!(need.resolve(&[]), "cs2:matches:list");
        assert!(matches!(
            ScopeNeed::parse("Bad Scope", &ROUTE),
            Err(ScopeNeedError::Scope(_))
        ));
    }

    #[test]
    fn bad_templates_say_why() {
        let err = ScopeNeed::parse("{league}:matches:list", &ROUTE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "scope `{league}:matches:list` names `{league}`, which is not a parameter of the path (its parameters: `{sport}`, `{id}`, `{*rest}`)"
        );
        let err = ScopeNeed::parse("{sport}:x", &[]).unwrap_err();
        assert!(
            err.to_string().contains("(the path has no parameters)"),
            "{err}"
        );
        for catch_all in ["{rest}:read", "{*rest}:read"] {
            assert!(matches!(
                ScopeNeed::parse(catch_all, &ROUTE),
                Err(ScopeNeedError::CatchAll { name, .. }) if name == "rest"
            ));
        }
        for malformed in [
            "{sport:x",
            "sport}:x",
            "{}:x",
            "{{sport}}:x",
            "{sport}}",
            "{*}:x",
        ] {
            assert!(
                matches!(
                    ScopeNeed::parse(malformed, &ROUTE),
                    Err(ScopeNeedError::Malformed { .. })
                ),
                "{malformed}"
            );
        }
        for shape in [
            "{sport}::list",
            "{sport}:Matches",
            ":{sport}",
            "{sport} read",
        ] {
            assert!(
                matches!(
                    ScopeNeed::parse(shape, &ROUTE),
                    Err(ScopeNeedError::Shape { .. })
                ),
                "{shape}"
            );
        }
    }

    proptest! {
        /// Comparing in place orders exactly as comparing the joined string.
        #[test]
        fn joined_comparison_is_string_order(
            granted in "[a-c:]{0,6}",
            parts in prop::collection::vec("[a-c:]{0,3}", 0..4),
        ) {
            let joined: String = parts.concat();
            prop_assert_eq!(
                cmp_joined(&granted, parts.iter().map(String::as_str)),
                granted.as_str().cmp(joined.as_str())
            );
        }

        /// A template is granted exactly when its resolved scope is in the list.
        #[test]
        fn granted_iff_the_resolved_scope_is_held(
            sport in "[a-z0-9:]{0,4}",
            held in prop::collection::vec("[a-z0-9:]{1,4}:read", 0..6),
        ) {
            let need = ScopeNeed::parse("{sport}:read", &ROUTE).unwrap();
            let mut granted: Vec<Box<str>> = held.iter().map(|s| s.as_str().into()).collect();
            granted.sort_unstable();
            let params = [sport.as_str()];
            let resolved = need.resolve(&params).into_owned();
            let expected = is_chunk(&sport) && granted.iter().any(|g| **g == *resolved);
            prop_assert_eq!(need.is_granted(&granted, &params), expected);
        }
    }
}
