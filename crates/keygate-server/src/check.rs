//! The per-request decision, shared by the proxy path and the forward-auth contracts:
//! path safety → route → public? → credential → authenticate → authorize.

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderMap, Method};
use keygate_core::decision::{Denial, Reason};

use crate::credential;
use crate::gateway::{Admitted, Gateway};
use crate::guard::Caller;
use crate::profile::LimitFacts;
use crate::routes::{Route, RouteMatch};

/// A request that may pass.
#[derive(Debug)]
pub struct Passed<'t> {
    pub route_index: usize,
    pub route: &'t Route,
    /// `None` on public routes.
    pub who: Option<Admitted>,
    pub credential_source: Option<usize>,
}

/// A refused request and the route it matched, if any (for metrics).
#[derive(Debug)]
pub struct Refused {
    pub route_index: Option<usize>,
    pub denial: Denial,
    /// The caller, when it authenticated and was then refused (its usage counts the refusal).
    pub who: Option<Admitted>,
}

/// True for paths an upstream might normalize into somewhere else (`..`, `.`, encoded slashes
/// or dots): authorizing `/cs2/..` and letting the upstream serve `/dota2` must be impossible.
/// Also what servlet containers (Tomcat, Jetty) normalize: a dot segment with path parameters
/// (`..;x`, `.;`), and dots, slashes or backslashes encoded more than once (`%252e`, decoded
/// once by the upstream's server and once more by the application).
pub fn is_ambiguous_path(path: &str) -> bool {
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
pub fn host_denial(version: http::Version, headers: &HeaderMap) -> Option<Denial> {
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
/// A 401-class reason and the profile source the key came from; `RateLimited` while the
/// caller's source or key prefix is in a brute-force cool-down.
pub fn authenticate(
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

/// Runs an authentication under the brute-force guard (`crate::guard`): a caller in a
/// cool-down is refused before `auth` runs (before any lookup), and a failure is counted.
///
/// # Errors
/// `RateLimited` during a cool-down, else the error of `auth`.
pub fn guarded<T>(
    gw: &Gateway,
    caller: Caller<'_>,
    key: Option<&str>,
    auth: impl FnOnce() -> Result<T, Reason>,
) -> Result<T, Reason> {
    gw.guard.check(caller, key, || gw.clock.now())?;
    auth().inspect_err(|&reason| gw.guard.failed(caller, key, reason, gw.clock.now()))
}

/// What a refusal quotes: a brute-force cool-down's `Retry-After`; nothing for other reasons
/// (the limiter's own 429s carry their limit's state).
pub fn refusal_facts(gw: &Gateway, reason: Reason) -> LimitFacts {
    if reason == Reason::RateLimited {
        gw.guard.facts(gw.clock.now())
    } else {
        LimitFacts::default()
    }
}

/// Decides a request.
///
/// # Errors
/// [`Refused`] with the profile reason.
pub fn decide<'t>(
    gw: &'t Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Passed<'t>, Refused> {
    if is_ambiguous_path(path) {
        return Err(Refused {
            route_index: None,
            denial: Denial::about(
                Reason::BadRequest,
                "the path contains dot segments or encoded separators",
            ),
            who: None,
        });
    }
    let (route, index, params) = match gw.config.routes.find(method, path) {
        RouteMatch::Found {
            route,
            index,
            params,
        } => (route, index, params),
        RouteMatch::MethodNotAllowed => {
            return Err(Refused {
                route_index: None,
                denial: Denial::new(Reason::MethodNotAllowed),
                who: None,
            })
        }
        RouteMatch::NotFound => {
            return Err(Refused {
                route_index: None,
                denial: Denial::new(Reason::NotFound),
                who: None,
            })
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
    let (who, source) = authenticate(gw, headers, query, peer).map_err(|r| Refused {
        route_index: Some(index),
        denial: Denial::new(r),
        who: None,
    })?;
    if let Err(denial) = gw.authorize(&who, route, &params, query) {
        return Err(Refused {
            route_index: Some(index),
            denial,
            who: Some(who),
        });
    }
    gw.metrics
        .observe_decision(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    Ok(Passed {
        route_index: index,
        route,
        who: Some(who),
        credential_source: Some(source),
    })
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
