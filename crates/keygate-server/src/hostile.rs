//! Entry points that feed untrusted bytes to each parser keygate exposes and check its
//! invariants: credential extraction and key parsing, route matching, configuration parsing,
//! WebSocket login and client messages and tokens, the admin API's JSON bodies, and upstream
//! responses as the direct engine reads them (head and chunked body).
//!
//! One function per property, called by the cargo-fuzz targets (`fuzz/`) and by the proptest
//! suite (`tests/hostile.rs`), so both check the same thing. Each panics only when an
//! invariant breaks; bad input itself must never panic.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use keygate_core::decision::Reason;
use keygate_core::key_format::{Alphabet, KeyFormat};
use keygate_core::policy::Requirements;

use crate::config::{self, Overrides};
use crate::policy::profile::CredentialSource;
use crate::policy::routes::{Route, RouteMatch, RouteTable};
use crate::request::check::is_ambiguous_path;
use crate::request::credential::{self, MAX_CREDENTIAL_LEN};

/// Splits fuzz input into lines, as text where it is UTF-8 (lossy otherwise).
fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(str::to_owned)
        .collect()
}

/// Headers from `name: value` lines (lines HTTP could not carry are skipped, as hyper would
/// refuse them), and a query string from a line starting with `?`. Then the credential is
/// extracted with every kind of source, and any key found is checked by three key formats.
///
/// Invariants: an extracted key is non-empty visible ASCII within the length bound and was
/// present in the input; a key that passes a format check has that format's prefix and
/// length; stripping the sources (`credential::strip`) leaves no credential to find, and keeps
/// the source `forward_credential` forwards.
pub fn credential(data: &[u8]) {
    let mut headers = HeaderMap::new();
    let mut query: Option<String> = None;
    for line in data.split(|&b| b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            query = Some(String::from_utf8_lossy(q).into_owned());
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let sources = [
        CredentialSource::Header(HeaderName::from_static("x-api-key")),
        CredentialSource::Bearer,
        CredentialSource::Query("api_key".into()),
    ];
    match credential::extract(&sources, &headers, query.as_deref()) {
        Ok(cred) => {
            let key = cred.key;
            assert!(!key.is_empty() && key.len() <= MAX_CREDENTIAL_LEN);
            assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
            assert!(cred.source < sources.len());
            assert!(
                data.windows(key.len()).any(|w| w == key.as_bytes()),
                "an extracted key must come from the input"
            );
            key_formats(key);
        }
        Err(reason) => assert!(matches!(
            reason,
            Reason::MissingKey | Reason::MalformedKey | Reason::ConflictingCredentials
        )),
    }
    let mut stripped = headers.clone();
    let query_left = credential::strip(&sources, None, &mut stripped, query.as_deref());
    assert_eq!(
        credential::extract(&sources, &stripped, query_left.as_deref()),
        Err(Reason::MissingKey),
        "a credential survived the strip of {query:?}"
    );
    if let Ok(cred) = credential::extract(&sources, &headers, query.as_deref()) {
        let kept = &sources[cred.source];
        let mut forwarded = headers.clone();
        let query_left = credential::strip(&sources, Some(kept), &mut forwarded, query.as_deref());
        let found = credential::extract(&sources, &forwarded, query_left.as_deref());
        assert_eq!(
            found.map(|c| c.source),
            Ok(cred.source),
            "the kept source went"
        );
    }
    key_formats(&String::from_utf8_lossy(data));
}

/// Key parsing alone: the offline format check of three formats, and the masked hint.
pub fn key_formats(candidate: &str) {
    let formats = [
        KeyFormat::default(),
        KeyFormat::new("os_live_", Alphabet::Hex, 32, false).expect("a valid format"),
        KeyFormat::admin_token(),
    ];
    for f in &formats {
        if f.check(candidate).is_ok() {
            assert!(candidate.starts_with(f.prefix()));
            assert_eq!(candidate.len(), f.key_len());
        }
    }
    let hint = keygate_core::key_format::hint_of("kg_", candidate);
    assert!(hint.len() <= "kg_...".len() + 4, "{hint:?}");
}

/// Route patterns from the first lines (at most 8), then one request per remaining line
/// (`METHOD path`). Invalid patterns must be refused, never panic; every match must be
/// consistent: its parameters are pieces of the path, its route accepts the method.
pub fn routes(data: &[u8]) {
    let lines = lines(data);
    let split = lines
        .len()
        .min(8)
        .min(usize::from(data.first().copied().unwrap_or(0) % 9));
    let mut table = RouteTable::default();
    let mut names = Vec::new();
    for (i, pattern) in lines[..split].iter().enumerate() {
        let route = Route {
            name: Arc::from(format!("r{i}")),
            pattern: pattern.as_str().into(),
            methods: (i % 2 == 1).then(|| vec![Method::GET]),
            target: crate::policy::routes::Target::Upstream(0),
            delayed_upstream: None,
            needs: Requirements::default(),
            sport_param: None,
            bookmaker: None,
            public: false,
            limits: crate::policy::ratelimit::LimitSet::default(),
            compiled_limits: Vec::new(),
            cost: 1,
            errors: crate::policy::profile::ErrorOverrides::default(),
        };
        if table.insert(route).is_ok() {
            names.push(
                pattern
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(|s| s.trim_start_matches('*').to_owned())
                    .collect::<Vec<_>>(),
            );
        }
    }
    for line in &lines[split..] {
        let (method, path) = line.split_once(' ').unwrap_or(("GET", line));
        let _ = is_ambiguous_path(path);
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        if let RouteMatch::Found {
            route,
            index,
            params,
        } = table.find(&method, path)
        {
            assert!(route.methods.as_ref().is_none_or(|m| m.contains(&method)));
            for name in &names[index] {
                if let Some(value) = params.get(name) {
                    assert!(path.contains(value), "{name}={value:?} not in {path:?}");
                }
            }
        }
    }
}

/// A configuration file: parsed and compiled, or refused with errors that each name a line
/// inside the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides = Overrides {
        listen: Some(([127, 0, 0, 1], 0).into()),
        admin_listen: Some(([127, 0, 0, 1], 0).into()),
        portal_listen: Some(([127, 0, 0, 1], 0).into()),
        db: Some(":memory:".to_owned()),
        upstream: Some("http://127.0.0.1:9".to_owned()),
        workers: Some(1),
        tooling: false,
        skip_tls_files: false,
    };
    if let Err(errors) = config::load(text, "fuzz.toml", &overrides) {
        assert!(!errors.0.is_empty());
        let last_line = text.split('\n').count();
        for e in &errors.0 {
            assert!(!e.message.is_empty());
            if let Some(line) = e.line {
                assert!(
                    (1..=last_line).contains(&line),
                    "line {line} of {last_line}"
                );
            }
        }
    }
}

/// The admin API's JSON bodies (see [`crate::admin::check_bodies`]).
pub fn admin_bodies(data: &[u8]) {
    let _ = crate::admin::check_bodies(data);
}

/// WebSocket messages from a client: each line is tried as a login message (seed 000's shape),
/// as a client message after login (subscribe filtering by channel scope), and as a WebSocket
/// token.
///
/// Invariants: a parsed login has a non-empty key and its `Debug` never shows it; a subscribe
/// grants only channels the client's scopes allow, refuses only channels they do not, and the
/// message relayed upstream carries exactly the granted channels; no line is accepted as a
/// token unless it is one that was issued, unaltered, and unexpired.
pub fn ws_messages(data: &[u8]) {
    use keygate_core::{ClientId, KeyDigest, LimitOverrides, Timestamp};

    use crate::policy::channels;
    use crate::policy::ws::{AuthMode, ChannelMap, LoginShape, TokenSecret, WsProfile};
    use crate::ws::inbound::{classify, Inbound};
    use crate::ws::{login, token};

    let mut profile = WsProfile::new(TokenSecret([7; 32]));
    let map: std::collections::BTreeMap<String, String> = [
        ("markets", "cs2:stream:markets"),
        ("matches.*", "cs2:stream:matches"),
        ("odds", "odds:read"),
    ]
    .into_iter()
    .map(|(c, s)| (c.to_owned(), s.to_owned()))
    .collect();
    profile.channels = ChannelMap::new(&map, false);
    profile.message_types = vec!["ping".into(), "bet".into()];
    let client = keygate_core::policy::ClientPolicy {
        id: ClientId::generate(),
        name: "Acme".into(),
        plan: "pro".into(),
        scopes: vec!["cs2:stream:matches".into()],
        sports: vec![],
        bookmakers: vec![],
        features: vec![],
        selects_bookmakers: false,
        limits: LimitOverrides::default(),
        active: true,
    };
    let shape = LoginShape {
        kind: "login".into(),
        key_field: "apiKey".into(),
        channels_field: "channels".into(),
    };
    let now = Timestamp::from_millis(1_800_000_000_000);
    let issued = token::issue(
        &profile.token.secret,
        &KeyDigest([9; 32]),
        now,
        std::time::Duration::from_secs(30),
    );
    assert!(token::check(&profile.token.secret, &issued, now).is_ok());

    for line in lines(data) {
        if let Ok(l) = login::parse(&shape, "type", &line, 4096) {
            assert!(!l.key.is_empty());
            // The key leaves no trace in `Debug`: it reads the same with any other key. (A
            // substring test would flag keys like `ogin`, which `Login` itself contains.)
            let other = login::Login {
                key: format!("{}x", l.key),
                channels: l.channels.clone(),
            };
            assert_eq!(
                format!("{l:?}"),
                format!("{other:?}"),
                "a login's Debug shows its key"
            );
        }
        for mode in [AuthMode::LoginMessage, AuthMode::Handshake] {
            if let Inbound::Subscribe {
                forward,
                granted,
                refused,
            } = classify(&profile, mode, &client, None, &line)
            {
                for c in &granted {
                    assert!(
                        channels::allowed(&profile.channels, &client, None, c).is_ok(),
                        "{c}"
                    );
                }
                for r in &refused {
                    assert!(
                        channels::allowed(&profile.channels, &client, None, &r.channel).is_err()
                    );
                }
                match forward {
                    Some(f) if !f.is_empty() => {
                        let v: serde_json::Value =
                            serde_json::from_str(&f).expect("a relayed subscribe is JSON");
                        let sent: Vec<&str> = v["channels"]
                            .as_array()
                            .expect("a relayed subscribe lists its channels")
                            .iter()
                            .filter_map(|c| c.as_str())
                            .collect();
                        assert_eq!(sent, granted, "only granted channels go upstream");
                    }
                    Some(_) => assert!(granted.is_empty()),
                    None => assert!(refused.is_empty()),
                }
            }
        }
        let accepted = token::check(&profile.token.secret, &line, now).is_ok();
        assert!(
            !accepted || line == issued,
            "a token nobody issued was accepted"
        );
        if line == issued {
            let later = now.plus(std::time::Duration::from_secs(31));
            assert!(token::check(&profile.token.secret, &line, later).is_err());
        }
    }
}

/// An upstream's response as the direct engine (`crate::request::direct`) reads it: the head,
/// then a chunked body, from the input whole and from the input one byte at a time.
///
/// Invariants: however the bytes arrive, the head parses to the same status, framing and
/// headers (or the same refusal), and the chunked body to the same data (or a refusal); the
/// data never holds more bytes than the input; what follows the body's end is left unread.
pub fn upstream_response(data: &[u8]) {
    use crate::request::direct::{parse_head, Chunk, Chunked, Framing};
    use bytes::BytesMut;

    // Some inputs answer a HEAD request (no body whatever the head says).
    let head_request = data.len().is_multiple_of(7);
    let whole = {
        let mut buf = BytesMut::from(data);
        parse_head(&mut buf, head_request).map(|h| (h, buf))
    };
    let mut trickled = BytesMut::new();
    let mut by_byte = Ok(None);
    for &b in data {
        trickled.extend_from_slice(&[b]);
        by_byte = parse_head(&mut trickled, head_request);
        if !matches!(by_byte, Ok(None)) {
            break;
        }
    }
    let (head, mut rest) = match (whole, by_byte) {
        (Ok((Some(a), rest)), Ok(Some(b))) => {
            assert_eq!(
                (a.status, a.framing, a.keep_alive),
                (b.status, b.framing, b.keep_alive)
            );
            assert_eq!(a.headers, b.headers);
            (a, rest)
        }
        (Ok((None, _)), Ok(None)) => return,
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            return;
        }
        (a, b) => panic!("whole {:?} and trickled {:?} differ", a.map(|x| x.0), b),
    };
    if head.framing != Framing::Chunked {
        return;
    }
    let dechunk = |step: usize, rest: &[u8]| {
        let mut decoder = Chunked::default();
        let (mut buf, mut out, mut fed) = (BytesMut::new(), Vec::new(), 0);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Chunk::Data(d)) => out.extend_from_slice(&d),
                Ok(Chunk::End) => return Ok((out, buf.len() + rest.len() - fed)),
                Ok(Chunk::NeedMore) if fed == rest.len() => return Ok((out, usize::MAX)),
                Ok(Chunk::NeedMore) => {
                    let end = (fed + step).min(rest.len());
                    buf.extend_from_slice(&rest[fed..end]);
                    fed = end;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let rest = rest.split().freeze();
    let a = dechunk(rest.len().max(1), &rest);
    let b = dechunk(1, &rest);
    assert_eq!(a, b);
    if let Ok((out, _)) = a {
        assert!(out.len() <= rest.len());
    }
}
