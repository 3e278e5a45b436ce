//! The per-request decision, shared by the proxy path and the forward-auth contracts:
//! path safety → route → public? → credential → authenticate → authorize, then the limits.
//! Each step refuses with a [`Refusal`]; the request's exit renders it (`crate::request::exit`).

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderMap, Method};
use keygate_core::decision::{Denial, Reason};
use keygate_core::Timestamp;

use crate::policy::guard::Caller;
use crate::policy::routes::{Route, RouteMatch};
use crate::request::credential;
use crate::request::exit::{Budget, Quote, Refusal, Trail};
use crate::state::gateway::{Admitted, Gateway};

/// A request that may pass.
#[derive(Debug)]
pub struct Passed<'t> {
    pub route_index: usize,
    pub route: &'t Route,
    /// `None` on public routes.
    pub who: Option<Admitted>,
    pub credential_source: Option<usize>,
}

impl Passed<'_> {
    /// The upstream this request goes to, given its route's `upstream`: the route's
    /// `delayed_upstream` for a caller on a delayed plan (`crate::policy::delay`).
    #[inline]
    pub fn upstream(&self, upstream: usize) -> usize {
        self.route.upstream_for(upstream, || {
            self.who.as_ref().is_some_and(|w| w.client.delay.is_some())
        })
    }
}

/// True for paths an upstream might normalize into somewhere else (`..`, `.`, encoded slashes
/// or dots): authorizing `/cs2/..` and letting the upstream serve `/dota2` must be impossible.
/// Also what servlet containers (Tomcat, Jetty) normalize: a dot segment with path parameters
/// (`..;x`, `.;`), and dots, slashes or backslashes encoded more than once (`%252e`, decoded
/// once by the upstream's server and once more by the application).
pub(crate) fn is_ambiguous_path(path: &str) -> bool {
    // Nearly every path has none of the three bytes a dot segment, an encoded separator or
    // a backslash needs: one pass over the bytes answers for them.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let bytes = path.as_bytes();
    // `%2e`, `%2f`, `%5c`, encoded once or more (`%252e`, `%25252e`, ...).
    let encoded_separator = |at: usize| {
        let mut rest = &bytes[at + 1..];
        while rest.len() >= 4 && rest[..2].eq_ignore_ascii_case(b"25") {
            rest = &rest[2..];
        }
        rest.get(..2).is_some_and(|hex| {
            hex.eq_ignore_ascii_case(b"2e")
                || hex.eq_ignore_ascii_case(b"2f")
                || hex.eq_ignore_ascii_case(b"5c")
        })
    };
    path.split('/').any(|seg| {
        // `..;jsessionid=x` is `..` to a servlet container: path parameters are cut first.
        let seg = seg.split_once(';').map_or(seg, |(dots, _)| dots);
        seg == "." || seg == ".."
    }) || (0..bytes.len()).any(|i| bytes[i] == b'%' && encoded_separator(i))
        || path.contains('\\')
}

/// A request whose `Host` is missing or repeated (RFC 9112 §3.2: the server must answer 400 to
/// an HTTP/1.1 request without one, and to any request with more than one): which of two hosts
/// an upstream, a cache or a log believes is anyone's guess. HTTP/1.0 may omit it; HTTP/2 names
/// the authority in `:authority`.
pub(crate) fn host_denial(version: http::Version, headers: &HeaderMap) -> Option<Denial> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some(Denial::about(
            Reason::BadRequest,
            "the request has more than one Host header",
        )),
        (None, _) if version == http::Version::HTTP_11 => Some(Denial::about(
            Reason::BadRequest,
            "an HTTP/1.1 request must have a Host header",
        )),
        _ => None,
    }
}

/// Authenticates the credential in `headers`/`query` (for whoami and verify, which have no route).
///
/// # Errors
/// A 401-class reason and the profile source the key came from; `RateLimited` for a key that
/// fails while the caller's source or key prefix is in a brute-force cool-down.
pub(crate) fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: IpAddr,
) -> Result<(Admitted, usize), Reason> {
    let cred = credential::extract(&gw.config.profile.credentials, headers, query);
    let key = cred.as_ref().ok().map(|c| c.key);
    let caller = Caller { peer, headers };
    guarded(gw, caller, key, || {
        let cred = cred?;
        Ok((gw.authenticate(cred.key)?, cred.source))
    })
}

/// Runs an authentication under the brute-force guard (`crate::policy::guard`): a key that
/// authenticates is served whatever its source did; a failure is counted, and answered
/// `RateLimited` while the caller's source or key prefix is in a cool-down.
///
/// # Errors
/// `RateLimited` for a failure during a cool-down, else the error of `auth`.
pub(crate) fn guarded<T>(
    gw: &Gateway,
    caller: Caller<'_>,
    key: Option<&str>,
    auth: impl FnOnce() -> Result<T, Reason>,
) -> Result<T, Reason> {
    auth().map_err(|reason| gw.guard.refuse(caller, key, reason, gw.clock.now()))
}

/// Decides a request.
///
/// # Errors
/// A [`Refusal`] with the profile reason, the route it matched and, when it authenticated,
/// the caller.
pub fn decide<'t>(
    gw: &'t Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Passed<'t>, Refusal> {
    if is_ambiguous_path(path) {
        return Err(Denial::about(
            Reason::BadRequest,
            "the path contains dot segments or encoded separators",
        )
        .into());
    }
    let (route, index, params) = match gw.config.routes.find(method, path) {
        RouteMatch::Found {
            route,
            index,
            params,
        } => (route, index, params),
        unknown @ (RouteMatch::MethodNotAllowed | RouteMatch::NotFound) => {
            let reason = match unknown {
                RouteMatch::MethodNotAllowed => Reason::MethodNotAllowed,
                _ => Reason::NotFound,
            };
            // `[profile] unknown_paths_need_key` (seed 004: "The only endpoint that does not
            // require authentication is GET /health"): without a valid key, the key's refusal.
            let who = if gw.config.profile.unknown_paths_need_key {
                let (who, _) = authenticate(gw, headers, query, peer)?;
                Some(who)
            } else {
                None
            };
            return Err(Refusal::from(reason).by(who));
        }
    };
    if route.public {
        return Ok(Passed {
            route_index: index,
            route,
            who: None,
            credential_source: None,
        });
    }
    let started = Instant::now();
    let (who, source) =
        authenticate(gw, headers, query, peer).map_err(|r| Refusal::from(r).on(index))?;
    let address = || gw.guard.client_address(Caller { peer, headers });
    if let Err(denial) = gw.authorize(&who, route, &params, query, address) {
        return Err(Refusal::from(denial).on(index).by(Some(who)));
    }
    gw.observe_sharing(&who, Caller { peer, headers });
    gw.metrics
        .observe_decision(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    Ok(Passed {
        route_index: index,
        route,
        who: Some(who),
        credential_source: Some(source),
    })
}

/// Checks and counts the limits of a request let through: the caller's (client, key, route),
/// or a public route's per source address. A refused request consumes nothing; what was
/// counted goes on the trail, for the answer's headers.
///
/// # Errors
/// A [`Refusal`]: `RateLimited` quoting the deciding limit, or `LimiterUnavailable` when the
/// shared limiter failed and the policy is fail-closed.
pub(crate) async fn limit(
    gw: &Gateway,
    passed: &Passed<'_>,
    caller: Caller<'_>,
    now: Timestamp,
    trail: &mut Trail,
) -> Result<(), Refusal> {
    let verdict = match &passed.who {
        Some(who) => gw.check_limits(who, passed.route, now).await,
        None => {
            let source = gw.guard.source(caller);
            gw.check_source_limits(passed.route, source, now).await
        }
    };
    let refused = |r: Refusal| r.on(passed.route_index).by(passed.who.clone());
    match verdict {
        Ok(Some((limit, state))) if !state.allowed => {
            let quote = Quote::Limit(Budget::of(&limit, state, now));
            Err(refused(Refusal::from(Reason::RateLimited).quoting(quote)))
        }
        Ok(decided) => {
            trail.counted = Some(decided.map(|(limit, state)| Budget::of(&limit, state, now)));
            Ok(())
        }
        Err(reason) => Err(refused(reason.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths() {
        for p in [
            "/cs2/../dota2/v1",
            "/./x",
            "/a/%2e%2e/b",
            "/a%2Fb",
            "/a\\b",
            "/a/%5C",
            // Servlet containers: dot segments with path parameters, double encoding.
            "/cs2/..;/dota2/v1",
            "/cs2/..;jsessionid=1/dota2",
            "/.;/x",
            "/cs2/%252e%252e/dota2",
            "/a%252Fb",
            "/a/%255c",
            "/a/%25252e%25252e/b",
        ] {
            assert!(is_ambiguous_path(p), "{p}");
        }
        for p in [
            "/cs2/v1/matches",
            "/a..b/c",
            "/",
            "/v1/whoami",
            "/x%20y",
            "/a;b/c",
            "/..a;/b",
            "/x%2520y",
            "/100%25",
        ] {
            assert!(!is_ambiguous_path(p), "{p}");
        }
    }

    #[test]
    fn a_missing_or_repeated_host() {
        use http::{HeaderValue, Version};
        let mut one = HeaderMap::new();
        one.insert(http::header::HOST, HeaderValue::from_static("api.example"));
        let mut two = one.clone();
        two.append(http::header::HOST, HeaderValue::from_static("evil.example"));
        let none = HeaderMap::new();
        assert!(host_denial(Version::HTTP_11, &one).is_none());
        assert!(host_denial(Version::HTTP_10, &none).is_none());
        assert!(host_denial(Version::HTTP_2, &none).is_none());
        assert!(host_denial(Version::HTTP_11, &none).is_some());
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(host_denial(v, &two).unwrap().reason, Reason::BadRequest);
        }
    }
}
