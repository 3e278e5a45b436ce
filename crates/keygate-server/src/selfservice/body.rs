//! Register and update bodies: read within `max_body_bytes`, parsed as one JSON object, and
//! checked field by field as hostile input. Nothing reaches the store before all of it passes.

use std::collections::BTreeMap;

use http::header::CONTENT_TYPE;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::{SelfService, SelfServiceError};

/// An account to register.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) name: String,
    pub(super) metadata: BTreeMap<String, String>,
}

/// Changes to an account: a new name, and fields set (`Some`) or removed (`None`).
#[derive(Debug)]
pub(super) struct Patch {
    pub(super) name: Option<String>,
    pub(super) metadata: BTreeMap<String, Option<String>>,
}

/// Reads the body as one JSON object.
///
/// # Errors
/// `TooLarge` past the bound (declared or streamed), `Malformed` for another content type,
/// a body cut off, or anything but JSON.
pub(super) async fn read(
    config: &SelfService,
    req: Request<Incoming>,
) -> Result<Map<String, Value>, SelfServiceError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let essence = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            return Err(SelfServiceError::Malformed(
                "the body must be JSON (Content-Type: application/json)".to_owned(),
            ));
        }
    }
    let bytes = match Limited::new(req.into_body(), config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(SelfServiceError::TooLarge(config.max_body_bytes))
        }
        Err(_) => {
            return Err(SelfServiceError::Malformed(
                "the body was cut off".to_owned(),
            ))
        }
    };
    object(&bytes)
}

/// Parses bytes as one JSON object.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, SelfServiceError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(SelfServiceError::Malformed(
            "the body is empty; send a JSON object".to_owned(),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SelfServiceError::Invalid(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        ))),
        Err(e) => Err(SelfServiceError::Malformed(format!(
            "the body is not valid JSON ({e})"
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn accepted(list: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    list.into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A text field's value: a string, printable, at most `max` characters.
fn text(field: &str, value: &Value, max: usize) -> Result<String, SelfServiceError> {
    let Value::String(s) = value else {
        return Err(SelfServiceError::Invalid(format!(
            "`{field}` must be a string, not {}",
            kind(value)
        )));
    };
    if s.chars().any(char::is_control) {
        return Err(SelfServiceError::Invalid(format!(
            "`{field}` contains control characters"
        )));
    }
    let n = s.chars().count();
    if n > max {
        return Err(SelfServiceError::Invalid(format!(
            "`{field}` is {n} characters long; at most {max} are accepted"
        )));
    }
    Ok(s.clone())
}

/// The account name: trimmed, 1 to `name_max_length` characters, and never an account id.
fn name(config: &SelfService, value: &Value) -> Result<String, SelfServiceError> {
    let name = text("name", value, config.name_max_length)?;
    if name.trim().is_empty() || name.trim() != name {
        return Err(SelfServiceError::Invalid(
            "`name` must not be empty or start or end with spaces".to_owned(),
        ));
    }
    if keygate_core::ClientId::parse(&name).is_ok() {
        return Err(SelfServiceError::Invalid(
            "`name` must not look like an account id".to_owned(),
        ));
    }
    keygate_core::names::check_client_name(&name)
        .map_err(|e| SelfServiceError::Invalid(e.to_string()))?;
    Ok(name)
}

/// Checks a registration body: `name` and the configured fields, nothing else.
///
/// # Errors
/// `Invalid` naming the first field refused.
pub(super) fn registration(
    config: &SelfService,
    body: Map<String, Value>,
) -> Result<Registration, SelfServiceError> {
    let mut name_value = None;
    let mut metadata = BTreeMap::new();
    for (field, value) in &body {
        if field == "name" {
            name_value = Some(name(config, value)?);
        } else if let Some(&max) = config.fields.get(field) {
            if !value.is_null() {
                metadata.insert(field.clone(), text(field, value, max)?);
            }
        } else {
            return Err(SelfServiceError::Invalid(format!(
                "unknown field `{field}` (accepted: {})",
                accepted(std::iter::once("name").chain(config.fields.keys().map(String::as_str)))
            )));
        }
    }
    let name =
        name_value.ok_or_else(|| SelfServiceError::Invalid("`name` is required".to_owned()))?;
    Ok(Registration { name, metadata })
}

/// Checks an update body: only the patchable fields; `null` removes a profile field.
///
/// # Errors
/// `Invalid` naming the first field refused, or for a body that changes nothing.
pub(super) fn patch(
    config: &SelfService,
    body: Map<String, Value>,
) -> Result<Patch, SelfServiceError> {
    if body.is_empty() {
        return Err(SelfServiceError::Invalid(format!(
            "nothing to change (accepted: {})",
            accepted(&config.patchable)
        )));
    }
    let mut patch = Patch {
        name: None,
        metadata: BTreeMap::new(),
    };
    for (field, value) in &body {
        if !config.patchable.iter().any(|p| p == field) {
            return Err(SelfServiceError::Invalid(format!(
                "unknown or read-only field `{field}` (accepted: {})",
                accepted(&config.patchable)
            )));
        }
        if field == "name" {
            patch.name = Some(name(config, value)?);
        } else {
            let max = config.fields.get(field).copied().unwrap_or(0);
            let v = if value.is_null() {
                None
            } else {
                Some(text(field, value, max)?)
            };
            patch.metadata.insert(field.clone(), v);
        }
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SelfService {
        SelfService {
            plan: "free".into(),
            scopes: vec![],
            key_label: "primary".into(),
            max_body_bytes: 4096,
            name_max_length: 8,
            fields: [("wallet_address".to_owned(), 6), ("email".to_owned(), 20)].into(),
            patchable: vec!["name".into(), "wallet_address".into()],
        }
    }

    fn map(text: &str) -> Map<String, Value> {
        object(text.as_bytes()).unwrap()
    }

    #[test]
    fn bodies_are_json_objects() {
        assert!(matches!(object(b""), Err(SelfServiceError::Malformed(_))));
        assert!(matches!(
            object(b"{\"name\":"),
            Err(SelfServiceError::Malformed(_))
        ));
        assert!(matches!(object(b"[1]"), Err(SelfServiceError::Invalid(_))));
        assert!(matches!(
            object(b"\xff"),
            Err(SelfServiceError::Malformed(_))
        ));
    }

    #[test]
    fn registration_fields_are_checked() {
        let c = config();
        let ok = registration(&c, map(r#"{"name":"Bot","email":"a@b.c"}"#)).unwrap();
        assert_eq!(ok.name, "Bot");
        assert_eq!(ok.metadata["email"], "a@b.c");
        for (body, needle) in [
            (r#"{"email":"a@b.c"}"#, "`name` is required"),
            (r#"{"name":"Bot","admin":true}"#, "unknown field `admin`"),
            (r#"{"name":"TooLongName"}"#, "at most 8"),
            (r#"{"name":" Bot"}"#, "spaces"),
            (r#"{"name":""}"#, "empty"),
            (r#"{"name":7}"#, "must be a string, not a number"),
            (r#"{"name":"a\u0000b"}"#, "control characters"),
            (r#"{"name":"cli_0123456789abcdef"}"#, "account id"),
            (r#"{"name":"Bot","wallet_address":"0x123456"}"#, "at most 6"),
        ] {
            let c = SelfService {
                name_max_length: if needle == "account id" { 64 } else { 8 },
                ..config()
            };
            let err = registration(&c, map(body)).unwrap_err();
            assert!(matches!(err, SelfServiceError::Invalid(_)), "{body}");
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn patches_touch_only_patchable_fields() {
        let c = config();
        let p = patch(&c, map(r#"{"wallet_address":null,"name":"New"}"#)).unwrap();
        assert_eq!(p.name.as_deref(), Some("New"));
        assert_eq!(p.metadata["wallet_address"], None);
        for (body, needle) in [
            ("{}", "nothing to change"),
            (r#"{"email":"x@y.z"}"#, "read-only field `email`"),
            (r#"{"plan":"pro"}"#, "`plan`"),
            (r#"{"wallet_address":["x"]}"#, "not an array"),
        ] {
            let err = patch(&c, map(body)).unwrap_err();
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
    }
}
