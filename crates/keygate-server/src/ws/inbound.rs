//! What to do with one client message after authentication, on profiles whose client messages
//! are JSON: let it through, filter a subscribe by channel scope, or refuse it.

use keygate_core::policy::Grantee;

use crate::policy::channels::{self, channel_list, Refused};
use crate::policy::ws::{AuthMode, WsProfile};

/// A message the protocol does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadMessage {
    #[error("messages must be JSON objects")]
    NotJson,
    #[error("the message has no type")]
    NoType,
    #[error("unknown message type")]
    UnknownType,
    #[error("this connection is already logged in")]
    AlreadyLoggedIn,
    #[error("binary messages are not accepted")]
    Binary,
    #[error("channels must be a list of channel names")]
    BadChannels,
    #[error("too many channels on one connection")]
    TooManyChannels,
}

impl BadMessage {
    /// The `code` of the error message sent back.
    pub(crate) const fn code(self) -> &'static str {
        match self {
            BadMessage::NotJson | BadMessage::NoType => "invalid_message",
            BadMessage::UnknownType => "unknown_type",
            BadMessage::AlreadyLoggedIn => "already_logged_in",
            BadMessage::Binary => "binary_not_allowed",
            BadMessage::BadChannels => "invalid_channels",
            BadMessage::TooManyChannels => "too_many_channels",
        }
    }
}

/// The verdict on one client text message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Relay the message as it is.
    Forward,
    /// A subscribe: relay `forward` (the original when `None` and nothing was refused; nothing
    /// when every channel was refused) and answer the refused channels.
    Subscribe {
        forward: Option<String>,
        granted: Vec<String>,
        refused: Vec<Refused>,
    },
    /// An unsubscribe: relay it and forget the channels.
    Unsubscribe {
        channels: Vec<String>,
    },
    Bad(BadMessage),
}

/// Classifies a text message from an authenticated client in a session on `sport` (the
/// route's `sport_param`, for channel scopes that name it).
pub(crate) fn classify<'a>(
    profile: &WsProfile,
    mode: AuthMode,
    client: impl Into<Grantee<'a>>,
    sport: Option<&str>,
    text: &str,
) -> Inbound {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Inbound::Bad(BadMessage::NotJson);
    };
    let Some(kind) = object.get(&*profile.type_field).and_then(|t| t.as_str()) else {
        return Inbound::Bad(BadMessage::NoType);
    };
    if mode == AuthMode::LoginMessage && kind == &*profile.login.kind {
        return Inbound::Bad(BadMessage::AlreadyLoggedIn);
    }
    let shape = &profile.subscribe;
    let is = |list: &[Box<str>]| list.iter().any(|t| &**t == kind);
    if is(&shape.types) {
        let field = &*shape.channels_field;
        let list = match object.get(field) {
            None => Vec::new(),
            Some(v) => match channel_list(v) {
                Ok(l) => l,
                Err(_) => return Inbound::Bad(BadMessage::BadChannels),
            },
        };
        let grant = channels::grant(&profile.channels, client, sport, list);
        let forward = if grant.refused.is_empty() {
            None
        } else if grant.granted.is_empty() {
            Some(String::new())
        } else {
            object.insert(
                field.to_owned(),
                serde_json::Value::Array(grant.granted.iter().cloned().map(Into::into).collect()),
            );
            Some(serde_json::Value::Object(object).to_string())
        };
        return Inbound::Subscribe {
            forward,
            granted: grant.granted,
            refused: grant.refused,
        };
    }
    if is(&shape.unsubscribe_types) {
        return match object.get(&*shape.channels_field).map(channel_list) {
            None => Inbound::Unsubscribe {
                channels: Vec::new(),
            },
            Some(Ok(channels)) => Inbound::Unsubscribe { channels },
            Some(Err(_)) => Inbound::Bad(BadMessage::BadChannels),
        };
    }
    if profile.allows_type(kind) {
        Inbound::Forward
    } else {
        Inbound::Bad(BadMessage::UnknownType)
    }
}

/// A subscribe `text` (one `classify` accepted) rewritten to name only `channels`; `None` when
/// there are none, so nothing reaches the upstream.
pub(crate) fn with_channels(
    profile: &WsProfile,
    text: &str,
    channels: &[String],
) -> Option<String> {
    if channels.is_empty() {
        return None;
    }
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return None;
    };
    object.insert(
        profile.subscribe.channels_field.to_string(),
        serde_json::Value::Array(channels.iter().cloned().map(Into::into).collect()),
    );
    Some(serde_json::Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keygate_core::policy::ClientPolicy;
    use keygate_core::{ClientId, LimitOverrides};

    use super::*;
    use crate::policy::ws::{ChannelMap, TokenSecret};

    fn setup() -> (WsProfile, ClientPolicy) {
        let mut p = WsProfile::new(TokenSecret([0; 32]));
        let mut m = BTreeMap::new();
        m.insert("matches".to_owned(), "cs2:stream:matches".to_owned());
        m.insert("markets".to_owned(), "cs2:stream:markets".to_owned());
        p.channels = ChannelMap::new(&m, false);
        p.message_types = vec!["ping".into()];
        let c = ClientPolicy {
            id: ClientId::generate(),
            name: "Acme".into(),
            plan: "pro".into(),
            scopes: vec!["cs2:stream:matches".into()],
            sports: vec![],
            bookmakers: vec![],
            features: vec![],
            limits: LimitOverrides::default(),
            active: true,
            selects_bookmakers: false,
        };
        (p, c)
    }

    #[test]
    fn subscribes_are_filtered_by_scope() {
        let (p, c) = setup();
        let m = AuthMode::Handshake;
        assert_eq!(
            classify(
                &p,
                m,
                &c,
                None,
                r#"{"type":"subscribe","channels":["matches"]}"#
            ),
            Inbound::Subscribe {
                forward: None,
                granted: vec!["matches".into()],
                refused: vec![]
            }
        );
        let Inbound::Subscribe {
            forward, refused, ..
        } = classify(
            &p,
            m,
            &c,
            None,
            r#"{"type":"subscribe","id":7,"channels":["matches","markets"]}"#,
        )
        else {
            panic!()
        };
        let rewritten: serde_json::Value = serde_json::from_str(&forward.unwrap()).unwrap();
        assert_eq!(
            rewritten,
            serde_json::json!({"type":"subscribe","id":7,"channels":["matches"]})
        );
        assert_eq!(refused[0].scope.as_deref(), Some("cs2:stream:markets"));
        let Inbound::Subscribe { forward, .. } = classify(
            &p,
            m,
            &c,
            None,
            r#"{"type":"subscribe","channels":"markets"}"#,
        ) else {
            panic!()
        };
        assert_eq!(forward.as_deref(), Some(""), "nothing reaches the upstream");
    }

    #[test]
    fn bad_messages() {
        let (p, c) = setup();
        let m = AuthMode::LoginMessage;
        let bad = |t: &str| match classify(&p, m, &c, None, t) {
            Inbound::Bad(b) => Some(b),
            _ => None,
        };
        assert_eq!(bad("nope"), Some(BadMessage::NotJson));
        assert_eq!(bad("[]"), Some(BadMessage::NotJson));
        assert_eq!(bad(r#"{"x":1}"#), Some(BadMessage::NoType));
        assert_eq!(bad(r#"{"type":"hack"}"#), Some(BadMessage::UnknownType));
        assert_eq!(
            bad(r#"{"type":"login","apiKey":"k"}"#),
            Some(BadMessage::AlreadyLoggedIn)
        );
        assert_eq!(
            bad(r#"{"type":"subscribe","channels":[{}]}"#),
            Some(BadMessage::BadChannels)
        );
        assert_eq!(bad(r#"{"type":"ping"}"#), None);
        assert_eq!(
            classify(
                &p,
                m,
                &c,
                None,
                r#"{"type":"unsubscribe","channels":["matches"]}"#
            ),
            Inbound::Unsubscribe {
                channels: vec!["matches".into()]
            }
        );
    }
}
