//! Finding the caller's key in the places the profile allows, in its order.
//!
//! Hostile input is expected here: duplicated headers, a header and a bearer token that
//! disagree, non-ASCII or control bytes, megabyte-long values. Each gets a precise reason and
//! none reaches the digest or the replica.

use std::borrow::Cow;

use http::header::AUTHORIZATION;
use http::HeaderMap;
use keygate_core::decision::Reason;

use crate::policy::profile::CredentialSource;

/// Longest credential considered at all; anything longer is malformed without further work.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 512;

/// The caller's key and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credential<'a> {
    pub key: &'a str,
    pub source: usize,
}

fn check_value(raw: &[u8]) -> Result<Option<&str>, Reason> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_CREDENTIAL_LEN || !raw.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Reason::MalformedKey);
    }
    // All visible ASCII, so valid UTF-8.
    std::str::from_utf8(raw)
        .map(Some)
        .map_err(|_| Reason::MalformedKey)
}

/// The value of one header source; several headers of the same name must agree.
fn from_header<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a str>, Reason> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(name) {
        if let Some(v) = check_value(value.as_bytes())? {
            match found {
                Some(prev) if prev != v => return Err(Reason::ConflictingCredentials),
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

fn from_bearer(headers: &HeaderMap) -> Result<Option<&str>, Reason> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(AUTHORIZATION) {
        let raw = value.as_bytes();
        let Some(space) = raw.iter().position(|&b| b == b' ') else {
            continue;
        };
        if !raw[..space].eq_ignore_ascii_case(b"bearer") {
            continue; // Basic and other schemes are not ours.
        }
        let token = raw[space..].trim_ascii_start();
        let Some(v) = check_value(token)? else {
            continue;
        };
        match found {
            Some(prev) if prev != v => return Err(Reason::ConflictingCredentials),
            _ => found = Some(v),
        }
    }
    Ok(found)
}

fn from_query<'a>(query: Option<&'a str>, name: &str) -> Result<Option<&'a str>, Reason> {
    let mut found: Option<&str> = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        if let Some(v) = check_value(v.as_bytes())? {
            match found {
                Some(prev) if prev != v => return Err(Reason::ConflictingCredentials),
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

/// Extracts the credential: the first source that has one, checked against every other source
/// (two different keys in one request are refused, not guessed between).
///
/// # Errors
/// `MissingKey`, `MalformedKey` or `ConflictingCredentials`.
pub(crate) fn extract<'a>(
    sources: &[CredentialSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Credential<'a>, Reason> {
    let mut found: Option<Credential<'a>> = None;
    for (i, source) in sources.iter().enumerate() {
        let value = match source {
            CredentialSource::Header(name) => from_header(headers, name)?,
            CredentialSource::Bearer => from_bearer(headers)?,
            CredentialSource::Query(name) => from_query(query, name)?,
        };
        match (value, found) {
            (Some(v), None) => found = Some(Credential { key: v, source: i }),
            (Some(v), Some(prev)) if prev.key != v => return Err(Reason::ConflictingCredentials),
            _ => {}
        }
    }
    found.ok_or(Reason::MissingKey)
}

/// Removes every credential the `named` sources could carry from a request going upstream,
/// so the key stops at the gateway whichever copy of it the caller sent: every value of each
/// named header, the `Authorization` header for `bearer`, and each named query parameter
/// (matched percent-decoded and ignoring ASCII case, as upstream frameworks may read it).
/// `kept` is the one source `forward_credential` forwards: the source the key was read from.
///
/// The same rule for forwarded requests (`crate::request::proxy::prepare`) and WebSocket upstreams
/// (`crate::ws::open`). Returns the query to send: borrowed when nothing was removed, `None`
/// when the request has none.
pub(crate) fn strip<'s, 'q>(
    named: impl IntoIterator<Item = &'s CredentialSource>,
    kept: Option<&CredentialSource>,
    headers: &mut HeaderMap,
    query: Option<&'q str>,
) -> Option<Cow<'q, str>> {
    let mut query = query.map(Cow::Borrowed);
    for source in named {
        if kept == Some(source) {
            continue;
        }
        match source {
            CredentialSource::Header(name) => {
                headers.remove(name);
            }
            CredentialSource::Bearer => {
                headers.remove(AUTHORIZATION);
            }
            CredentialSource::Query(name) => {
                if let Some(q) = &query {
                    if has_query_param(q, name) {
                        query = Some(Cow::Owned(strip_query_param(q, name)));
                    }
                }
            }
        }
    }
    query
}

/// True when a pair of `query` is named `name` (percent-decoded, ASCII case ignored).
pub(crate) fn has_query_param(query: &str, name: &str) -> bool {
    query.split('&').any(|pair| names_param(pair, name))
}

fn names_param(pair: &str, name: &str) -> bool {
    let key = pair.split_once('=').map_or(pair, |(k, _)| k).as_bytes();
    let mut name = name.bytes();
    let mut i = 0;
    while i < key.len() {
        let hex = key
            .get(i + 1..i + 3)
            .map(|h| (hex_value(h[0]), hex_value(h[1])));
        let decoded = match (key[i], hex) {
            (b'%', Some((Some(high), Some(low)))) => {
                i += 3;
                high << 4 | low
            }
            (b, _) => {
                i += 1;
                b
            }
        };
        if !name
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case(&decoded))
        {
            return false;
        }
    }
    name.next().is_none()
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `query` without the parameters [`strip`] would find named `name`.
pub(crate) fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !names_param(pair, name))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue};

    use super::*;

    fn sources() -> Vec<CredentialSource> {
        vec![
            CredentialSource::Header(HeaderName::from_static("x-api-key")),
            CredentialSource::Bearer,
            CredentialSource::Query("api_key".into()),
        ]
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn sources_in_order_and_case_insensitive_names() {
        let s = sources();
        let h = headers(&[("X-API-KEY", b"kg_abc")]);
        assert_eq!(
            extract(&s, &h, None),
            Ok(Credential {
                key: "kg_abc",
                source: 0
            })
        );
        let h = headers(&[("authorization", b"bearer kg_abc")]);
        assert_eq!(extract(&s, &h, None).unwrap().source, 1);
        assert_eq!(
            extract(&s, &HeaderMap::new(), Some("a=1&api_key=kg_q"))
                .unwrap()
                .key,
            "kg_q"
        );
        let h = headers(&[("authorization", b"Basic dXNlcjpwYXNz")]);
        assert_eq!(extract(&s, &h, None), Err(Reason::MissingKey));
    }

    #[test]
    fn hostile_values() {
        let s = sources();
        assert_eq!(
            extract(&s, &HeaderMap::new(), None),
            Err(Reason::MissingKey)
        );
        assert_eq!(
            extract(&s, &headers(&[("x-api-key", b"")]), None),
            Err(Reason::MissingKey)
        );
        assert_eq!(
            extract(&s, &headers(&[("x-api-key", b"kg_a b")]), None),
            Err(Reason::MalformedKey)
        );
        assert_eq!(
            extract(&s, &headers(&[("x-api-key", "kg_ü".as_bytes())]), None),
            Err(Reason::MalformedKey)
        );
        assert_eq!(
            extract(&s, &headers(&[("x-api-key", b"kg_\ta")]), None),
            Err(Reason::MalformedKey)
        );
        let long = vec![b'a'; 100_000];
        assert_eq!(
            extract(&s, &headers(&[("x-api-key", &long)]), None),
            Err(Reason::MalformedKey)
        );
        let dup = headers(&[("x-api-key", b"kg_a"), ("x-api-key", b"kg_b")]);
        assert_eq!(extract(&s, &dup, None), Err(Reason::ConflictingCredentials));
        let same = headers(&[("x-api-key", b"kg_a"), ("x-api-key", b"kg_a")]);
        assert_eq!(extract(&s, &same, None).unwrap().key, "kg_a");
        let both = headers(&[("x-api-key", b"kg_a"), ("authorization", b"Bearer kg_b")]);
        assert_eq!(
            extract(&s, &both, None),
            Err(Reason::ConflictingCredentials)
        );
        let agree = headers(&[("x-api-key", b"kg_a"), ("authorization", b"Bearer kg_a")]);
        assert_eq!(extract(&s, &agree, None).unwrap().source, 0);
        assert_eq!(
            extract(&s, &HeaderMap::new(), Some("api_key=a&api_key=b")),
            Err(Reason::ConflictingCredentials)
        );
    }

    #[test]
    fn query_keys_are_stripped() {
        assert_eq!(strip_query_param("a=1&api_key=x&b=2", "api_key"), "a=1&b=2");
        assert_eq!(strip_query_param("api_key=x", "api_key"), "");
        assert_eq!(strip_query_param("api_keyx=1", "api_key"), "api_keyx=1");
        // Spellings an upstream may decode or fold into the same name.
        assert_eq!(
            strip_query_param("API_KEY=x&api%5Fkey=y&api%5fKey&a=%41", "api_key"),
            "a=%41"
        );
        assert_eq!(
            strip_query_param("api%5=x&api%=y", "api_key"),
            "api%5=x&api%=y"
        );
    }

    #[test]
    fn every_named_source_is_stripped_but_the_kept_one() {
        let s = sources();
        let mut h = headers(&[
            ("x-api-key", b"kg_a"),
            ("x-api-key", b"kg_a"),
            ("authorization", b"Bearer kg_a"),
            ("x-other", b"1"),
        ]);
        let q = strip(&s, None, &mut h, Some("api_key=kg_a&page=2&API_KEY=kg_a"));
        assert_eq!(q.as_deref(), Some("page=2"));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));

        // forward_credential: the source the key was read from goes on, no other copy.
        let mut h = headers(&[("x-api-key", b"kg_a"), ("authorization", b"Bearer kg_a")]);
        let q = strip(&s, Some(&s[0]), &mut h, Some("api_key=kg_a"));
        assert_eq!(q.as_deref(), Some(""));
        assert_eq!(h.get("x-api-key").unwrap(), "kg_a");
        assert!(!h.contains_key("authorization"));

        // Nothing to remove: the query is the caller's own, not a copy.
        let q = strip(&s, None, &mut HeaderMap::new(), Some("page=2"));
        assert!(matches!(q, Some(Cow::Borrowed("page=2"))));
        assert!(strip(&s, None, &mut HeaderMap::new(), None).is_none());
    }
}
