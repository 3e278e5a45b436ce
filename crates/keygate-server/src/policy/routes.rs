//! The route table, compiled at start: method + path pattern → route policy.
//!
//! Patterns are segments: literals, `{name}` (one non-empty segment) and a final `{*name}` (the
//! rest, possibly empty). Static segments win over parameters, parameters over catch-alls, with
//! backtracking, so `/{sport}/v1/matches` and a catch-all `/{*path}` coexist (matchit, which
//! axum uses, refuses that pair; providers' contracts need it). Matching walks a segment trie
//! and allocates nothing: parameter values are slices of the request path.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use keygate_core::policy::Requirements;

/// Most parameters a pattern may have.
pub(crate) const MAX_PARAMS: usize = 8;

/// Where a route reads the bookmaker from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookmakerSource {
    Query(Box<str>),
    Path(Box<str>),
}

/// One route's compiled policy.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub pattern: Box<str>,
    /// `None` = every method.
    pub methods: Option<Vec<Method>>,
    /// Where its requests go.
    pub target: Target,
    /// Where REST requests of a caller on a delayed plan go instead of `target`'s upstream
    /// (`crate::policy::delay`); WebSocket sessions are delayed by the gateway itself.
    pub delayed_upstream: Option<usize>,
    pub needs: Requirements,
    pub sport_param: Option<Box<str>>,
    pub bookmaker: Option<BookmakerSource>,
    pub public: bool,
    /// Limits of this route on top of the client's plan limits.
    pub limits: crate::policy::ratelimit::LimitSet,
    /// `limits` compiled with this route's counter slots (set by [`RouteTable::insert`]).
    pub compiled_limits: Vec<(u32, keygate_core::limit::Limit)>,
    /// Units of every quota a request spends (`cost`, 1 to 1000; default 1). Rates count a
    /// request as one whatever its cost; a WebSocket route spends it once per connection.
    pub cost: u32,
    /// This route's own answers to some refusals (`[[routes]] errors`), over the profile's.
    pub errors: crate::policy::profile::ErrorOverrides,
}

/// Where a route's requests go: one field, so an upstream and a self-service action cannot
/// both be set.
#[derive(Clone, Debug)]
pub enum Target {
    /// Index into the configuration's upstreams.
    Upstream(usize),
    /// A self-service endpoint the gateway answers itself instead of forwarding.
    SelfService(crate::policy::selfservice::Action),
}

impl Route {
    /// The upstream a request to `upstream` (this route's) goes to: `delayed_upstream` when
    /// the route has one and `delayed()` says the caller's plan delays. A route without one
    /// (nearly all) pays one branch and never asks.
    #[inline]
    pub fn upstream_for(&self, upstream: usize, delayed: impl FnOnce() -> bool) -> usize {
        match self.delayed_upstream {
            Some(other) if delayed() => other,
            _ => upstream,
        }
    }

    fn accepts(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// A pattern that cannot be added.
#[derive(Debug, thiserror::Error)]
#[error("path pattern `{pattern}` is invalid: {reason}")]
pub struct RouteConflict {
    pub pattern: String,
    pub reason: String,
}

/// Parameter values of a match, by name.
#[derive(Clone, Copy, Debug)]
pub struct Params<'t, 'p> {
    names: &'t [Box<str>],
    values: [&'p str; MAX_PARAMS],
}

impl<'t, 'p> Params<'t, 'p> {
    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map(|i| self.values[i])
    }

    /// Every parameter's value, in the order of the pattern's parameters.
    pub fn values(&self) -> &[&'p str] {
        &self.values[..self.names.len().min(MAX_PARAMS)]
    }
}

/// The outcome of matching a request.
#[derive(Debug)]
pub enum RouteMatch<'t, 'p> {
    Found {
        route: &'t Route,
        index: usize,
        params: Params<'t, 'p>,
    },
    MethodNotAllowed,
    NotFound,
}

/// Hashes path segments with foldhash: SipHash was most of a route match. The table's keys
/// are the configuration's own segments, so a request's segments cannot lengthen its probes.
type SegmentHasher = foldhash::fast::RandomState;

#[derive(Clone, Debug, Default)]
struct Node {
    statics: HashMap<Box<str>, Node, SegmentHasher>,
    param: Option<Box<Node>>,
    /// Group of a catch-all ending here.
    catch_all: Option<usize>,
    /// Group of a pattern ending exactly here.
    end: Option<usize>,
}

/// Routes sharing one pattern, and the pattern's parameter names in order.
#[derive(Clone, Debug)]
struct Group {
    names: Vec<Box<str>>,
    routes: Vec<usize>,
}

enum Seg<'a> {
    Static(&'a str),
    Param(&'a str),
    CatchAll(&'a str),
}

fn parse(pattern: &str) -> Result<Vec<Seg<'_>>, String> {
    let rest = pattern
        .strip_prefix('/')
        .ok_or_else(|| "it must start with `/`".to_owned())?;
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => match inner.strip_prefix('*') {
                Some(name) if i + 1 == parts.len() && !name.is_empty() => Seg::CatchAll(name),
                Some(_) => return Err("a catch-all `{*name}` must be the last segment".to_owned()),
                None if !inner.is_empty() && !inner.contains(['{', '}']) => Seg::Param(inner),
                None => return Err(format!("`{part}` is not a parameter")),
            },
            None if part.contains(['{', '}']) => {
                return Err(format!("segment `{part}` mixes text and a parameter"))
            }
            None => Seg::Static(part),
        };
        segs.push(seg);
    }
    Ok(segs)
}

/// All routes of a configuration.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    root: Node,
    groups: Vec<Group>,
    by_pattern: HashMap<Box<str>, usize>,
    routes: Vec<Route>,
}

impl RouteTable {
    /// Adds a route.
    ///
    /// # Errors
    /// [`RouteConflict`] when the pattern is invalid.
    pub fn insert(&mut self, mut route: Route) -> Result<(), RouteConflict> {
        let index = self.routes.len();
        let base = crate::policy::ratelimit::route_slots(&route);
        if let Some(other) = self.routes.iter().find(|r| {
            !r.compiled_limits.is_empty() && crate::policy::ratelimit::route_slots(r) == base
        }) {
            if !route.limits.compile(base).is_empty() {
                return Err(RouteConflict {
                    pattern: route.pattern.to_string(),
                    reason: format!(
                        "its limit counters would share slots with route `{}`; give one of them another name",
                        other.name
                    ),
                });
            }
        }
        route.compiled_limits = route.limits.compile(base);
        if let Some(&group) = self.by_pattern.get(&route.pattern) {
            self.groups[group].routes.push(index);
            self.routes.push(route);
            return Ok(());
        }
        let err = |reason: String| RouteConflict {
            pattern: route.pattern.to_string(),
            reason,
        };
        let segs = parse(&route.pattern).map_err(err)?;
        let names: Vec<Box<str>> = segs
            .iter()
            .filter_map(|s| match s {
                Seg::Param(n) | Seg::CatchAll(n) => Some(Box::<str>::from(*n)),
                Seg::Static(_) => None,
            })
            .collect();
        if names.len() > MAX_PARAMS {
            return Err(err(format!("more than {MAX_PARAMS} parameters")));
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() {
            return Err(err("a parameter name is used twice".to_owned()));
        }
        let group = self.groups.len();
        let mut node = &mut self.root;
        for seg in &segs {
            match seg {
                Seg::Static(s) => node = node.statics.entry((*s).into()).or_default(),
                Seg::Param(_) => node = node.param.get_or_insert_with(Box::default),
                Seg::CatchAll(_) => {
                    node.catch_all = Some(group);
                }
            }
        }
        if !matches!(segs.last(), Some(Seg::CatchAll(_))) {
            node.end = Some(group);
        }
        self.groups.push(Group {
            names,
            routes: vec![index],
        });
        self.by_pattern.insert(route.pattern.clone(), group);
        self.routes.push(route);
        Ok(())
    }

    /// Finds the route for a request; the first route (in file order) of the most specific
    /// pattern whose methods accept it.
    pub fn find<'t, 'p>(&'t self, method: &Method, path: &'p str) -> RouteMatch<'t, 'p> {
        let Some(rest) = path.strip_prefix('/') else {
            return RouteMatch::NotFound;
        };
        let mut values = [""; MAX_PARAMS];
        let Some(group) = walk(&self.root, rest, &mut values, 0) else {
            return RouteMatch::NotFound;
        };
        let g = &self.groups[group];
        match g.routes.iter().find(|&&i| self.routes[i].accepts(method)) {
            Some(&index) => RouteMatch::Found {
                route: &self.routes[index],
                index,
                params: Params {
                    names: &g.names,
                    values,
                },
            },
            None => RouteMatch::MethodNotAllowed,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Depth-first match of `rest` (the path after a `/`), static before parameter before
/// catch-all, backtracking on failure.
fn walk<'p>(
    node: &Node,
    rest: &'p str,
    values: &mut [&'p str; MAX_PARAMS],
    n: usize,
) -> Option<usize> {
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if let Some(child) = node.statics.get(seg) {
        let found = match tail {
            None => child.end.or(child.catch_all.inspect(|_| {
                if n < MAX_PARAMS {
                    values[n] = "";
                }
            })),
            Some(t) => walk(child, t, values, n),
        };
        if found.is_some() {
            return found;
        }
    }
    if let (Some(child), false, true) = (&node.param, seg.is_empty(), n < MAX_PARAMS) {
        values[n] = seg;
        let found = match tail {
            None => child.end.or(child.catch_all.inspect(|_| {
                if n + 1 < MAX_PARAMS {
                    values[n + 1] = "";
                }
            })),
            Some(t) => walk(child, t, values, n + 1),
        };
        if found.is_some() {
            return found;
        }
    }
    if let (Some(group), true) = (node.catch_all, n < MAX_PARAMS) {
        values[n] = rest;
        return Some(group);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, pattern: &str, methods: Option<Vec<Method>>) -> Route {
        Route {
            name: name.into(),
            pattern: pattern.into(),
            methods,
            target: Target::Upstream(0),
            delayed_upstream: None,
            needs: Requirements::default(),
            sport_param: None,
            bookmaker: None,
            public: false,
            limits: crate::policy::ratelimit::LimitSet::default(),
            compiled_limits: Vec::new(),
            cost: 1,
            errors: crate::policy::profile::ErrorOverrides::default(),
        }
    }

    #[test]
    fn static_beats_param_beats_catch_all_and_methods_split() {
        let mut t = RouteTable::default();
        t.insert(route("any", "/{*rest}", None)).unwrap();
        t.insert(route("stream", "/{sport}/v1/{*rest}", None))
            .unwrap();
        t.insert(route(
            "matches",
            "/{sport}/v1/matches",
            Some(vec![Method::GET]),
        ))
        .unwrap();
        t.insert(route("whoami", "/v1/whoami", None)).unwrap();
        t.insert(route("me-get", "/api/me", Some(vec![Method::GET])))
            .unwrap();
        t.insert(route("me-patch", "/api/me", Some(vec![Method::PATCH])))
            .unwrap();
        let name = |m: &Method, p: &str| match t.find(m, p) {
            RouteMatch::Found { route, .. } => route.name.to_string(),
            RouteMatch::MethodNotAllowed => "405".into(),
            RouteMatch::NotFound => "404".into(),
        };
        assert_eq!(name(&Method::GET, "/cs2/v1/matches"), "matches");
        assert_eq!(name(&Method::POST, "/cs2/v1/matches"), "405");
        assert_eq!(name(&Method::GET, "/v1/whoami"), "whoami");
        assert_eq!(name(&Method::GET, "/api/me"), "me-get");
        assert_eq!(name(&Method::PATCH, "/api/me"), "me-patch");
        assert_eq!(name(&Method::DELETE, "/api/me"), "405");
        assert_eq!(name(&Method::GET, "/anything/else"), "any");
        assert_eq!(name(&Method::GET, "/cs2/v1/stream"), "stream");
        assert_eq!(name(&Method::GET, "/"), "any");
        assert_eq!(
            name(&Method::GET, "/v1/v1/x"),
            "stream",
            "backtracks from the static branch"
        );
        assert_eq!(name(&Method::GET, "/v1/whoami/x"), "any");
        if let RouteMatch::Found { params, .. } = t.find(&Method::GET, "/dota2/v1/matches") {
            assert_eq!(params.get("sport"), Some("dota2"));
        } else {
            panic!("no match");
        }
        if let RouteMatch::Found { params, .. } = t.find(&Method::GET, "/soccer/v1/a/b") {
            assert_eq!(params.get("sport"), Some("soccer"));
            assert_eq!(params.get("rest"), Some("a/b"));
            assert_eq!(params.values(), ["soccer", "a/b"]);
        } else {
            panic!("no match");
        }
        assert!(matches!(
            t.find(&Method::GET, "no-slash"),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn parameters_by_name_and_bad_patterns() {
        let mut t = RouteTable::default();
        t.insert(route("a", "/{sport}/x", None)).unwrap();
        t.insert(route("b", "/{league}/y", None)).unwrap();
        if let RouteMatch::Found { params, .. } = t.find(&Method::GET, "/nba/y") {
            assert_eq!(params.get("league"), Some("nba"));
            assert_eq!(params.get("sport"), None);
        } else {
            panic!("no match");
        }
        for bad in [
            "/bad/{",
            "/a{b}",
            "/{*rest}/more",
            "/{}",
            "/{a}/{a}",
            "nope",
        ] {
            let err = t.insert(route("c", bad, None)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(matches!(t.find(&Method::GET, "/"), RouteMatch::NotFound));
        assert!(matches!(t.find(&Method::GET, "/nba"), RouteMatch::NotFound));
    }
}
