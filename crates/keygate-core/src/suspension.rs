//! Scoped suspensions: an operator's hold on one slice of the service (an integrity hold on a
//! sport during a match, a bookmaker's outage, one route), for everyone or for one client,
//! until lifted or until an instant. Emergency mode stays the global switch; a suspension
//! refuses only the requests it matches, with the profile's `suspended` answer.
//!
//! This module is the model and the matching rule; the store keeps suspensions and the
//! gateway holds the active ones in memory (no store I/O per request).

use serde::{Deserialize, Serialize};

use crate::model::{ClientId, SuspensionId};
use crate::names::{NameError, Slug};
use crate::policy::Requirements;
use crate::scope::Scope;
use crate::time::Timestamp;

/// Longest route name a suspension may name, in characters (route names default to their
/// path pattern).
pub const MAX_ROUTE_NAME: usize = 200;

/// What a suspension holds: exactly one of a scope, a sport, a bookmaker or a route.
///
/// Serialized externally tagged, so documents read `{"sport": "cs2"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every route that requires this scope (templated scopes resolved for the request).
    Scope(Scope),
    /// Every request naming this sport namespace (the route's `sport_param`).
    Sport(Slug),
    /// Every request naming this bookmaker (the route's `bookmaker` source).
    Bookmaker(Slug),
    /// Every request on the route of this name.
    Route(RouteName),
}

impl Target {
    /// The kind as stored and shown (`scope`, `sport`, `bookmaker`, `route`).
    pub const fn kind(&self) -> &'static str {
        match self {
            Target::Scope(_) => "scope",
            Target::Sport(_) => "sport",
            Target::Bookmaker(_) => "bookmaker",
            Target::Route(_) => "route",
        }
    }

    /// The value held (`cs2`, `bet365`, ...).
    pub fn value(&self) -> &str {
        match self {
            Target::Scope(s) => s.as_str(),
            Target::Sport(s) | Target::Bookmaker(s) => s.as_str(),
            Target::Route(r) => r.as_str(),
        }
    }

    /// Reads a stored `kind` and `value` back.
    ///
    /// # Errors
    /// [`SuspensionError`] for an unknown kind or an invalid value.
    pub fn parse(kind: &str, value: &str) -> Result<Target, SuspensionError> {
        Ok(match kind {
            "scope" => {
                Target::Scope(Scope::new(value).map_err(|e| SuspensionError::Scope(e.input))?)
            }
            "sport" => Target::Sport(Slug::new(value)?),
            "bookmaker" => Target::Bookmaker(Slug::new(value)?),
            "route" => Target::Route(RouteName::new(value)?),
            other => return Err(SuspensionError::Kind(other.to_owned())),
        })
    }

    /// Whether a request with these facts is held by this target.
    fn holds(&self, r: &Request<'_>) -> bool {
        match self {
            Target::Route(name) => name.as_str() == r.route,
            Target::Sport(s) => r.sport == Some(s.as_str()),
            Target::Bookmaker(b) => r.bookmaker == Some(b.as_str()),
            Target::Scope(s) => {
                // `is_granted` against a one-scope grant: resolves templated scopes for the
                // request's parameters without allocating.
                let held = [Box::<str>::from(s.as_str())];
                r.needs
                    .scopes
                    .iter()
                    .chain(&r.needs.any_scope)
                    .any(|need| need.is_granted(&held, r.params))
            }
        }
    }
}

/// A route's name as a suspension names it: 1 to [`MAX_ROUTE_NAME`] printable characters
/// without surrounding spaces (it is compared with the configuration's names, which may be
/// path patterns such as `/v1/{*rest}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RouteName(Box<str>);

impl RouteName {
    /// # Errors
    /// [`SuspensionError::RouteName`].
    pub fn new(input: &str) -> Result<RouteName, SuspensionError> {
        let n = input.chars().count();
        if (1..=MAX_ROUTE_NAME).contains(&n)
            && input.trim() == input
            && !input.chars().any(char::is_control)
        {
            Ok(RouteName(input.into()))
        } else {
            Err(SuspensionError::RouteName(input.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RouteName {
    type Error = SuspensionError;
    fn try_from(s: String) -> Result<Self, SuspensionError> {
        RouteName::new(&s)
    }
}

impl From<RouteName> for String {
    fn from(r: RouteName) -> String {
        r.0.into()
    }
}

/// A suspension that cannot be made or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuspensionError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("`{0}` is not a scope; scopes are tokens like `cs2:matches:read`")]
    Scope(String),
    #[error("route name `{0}` must be 1 to 200 printable characters, without leading or trailing spaces")]
    RouteName(String),
    #[error("unknown suspension kind `{0}` (scope, sport, bookmaker or route)")]
    Kind(String),
}

/// One suspension as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub id: SuspensionId,
    /// `"scope"`, `"sport"`, `"bookmaker"` or `"route"`, with the value held.
    #[serde(flatten)]
    pub target: Target,
    /// Only this client's requests are held; everyone's when absent.
    pub client_id: Option<ClientId>,
    /// What callers read as the refusal's detail; the default sentence when absent.
    pub message: Option<String>,
    /// Lifted by the clock at this instant, without a write; held until resumed when absent.
    pub until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub created_by: String,
    /// When an operator lifted it (`keygate resume`).
    pub lifted_at: Option<Timestamp>,
    pub lifted_by: Option<String>,
}

impl Suspension {
    /// Its state at `now` for people: `in force`, `lifted` (by an operator) or `ran out` (its
    /// `until` passed).
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.lifted_at.is_some() {
            "lifted"
        } else if self.is_active(now) {
            "in force"
        } else {
            "ran out"
        }
    }

    /// Whether it holds requests at `now`: not lifted, and `until` not reached.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.lifted_at.is_none() && self.until.is_none_or(|u| now < u)
    }

    /// Whether it holds this request at `now`.
    pub fn holds(&self, r: &Request<'_>, now: Timestamp) -> bool {
        self.is_active(now)
            && self
                .client_id
                .as_ref()
                .is_none_or(|c| c.as_str() == r.client)
            && self.target.holds(r)
    }
}

/// The default sentence of the refusal when the operator gave no message.
pub const DEFAULT_MESSAGE: &str = "This part of the service is suspended for now; retry later.";

/// What a suspension looks at in a request: the facts authorization already read.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The id of the caller's client.
    pub client: &'a str,
    /// The matched route's name.
    pub route: &'a str,
    /// The route's requirements (its scopes).
    pub needs: &'a Requirements,
    /// The request's path parameters, in the pattern's order (templated scopes).
    pub params: &'a [&'a str],
    pub sport: Option<&'a str>,
    pub bookmaker: Option<&'a str>,
}

/// The first of `active` that holds the request at `now`.
pub fn holding<'s>(
    active: &'s [Suspension],
    r: &Request<'_>,
    now: Timestamp,
) -> Option<&'s Suspension> {
    active.iter().find(|s| s.holds(r, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope_need::{PathParam, ScopeNeed};

    fn suspension(target: Target) -> Suspension {
        Suspension {
            id: SuspensionId::generate(),
            target,
            client_id: None,
            message: None,
            until: None,
            created_at: Timestamp::from_millis(0),
            created_by: "cli:test".into(),
            lifted_at: None,
            lifted_by: None,
        }
    }

    fn needs() -> Requirements {
        let sport = [PathParam {
            name: "sport",
            catch_all: false,
        }];
        Requirements {
            scopes: vec![ScopeNeed::parse("{sport}:markets:read", &sport).unwrap()],
            any_scope: vec![ScopeNeed::parse("live_scores", &[]).unwrap()],
            ..Requirements::default()
        }
    }

    fn request<'a>(needs: &'a Requirements, params: &'a [&'a str]) -> Request<'a> {
        Request {
            client: "cli_0000000000000001",
            route: "markets",
            needs,
            params,
            sport: params.first().copied(),
            bookmaker: Some("bet365"),
        }
    }

    #[test]
    fn each_kind_holds_what_it_names_and_nothing_else() {
        let needs = needs();
        let cs2 = request(&needs, &["cs2"]);
        let dota = request(&needs, &["dota2"]);
        let now = Timestamp::from_millis(1);
        let sport = suspension(Target::Sport(Slug::new("cs2").unwrap()));
        assert!(sport.holds(&cs2, now));
        assert!(!sport.holds(&dota, now));
        let bookmaker = suspension(Target::Bookmaker(Slug::new("bet365").unwrap()));
        assert!(bookmaker.holds(&cs2, now));
        let other = suspension(Target::Bookmaker(Slug::new("pinnacle").unwrap()));
        assert!(!other.holds(&cs2, now));
        let route = suspension(Target::Route(RouteName::new("markets").unwrap()));
        assert!(route.holds(&dota, now));
        let elsewhere = suspension(Target::Route(RouteName::new("matches").unwrap()));
        assert!(!elsewhere.holds(&dota, now));
        // A templated scope is resolved for the request; `any_scope` counts too.
        let scope = suspension(Target::Scope(Scope::new("cs2:markets:read").unwrap()));
        assert!(scope.holds(&cs2, now));
        assert!(!scope.holds(&dota, now));
        let any = suspension(Target::Scope(Scope::new("live_scores").unwrap()));
        assert!(any.holds(&dota, now));
        let unrelated = suspension(Target::Scope(Scope::new("cs2:matches:read").unwrap()));
        assert!(!unrelated.holds(&cs2, now));
    }

    #[test]
    fn a_client_until_and_lift_narrow_it() {
        let needs = needs();
        let r = request(&needs, &["cs2"]);
        let mut s = suspension(Target::Sport(Slug::new("cs2").unwrap()));
        s.client_id = Some(ClientId::parse("cli_0000000000000002").unwrap());
        assert!(!s.holds(&r, Timestamp::from_millis(1)));
        s.client_id = Some(ClientId::parse(r.client).unwrap());
        assert!(s.holds(&r, Timestamp::from_millis(1)));
        s.until = Some(Timestamp::from_millis(1000));
        assert_eq!(s.state(Timestamp::from_millis(999)), "in force");
        assert_eq!(s.state(Timestamp::from_millis(1000)), "ran out");
        assert!(s.holds(&r, Timestamp::from_millis(999)));
        assert!(!s.holds(&r, Timestamp::from_millis(1000)));
        s.until = None;
        s.lifted_at = Some(Timestamp::from_millis(5));
        assert!(!s.holds(&r, Timestamp::from_millis(1)));
        let set = [
            suspension(Target::Sport(Slug::new("dota2").unwrap())),
            suspension(Target::Bookmaker(Slug::new("bet365").unwrap())),
        ];
        assert_eq!(
            holding(&set, &r, Timestamp::from_millis(1)).map(|s| &s.id),
            Some(&set[1].id)
        );
        assert!(holding(&[], &r, Timestamp::from_millis(1)).is_none());
    }

    #[test]
    fn documents_name_the_kind() {
        let s = suspension(Target::Sport(Slug::new("cs2").unwrap()));
        let doc = serde_json::to_value(&s).unwrap();
        assert_eq!(doc["sport"], "cs2");
        assert!(doc.get("scope").is_none());
        let back: Suspension = serde_json::from_value(doc).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            Target::parse("route", "/v1/{*rest}").unwrap().value(),
            "/v1/{*rest}"
        );
        assert!(Target::parse("planet", "x").is_err());
        assert!(Target::parse("sport", "CS2").is_err());
        assert!(RouteName::new("").is_err());
        assert!(RouteName::new(" x").is_err());
        assert!(RouteName::new(&"r".repeat(201)).is_err());
        assert!(RouteName::new("a\nb").is_err());
    }
}
