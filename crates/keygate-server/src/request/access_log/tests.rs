//! The access line as [`AccessFirst`] writes it is the line the fmt layer writes, byte for
//! byte but the timestamp: text and JSON, with hostile field values.

use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::format;
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// An access line as `request::exit::record` writes it, with these values.
fn access(route: &str, client: &str, latency_us: u64) {
    tracing::info!(
        target: "keygate::access",
        method = %http::Method::from_bytes(b"PURGE").unwrap(),
        route,
        status = 429u16,
        reason = "rate_limited",
        client,
        key_id = "key_0123456789abcdef",
        latency_us,
        "Request."
    );
}

/// Every other field type a line may carry.
fn others() {
    tracing::info!(
        target: "keygate::access",
        flag = true,
        signed = -7i64,
        ratio = 0.25f64,
        debug = ?("a\"b", 3),
        "Request."
    );
}

const HOSTILE: [&str; 8] = [
    "api",
    "",
    "quote\" back\\slash 'single'",
    "new\nline\r\ttab",
    "esc\x1b[31mred\x07\x7f",
    "unicode é 中 \u{85} \u{200b}",
    "nul\0 and \x01",
    "{\"json\":1}",
];

/// The lines the fmt layer and `AccessFirst` write for the same events, `json` or text.
fn both(json: bool, emit: impl Fn()) -> (String, String) {
    let (theirs, ours) = (Captured::default(), Captured::default());
    if json {
        let fmt = tracing_subscriber::fmt()
            .with_ansi(false)
            .json()
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(fmt, &emit);
        let own = tracing_subscriber::fmt()
            .with_ansi(false)
            .json()
            .event_format(AccessFirst::json(format().json()))
            .with_writer(ours.clone())
            .finish();
        tracing::subscriber::with_default(own, &emit);
    } else {
        let fmt = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(theirs.clone())
            .finish();
        tracing::subscriber::with_default(fmt, &emit);
        let own = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(AccessFirst::text(format()))
            .with_writer(ours.clone())
            .finish();
        tracing::subscriber::with_default(own, &emit);
    }
    (theirs.text(), ours.text())
}

/// `line` with its timestamp (checked to be one) replaced by a fixed one.
fn untimed(line: &str) -> String {
    let start = line.find("20").expect("a timestamp");
    let stamp = &line[start..start + 27];
    let b = stamp.as_bytes();
    assert!(
        b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[26] == b'Z',
        "{stamp}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamp}"
    );
    line.replacen(stamp, "2000-01-01T00:00:00.000000Z", 1)
}

#[test]
fn text_lines_are_the_fmt_layers() {
    for value in HOSTILE {
        let (theirs, ours) = both(false, || access(value, value, 12));
        assert_eq!(untimed(&ours), untimed(&theirs), "{value:?}");
    }
    let (theirs, ours) = both(false, others);
    assert_eq!(untimed(&ours), untimed(&theirs));
    let (theirs, ours) = both(false, || access("api", "-", u64::MAX));
    assert_eq!(untimed(&ours), untimed(&theirs));
}

#[test]
fn json_lines_are_the_fmt_layers() {
    for value in HOSTILE {
        let (theirs, ours) = both(true, || access(value, value, 0));
        assert_eq!(untimed(&ours), untimed(&theirs), "{value:?}");
        let parsed: serde_json::Value = serde_json::from_str(&ours).unwrap();
        assert_eq!(parsed["fields"]["route"], value);
    }
    let (theirs, ours) = both(true, others);
    assert_eq!(untimed(&ours), untimed(&theirs));
}

#[test]
fn other_events_and_coloured_lines_are_left_to_the_fmt_layer() {
    let other = || tracing::warn!(target: "keygate::other", route = "x\"y", "Not an access line.");
    let (theirs, ours) = both(false, other);
    assert_eq!(untimed(&ours), untimed(&theirs));
    let (theirs, ours) = both(true, other);
    assert_eq!(untimed(&ours), untimed(&theirs));
    // Inside a span the fmt layer names the span: its formatter writes the line.
    let spanned = || {
        let _s = tracing::info_span!("outer", id = 3).entered();
        access("api", "-", 1);
    };
    let (theirs, ours) = both(false, spanned);
    assert_eq!(untimed(&ours), untimed(&theirs));
    let (theirs, ours) = both(true, spanned);
    assert_eq!(untimed(&ours), untimed(&theirs));
}

#[test]
fn timestamps_are_now_with_their_microseconds() {
    let mut out = String::new();
    let before = chrono::Utc::now();
    write_timestamp(&mut out).unwrap();
    write_timestamp(&mut out).unwrap();
    let after = chrono::Utc::now();
    assert_eq!(out.len(), 54, "{out}");
    for stamp in [&out[..27], &out[27..]] {
        let at = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
        assert!(
            at >= before - chrono::Duration::microseconds(1) && at <= after,
            "{stamp}"
        );
    }
}

#[test]
fn access_lines_take_the_fast_path() {
    // An inner formatter without timestamps: a line with one was written by `AccessFirst`.
    for json in [false, true] {
        let out = Captured::default();
        let inner = format().without_time();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(out.clone());
        let emit = || {
            access("api", "-", 3);
            tracing::info!(target: "keygate::other", "Other.");
        };
        if json {
            let s = subscriber
                .json()
                .event_format(AccessFirst::json(inner.json()))
                .finish();
            tracing::subscriber::with_default(s, emit);
        } else {
            let s = subscriber.event_format(AccessFirst::text(inner)).finish();
            tracing::subscriber::with_default(s, emit);
        }
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("keygate::access") && lines[0].contains("20"),
            "{text}"
        );
        untimed(lines[0]);
        assert!(
            lines[1].contains("Other.") && !lines[1].contains("timestamp"),
            "{text}"
        );
        assert!(json || lines[1].starts_with(" INFO"), "{text}");
    }
}
