//! Clients (tenants) and their keys.
//!
//! A client carries everything a key is allowed to do: plan, scopes, sport and bookmaker
//! allowlists, limit overrides and an active flag. Keys inherit all of it; a key itself has a
//! state, an optional expiry, a label, and optionally restrictions that narrow it
//! ([`crate::key_restrictions`]). So disabling a client or narrowing its scopes reaches
//! every key at once, which is what the providers' contracts promise.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use crate::digest::KeyDigest;
use crate::key_restrictions::KeyRestrictions;
use crate::names::Slug;
use crate::scope::Scope;
use crate::time::Timestamp;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Box<str>);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id (16 characters of `0-9a-z`, about 82 bits).
            pub fn generate() -> Self {
                Self::generate_with(|buf| getrandom::fill(buf).expect("the OS CSPRNG must be available"))
            }

            /// A fresh id drawing bytes from `fill`.
            pub fn generate_with(mut fill: impl FnMut(&mut [u8])) -> Self {
                const SYMBOLS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
                let mut s = String::with_capacity($prefix.len() + 16);
                s.push_str($prefix);
                let mut pool = [0u8; 32];
                while s.len() < $prefix.len() + 16 {
                    fill(&mut pool);
                    for &b in &pool {
                        // 252 = 7 * 36: rejection sampling keeps symbols uniform.
                        if b < 252 && s.len() < $prefix.len() + 16 {
                            s.push(SYMBOLS[(b % 36) as usize] as char);
                        }
                    }
                }
                $name(s.into())
            }

            /// Validates an id typed by a person or read from a URL.
            ///
            /// # Errors
            /// [`IdError`] quoting the input.
            pub fn parse(input: &str) -> Result<Self, IdError> {
                let body = input.strip_prefix($prefix).unwrap_or("");
                if body.len() == 16 && body.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
                    Ok($name(input.into()))
                } else {
                    Err(IdError { input: input.to_owned(), what: $what, prefix: $prefix })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A string that is not an id of the expected kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a {what} id (expected `{prefix}` followed by 16 characters of 0-9 and a-z)"
)]
pub struct IdError {
    pub input: String,
    pub what: &'static str,
    pub prefix: &'static str,
}

id_type!(
    /// Identifies a client; stable for its whole life, unlike its name.
    ClientId,
    "cli_",
    "client"
);
id_type!(
    /// Identifies a key; safe to show and log (it is not the secret).
    KeyId,
    "key_",
    "key"
);
id_type!(
    /// Identifies a scoped suspension (`keygate suspend`); what `keygate resume` takes.
    SuspensionId,
    "sus_",
    "suspension"
);
id_type!(
    /// Identifies an admin token.
    AdminTokenId,
    "adm_",
    "admin token"
);

id_type!(
    /// Identifies a customer-portal user (a person who signs in for a client).
    PortalUserId,
    "pu_",
    "portal user"
);

/// Per-contract limits stored with a client; each overrides its plan's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<NonZeroU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<NonZeroU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<NonZeroU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<NonZeroU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<NonZeroU64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws_connections: Option<NonZeroU64>,
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }
}

/// A tenant: the customer that holds keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub id: ClientId,
    pub name: String,
    pub plan: String,
    pub scopes: Vec<Scope>,
    /// Sport namespaces the client may reach; empty means none is restricted by sport.
    pub sports: Vec<Slug>,
    /// Bookmakers the client may ask for; empty means all bookmakers.
    pub bookmakers: Vec<Slug>,
    pub limits: LimitOverrides,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The account this client belongs to (a "portfolio bot" of a parent account): the
    /// parent's keys may regenerate this client's keys. One level only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ClientId>,
    /// Profile fields the customer keeps through self-service (wallet address, email, ...);
    /// plain text, never a secret, never used for authorization.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Where a key is in its life. `Revoked` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Disabled,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyState::Active),
            "disabled" => Some(KeyState::Disabled),
            "revoked" => Some(KeyState::Revoked),
            _ => None,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key as stored: never the plaintext, only its digest and a masked hint. Its JSON form has
/// no digest (read back, e.g. from the admin API, the digest is zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub client_id: ClientId,
    #[serde(skip)]
    pub digest: KeyDigest,
    pub hint: String,
    pub label: String,
    pub state: KeyState,
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub rotated_at: Option<Timestamp>,
    /// The key that replaced this one at rotation.
    pub replaced_by: Option<KeyId>,
    /// When the key last authenticated, to about a minute plus the usage flush interval; `None`
    /// when never (or not since this was recorded).
    #[serde(default)]
    pub last_used_at: Option<Timestamp>,
    /// Narrowed scopes, CIDR allowlist, metadata and external id (issue 22); empty for most.
    #[serde(flatten)]
    pub restrictions: KeyRestrictions,
}

/// Why a known key may not be used right now (all 401-class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    Disabled,
    Revoked,
    Expired,
    ClientInactive,
}

impl ApiKey {
    /// Whether the key authenticates at `now` given its client's active flag.
    ///
    /// # Errors
    /// The first reason it does not, in the order revoked, disabled, expired, client inactive.
    pub fn usable_at(&self, now: Timestamp, client_active: bool) -> Result<(), Unusable> {
        key_usable(self.state, self.expires_at, now, client_active)
    }
}

/// The one rule for whether a key authenticates; shared by the store's model and the replica.
///
/// # Errors
/// The first reason it does not, in the order revoked, disabled, expired, client inactive.
pub fn key_usable(
    state: KeyState,
    expires_at: Option<Timestamp>,
    now: Timestamp,
    client_active: bool,
) -> Result<(), Unusable> {
    match state {
        KeyState::Revoked => Err(Unusable::Revoked),
        KeyState::Disabled => Err(Unusable::Disabled),
        KeyState::Active if expires_at.is_some_and(|at| at <= now) => Err(Unusable::Expired),
        KeyState::Active if !client_active => Err(Unusable::ClientInactive),
        KeyState::Active => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digester;

    fn key(state: KeyState, expires_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: KeyId::generate(),
            client_id: ClientId::generate(),
            digest: Digester::plain().digest("x"),
            hint: "kg_...abcd".into(),
            label: String::new(),
            state,
            expires_at: expires_at.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(0),
            rotated_at: None,
            replaced_by: None,
            last_used_at: None,
            restrictions: KeyRestrictions::default(),
        }
    }

    #[test]
    fn usability() {
        let now = Timestamp::from_millis(1_000);
        assert_eq!(key(KeyState::Active, None).usable_at(now, true), Ok(()));
        assert_eq!(
            key(KeyState::Active, Some(1_001)).usable_at(now, true),
            Ok(())
        );
        assert_eq!(
            key(KeyState::Active, Some(1_000)).usable_at(now, true),
            Err(Unusable::Expired)
        );
        assert_eq!(
            key(KeyState::Disabled, None).usable_at(now, true),
            Err(Unusable::Disabled)
        );
        assert_eq!(
            key(KeyState::Revoked, None).usable_at(now, true),
            Err(Unusable::Revoked)
        );
        assert_eq!(
            key(KeyState::Active, None).usable_at(now, false),
            Err(Unusable::ClientInactive)
        );
    }

    #[test]
    fn ids() {
        let id = KeyId::generate();
        assert!(id.as_str().starts_with("key_"));
        assert_eq!(KeyId::parse(id.as_str()), Ok(id.clone()));
        assert!(KeyId::parse("cli_0123456789abcdef").is_err());
        assert!(KeyId::parse("key_0123456789ABCDEF").is_err());
        assert!(KeyId::parse("key_'; drop table keys").is_err());
        let e = ClientId::parse("nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`nope` is not a client id (expected `cli_` followed by 16 characters of 0-9 and a-z)"
        );
    }

    #[test]
    fn overrides_serialize_compactly() {
        let o = LimitOverrides {
            rps: NonZeroU64::new(250),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"rps":250}"#);
        assert!(serde_json::from_str::<LimitOverrides>(r#"{"rps":0}"#).is_err());
        assert!(serde_json::from_str::<LimitOverrides>(r#"{"rpm":1}"#).is_err());
    }
}
