//! Gateway error bodies: content negotiation and the per-profile body templates.
//!
//! When the gateway answers on its own behalf (401, 403, 429, ...) it must speak the upstream
//! provider's dialect: the same JSON fields, or the same XML, that clients already parse. Each
//! profile therefore configures a body template per status, and the request's `Accept` header
//! picks JSON or XML. [`negotiate`] reads the header without allocating; [`BodyTemplate`] is
//! compiled once when the configuration loads (unknown placeholders and stray braces are refused
//! there, not on the first rate-limited request) and then rendered with the request's variables,
//! with the template's own key order and without re-parsing anything.

use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// Negotiation
// ---------------------------------------------------------------------------------------------

/// What a client accepts for a generated body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Xml,
}

/// Media ranges looked at in one `Accept` header; the rest of the header is ignored.
const MAX_MEDIA_RANGES: usize = 64;

/// q-values are kept in thousandths: `q=0.8` is 800.
const Q_ONE: u16 = 1000;

/// Parses an HTTP `Accept` header value (RFC 9110 §12.5.1) and picks JSON or XML.
///
/// - No header, or a header with no media ranges at all, accepts anything: `Some(Json)`.
/// - JSON is `application/json`, `application/problem+json`, any `application/*+json` and
///   `text/json`; XML is `application/xml`, `text/xml`, `application/problem+xml` and any
///   `application/*+xml`. `application/*` and `*/*` admit both; `text/*` admits neither (the
///   gateway sends `application/...` types).
/// - The most specific range decides a format's q: a range naming a JSON type overrides
///   `application/*`, which overrides `*/*` (so `application/json;q=0, */*` means "not JSON").
///   Several ranges at the same level: the highest q counts.
/// - `q=0` excludes; the higher q wins; a tie goes to JSON. A malformed q (anything outside
///   RFC 9110's `qvalue` grammar) counts as `q=0`. Other parameters are ignored; media types
///   are case-insensitive; whitespace around every token is tolerated.
/// - `None` when neither format is acceptable: the caller answers 406.
///
/// Allocation-free and panic-free on any bytes; only the first 64 media ranges are read.
///
/// ```
/// use keygate_core::render::{negotiate, BodyFormat};
/// assert_eq!(negotiate(None), Some(BodyFormat::Json));
/// assert_eq!(negotiate(Some(b"text/xml;q=0.9, application/json;q=0.8")), Some(BodyFormat::Xml));
/// assert_eq!(negotiate(Some(b"text/html")), None);
/// ```
pub fn negotiate(accept: Option<&[u8]>) -> Option<BodyFormat> {
    let Some(header) = accept else {
        return Some(BodyFormat::Json);
    };
    let mut json = FamilyQ::default();
    let mut xml = FamilyQ::default();
    let mut any_range = false;
    for range in Split::new(header, b',').take(MAX_MEDIA_RANGES) {
        let range = range.trim_ascii();
        if range.is_empty() {
            continue; // RFC 9110 §5.6.1: empty list elements are ignored.
        }
        any_range = true;
        let mut parts = Split::new(range, b';');
        let media = parts.next().unwrap_or_default();
        let q = parts.find_map(q_param).unwrap_or(Q_ONE);
        match classify(media) {
            Range::Json => json.exact = max_q(json.exact, q),
            Range::Xml => xml.exact = max_q(xml.exact, q),
            Range::Application => {
                json.application = max_q(json.application, q);
                xml.application = max_q(xml.application, q);
            }
            Range::Any => {
                json.any = max_q(json.any, q);
                xml.any = max_q(xml.any, q);
            }
            Range::Other => {}
        }
    }
    if !any_range {
        return Some(BodyFormat::Json);
    }
    let (json, xml) = (json.q(), xml.q());
    if xml > json {
        Some(BodyFormat::Xml)
    } else if json > 0 {
        Some(BodyFormat::Json)
    } else {
        None
    }
}

/// The q a format gets from the header, by specificity of the matching ranges.
#[derive(Default)]
struct FamilyQ {
    exact: Option<u16>,
    application: Option<u16>,
    any: Option<u16>,
}

impl FamilyQ {
    fn q(&self) -> u16 {
        self.exact.or(self.application).or(self.any).unwrap_or(0)
    }
}

fn max_q(current: Option<u16>, q: u16) -> Option<u16> {
    Some(current.map_or(q, |c| c.max(q)))
}

/// What one media range (without parameters) matches.
enum Range {
    Json,
    Xml,
    Application,
    Any,
    Other,
}

fn classify(media: &[u8]) -> Range {
    let Some(slash) = media.iter().position(|&b| b == b'/') else {
        return Range::Other;
    };
    let kind = media[..slash].trim_ascii();
    let sub = media[slash + 1..].trim_ascii();
    let has_suffix = |suffix: &[u8]| {
        sub.len() > suffix.len() && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if kind == b"*" {
        return if sub == b"*" {
            Range::Any
        } else {
            Range::Other
        };
    }
    if kind.eq_ignore_ascii_case(b"application") {
        if sub == b"*" {
            Range::Application
        } else if sub.eq_ignore_ascii_case(b"json") || has_suffix(b"+json") {
            Range::Json
        } else if sub.eq_ignore_ascii_case(b"xml") || has_suffix(b"+xml") {
            Range::Xml
        } else {
            Range::Other
        }
    } else if kind.eq_ignore_ascii_case(b"text") {
        if sub.eq_ignore_ascii_case(b"json") {
            Range::Json
        } else if sub.eq_ignore_ascii_case(b"xml") {
            Range::Xml
        } else {
            Range::Other
        }
    } else {
        Range::Other
    }
}

/// `Some(q)` when the parameter is the weight (malformed weights are 0), `None` otherwise.
fn q_param(param: &[u8]) -> Option<u16> {
    let param = param.trim_ascii();
    match param.iter().position(|&b| b == b'=') {
        Some(eq) if param[..eq].trim_ascii().eq_ignore_ascii_case(b"q") => {
            Some(parse_q(param[eq + 1..].trim_ascii()).unwrap_or(0))
        }
        Some(_) => None,
        None if param.eq_ignore_ascii_case(b"q") => Some(0),
        None => None,
    }
}

/// RFC 9110 §12.4.2: `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn parse_q(value: &[u8]) -> Option<u16> {
    let (int, frac) = match value {
        [int] => (*int, &[][..]),
        [int, b'.', frac @ ..] if frac.len() <= 3 => (*int, frac),
        _ => return None,
    };
    match int {
        b'1' if frac.iter().all(|&b| b == b'0') => Some(Q_ONE),
        b'0' if frac.iter().all(u8::is_ascii_digit) => {
            let mut q = 0u16;
            for i in 0..3 {
                q = q * 10 + frac.get(i).map_or(0, |d| u16::from(*d - b'0'));
            }
            Some(q)
        }
        _ => None,
    }
}

/// Splits header bytes on `sep`, leaving separators inside quoted strings alone.
struct Split<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Split<'a> {
    fn new(bytes: &'a [u8], sep: u8) -> Self {
        Split {
            rest: Some(bytes),
            sep,
        }
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted {
                match b {
                    b'\\' => escaped = true,
                    b'"' => quoted = false,
                    _ => {}
                }
            } else if b == b'"' {
                quoted = true;
            } else if b == self.sep {
                self.rest = Some(&rest[i + 1..]);
                return Some(&rest[..i]);
            }
        }
        self.rest = None;
        Some(rest)
    }
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/// Deepest nesting of arrays and objects a template may have.
const MAX_DEPTH: usize = 64;

/// Values a template can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    List(Vec<String>),
    /// Names and values (a key's metadata): a JSON object, XML `<entry><key>…</key><value>…
    /// </value></entry>` elements (names are data, never element names), `k=v, …` in text.
    Map(Vec<(String, String)>),
}

/// Where a template finds its variables at render time.
pub trait Vars {
    /// The value of `name`, or `None` when the request has none.
    fn get(&self, name: &str) -> Option<Value>;
}

/// Linear lookup; the first pair with the name wins.
impl Vars for [(&str, Value)] {
    fn get(&self, name: &str) -> Option<Value> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    }
}

impl<const N: usize> Vars for [(&str, Value); N] {
    fn get(&self, name: &str) -> Option<Value> {
        Vars::get(&self[..], name)
    }
}

impl Vars for Vec<(&str, Value)> {
    fn get(&self, name: &str) -> Option<Value> {
        Vars::get(&self[..], name)
    }
}

impl<T: Vars + ?Sized> Vars for &T {
    fn get(&self, name: &str) -> Option<Value> {
        (**self).get(name)
    }
}

/// A template that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template uses the unknown variable `{name}`; the variables allowed here are: {allowed}")]
    UnknownVariable { name: String, allowed: String },
    #[error("the template string `{text}` has an unbalanced brace; write `{{{{` or `}}}}` for a literal brace")]
    UnbalancedBrace { text: String },
    #[error("the template string `{text}` has an empty placeholder `{{}}`; put a variable name inside the braces")]
    EmptyPlaceholder { text: String },
    #[error("the template nests arrays and objects deeper than {max} levels")]
    TooDeep { max: usize },
}

/// A body template: a JSON-like tree whose strings may contain `{name}` placeholders.
///
/// - Every string value (object values and array items, not object keys) is interpolated:
///   `{name}` becomes the variable's text (a list's items joined with `", "`), `{{` and `}}`
///   are literal braces.
/// - An object that is exactly `{"var": "name"}` becomes the variable's typed value: a number
///   stays a number, a list an array, a string a string.
/// - Placeholders must name an allowed variable and braces must balance; both are checked by
///   [`BodyTemplate::compile`], so rendering cannot fail.
///
/// ```
/// use keygate_core::render::{BodyTemplate, Value};
/// let tree = serde_json::from_str(
///     r#"{"detail": "Rate limit exceeded", "limit": "{limit}", "retry_after": {"var": "retry_after"}}"#,
/// ).unwrap();
/// let template = BodyTemplate::compile(&tree, &["limit", "retry_after"]).unwrap();
/// let vars = [("limit", Value::Int(100)), ("retry_after", Value::Int(1))];
/// assert_eq!(
///     template.render_json(&vars),
///     r#"{"detail":"Rate limit exceeded","limit":"100","retry_after":1}"#,
/// );
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BodyTemplate {
    root: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    /// Already in JSON number syntax.
    Number(Box<str>),
    Text(Vec<Piece>),
    Var(Box<str>),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Literal(Box<str>),
    Var(Box<str>),
}

#[derive(Clone, Debug, PartialEq)]
struct Member {
    key: Box<str>,
    /// Whether `key` can be an XML element name (otherwise `<field name="...">`).
    xml_name: bool,
    value: Node,
}

impl BodyTemplate {
    /// Compiles a template tree; `allowed` is the list of variable names the template may use.
    ///
    /// # Errors
    /// [`TemplateError`] for an unknown variable, an unbalanced or empty brace, or nesting
    /// deeper than 64 levels.
    pub fn compile(tree: &serde_json::Value, allowed: &[&str]) -> Result<Self, TemplateError> {
        Ok(BodyTemplate {
            root: compile_node(tree, allowed, 0)?,
        })
    }

    /// Renders as compact JSON, keys in the template's order.
    ///
    /// A variable missing at render time is an empty string inside a string and `null` as a
    /// typed value.
    pub fn render_json(&self, vars: &dyn Vars) -> String {
        let mut out = String::with_capacity(128);
        json_node(&self.root, vars, &mut out);
        out
    }

    /// Renders as XML: the declaration, then `<root>` (with `xmlns="namespace"` when given).
    ///
    /// Object members become child elements named by their key (`<field name="key">` when the
    /// key is not an XML name); array items become repeated `<item>` children; strings and
    /// numbers become escaped text; `null` and missing variables leave the element empty. A
    /// `root` that is not an XML name is replaced by `error` so the document stays well-formed.
    pub fn render_xml(&self, vars: &dyn Vars, root: &str, namespace: Option<&str>) -> String {
        let root = if is_xml_name(root) { root } else { "error" };
        let mut out = String::with_capacity(160);
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><"#);
        out.push_str(root);
        if let Some(namespace) = namespace {
            out.push_str(r#" xmlns=""#);
            xml_escape(namespace, true, &mut out);
            out.push('"');
        }
        out.push('>');
        xml_content(&self.root, vars, &mut out);
        out.push_str("</");
        out.push_str(root);
        out.push('>');
        out
    }
}

fn compile_node(
    value: &serde_json::Value,
    allowed: &[&str],
    depth: usize,
) -> Result<Node, TemplateError> {
    use serde_json::Value as J;
    if depth >= MAX_DEPTH && matches!(value, J::Array(_) | J::Object(_)) {
        return Err(TemplateError::TooDeep { max: MAX_DEPTH });
    }
    Ok(match value {
        J::Null => Node::Null,
        J::Bool(b) => Node::Bool(*b),
        J::Number(n) => Node::Number(n.to_string().into()),
        J::String(s) => Node::Text(compile_text(s, allowed)?),
        J::Array(items) => Node::Array(
            items
                .iter()
                .map(|item| compile_node(item, allowed, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => match (map.len(), map.get("var")) {
            (1, Some(J::String(name))) => Node::Var(check_name(name, allowed)?.into()),
            _ => Node::Object(
                map.iter()
                    .map(|(key, value)| {
                        Ok(Member {
                            key: key.as_str().into(),
                            xml_name: is_xml_name(key),
                            value: compile_node(value, allowed, depth + 1)?,
                        })
                    })
                    .collect::<Result<_, TemplateError>>()?,
            ),
        },
    })
}

fn check_name<'a>(name: &'a str, allowed: &[&str]) -> Result<&'a str, TemplateError> {
    if allowed.contains(&name) {
        Ok(name)
    } else {
        Err(TemplateError::UnknownVariable {
            name: name.to_owned(),
            allowed: if allowed.is_empty() {
                "(none)".to_owned()
            } else {
                allowed.join(", ")
            },
        })
    }
}

fn compile_text(text: &str, allowed: &[&str]) -> Result<Vec<Piece>, TemplateError> {
    let unbalanced = || TemplateError::UnbalancedBrace {
        text: text.to_owned(),
    };
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.next_if(|&(_, c)| c == '{').is_some() => literal.push('{'),
            '}' if chars.next_if(|&(_, c)| c == '}').is_some() => literal.push('}'),
            '}' => return Err(unbalanced()),
            '{' => {
                let start = at + 1; // `{` is one byte
                let end = loop {
                    match chars.next() {
                        Some((end, '}')) => break end,
                        Some((_, '{')) | None => return Err(unbalanced()),
                        Some(_) => {}
                    }
                };
                let name = text.get(start..end).unwrap_or_default();
                if name.is_empty() {
                    return Err(TemplateError::EmptyPlaceholder {
                        text: text.to_owned(),
                    });
                }
                let name = check_name(name, allowed)?;
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal).into()));
                }
                pieces.push(Piece::Var(name.into()));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal.into()));
    }
    Ok(pieces)
}

/// Writes a variable's text form through `escape` (integers need no escaping in JSON or XML).
fn var_text(value: &Value, out: &mut String, escape: impl Fn(&str, &mut String)) {
    match value {
        Value::Str(s) => escape(s, out),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                escape(item, out);
            }
        }
        Value::Map(entries) => {
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                escape(k, out);
                escape("=", out);
                escape(v, out);
            }
        }
    }
}

fn text_pieces(pieces: &[Piece], vars: &dyn Vars, out: &mut String, escape: fn(&str, &mut String)) {
    for piece in pieces {
        match piece {
            Piece::Literal(s) => escape(s, out),
            Piece::Var(name) => {
                if let Some(value) = vars.get(name) {
                    var_text(&value, out, escape);
                }
            }
        }
    }
}

// --- JSON ------------------------------------------------------------------------------------

fn json_node(node: &Node, vars: &dyn Vars, out: &mut String) {
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => out.push_str(n),
        Node::Text(pieces) => {
            out.push('"');
            text_pieces(pieces, vars, out, json_escape);
            out.push('"');
        }
        Node::Var(name) => match vars.get(name) {
            None => out.push_str("null"),
            Some(Value::Str(s)) => json_string(&s, out),
            Some(Value::Int(n)) => {
                let _ = write!(out, "{n}");
            }
            Some(Value::List(items)) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(item, out);
                }
                out.push(']');
            }
            Some(Value::Map(entries)) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(k, out);
                    out.push(':');
                    json_string(v, out);
                }
                out.push('}');
            }
        },
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_node(item, vars, out);
            }
            out.push(']');
        }
        Node::Object(members) => {
            out.push('{');
            for (i, member) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(&member.key, out);
                out.push(':');
                json_node(&member.value, vars, out);
            }
            out.push('}');
        }
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    json_escape(s, out);
    out.push('"');
}

/// [`write_json_escaped`] into a `String`, which cannot fail.
fn json_escape(s: &str, out: &mut String) {
    let _ = write_json_escaped(s, out);
}

/// RFC 8259 §7 string contents: `"`, `\` and control characters escaped, the rest as UTF-8,
/// as serde_json writes them between a string's quotes (the access log's JSON lines use it too).
///
/// # Errors
/// The writer's.
pub fn write_json_escaped<W: std::fmt::Write + ?Sized>(s: &str, out: &mut W) -> std::fmt::Result {
    let mut from = 0;
    for (at, c) in s.char_indices() {
        let short = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            c if c < ' ' => "",
            _ => continue,
        };
        out.write_str(&s[from..at])?;
        if short.is_empty() {
            write!(out, "\\u{:04x}", u32::from(c))?;
        } else {
            out.write_str(short)?;
        }
        from = at + c.len_utf8();
    }
    out.write_str(&s[from..])
}

// --- XML -------------------------------------------------------------------------------------

/// Writes the content of an element whose start tag is already written.
fn xml_content(node: &Node, vars: &dyn Vars, out: &mut String) {
    match node {
        Node::Null => {}
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => out.push_str(n),
        Node::Text(pieces) => text_pieces(pieces, vars, out, xml_text),
        Node::Var(name) => match vars.get(name) {
            None => {}
            Some(Value::List(items)) => {
                for item in &items {
                    out.push_str("<item>");
                    xml_text(item, out);
                    out.push_str("</item>");
                }
            }
            Some(Value::Map(entries)) => {
                for (k, v) in &entries {
                    out.push_str("<entry><key>");
                    xml_text(k, out);
                    out.push_str("</key><value>");
                    xml_text(v, out);
                    out.push_str("</value></entry>");
                }
            }
            Some(value) => var_text(&value, out, xml_text),
        },
        Node::Array(items) => {
            for item in items {
                out.push_str("<item>");
                xml_content(item, vars, out);
                out.push_str("</item>");
            }
        }
        Node::Object(members) => {
            for member in members {
                if member.xml_name {
                    out.push('<');
                    out.push_str(&member.key);
                    out.push('>');
                } else {
                    out.push_str(r#"<field name=""#);
                    xml_escape(&member.key, true, out);
                    out.push_str(r#"">"#);
                }
                xml_content(&member.value, vars, out);
                if member.xml_name {
                    out.push_str("</");
                    out.push_str(&member.key);
                    out.push('>');
                } else {
                    out.push_str("</field>");
                }
            }
        }
    }
}

fn xml_text(s: &str, out: &mut String) {
    xml_escape(s, false, out);
}

/// Escapes markup characters; characters XML 1.0 cannot carry at all become U+FFFD. `\r` (and
/// in attributes `\t`, `\n`) are written as references so parsers do not normalise them away.
fn xml_escape(s: &str, attribute: bool, out: &mut String) {
    let mut from = 0;
    for (at, c) in s.char_indices() {
        let replacement = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&apos;",
            '\r' => "&#13;",
            '\n' if attribute => "&#10;",
            '\t' if attribute => "&#9;",
            c if !is_xml_char(c) => "\u{fffd}",
            _ => continue,
        };
        out.push_str(&s[from..at]);
        out.push_str(replacement);
        from = at + c.len_utf8();
    }
    out.push_str(&s[from..]);
}

/// XML 1.0 `Char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}

/// Whether `s` can be an XML element name: XML 1.0 (fifth edition) `Name`, without `:` (a
/// prefix would need a namespace declaration). Public so configured roots are checked alike.
pub fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{c0}'..='\u{d6}' | '\u{d8}'..='\u{f6}' | '\u{f8}'..='\u{2ff}'
        | '\u{370}'..='\u{37d}' | '\u{37f}'..='\u{1fff}' | '\u{200c}'..='\u{200d}'
        | '\u{2070}'..='\u{218f}' | '\u{2c00}'..='\u{2fef}' | '\u{3001}'..='\u{d7ff}'
        | '\u{f900}'..='\u{fdcf}' | '\u{fdf0}'..='\u{fffd}' | '\u{10000}'..='\u{effff}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{b7}' | '\u{300}'..='\u{36f}' | '\u{203f}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn neg(header: &str) -> Option<BodyFormat> {
        negotiate(Some(header.as_bytes()))
    }

    fn template(json: &str, allowed: &[&str]) -> BodyTemplate {
        let tree: serde_json::Value = serde_json::from_str(json).expect("test template is JSON");
        BodyTemplate::compile(&tree, allowed).expect("test template compiles")
    }

    fn compile_err(json: &str, allowed: &[&str]) -> TemplateError {
        let tree: serde_json::Value = serde_json::from_str(json).expect("test template is JSON");
        BodyTemplate::compile(&tree, allowed).expect_err("template must be refused")
    }

    const NO_VARS: [(&str, Value); 0] = [];

    #[test]
    fn negotiate_contract() {
        use BodyFormat::{Json, Xml};
        assert_eq!(negotiate(None), Some(Json));
        assert_eq!(neg("*/*"), Some(Json));
        assert_eq!(neg("application/xml"), Some(Xml));
        assert_eq!(neg("text/xml;q=0.9, application/json;q=0.8"), Some(Xml));
        assert_eq!(neg("application/json;q=0, application/xml"), Some(Xml));
        assert_eq!(neg("text/html"), None);
        assert_eq!(neg("image/png, text/plain"), None);
        assert_eq!(neg("application/problem+json"), Some(Json));
        assert_eq!(neg("APPLICATION/XML"), Some(Xml));
        assert_eq!(neg("application/*"), Some(Json));
        assert_eq!(neg("*/*;q=0"), None);
        assert_eq!(neg("application/json;q=abc"), None);
    }

    #[test]
    fn negotiate_details() {
        use BodyFormat::{Json, Xml};
        assert_eq!(neg(""), Some(Json));
        assert_eq!(neg(" , ,"), Some(Json));
        assert_eq!(neg("text/json"), Some(Json));
        assert_eq!(neg("application/vnd.api+json"), Some(Json));
        assert_eq!(neg("application/problem+xml"), Some(Xml));
        assert_eq!(neg("application/atom+xml"), Some(Xml));
        assert_eq!(neg("TEXT/XML"), Some(Xml));
        assert_eq!(neg("application/+json"), None);
        // Ties prefer JSON; XML needs a strictly higher q.
        assert_eq!(neg("application/xml, application/json"), Some(Json));
        assert_eq!(neg("application/xml;q=0.5, */*;q=0.5"), Some(Json));
        assert_eq!(neg("application/xml;q=0.501, */*;q=0.5"), Some(Xml));
        // A browser: XML explicitly at 0.9 beats JSON through */* at 0.8.
        assert_eq!(
            neg("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            Some(Xml)
        );
        // The most specific range decides.
        assert_eq!(neg("application/json;q=0, */*"), Some(Xml));
        assert_eq!(neg("application/*;q=0, */*"), None);
        assert_eq!(neg("application/*;q=0, text/xml"), Some(Xml));
        assert_eq!(neg("text/*"), None);
        // Whitespace, parameters and case.
        assert_eq!(
            neg("  application/json ; charset=utf-8 ; Q = 0.3 ,\ttext/xml;q=0.2 "),
            Some(Json)
        );
        assert_eq!(
            neg(r#"application/json;foo="a,b;q=0", application/xml;q=0.5"#),
            Some(Json)
        );
        // q grammar: at most three decimals, nothing above 1, no sign, no quotes.
        assert_eq!(neg("application/json;q=1.000"), Some(Json));
        assert_eq!(neg("application/json;q=0.001"), Some(Json));
        assert_eq!(neg("application/json;q=0.0001"), None);
        assert_eq!(neg("application/json;q=1.5"), None);
        assert_eq!(neg("application/json;q=-1"), None);
        assert_eq!(neg(r#"application/json;q="1""#), None);
        assert_eq!(neg("application/json;q"), None);
        assert_eq!(neg("application/json;q="), None);
    }

    #[test]
    fn negotiate_reads_only_64_ranges() {
        let mut header = "text/html, ".repeat(64);
        header.push_str("application/json");
        assert_eq!(neg(&header), None);
        let mut header = "text/html, ".repeat(63);
        header.push_str("application/json");
        assert_eq!(neg(&header), Some(BodyFormat::Json));
    }

    #[test]
    fn negotiate_survives_hostile_headers() {
        let mut garbage = Vec::with_capacity(100 * 1024);
        let mut x: u32 = 0x1234_5678;
        while garbage.len() < 100 * 1024 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            garbage.push(x.to_le_bytes()[0]);
        }
        let _ = negotiate(Some(&garbage));
        let _ = negotiate(Some(&vec![b','; 100 * 1024]));
        let _ = negotiate(Some(&vec![b'"'; 100 * 1024]));
        let _ = negotiate(Some(&vec![b';'; 100 * 1024]));
        let _ = negotiate(Some("application/json;".repeat(6000).as_bytes()));
        let _ = negotiate(Some(&[0xff, 0xfe, b'/', 0x80, b';', b'q', b'=', 0xc3]));
    }

    #[test]
    fn rate_limit_body() {
        let t = template(
            r#"{"detail": "Rate limit exceeded", "limit": "{limit}", "retry_after": {"var": "retry_after"}}"#,
            &["limit", "retry_after"],
        );
        let vars = [("limit", Value::Int(100)), ("retry_after", Value::Int(1))];
        assert_eq!(
            t.render_json(&vars),
            r#"{"detail":"Rate limit exceeded","limit":"100","retry_after":1}"#
        );
    }

    #[test]
    fn missing_scope_body() {
        let t = template(
            r#"{"detail": "Required scope '{scope}' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#,
            &["scope"],
        );
        let vars = [("scope", Value::Str("cs2:markets:settlements".to_owned()))];
        assert_eq!(
            t.render_json(&vars),
            r#"{"detail":"Required scope 'cs2:markets:settlements' is not granted to this API key. Contact your account manager to extend the key's scopes."}"#
        );
    }

    #[test]
    fn key_order_is_the_templates() {
        let t = template(
            r#"{"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": null, "z": true, "a": [1, 2.5, "x"]}"#,
            &[],
        );
        assert_eq!(
            t.render_json(&NO_VARS),
            r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":null,"z":true,"a":[1,2.5,"x"]}"#
        );
    }

    #[test]
    fn typed_and_missing_variables() {
        let t = template(
            r#"{"s": {"var": "s"}, "n": {"var": "n"}, "l": {"var": "l"}, "gone": {"var": "gone"},
                "text": "[{gone}] {l} {n}", "not_var": {"var": 1}, "two": {"var": "s", "x": 1}}"#,
            &["s", "n", "l", "gone"],
        );
        let vars = vec![
            ("s", Value::Str("str".to_owned())),
            ("n", Value::Int(-7)),
            ("l", Value::List(vec!["a".to_owned(), "b\"".to_owned()])),
        ];
        assert_eq!(
            t.render_json(&vars),
            r#"{"s":"str","n":-7,"l":["a","b\""],"gone":null,"text":"[] a, b\" -7","not_var":{"var":1},"two":{"var":"s","x":1}}"#
        );
    }

    #[test]
    fn json_escaping() {
        let t = template(r#"{"detail": "{v}", "k\"\\\u0001é": "ok"}"#, &["v"]);
        let vars = [(
            "v",
            Value::Str("q\" b\\ \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} é 😀".to_owned()),
        )];
        let out = t.render_json(&vars);
        assert_eq!(
            out,
            "{\"detail\":\"q\\\" b\\\\ \\n\\r\\t\\b\\f\\u0000\\u001f\u{7f} é 😀\",\"k\\\"\\\\\\u0001é\":\"ok\"}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(
            parsed["detail"],
            "q\" b\\ \n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} é 😀"
        );
    }

    #[test]
    fn literal_braces() {
        let t = template(
            r#"{"a": "{{literal}}", "b": "{{{v}}}", "c": "}}{{"}"#,
            &["v"],
        );
        let vars = [("v", Value::Int(3))];
        assert_eq!(
            t.render_json(&vars),
            r#"{"a":"{literal}","b":"{3}","c":"}{"}"#
        );
    }

    #[test]
    fn compile_errors() {
        let err = compile_err(r#"{"detail": "{scop}"}"#, &["scope", "limit"]);
        assert_eq!(
            err,
            TemplateError::UnknownVariable {
                name: "scop".to_owned(),
                allowed: "scope, limit".to_owned()
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("`scop`") && message.contains("scope, limit"),
            "{message}"
        );
        assert!(matches!(
            compile_err(r#"{"retry": {"var": "retry"}}"#, &[]),
            TemplateError::UnknownVariable { name, allowed } if name == "retry" && allowed == "(none)"
        ));
        assert!(matches!(
            compile_err(r#"[["{a}", "x}"]]"#, &["a"]),
            TemplateError::UnbalancedBrace { text } if text == "x}"
        ));
        for text in [r#""{a""#, r#""{""#, r#""a{b{c}}""#, r#""}""#] {
            assert!(
                matches!(
                    compile_err(text, &["a", "b", "c"]),
                    TemplateError::UnbalancedBrace { .. }
                ),
                "{text}"
            );
        }
        assert!(matches!(
            compile_err(r#""x {}""#, &[]),
            TemplateError::EmptyPlaceholder { .. }
        ));
        assert_eq!(
            TemplateError::UnbalancedBrace { text: "a}".to_owned() }.to_string(),
            "the template string `a}` has an unbalanced brace; write `{{` or `}}` for a literal brace"
        );
        // Object keys are not interpolated.
        assert!(BodyTemplate::compile(&serde_json::json!({"{x}": 1}), &[]).is_ok());
    }

    #[test]
    fn nesting_is_capped() {
        let mut tree = serde_json::Value::Null;
        for _ in 0..MAX_DEPTH {
            tree = serde_json::Value::Array(vec![tree]);
        }
        assert!(BodyTemplate::compile(&tree, &[]).is_ok());
        tree = serde_json::Value::Array(vec![tree]);
        assert_eq!(
            BodyTemplate::compile(&tree, &[]),
            Err(TemplateError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn xml_rendering() {
        let t = template(
            r#"{"detail": "a & b", "limit": "{limit}", "retry_after": {"var": "retry_after"},
                "scopes": {"var": "scopes"}, "codes": [1, {"x": null}], "4xx": "<'\">",
                "my key": true, "ünï": "ok"}"#,
            &["limit", "retry_after", "scopes"],
        );
        let vars = [
            ("limit", Value::Int(100)),
            ("retry_after", Value::Int(1)),
            ("scopes", Value::List(vec!["a".to_owned(), "b<".to_owned()])),
        ];
        assert_eq!(
            t.render_xml(&vars, "error", None),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?><error>"#,
                "<detail>a &amp; b</detail><limit>100</limit><retry_after>1</retry_after>",
                "<scopes><item>a</item><item>b&lt;</item></scopes>",
                "<codes><item>1</item><item><x></x></item></codes>",
                r#"<field name="4xx">&lt;&apos;&quot;&gt;</field>"#,
                r#"<field name="my key">true</field><ünï>ok</ünï></error>"#,
            )
        );
    }

    #[test]
    fn xml_root_namespace_and_scalars() {
        let t = template(r#""limit {n} \r \u0001""#, &["n"]);
        let vars = [("n", Value::Int(5))];
        assert_eq!(
            t.render_xml(&vars, "Error", Some("urn:x?a=1&b=\"2\"\n")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error xmlns=\"urn:x?a=1&amp;b=&quot;2&quot;&#10;\">limit 5 &#13; \u{fffd}</Error>"
        );
        assert_eq!(
            t.render_xml(&vars, "1 bad root", None),
            r#"<?xml version="1.0" encoding="UTF-8"?><error>limit 5 &#13; �</error>"#
        );
        let t = template(r#"{"var": "missing"}"#, &["missing"]);
        assert_eq!(
            t.render_xml(&NO_VARS, "e", None),
            r#"<?xml version="1.0" encoding="UTF-8"?><e></e>"#
        );
        assert_eq!(t.render_json(&NO_VARS), "null");
    }

    #[test]
    fn xml_names() {
        for ok in ["a", "_a", "a-b.c9", "Ünï", "xmlish"] {
            assert!(is_xml_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a b", "-a", ".a", "a:b", "a<b", "a&b"] {
            assert!(!is_xml_name(bad), "{bad}");
        }
    }

    fn vars_strategy() -> impl Strategy<Value = Vec<(String, Value)>> {
        let value = prop_oneof![
            any::<String>().prop_map(Value::Str),
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<String>(), 0..4).prop_map(Value::List),
            prop::collection::vec((any::<String>(), any::<String>()), 0..4).prop_map(Value::Map),
        ];
        (value.clone(), value).prop_map(|(a, b)| vec![("a".to_owned(), a), ("b".to_owned(), b)])
    }

    proptest! {
        #[test]
        fn render_json_always_parses(
            a in any::<String>(),
            key in any::<String>(),
            literal in "[^{}]*",
        ) {
            let mut object = serde_json::Map::new();
            object.insert(key.clone(), serde_json::Value::String(format!("{literal}{{a}}!")));
            object.insert("typed".to_owned(), serde_json::json!({"var": "a"}));
            let t = BodyTemplate::compile(&serde_json::Value::Object(object), &["a"]).unwrap();
            let vars = [("a", Value::Str(a.clone()))];
            let out = t.render_json(&vars);
            let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(&parsed[&key], &serde_json::Value::String(format!("{literal}{a}!")));
            prop_assert_eq!(&parsed["typed"], &serde_json::Value::String(a));
        }

        #[test]
        fn render_xml_never_panics(
            vars in vars_strategy(),
            keys in prop::collection::vec(any::<String>(), 0..4),
            text in any::<String>(),
            root in any::<String>(),
            namespace in proptest::option::of(any::<String>()),
        ) {
            let mut object = serde_json::Map::new();
            for key in keys {
                object.insert(key, serde_json::json!(["{a} {b}", {"var": "b"}, 1.5]));
            }
            object.insert("t".to_owned(), serde_json::Value::String(text));
            let t = BodyTemplate::compile(&serde_json::Value::Object(object), &["a", "b"]);
            if let Ok(t) = t {
                let vars: Vec<(&str, Value)> =
                    vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                let out = t.render_xml(&vars, &root, namespace.as_deref());
                prop_assert!(out.chars().all(is_xml_char));
                let json = t.render_json(&vars);
                prop_assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
            }
        }

        #[test]
        fn compile_never_panics(text in any::<String>()) {
            let _ = BodyTemplate::compile(&serde_json::Value::String(text), &["a"]);
        }

        #[test]
        fn negotiate_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = negotiate(Some(&bytes));
        }
    }
}
