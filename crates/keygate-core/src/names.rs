//! Validation of the names operators type: client names, key labels, plan names, slugs for
//! sports and bookmakers. Each is refused with one sentence that quotes the input.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name, label or slug that is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("client name `{0}` must be 1 to 100 printable characters, without leading or trailing spaces")]
    ClientName(String),
    #[error("label `{0}` must be at most 100 printable characters")]
    Label(String),
    #[error("plan name `{0}` must be 1 to 64 characters of letters, digits, `_`, `-`, `.` or `+`")]
    Plan(String),
    #[error("`{0}` is not a slug; sports and bookmakers are lowercase letters, digits, `_` or `-` (1 to 64 characters)")]
    Slug(String),
    #[error("a message for callers (emergency mode, a suspension) must be 1 to 500 printable characters")]
    Notice,
}

fn printable(s: &str) -> bool {
    s.chars().all(|c| !c.is_control())
}

/// Checks an operator's notice (the emergency-mode or suspension message callers read): short,
/// one line of printable text, since it is echoed in every refusal.
///
/// # Errors
/// [`NameError::Notice`].
pub fn check_notice(text: &str) -> Result<(), NameError> {
    let n = text.chars().count();
    if (1..=500).contains(&n) && printable(text) && !text.trim().is_empty() {
        Ok(())
    } else {
        Err(NameError::Notice)
    }
}

/// Checks a client name: what operators type to address a client.
///
/// # Errors
/// [`NameError::ClientName`].
pub fn check_client_name(name: &str) -> Result<(), NameError> {
    let n = name.chars().count();
    if (1..=100).contains(&n) && printable(name) && name.trim() == name {
        Ok(())
    } else {
        Err(NameError::ClientName(name.to_owned()))
    }
}

/// Checks a key label (may be empty).
///
/// # Errors
/// [`NameError::Label`].
pub fn check_label(label: &str) -> Result<(), NameError> {
    if label.chars().count() <= 100 && printable(label) {
        Ok(())
    } else {
        Err(NameError::Label(label.to_owned()))
    }
}

/// Checks a plan name.
///
/// # Errors
/// [`NameError::Plan`].
pub fn check_plan(plan: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&plan.len())
        && plan
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Plan(plan.to_owned()))
    }
}

/// A sport namespace or bookmaker identifier: `cs2`, `soccer`, `bet365`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slug(Box<str>);

impl Slug {
    /// Validates a slug.
    ///
    /// # Errors
    /// [`NameError::Slug`].
    pub fn new(input: &str) -> Result<Self, NameError> {
        let ok = (1..=64).contains(&input.len())
            && input
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(Slug(input.into()))
        } else {
            Err(NameError::Slug(input.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Slug {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Slug::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_client_name("Acme Sportsbook").is_ok());
        assert!(check_client_name("").is_err());
        assert!(check_client_name(" acme").is_err());
        assert!(check_client_name("a\u{7}b").is_err());
        assert!(check_client_name(&"x".repeat(101)).is_err());
        assert!(check_label("").is_ok());
        assert!(check_label("prod\n").is_err());
        assert!(check_plan("pro_plus_live").is_ok());
        assert!(check_plan("Pro+").is_ok());
        assert!(check_plan("pro plan").is_err());
        assert!(Slug::new("cs2").is_ok());
        assert!(Slug::new("CS2").is_err());
        assert!(Slug::new("").is_err());
    }
}
