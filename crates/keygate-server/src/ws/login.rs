//! The login message of `login_message` routes (seed 000):
//! `{"type":"login","apiKey":"…","channels":[…]}`, field names from the profile.

use crate::policy::channels::{channel_list, ChannelListError};
use crate::policy::ws::LoginShape;

/// A parsed login.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub key: String,
    pub channels: Vec<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never reaches a log line.
        f.debug_struct("Login")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// Why a first message is not a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LoginError {
    #[error("the login message must be text")]
    NotText,
    #[error("the login message is too large")]
    TooBig,
    #[error("the login message is not a JSON object")]
    NotJson,
    #[error("the first message must be a login")]
    NotLogin,
    #[error("the login message carries no API key")]
    MissingKey,
    #[error("the login message's channels must be a list of channel names")]
    BadChannels,
}

impl LoginError {
    /// The `code` of the error message sent back.
    pub(crate) const fn code(self) -> &'static str {
        match self {
            LoginError::NotText => "binary_not_allowed",
            LoginError::TooBig => "message_too_big",
            LoginError::NotJson => "invalid_message",
            LoginError::NotLogin => "login_required",
            LoginError::MissingKey => "missing_key",
            LoginError::BadChannels => "invalid_channels",
        }
    }
}

/// Parses a first message as a login.
///
/// # Errors
/// [`LoginError`] saying what is wrong with it.
pub(crate) fn parse(
    shape: &LoginShape,
    type_field: &str,
    text: &str,
    max_bytes: usize,
) -> Result<Login, LoginError> {
    if text.len() > max_bytes {
        return Err(LoginError::TooBig);
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| LoginError::NotJson)?;
    let object = value.as_object().ok_or(LoginError::NotJson)?;
    if object.get(type_field).and_then(|t| t.as_str()) != Some(&*shape.kind) {
        return Err(LoginError::NotLogin);
    }
    let key = match object.get(&*shape.key_field) {
        Some(serde_json::Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(LoginError::MissingKey),
    };
    let channels = match object.get(&*shape.channels_field) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(v) => channel_list(v).map_err(|ChannelListError| LoginError::BadChannels)?,
    };
    Ok(Login { key, channels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> LoginShape {
        LoginShape {
            kind: "login".into(),
            key_field: "apiKey".into(),
            channels_field: "channels".into(),
        }
    }

    #[test]
    fn seed_000_login() {
        // Seed 000: { "type": "login", "apiKey": "your-api-key", "channels": [] }
        let l = parse(
            &shape(),
            "type",
            r#"{"type": "login", "apiKey": "your-api-key", "channels": []}"#,
            4096,
        )
        .unwrap();
        assert_eq!(l.key, "your-api-key");
        assert!(l.channels.is_empty());
        assert!(!format!("{l:?}").contains("your-api-key"));
        let l = parse(
            &shape(),
            "type",
            r#"{"type":"login","apiKey":"k","channels":["a","b"]}"#,
            4096,
        )
        .unwrap();
        assert_eq!(l.channels, ["a", "b"]);
    }

    #[test]
    fn bad_logins() {
        let p = |t: &str| parse(&shape(), "type", t, 64);
        assert_eq!(p("not json"), Err(LoginError::NotJson));
        assert_eq!(p("[1,2]"), Err(LoginError::NotJson));
        assert_eq!(p(r#"{"type":"subscribe"}"#), Err(LoginError::NotLogin));
        assert_eq!(p(r#"{"type":"login"}"#), Err(LoginError::MissingKey));
        assert_eq!(
            p(r#"{"type":"login","apiKey":7}"#),
            Err(LoginError::MissingKey)
        );
        assert_eq!(
            p(r#"{"type":"login","apiKey":"k","channels":[1]}"#),
            Err(LoginError::BadChannels)
        );
        assert_eq!(p(&"x".repeat(65)), Err(LoginError::TooBig));
    }
}
