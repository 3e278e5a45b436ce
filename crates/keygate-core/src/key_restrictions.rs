//! Per-key restrictions (issue 22): what one key may do within its client's rights, and what
//! an operator's systems know it by.
//!
//! A key can only narrow its client: its scopes are a subset of the client's (checked when
//! they are set; if the client later loses a scope the intersection simply drops it, because
//! the gateway checks the client and the key each), and its CIDR allowlist limits where it may
//! be used from. Metadata and an external id are labels for the operator's systems, never used
//! for authorization. Everything is bounded here, in one place, because every field is typed
//! by someone we do not trust (an admin API body, a CLI argument, a stored row).

use std::collections::BTreeMap;
use std::net::IpAddr;

/// A CIDR (`ipnet`'s type, as the guard's trusted proxies use).
pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::scope::Scope;

/// Most metadata entries on one key.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest metadata name, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 256;
/// Longest external id, in bytes.
pub const MAX_EXTERNAL_ID_BYTES: usize = 128;
/// Most CIDRs in one key's allowlist (each request walks the list).
pub const MAX_CIDRS: usize = 32;
/// Most scopes on one key (a client's own list is the real bound; this caps a hostile body).
pub const MAX_KEY_SCOPES: usize = 256;

/// The restrictions and labels a key carries; all empty by default (the key is its client).
///
/// Flattened into [`crate::ApiKey`]'s JSON, so it has no `deny_unknown_fields` of its own; the
/// admin API's bodies are strict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRestrictions {
    /// The scopes this key is narrowed to (`None`: all of its client's). The effective scopes
    /// are the client's that are also here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    /// Where the key may be used from (empty: anywhere). Normalized (host bits cleared).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<IpNet>,
    /// The operator's labels (bounded: see the `MAX_METADATA_*` constants).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The operator's own id for the key, unique among its client's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// A restriction that cannot be stored, naming the field and never echoing more than a
/// bounded prefix of the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestrictionError {
    #[error("`{0}` is not a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or an IP address")]
    Cidr(String),
    #[error(
        "`{0}` allows every address of its family; leave allowed_cidrs empty for no restriction"
    )]
    CidrTooWide(String),
    #[error("at most {MAX_CIDRS} CIDRs per key")]
    TooManyCidrs,
    #[error("at most {MAX_KEY_SCOPES} scopes per key")]
    TooManyScopes,
    #[error("at most {MAX_METADATA_ENTRIES} metadata entries per key")]
    TooManyMetadata,
    #[error("metadata name `{0}` must be 1 to {MAX_METADATA_KEY_BYTES} bytes of letters, digits, `_`, `-`, `.` or `:`")]
    MetadataKey(String),
    #[error("metadata value of `{0}` must be at most {MAX_METADATA_VALUE_BYTES} bytes of printable characters")]
    MetadataValue(String),
    #[error("external id must be 1 to {MAX_EXTERNAL_ID_BYTES} bytes of printable characters without spaces")]
    ExternalId,
}

impl RestrictionError {
    /// The body field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            RestrictionError::Cidr(_)
            | RestrictionError::CidrTooWide(_)
            | RestrictionError::TooManyCidrs => "allowed_cidrs",
            RestrictionError::TooManyScopes => "scopes",
            RestrictionError::TooManyMetadata
            | RestrictionError::MetadataKey(_)
            | RestrictionError::MetadataValue(_) => "metadata",
            RestrictionError::ExternalId => "external_id",
        }
    }
}

/// At most 64 characters of hostile input, for an error message.
fn quoted(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Parses one CIDR as an operator writes it: `10.0.0.0/8`, `2001:db8::/32`, or a bare address
/// (one host). Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`). A `/0` is refused: it
/// reads as "anywhere" but would shut out the other address family.
///
/// # Errors
/// [`RestrictionError::Cidr`] or [`RestrictionError::CidrTooWide`].
pub fn parse_cidr(input: &str) -> Result<IpNet, RestrictionError> {
    let net = match input.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => input
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| RestrictionError::Cidr(quoted(input)))?,
    };
    if net.prefix_len() == 0 {
        return Err(RestrictionError::CidrTooWide(quoted(input)));
    }
    Ok(net.trunc())
}

/// Checks an external id.
///
/// # Errors
/// [`RestrictionError::ExternalId`].
pub fn check_external_id(id: &str) -> Result<(), RestrictionError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_EXTERNAL_ID_BYTES
        && id.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(RestrictionError::ExternalId)
    }
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), RestrictionError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(RestrictionError::TooManyMetadata);
    }
    for (k, v) in metadata {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_METADATA_KEY_BYTES
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !key_ok {
            return Err(RestrictionError::MetadataKey(quoted(k)));
        }
        if v.len() > MAX_METADATA_VALUE_BYTES || v.chars().any(char::is_control) {
            return Err(RestrictionError::MetadataValue(quoted(k)));
        }
    }
    Ok(())
}

impl KeyRestrictions {
    /// True when the key is just its client (nothing narrowed, nothing labelled).
    pub fn is_empty(&self) -> bool {
        *self == KeyRestrictions::default()
    }

    /// True when the key narrows what its client may do (scopes or addresses).
    pub fn narrows(&self) -> bool {
        self.scopes.is_some() || !self.allowed_cidrs.is_empty()
    }

    /// Checks every bound and normalizes: scopes sorted and deduplicated, CIDRs truncated,
    /// sorted and deduplicated.
    ///
    /// # Errors
    /// The first [`RestrictionError`].
    pub fn validate(mut self) -> Result<Self, RestrictionError> {
        if let Some(scopes) = &mut self.scopes {
            scopes.sort();
            scopes.dedup();
            if scopes.len() > MAX_KEY_SCOPES {
                return Err(RestrictionError::TooManyScopes);
            }
        }
        for net in &mut self.allowed_cidrs {
            if net.prefix_len() == 0 {
                return Err(RestrictionError::CidrTooWide(net.to_string()));
            }
            *net = net.trunc();
        }
        self.allowed_cidrs.sort();
        self.allowed_cidrs.dedup();
        if self.allowed_cidrs.len() > MAX_CIDRS {
            return Err(RestrictionError::TooManyCidrs);
        }
        check_metadata(&self.metadata)?;
        if let Some(id) = &self.external_id {
            check_external_id(id)?;
        }
        Ok(self)
    }

    /// The first of the key's scopes its client lacks: a key may never widen its client.
    pub fn widening<'a>(&'a self, client_scopes: &[Scope]) -> Option<&'a Scope> {
        self.scopes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|s| !client_scopes.contains(s))
    }

    /// Whether `ip` may use the key.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allowed_cidrs.is_empty() || self.allowed_cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// A change to a key's restrictions: each field present replaces the key's (`null` clears it);
/// fields absent are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestrictionsChange {
    /// `Some(None)`: the key has all its client's scopes again.
    pub scopes: Option<Option<Vec<Scope>>>,
    pub allowed_cidrs: Option<Vec<IpNet>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub external_id: Option<Option<String>>,
}

impl RestrictionsChange {
    pub fn is_empty(&self) -> bool {
        *self == RestrictionsChange::default()
    }

    /// The restrictions after the change, validated.
    ///
    /// # Errors
    /// The first [`RestrictionError`] of the result.
    pub fn apply(&self, to: &KeyRestrictions) -> Result<KeyRestrictions, RestrictionError> {
        let mut out = to.clone();
        if let Some(s) = &self.scopes {
            out.scopes.clone_from(s);
        }
        if let Some(c) = &self.allowed_cidrs {
            out.allowed_cidrs.clone_from(c);
        }
        if let Some(m) = &self.metadata {
            out.metadata.clone_from(m);
        }
        if let Some(e) = &self.external_id {
            out.external_id.clone_from(e);
        }
        out.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_normalize_and_refuse_everything() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(
            parse_cidr("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/8\n",
            "1.2.3.4/-1",
            "::/129",
        ] {
            assert!(
                matches!(parse_cidr(bad), Err(RestrictionError::Cidr(_))),
                "{bad:?}"
            );
        }
        for all in ["0.0.0.0/0", "::/0", "10.0.0.0/0"] {
            assert!(matches!(
                parse_cidr(all),
                Err(RestrictionError::CidrTooWide(_))
            ));
        }
        let long = "9".repeat(10_000);
        let RestrictionError::Cidr(echo) = parse_cidr(&long).unwrap_err() else {
            panic!("not a cidr error")
        };
        assert_eq!(echo.len(), 64, "a hostile value is echoed bounded");
    }

    #[test]
    fn bounds() {
        let mut r = KeyRestrictions {
            metadata: (0..17).map(|i| (format!("k{i}"), "v".into())).collect(),
            ..KeyRestrictions::default()
        };
        assert_eq!(r.clone().validate(), Err(RestrictionError::TooManyMetadata));
        r.metadata = [("k".repeat(65), "v".into())].into();
        assert!(matches!(
            r.clone().validate(),
            Err(RestrictionError::MetadataKey(_))
        ));
        r.metadata = [("team name".into(), "v".into())].into();
        assert!(matches!(
            r.clone().validate(),
            Err(RestrictionError::MetadataKey(_))
        ));
        r.metadata = [("team".into(), "v".repeat(257))].into();
        assert!(matches!(
            r.clone().validate(),
            Err(RestrictionError::MetadataValue(_))
        ));
        r.metadata = [("team".into(), "a\u{1b}[31m".into())].into();
        assert!(matches!(
            r.clone().validate(),
            Err(RestrictionError::MetadataValue(_))
        ));
        r.metadata = [
            ("team".into(), "v".repeat(256)),
            ("k".repeat(64), String::new()),
        ]
        .into();
        assert!(r.clone().validate().is_ok());
        for bad in ["", "a b", "a\nb", &"x".repeat(129)] {
            assert_eq!(
                check_external_id(bad),
                Err(RestrictionError::ExternalId),
                "{bad:?}"
            );
        }
        assert!(check_external_id(&"x".repeat(128)).is_ok());
        assert!(check_external_id("crm:42/ü").is_ok());
    }

    #[test]
    fn a_key_never_widens_and_the_change_merges() {
        let s = |v: &str| Scope::new(v).unwrap();
        let client = [s("a"), s("b")];
        let r = KeyRestrictions {
            scopes: Some(vec![s("b"), s("a"), s("b")]),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(r.scopes, Some(vec![s("a"), s("b")]));
        assert_eq!(r.widening(&client), None);
        let wide = RestrictionsChange {
            scopes: Some(Some(vec![s("a"), s("c")])),
            ..Default::default()
        }
        .apply(&r)
        .unwrap();
        assert_eq!(wide.widening(&client), Some(&s("c")));
        let cleared = RestrictionsChange {
            scopes: Some(None),
            external_id: Some(Some("x-1".into())),
            ..Default::default()
        }
        .apply(&r)
        .unwrap();
        assert_eq!(cleared.scopes, None);
        assert_eq!(cleared.external_id.as_deref(), Some("x-1"));
        assert!(!cleared.narrows() && !cleared.is_empty());
    }

    #[test]
    fn addresses() {
        let r = KeyRestrictions {
            allowed_cidrs: vec![
                parse_cidr("10.0.0.0/8").unwrap(),
                parse_cidr("::1").unwrap(),
            ],
            ..Default::default()
        };
        assert!(r.allows_ip("10.9.8.7".parse().unwrap()));
        assert!(r.allows_ip("::1".parse().unwrap()));
        assert!(!r.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(KeyRestrictions::default().allows_ip("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn json_is_compact() {
        assert_eq!(
            serde_json::to_string(&KeyRestrictions::default()).unwrap(),
            "{}"
        );
        let r: KeyRestrictions =
            serde_json::from_str(r#"{"allowed_cidrs":["10.0.0.0/8"],"scopes":[]}"#).unwrap();
        assert_eq!(r.scopes, Some(vec![]));
    }
}
