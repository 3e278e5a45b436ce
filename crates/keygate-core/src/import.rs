//! Lines of a key import file (`keygate import`): JSON lines, or CSV under a header line. Each
//! line is one key of a client, as its plaintext (`key`) or as the SHA-256 of a key (`sha256`),
//! with an optional `label`, `expires_at` and, for `sha256`, `hint`.
//!
//! A line becomes [`KeyMaterial`] here, so a plaintext never outlives the line it came on. No
//! [`ImportProblem`] carries a value read from the file: a misplaced column can put a plaintext
//! key in any field, and problems are printed.

use serde_json::{Map, Value};

use crate::issuer::{DigestImportError, Issuer, KeyMaterial};
use crate::key_format::SecretKey;
use crate::names::check_label;
use crate::time::Timestamp;

/// Longest line read; a longer one is a problem, skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most lines one import reads; past it the file is refused (split it).
pub const MAX_LINES: u64 = 1_000_000;
/// Longest hint a `sha256` line may give.
pub const MAX_HINT_LEN: usize = 40;

/// The fields a line may have.
pub const FIELDS: [&str; 7] = [
    "client",
    "key",
    "sha256",
    "hint",
    "label",
    "expires_at",
    "scopes",
];

/// Why one line cannot be imported. Each has a stable [`code`](Self::code).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportProblem {
    #[error("the line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("not a JSON object (at column {0})")]
    NotJson(usize),
    #[error("a quoted CSV field is not closed, or a quote is inside an unquoted field")]
    CsvQuote,
    #[error("{found} CSV fields where the header has {expected}")]
    CsvColumns { expected: usize, found: usize },
    #[error("an unknown field or column (known: client, key, sha256, hint, label, expires_at)")]
    UnknownField,
    #[error("a column appears twice in the header")]
    DuplicateColumn,
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{0}` must be a string")]
    NotAString(&'static str),
    #[error("give `key` or `sha256`, not both")]
    KeyAndSha256,
    #[error("`key` has neither the deployment's key format nor a `[[keys.legacy]]` shape ({0}); the gateway would refuse it")]
    KeyShape(&'static str),
    #[error("`sha256` must be 64 hex digits")]
    BadSha256,
    #[error("`sha256`: {0}")]
    Sha256Refused(DigestImportError),
    #[error("`hint` must be 1 to {MAX_HINT_LEN} visible ASCII characters")]
    BadHint,
    #[error("`label` must be at most 100 printable characters")]
    BadLabel,
    #[error("`expires_at` must be an RFC 3339 instant (2027-01-31T00:00:00Z)")]
    BadExpiry,
    #[error("`scopes`: keys have no scopes of their own, a key has its client's (`keygate client update NAME --scopes …`); leave the field out")]
    Scopes,
    #[error("`client`: no such client")]
    ClientNotFound,
    #[error("`key`: this key is already stored for another client")]
    OtherClient,
    #[error("the same key is on line {0} for another client")]
    DuplicateOfLine(u64),
    #[error("`expires_at` is in the past")]
    ExpiryInPast,
}

impl ImportProblem {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ImportProblem::LineTooLong => "line_too_long",
            ImportProblem::NotUtf8 => "not_utf8",
            ImportProblem::NotJson(_) => "not_json",
            ImportProblem::CsvQuote => "csv_quote",
            ImportProblem::CsvColumns { .. } => "csv_columns",
            ImportProblem::UnknownField => "unknown_field",
            ImportProblem::DuplicateColumn => "duplicate_column",
            ImportProblem::Missing(_) => "missing_field",
            ImportProblem::NotAString(_) => "not_a_string",
            ImportProblem::KeyAndSha256 => "key_and_sha256",
            ImportProblem::KeyShape(_) => "key_shape",
            ImportProblem::BadSha256 => "bad_sha256",
            ImportProblem::Sha256Refused(_) => "sha256_refused",
            ImportProblem::BadHint => "bad_hint",
            ImportProblem::BadLabel => "bad_label",
            ImportProblem::BadExpiry => "bad_expiry",
            ImportProblem::Scopes => "scopes_not_per_key",
            ImportProblem::ClientNotFound => "client_not_found",
            ImportProblem::OtherClient => "key_of_another_client",
            ImportProblem::DuplicateOfLine(_) => "duplicate_in_file",
            ImportProblem::ExpiryInPast => "expiry_in_past",
        }
    }
}

/// A line that passed every check the file alone allows: one key, digested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportKey {
    /// Its line in the file (1-based), for the store's own problems.
    pub line: u64,
    /// The client's name or id.
    pub client: String,
    pub material: KeyMaterial,
    pub label: String,
    pub expires_at: Option<Timestamp>,
}

/// How a file's lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    JsonLines,
    Csv,
}

/// Reads the lines of one file in order: `next_line` is called for every line (blank lines
/// included, so numbers stay right) and remembers a CSV file's header.
#[derive(Debug)]
pub struct LineReader<'a> {
    issuer: &'a Issuer,
    kind: FileKind,
    header: Option<Vec<usize>>,
}

impl<'a> LineReader<'a> {
    pub fn new(issuer: &'a Issuer, kind: FileKind) -> Self {
        LineReader {
            issuer,
            kind,
            header: None,
        }
    }

    /// One line, without its line break: `Ok(None)` for a blank line or a CSV header.
    ///
    /// # Errors
    /// The line's first [`ImportProblem`].
    pub fn next_line(&mut self, line: u64, raw: &[u8]) -> Result<Option<ImportKey>, ImportProblem> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if line == 1 {
            raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw) // a spreadsheet's byte-order mark
        } else {
            raw
        };
        let text = std::str::from_utf8(raw).map_err(|_| ImportProblem::NotUtf8)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let fields = match self.kind {
            FileKind::JsonLines => json_fields(text)?,
            FileKind::Csv => match &self.header {
                None => {
                    self.header = Some(csv_header(text)?);
                    return Ok(None);
                }
                Some(columns) => csv_fields(columns, text)?,
            },
        };
        fields.into_key(line, self.issuer).map(Some)
    }
}

/// The fields of one line, by their index in [`FIELDS`]; `None` when absent or empty.
#[derive(Default)]
struct Fields {
    values: [Option<String>; 7],
    scopes: bool,
}

impl Fields {
    fn take(&mut self, name: &'static str) -> Option<String> {
        let i = FIELDS.iter().position(|f| *f == name)?;
        self.values[i].take()
    }

    fn into_key(mut self, line: u64, issuer: &Issuer) -> Result<ImportKey, ImportProblem> {
        if self.scopes {
            return Err(ImportProblem::Scopes);
        }
        let client = self
            .take("client")
            .ok_or(ImportProblem::Missing("client"))?;
        let hint = self.take("hint");
        let material = match (self.take("key"), self.take("sha256")) {
            (Some(_), Some(_)) => return Err(ImportProblem::KeyAndSha256),
            (None, None) => return Err(ImportProblem::Missing("key")),
            (Some(key), None) => issuer
                .material_of(&SecretKey::new(key))
                .map_err(|e| ImportProblem::KeyShape(e.code()))?,
            (None, Some(hex)) => {
                let sha = parse_sha256(&hex).ok_or(ImportProblem::BadSha256)?;
                if let Some(h) = &hint {
                    let ok = h.len() <= MAX_HINT_LEN && h.bytes().all(|b| b.is_ascii_graphic());
                    if !ok {
                        return Err(ImportProblem::BadHint);
                    }
                }
                issuer
                    .material_of_sha256(&sha, hint.as_deref())
                    .map_err(ImportProblem::Sha256Refused)?
            }
        };
        let label = self.take("label").unwrap_or_default();
        check_label(&label).map_err(|_| ImportProblem::BadLabel)?;
        let expires_at = match self.take("expires_at") {
            None => None,
            Some(at) => Some(Timestamp::parse_rfc3339(&at).map_err(|_| ImportProblem::BadExpiry)?),
        };
        Ok(ImportKey {
            line,
            client,
            material,
            label,
            expires_at,
        })
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(high << 4 | low).ok()?;
    }
    Some(out)
}

fn json_fields(text: &str) -> Result<Fields, ImportProblem> {
    let object: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| ImportProblem::NotJson(e.column().max(1)))?;
    let mut fields = Fields::default();
    for (name, value) in object {
        let Some(i) = FIELDS.iter().position(|f| *f == name) else {
            return Err(ImportProblem::UnknownField);
        };
        match value {
            Value::Null => {}
            _ if FIELDS[i] == "scopes" => fields.scopes = true,
            Value::String(s) => fields.values[i] = Some(s).filter(|s| !s.is_empty()),
            _ => return Err(ImportProblem::NotAString(FIELDS[i])),
        }
    }
    Ok(fields)
}

fn csv_header(text: &str) -> Result<Vec<usize>, ImportProblem> {
    let mut columns = Vec::new();
    for name in csv_split(text)? {
        let i = FIELDS
            .iter()
            .position(|f| f.eq_ignore_ascii_case(name.trim()))
            .ok_or(ImportProblem::UnknownField)?;
        if columns.contains(&i) {
            return Err(ImportProblem::DuplicateColumn);
        }
        columns.push(i);
    }
    Ok(columns)
}

fn csv_fields(columns: &[usize], text: &str) -> Result<Fields, ImportProblem> {
    let cells = csv_split(text)?;
    if cells.len() != columns.len() {
        return Err(ImportProblem::CsvColumns {
            expected: columns.len(),
            found: cells.len(),
        });
    }
    let mut fields = Fields::default();
    for (&i, cell) in columns.iter().zip(cells) {
        if cell.is_empty() {
            continue;
        }
        if FIELDS[i] == "scopes" {
            fields.scopes = true;
        } else {
            fields.values[i] = Some(cell);
        }
    }
    Ok(fields)
}

/// RFC 4180 fields of one line: `,` separated, optionally `"`-quoted with `""` for a quote.
/// A record is one line (a quoted line break is not read: one key per line).
fn csv_split(text: &str) -> Result<Vec<String>, ImportProblem> {
    let mut cells = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cell.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cell.push(c),
                    None => return Err(ImportProblem::CsvQuote),
                }
            }
            match chars.next() {
                None => {
                    cells.push(cell);
                    return Ok(cells);
                }
                Some(',') => cells.push(cell),
                Some(_) => return Err(ImportProblem::CsvQuote),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        cells.push(cell);
                        return Ok(cells);
                    }
                    Some(',') => break,
                    Some('"') => return Err(ImportProblem::CsvQuote),
                    Some(c) => cell.push(c),
                }
            }
            cells.push(cell);
        }
    }
}

#[cfg(test)]
mod tests;
