//! Compiled policy: what a client may do (with its plan's features folded in), what a route
//! requires, and the pure check between the two.
//!
//! Compiled once when a client changes or the configuration loads, so the per-request check is a
//! few binary searches over short sorted lists, with no allocation on the allow path.

use crate::decision::{Denial, Reason};
use crate::key_restrictions::KeyRestrictions;
use crate::model::{key_usable, ApiKey, Client, ClientId, KeyState, LimitOverrides, Unusable};
use crate::scope_need::ScopeNeed;
use crate::time::Timestamp;

/// A client as the hot path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    pub id: ClientId,
    pub name: Box<str>,
    pub plan: Box<str>,
    /// Sorted.
    pub scopes: Vec<Box<str>>,
    /// Sorted; empty = no sport restriction.
    pub sports: Vec<Box<str>>,
    /// Sorted; empty = all bookmakers.
    pub bookmakers: Vec<Box<str>>,
    /// Sorted features of the client's plan.
    pub features: Vec<Box<str>>,
    pub limits: LimitOverrides,
    pub active: bool,
    /// The plan has the client pick its bookmakers (`bookmakers` above): with none picked,
    /// bookmaker routes answer `BookmakerNotConfigured` instead of allowing every bookmaker.
    pub selects_bookmakers: bool,
}

fn sorted<T: AsRef<str>>(items: &[T]) -> Vec<Box<str>> {
    let mut v: Vec<Box<str>> = items.iter().map(|s| s.as_ref().into()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn contains(sorted: &[Box<str>], item: &str) -> bool {
    sorted.binary_search_by(|s| (**s).cmp(item)).is_ok()
}

impl ClientPolicy {
    /// Folds a stored client and its plan's features into the hot-path form.
    pub fn compile(client: &Client, plan_features: &[impl AsRef<str>]) -> Self {
        ClientPolicy {
            id: client.id.clone(),
            name: client.name.as_str().into(),
            plan: client.plan.as_str().into(),
            scopes: sorted(&client.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            sports: sorted(&client.sports.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            bookmakers: sorted(
                &client
                    .bookmakers
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
            ),
            features: sorted(plan_features),
            limits: client.limits.clone(),
            active: client.active,
            selects_bookmakers: false,
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        contains(&self.scopes, scope)
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        contains(&self.features, feature)
    }

    pub fn allows_sport(&self, sport: &str) -> bool {
        contains(&self.sports, sport)
    }

    pub fn allows_bookmaker(&self, bookmaker: &str) -> bool {
        self.bookmakers.is_empty() || contains(&self.bookmakers, bookmaker)
    }
}

/// What a route requires of the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Every one of these scopes, fixed or templated by the path (`{sport}:matches:list`).
    /// Refused naming the first missing, resolved for the request.
    pub scopes: Vec<ScopeNeed>,
    /// At least one of these scopes (a provider whose scopes overlap: two scopes that each
    /// grant the same endpoint). Refused naming the first.
    pub any_scope: Vec<ScopeNeed>,
    pub features: Vec<Box<str>>,
    /// Whether the route names a sport namespace that must be in the allowlist.
    pub sport_gated: bool,
    /// Whether a bookmaker must be present (and allowed) on this route.
    pub bookmaker_required: bool,
    /// Whether the route reads a bookmaker from the request (and so serves one bookmaker's data).
    pub bookmaker_gated: bool,
}

impl Requirements {
    /// Whether a scope depends on the request's path parameters.
    pub fn has_templates(&self) -> bool {
        self.scopes
            .iter()
            .chain(&self.any_scope)
            .any(ScopeNeed::is_template)
    }
}

/// The request facts authorization looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts<'a> {
    pub sport: Option<&'a str>,
    pub bookmaker: Option<&'a str>,
    /// The matched route's path parameter values, in pattern order (for scope templates).
    pub params: &'a [&'a str],
}

/// Checks a client against a route, in the order scope, sport, bookmaker, plan feature.
///
/// # Errors
/// The first [`Denial`] found.
pub fn authorize(
    client: &ClientPolicy,
    needs: &Requirements,
    facts: RequestFacts<'_>,
) -> Result<(), Denial> {
    check_scopes(&client.scopes, needs, facts.params, Reason::ScopeMissing)?;
    if needs.sport_gated {
        match facts.sport {
            Some(sport) if client.allows_sport(sport) => {}
            Some(sport) => return Err(Denial::about(Reason::SportNotAllowed, sport)),
            None => return Err(Denial::new(Reason::SportNotAllowed)),
        }
    }
    if needs.bookmaker_gated && client.selects_bookmakers && client.bookmakers.is_empty() {
        // The plan serves only picked bookmakers and this client has picked none.
        return Err(Denial::new(Reason::BookmakerNotConfigured));
    }
    match facts.bookmaker {
        Some(b) if !client.allows_bookmaker(b) => {
            return Err(Denial::about(Reason::BookmakerNotAllowed, b))
        }
        None if needs.bookmaker_required && !client.bookmakers.is_empty() => {
            // A restricted client must say which of its bookmakers it wants.
            return Err(Denial::new(Reason::BookmakerNotConfigured));
        }
        _ => {}
    }
    if let Some(missing) = needs.features.iter().find(|f| !client.has_feature(f)) {
        return Err(Denial::about(Reason::FeatureNotOnPlan, missing));
    }
    Ok(())
}

/// What a restricted key narrows, as the hot path checks it: built once per key change, held
/// only by keys that have restrictions (most hold `None`, so the check is one pointer test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRules {
    /// Sorted; `None`: the client's scopes.
    pub scopes: Option<Vec<Box<str>>>,
    /// The stored restrictions: the CIDRs the check reads, and the metadata and external id
    /// for whoami and verify.
    pub source: KeyRestrictions,
}

impl KeyRules {
    /// The hot-path form of a key's restrictions; `None` when it has none.
    pub fn compile(r: &KeyRestrictions) -> Option<Self> {
        if r.is_empty() {
            return None;
        }
        Some(KeyRules {
            scopes: r
                .scopes
                .as_ref()
                .map(|s| sorted(&s.iter().map(|s| s.as_str()).collect::<Vec<_>>())),
            source: r.clone(),
        })
    }

    /// Whether the key may be used from `ip`.
    pub fn allows_ip(&self, ip: std::net::IpAddr) -> bool {
        self.source.allows_ip(ip)
    }

    /// The client's scopes this key keeps (all of them when the key is not narrowed).
    pub fn effective_scopes<'a>(
        &'a self,
        client: &'a [Box<str>],
    ) -> impl Iterator<Item = &'a Box<str>> + 'a {
        client.iter().filter(move |s| self.has_scope(s))
    }

    /// Whether the key keeps `scope` (any scope when it is not narrowed).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.as_deref().is_none_or(|k| contains(k, scope))
    }

    /// Checks the route's scopes against the key's own (the client's were checked first, so
    /// what passes both is the intersection).
    ///
    /// # Errors
    /// `key_scope_missing` naming the first scope the key lacks.
    pub fn authorize(&self, needs: &Requirements, params: &[&str]) -> Result<(), Denial> {
        match &self.scopes {
            Some(scopes) => check_scopes(scopes, needs, params, Reason::KeyScopeMissing),
            None => Ok(()),
        }
    }
}

/// The route's scopes (every one of `scopes`, one of `any_scope`) against `granted`; `missing`
/// names the first one lacking: the client's check and the key's, one rule.
fn check_scopes(
    granted: &[Box<str>],
    needs: &Requirements,
    params: &[&str],
    missing: Reason,
) -> Result<(), Denial> {
    let has = |s: &ScopeNeed| s.is_granted(granted, params);
    if let Some(lacking) = needs.scopes.iter().find(|s| !has(s)) {
        return Err(Denial::about(missing, &lacking.resolve(params)));
    }
    if let Some(first) = needs.any_scope.first() {
        if !needs.any_scope.iter().any(has) {
            return Err(Denial::about(missing, &first.resolve(params)));
        }
    }
    Ok(())
}

/// Whose scopes a check reads: a client's, narrowed by its key's when the key has them (the
/// WebSocket channel checks, which read scopes outside [`authorize`]).
#[derive(Clone, Copy, Debug)]
pub struct Grantee<'a> {
    pub client: &'a ClientPolicy,
    pub key: Option<&'a KeyRules>,
}

impl Grantee<'_> {
    /// Whether both the client and (when narrowed) the key have `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.client.has_scope(scope) && self.key.is_none_or(|k| k.has_scope(scope))
    }
}

impl<'a> From<&'a ClientPolicy> for Grantee<'a> {
    fn from(client: &'a ClientPolicy) -> Self {
        Grantee { client, key: None }
    }
}

/// A key as the hot path decides on it: its state and expiry. Nothing else, because a replica
/// holds a million of these (the id and the client live beside it, once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    pub state: KeyState,
    pub expires_at: Option<Timestamp>,
}

impl KeyPolicy {
    pub fn from_key(key: &ApiKey) -> Self {
        KeyPolicy {
            state: key.state,
            expires_at: key.expires_at,
        }
    }

    /// Authentication of a found key at `now`.
    ///
    /// # Errors
    /// `KeyDisabled`, `KeyExpired`, `ClientInactive`, or `UnknownKey` for a revoked key.
    pub fn check(&self, now: Timestamp, client_active: bool) -> Result<(), Reason> {
        key_usable(self.state, self.expires_at, now, client_active).map_err(Reason::from)
    }
}

impl From<Unusable> for Reason {
    fn from(u: Unusable) -> Self {
        match u {
            // A revoked key is indistinguishable from one never issued.
            Unusable::Revoked => Reason::UnknownKey,
            Unusable::Disabled => Reason::KeyDisabled,
            Unusable::Expired => Reason::KeyExpired,
            Unusable::ClientInactive => Reason::ClientInactive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ClientPolicy {
        ClientPolicy {
            id: ClientId::generate(),
            name: "Acme".into(),
            plan: "pro".into(),
            scopes: sorted(&["cs2:matches:read", "cs2:matches:list"]),
            sports: sorted(&["cs2"]),
            bookmakers: vec![],
            features: sorted(&["live"]),
            limits: LimitOverrides::default(),
            active: true,
            selects_bookmakers: false,
        }
    }

    fn needs(scopes: &[&str], features: &[&str], sport_gated: bool) -> Requirements {
        Requirements {
            scopes: scopes.iter().map(|&s| ScopeNeed::from(s)).collect(),
            features: sorted(features),
            sport_gated,
            bookmaker_required: false,
            bookmaker_gated: false,
            any_scope: Vec::new(),
        }
    }

    #[test]
    fn a_narrowed_key_passes_only_the_intersection() {
        let p = policy();
        let r = KeyRestrictions {
            scopes: Some(vec![
                crate::Scope::new("cs2:matches:list").unwrap(),
                crate::Scope::new("gone").unwrap(),
            ]),
            ..Default::default()
        };
        let rules = KeyRules::compile(&r).unwrap();
        let list = needs(&["cs2:matches:list"], &[], false);
        let read = needs(&["cs2:matches:read"], &[], false);
        assert_eq!(rules.authorize(&list, &[]), Ok(()));
        assert_eq!(
            rules.authorize(&read, &[]),
            Err(Denial::about(Reason::KeyScopeMissing, "cs2:matches:read"))
        );
        // `gone` is the key's but no longer the client's: it is not effective.
        let effective: Vec<_> = rules.effective_scopes(&p.scopes).map(|s| &**s).collect();
        assert_eq!(effective, ["cs2:matches:list"]);
        assert!(KeyRules::compile(&KeyRestrictions::default()).is_none());
        let labelled = KeyRules::compile(&KeyRestrictions {
            external_id: Some("crm-1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(labelled.authorize(&read, &[]), Ok(()));
        assert!(labelled.allows_ip("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn scope_sport_bookmaker_feature_in_order() {
        let p = policy();
        let ok = RequestFacts {
            sport: Some("cs2"),
            bookmaker: None,
            params: &[],
        };
        assert_eq!(
            authorize(&p, &needs(&["cs2:matches:read"], &["live"], true), ok),
            Ok(())
        );
        assert_eq!(
            authorize(&p, &needs(&["cs2:markets:settlements"], &[], true), ok),
            Err(Denial::about(
                Reason::ScopeMissing,
                "cs2:markets:settlements"
            ))
        );
        let dota = RequestFacts {
            sport: Some("dota2"),
            bookmaker: None,
            params: &[],
        };
        assert_eq!(
            authorize(&p, &needs(&[], &[], true), dota),
            Err(Denial::about(Reason::SportNotAllowed, "dota2"))
        );
        assert_eq!(
            authorize(&p, &needs(&[], &["websocket"], false), ok),
            Err(Denial::about(Reason::FeatureNotOnPlan, "websocket"))
        );
    }

    #[test]
    fn templated_scopes_follow_the_path() {
        use crate::scope_need::PathParam;
        let sport = [PathParam {
            name: "sport",
            catch_all: false,
        }];
        let mut p = policy();
        p.scopes = sorted(&["dota2:matches:list"]);
        p.sports = sorted(&["cs2", "dota2"]);
        let needs = Requirements {
            scopes: vec![ScopeNeed::parse("{sport}:matches:list", &sport).unwrap()],
            sport_gated: true,
            ..Requirements::default()
        };
        assert!(needs.has_templates());
        let on = |params: &'static [&'static str; 1]| RequestFacts {
            sport: Some(params[0]),
            bookmaker: None,
            params,
        };
        assert_eq!(authorize(&p, &needs, on(&["dota2"])), Ok(()));
        assert_eq!(
            authorize(&p, &needs, on(&["cs2"])),
            Err(Denial::about(Reason::ScopeMissing, "cs2:matches:list"))
        );
        let any = Requirements {
            any_scope: vec![
                ScopeNeed::parse("{sport}:live", &sport).unwrap(),
                "dota2:matches:list".into(),
            ],
            ..Requirements::default()
        };
        assert_eq!(authorize(&p, &any, on(&["cs2"])), Ok(()));
        p.scopes.clear();
        assert_eq!(
            authorize(&p, &any, on(&["cs2"])),
            Err(Denial::about(Reason::ScopeMissing, "cs2:live"))
        );
        assert!(!Requirements::default().has_templates());
    }

    #[test]
    fn empty_bookmaker_allowlist_means_all() {
        let mut p = policy();
        let facts = RequestFacts {
            sport: None,
            bookmaker: Some("bet365"),
            params: &[],
        };
        assert_eq!(authorize(&p, &Requirements::default(), facts), Ok(()));
        p.bookmakers = sorted(&["pinnacle"]);
        assert_eq!(
            authorize(&p, &Requirements::default(), facts),
            Err(Denial::about(Reason::BookmakerNotAllowed, "bet365"))
        );
        let needs = Requirements {
            bookmaker_required: true,
            ..Requirements::default()
        };
        assert_eq!(
            authorize(&p, &needs, RequestFacts::default()),
            Err(Denial::new(Reason::BookmakerNotConfigured))
        );
    }

    #[test]
    fn any_of_several_scopes() {
        let p = policy();
        let mut n = needs(&[], &[], false);
        n.any_scope = vec!["live_scores".into(), "cs2:matches:read".into()];
        assert_eq!(authorize(&p, &n, RequestFacts::default()), Ok(()));
        n.any_scope = vec!["live_scores".into(), "live_scores_statistics".into()];
        assert_eq!(
            authorize(&p, &n, RequestFacts::default()),
            Err(Denial::about(Reason::ScopeMissing, "live_scores"))
        );
    }

    #[test]
    fn a_selecting_plan_needs_a_pick() {
        let mut p = policy();
        p.selects_bookmakers = true;
        let gated = Requirements {
            bookmaker_gated: true,
            ..Requirements::default()
        };
        let asks = |b| RequestFacts {
            sport: None,
            bookmaker: b,
            params: &[],
        };
        assert_eq!(
            authorize(&p, &gated, asks(Some("bet365"))),
            Err(Denial::new(Reason::BookmakerNotConfigured))
        );
        assert_eq!(
            authorize(&p, &gated, asks(None)),
            Err(Denial::new(Reason::BookmakerNotConfigured))
        );
        // Routes that serve no bookmaker's data do not care.
        assert_eq!(authorize(&p, &Requirements::default(), asks(None)), Ok(()));
        p.bookmakers = sorted(&["pinnacle"]);
        assert_eq!(authorize(&p, &gated, asks(Some("pinnacle"))), Ok(()));
        assert_eq!(authorize(&p, &gated, asks(None)), Ok(()));
        assert_eq!(
            authorize(&p, &gated, asks(Some("bet365"))),
            Err(Denial::about(Reason::BookmakerNotAllowed, "bet365"))
        );
    }
}
