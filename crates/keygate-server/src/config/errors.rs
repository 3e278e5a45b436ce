//! A configuration's errors, each with its file and line, and the two kinds of value they most
//! often concern: durations and counts, each read and reported one way everywhere. A leaf: it imports nothing from the rest of the crate, so every compile step
//! (and whatever else reads configuration) can report through it.

use std::fmt;
use std::num::NonZeroU64;
use std::ops::Range;
use std::time::Duration;

use keygate_core::duration::{parse_duration, DurationError};
use serde::{Deserialize, Deserializer};

/// One problem in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while compiling.
pub(super) struct Errors<'a> {
    file: &'a str,
    text: &'a str,
    list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    /// A collector for the errors of `text`, read from `file`.
    pub(super) fn new(file: &'a str, text: &'a str) -> Errors<'a> {
        Errors {
            file,
            text,
            list: Vec::new(),
        }
    }

    /// The file the errors are in, as the operator named it.
    pub(super) fn file(&self) -> &'a str {
        self.file
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many errors so far (a step compares before and after to know whether it added any).
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.list)
    }

    fn line_of(&self, span: &Range<usize>) -> Option<usize> {
        if span.is_empty() {
            return None; // A table the file only implies has no line of its own.
        }
        let end = span.start.min(self.text.len());
        Some(self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1)
    }

    pub(super) fn at(&mut self, span: Option<&Range<usize>>, message: impl Into<String>) {
        let line = span.and_then(|s| self.line_of(s));
        self.list.push(ConfigError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        });
    }
}

/// A duration setting as written (`250ms`, `2m`): parsed when the file is read, with the
/// parser's error kept for compile's message instead of failing the parse, which would stop the
/// whole file at its first bad value while compile reports every problem in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DurationSetting(Result<Duration, DurationError>);

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(DurationSetting(parse_duration(&String::deserialize(d)?)))
    }
}

/// Whether a duration setting may be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Zero {
    /// `0s` means "none" (no keep-alive pings, say).
    Allowed,
    /// `0s` would make the setting useless (a timeout that fires at once).
    Refused,
}

impl Errors<'_> {
    /// The value of duration setting `what`: `default` when absent; `default` with an error at
    /// `span` when it does not parse, or when it is zero and `zero` refuses that.
    pub(super) fn duration(
        &mut self,
        span: Option<&Range<usize>>,
        what: &str,
        raw: Option<&DurationSetting>,
        default: Duration,
        zero: Zero,
    ) -> Duration {
        match raw.map(|r| &r.0) {
            None => default,
            Some(Err(e)) => {
                self.at(span, format!("{what}: {e}"));
                default
            }
            Some(Ok(d)) if d.is_zero() && zero == Zero::Refused => {
                self.at(span, format!("{what} must be longer than 0s"));
                default
            }
            Some(Ok(d)) => *d,
        }
    }

    /// The value of count setting `what`, which must be a positive whole number: `None` when
    /// absent, and `None` with an error at `span` otherwise; `zero_means` says what 0 would do.
    /// Counts are read as signed numbers so that a negative one gets this message too, in the
    /// same pass as every other problem, rather than stopping the parse.
    pub(super) fn positive(
        &mut self,
        span: Option<&Range<usize>>,
        what: &str,
        raw: Option<i64>,
        zero_means: Option<&str>,
    ) -> Option<NonZeroU64> {
        let v = raw?;
        let n = u64::try_from(v).ok().and_then(NonZeroU64::new);
        if n.is_none() {
            let hint = match zero_means {
                Some(means) if v == 0 => format!(" ({means})"),
                _ => String::new(),
            };
            self.at(
                span,
                format!("{what}: {v} is not a positive whole number{hint}"),
            );
        }
        n
    }
}
