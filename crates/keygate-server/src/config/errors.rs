//! A configuration's errors, each with its file and line, and the duration values they most
//! often concern. A leaf: it imports nothing from the rest of the crate, so every compile step
//! (and whatever else reads configuration) can report through it.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use keygate_core::duration::parse_duration;

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

/// A duration such as `250ms` or `2m`; `default` when absent, and `default` with an error
/// at `span` when it does not parse.
pub(super) fn duration(
    raw: Option<&str>,
    default: Duration,
    span: Option<&Range<usize>>,
    errors: &mut Errors<'_>,
) -> Duration {
    match raw {
        None => default,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            errors.at(span, e.to_string());
            default
        }),
    }
}
