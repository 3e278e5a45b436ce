//! Hostile input as properties: the same entry points the cargo-fuzz targets drive
//! (`keygate_server::hostile`), fed by proptest with structured and raw inputs, in `cargo test`.
//! Each must return without panicking on anything; invariants are asserted inside.

use keygate_server::hostile;
use proptest::prelude::*;

/// Printable ASCII with the separators the parsers care about over-represented.
fn texty() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ -~\t\n]{0,200}|[a-zA-Z0-9_/{}*:=&?.%\\-\n ]{0,200}").unwrap()
}

fn header_lines() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("X-API-Key".to_owned()),
        Just("Authorization".to_owned()),
        Just("authorization".to_owned()),
        "[a-zA-Z-]{1,12}",
    ];
    let value = prop_oneof![
        "kg_[a-zA-Z0-9]{30,40}",
        "Bearer +[ -~]{0,40}",
        "bearer\t?kg_[a-zA-Z0-9]{36}",
        "[ -~]{0,60}",
    ];
    let line = prop_oneof![
        (name, value).prop_map(|(n, v)| format!("{n}: {v}")),
        "\\?([a-z_]{1,8}=[ -~&&[^&]]{0,40}&?){0,4}",
    ];
    proptest::collection::vec(line, 0..6).prop_map(|l| l.join("\n").into_bytes())
}

fn config_text() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("\"1s\"".to_owned()),
        Just("\"0ms\"".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("[\"x\", 1]".to_owned()),
        Just("\"/{a}/{*b}\"".to_owned()),
        Just("true".to_owned()),
        "\"[ -~&&[^\"\\\\]]{0,20}\"",
    ];
    let key = prop_oneof![
        Just("threshold"),
        Just("window"),
        Just("cooldown"),
        Just("prefix_length"),
        Just("max_tracked"),
        Just("trusted_proxies"),
        Just("max_header_bytes"),
        Just("max_headers"),
        Just("header_read_timeout"),
        Just("max_body_bytes"),
        Just("shutdown_grace"),
        Just("path"),
        Just("prefix"),
        Just("length"),
        Just("url"),
        Just("rps"),
        Just("credentials"),
        Just("status"),
    ];
    let table = prop_oneof![
        Just("[server]"),
        Just("[guard]"),
        Just("[keys]"),
        Just("[[routes]]"),
        Just("[upstreams.u]"),
        Just("[plans.p.limits]"),
        Just("[profile]"),
        Just("[profile.errors.rate_limited]"),
        Just("[limits]"),
    ];
    let line = prop_oneof![
        table.prop_map(str::to_owned),
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    proptest::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

fn admin_json() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("2099-01-01T00:00:00Z")),
        Just(serde_json::Value::from("1h")),
    ];
    let value = leaf.prop_recursive(2, 8, 4, |inner| {
        proptest::collection::vec(inner, 0..4).prop_map(serde_json::Value::from)
    });
    let field = prop_oneof![
        Just("name"),
        Just("plan"),
        Just("scopes"),
        Just("sports"),
        Just("bookmakers"),
        Just("limits"),
        Just("rps"),
        Just("per_day"),
        Just("client"),
        Just("label"),
        Just("expires_at"),
        Just("grace"),
        Just("other"),
    ];
    proptest::collection::btree_map(field.prop_map(str::to_owned), value, 0..5)
        .prop_map(|m| serde_json::to_vec(&m).unwrap())
}

/// Client WebSocket messages: logins and subscribes built from the profile's fields, with
/// channel names that the scope map grants, refuses or does not know.
fn ws_lines() -> impl Strategy<Value = Vec<u8>> {
    let channel = prop_oneof![
        Just("markets".to_owned()),
        Just("matches.live".to_owned()),
        Just("odds".to_owned()),
        "[a-z.*]{0,10}",
    ];
    let channels = prop_oneof![
        proptest::collection::vec(channel, 0..5).prop_map(|c| serde_json::to_string(&c).unwrap()),
        Just("null".to_owned()),
        Just("[1, {}]".to_owned()),
        Just("\"markets\"".to_owned()),
    ];
    let kind = prop_oneof![
        Just("login"),
        Just("subscribe"),
        Just("unsubscribe"),
        Just("ping"),
        Just("bet"),
        Just("other"),
    ];
    let key = prop_oneof![
        "kg_[a-zA-Z0-9]{36}".prop_map(|k| format!("\"{k}\"")),
        Just("\"\"".to_owned()),
        Just("7".to_owned()),
        Just("null".to_owned()),
    ];
    let message = (kind, key, channels)
        .prop_map(|(t, k, c)| format!("{{\"type\":\"{t}\",\"apiKey\":{k},\"channels\":{c}}}"));
    let line = prop_oneof![
        4 => message,
        1 => "[ -~]{0,80}",
        1 => "wst_[A-Za-z0-9_.-]{0,80}",
    ];
    proptest::collection::vec(line, 0..6).prop_map(|l| l.join("\n").into_bytes())
}

/// Upstream responses: a status line, header lines (some framing ones), then a chunked-ish
/// body of size lines, extensions, data and trailers, in any order.
fn upstream_response() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![
        Just("HTTP/1.1 200 OK\r\n"),
        Just("HTTP/1.0 200 OK\r\n"),
        Just("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n"),
        Just("HTTP/1.1 304 Not Modified\r\n"),
        Just("HTTP/1.1 101 Switching\r\n"),
        Just("HTTP/1.1 999 X\r\n"),
    ];
    let header = prop_oneof![
        Just("Transfer-Encoding: chunked\r\n".to_owned()),
        Just("Transfer-Encoding: gzip\r\n".to_owned()),
        Just("Connection: close\r\n".to_owned()),
        Just("Connection: keep-alive\r\n".to_owned()),
        "[0-9, +]{0,6}".prop_map(|v| format!("Content-Length: {v}\r\n")),
        "[a-z-]{1,8}: [ -~]{0,12}".prop_map(|h| format!("{h}\r\n")),
        "[ -~\t]{0,12}".prop_map(|h| format!("{h}\r\n")),
    ];
    let piece = prop_oneof![
        "[0-9a-fA-F]{1,3}".prop_map(|s| format!("{s}\r\n")),
        "[0-9a-f]{1,2}[ ;][ -~]{0,6}".prop_map(|s| format!("{s}\r\n")),
        "[ -~]{0,8}".prop_map(|s| format!("{s}\r\n")),
        Just("0\r\n\r\n".to_owned()),
        Just("0\r\nx-t: v\r\n\r\nNEXT".to_owned()),
        Just("\n".to_owned()),
    ];
    (
        status,
        proptest::collection::vec(header, 0..5),
        proptest::collection::vec(piece, 0..8),
    )
        .prop_map(|(s, h, p)| format!("{s}{}\r\n{}", h.concat(), p.concat()).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn upstream_responses(data in upstream_response()) {
        hostile::upstream_response(&data);
    }

    #[test]
    fn upstream_responses_from_raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        hostile::upstream_response(&data);
    }

    #[test]
    fn websocket_messages(data in ws_lines()) {
        hostile::ws_messages(&data);
    }

    #[test]
    fn websocket_messages_from_raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        hostile::ws_messages(&data);
    }

    #[test]
    fn credentials_and_keys(data in header_lines()) {
        hostile::credential(&data);
    }

    #[test]
    fn credentials_from_raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        hostile::credential(&data);
    }

    #[test]
    fn route_matching(head in 0u8..9, data in texty()) {
        let mut bytes = vec![head];
        bytes.extend_from_slice(data.as_bytes());
        hostile::routes(&bytes);
    }

    #[test]
    fn configuration(text in config_text()) {
        hostile::config(text.as_bytes());
    }

    #[test]
    fn configuration_from_raw_text(text in texty()) {
        hostile::config(text.as_bytes());
    }

    #[test]
    fn admin_bodies(data in admin_json()) {
        hostile::admin_bodies(&data);
    }

    #[test]
    fn admin_bodies_from_raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        hostile::admin_bodies(&data);
    }
}

/// Regression inputs found by the fuzz targets (see SECURITY.md).
#[test]
fn fuzz_findings_stay_fixed() {
    // ws_messages, 2026-12-01: a duplicate `apiKey` leaves the last one, `ogin`, which the
    // `Debug` text `Login { .. }` contains: the invariant, not the masking, was wrong.
    hostile::ws_messages(
        br#"{"type":"login","apiKey":"kg_!123456789abcdefghyjklmnopqts}vrwx","type":"login","apiKey":"ogin","api":"kg_!123456789abcdefghyjklmnopu"}"#,
    );
}

/// A line toml reports with an empty message (config, 2026-12-01) gets one of ours.
#[test]
fn every_config_error_has_words() {
    let text = include_str!("../../../fuzz/seeds/config/regression-empty-toml-message");
    hostile::config(text.as_bytes());
    let err = keygate_server::config::load(text, "t.toml", &keygate_server::Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.toml:33: not valid TOML here"), "{err}");
}

/// Structured seeds that must pass through the parsers' accepting paths, so the properties
/// above are not only exercising refusals.
#[test]
fn accepting_paths_are_reached() {
    hostile::credential(b"X-API-Key: kg_abc\n?api_key=kg_abc&x=1");
    hostile::routes(
        b"\x02/{sport}/v1/matches/{id}\n/files/{*rest}\nGET /cs2/v1/matches/7\nGET /files/a/b",
    );
    hostile::config(b"[guard]\nthreshold = 5\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
    hostile::ws_messages(
        b"{\"type\":\"login\",\"apiKey\":\"kg_0123456789abcdefghijklmnopqrstuvwxyz\",\"channels\":[\"markets\"]}\n\
          {\"type\":\"subscribe\",\"channels\":[\"markets\",\"matches.7\"]}\n\
          {\"type\":\"subscribe\",\"channels\":[\"matches.7\"]}",
    );
    assert_eq!(
        keygate_server::admin::check_bodies(
            br#"{"name": "Acme", "plan": "pro", "scopes": ["a:b"]}"#
        ),
        2,
        "a client create is also a valid update"
    );
    assert_eq!(
        keygate_server::admin::check_bodies(br#"{"grace": "1h"}"#),
        1
    );
}
