//! The access line's formatter: the line tracing-subscriber's fmt layer writes (text or JSON,
//! the same fields in the same order, the same escaping), made without its general machinery.
//!
//! The access log is on by default and writes a line per request; formatted by the fmt layer,
//! a line cost about 2.2 µs of the request's user time (BENCHMARKS.md, issue 24): a timestamp
//! put together from a dozen `write!` calls, every field through `fmt::Debug` and, for JSON,
//! a serde map. Here the timestamp's date and time are formatted once a second and the fields
//! are copied (integers through `itoa`). Every other event, and the access line itself when
//! the line is coloured (a terminal) or inside a span, goes to the fmt layer's own formatter:
//! this is the fast path of one event, not a second log format. Tests hold the two to the same
//! bytes.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use keygate_core::render::write_json_escaped;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The access log's target: one line per ended request (`request::exit::record`).
pub const TARGET: &str = "keygate::access";

/// An event formatter that writes access lines itself and hands everything else to `inner`
/// (the fmt layer's text or JSON formatter at its defaults, as the binary configures it: a
/// timestamp and the level, no thread names, files or line numbers).
#[derive(Clone, Debug)]
pub struct AccessFirst<F> {
    inner: F,
    json: bool,
}

impl<F> AccessFirst<F> {
    /// Access lines as text (`2026-12-07T00:16:27.123456Z  INFO keygate::access: Request.
    /// method=GET ...`), the rest by `inner`.
    pub fn text(inner: F) -> Self {
        AccessFirst { inner, json: false }
    }

    /// Access lines as JSON (`{"timestamp":…,"level":"INFO","fields":{…},"target":…}`), the
    /// rest by `inner`.
    pub fn json(inner: F) -> Self {
        AccessFirst { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for AccessFirst<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET
            || writer.has_ansi_escapes()
            || event.parent().is_some()
            || ctx.lookup_current().is_some()
        {
            return self.inner.format_event(ctx, writer, event);
        }
        if self.json {
            writer.write_str("{\"timestamp\":\"")?;
            write_timestamp(&mut writer)?;
            writer.write_str("\",\"level\":\"")?;
            writer.write_str(meta.level().as_str())?;
            writer.write_str("\",\"fields\":{")?;
            let mut fields = JsonFields {
                out: &mut writer,
                first: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writer.write_str("},\"target\":")?;
            json_string(&mut writer, meta.target())?;
            writer.write_str("}\n")
        } else {
            write_timestamp(&mut writer)?;
            writer.write_char(' ')?;
            writer.write_str(padded(meta.level()))?;
            writer.write_char(' ')?;
            writer.write_str(meta.target())?;
            writer.write_str(": ")?;
            let sanitize = writer.sanitizes_ansi_escapes();
            let mut fields = TextFields {
                out: &mut writer,
                first: true,
                sanitize,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writer.write_char('\n')
        }
    }
}

/// The level as the text format pads it.
fn padded(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Now as the fmt layer writes it: RFC 3339, UTC, microseconds (`2026-12-07T00:16:27.123456Z`).
fn write_timestamp(out: &mut impl fmt::Write) -> fmt::Result {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let millis = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let whole = keygate_core::Timestamp::from_millis(millis).to_rfc3339();
            cached.1.clear();
            cached.1.push_str(whole.strip_suffix('Z').unwrap_or(&whole));
            cached.1.push('.');
            cached.0 = secs;
        }
        out.write_str(&cached.1)
    })?;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    out.write_str(&"000000"[digits.len()..])?;
    out.write_str(digits)?;
    out.write_char('Z')
}

/// The text format's fields: the message as it is, the rest `name=value` with `fmt::Debug`'s
/// rendering (strings quoted and escaped), one space apart.
struct TextFields<'a, W> {
    out: &'a mut W,
    first: bool,
    /// Whether the message's terminal control characters are escaped (the fmt layer's
    /// setting).
    sanitize: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> TextFields<'_, W> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.out.write_char(' ')?;
        }
        if field.name() != "message" {
            self.out.write_str(field.name())?;
            self.out.write_char('=')?;
        }
        Ok(())
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| value(self.out));
        }
    }

    /// The message, as `fmt::Debug` renders `value`, terminal controls escaped when asked.
    fn message(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let sanitize = self.sanitize;
        self.record(field, |out| {
            if sanitize {
                write!(Sanitized(out), "{value:?}")
            } else {
                write!(out, "{value:?}")
            }
        });
    }
}

/// Writes through to `W`, terminal control characters escaped as the fmt layer escapes them.
struct Sanitized<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Sanitized<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

impl<W: fmt::Write> Visit for TextFields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.message(field, &format_args!("{value}"));
        }
        self.record(field, |out| {
            if value.bytes().all(plain) {
                out.write_char('"')?;
                out.write_str(value)?;
                out.write_char('"')
            } else {
                write!(out, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, integer(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, integer(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.message(field, value);
        }
        self.record(field, |out| write!(out, "{value:?}"));
    }
}

/// An integer as both formats write it.
fn integer<W: fmt::Write>(value: impl itoa::Integer) -> impl FnOnce(&mut W) -> fmt::Result {
    move |out| out.write_str(itoa::Buffer::new().format(value))
}

/// A byte `fmt::Debug` writes as it is inside a string's quotes.
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// The JSON format's fields: an object, in the event's order; numbers and booleans as JSON
/// values, anything else a string.
struct JsonFields<'a, W> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.out.write_char(',')?;
        }
        json_string(self.out, field.name())?;
        self.out.write_char(':')
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |out| json_string(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, integer(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, integer(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record(field, |out| {
            out.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |out| {
            out.write_char('"')?;
            write!(JsonEscaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn json_string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    write_json_escaped(s, out)?;
    out.write_char('"')
}

/// Writes through to `W` as the contents of a JSON string (a `Debug` value, with no string of
/// its own in between).
struct JsonEscaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_json_escaped(s, self.0)
    }
}

#[cfg(test)]
mod tests;
