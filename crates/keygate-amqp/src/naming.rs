//! Slugs and the broker names made from them.
//!
//! A slug is what seed 001 puts in `amqp://op-<slug>:<password>@host:5672/<slug>`: it becomes a
//! vhost name, part of a user name and part of a URL. It is therefore held to a charset that
//! needs no escaping anywhere (lowercase ASCII letters, digits and inner `-`), so a client name
//! with `/`, `..`, `%`, `:` or `@` can never become a path segment of the management API, a
//! different vhost, or a different user in the URL.

use crate::config::AmqpConfig;
use crate::error::AmqpError;

/// Longest slug: RabbitMQ takes longer names, but a URL a person copies should stay short.
pub const MAX_SLUG: usize = 40;

/// Checks an explicit slug.
///
/// # Errors
/// [`AmqpError::InvalidSlug`] quoting the input.
pub fn check_slug(slug: &str) -> Result<(), AmqpError> {
    let bytes = slug.as_bytes();
    let ok = (1..=MAX_SLUG).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !slug.contains("--");
    if ok {
        Ok(())
    } else {
        Err(AmqpError::InvalidSlug(slug.to_owned()))
    }
}

/// The slug of a client name: ASCII letters and digits lowercased, every run of anything else
/// one `-`, trimmed to [`MAX_SLUG`]. `Acme Sportsbook` → `acme-sportsbook`.
///
/// # Errors
/// [`AmqpError::NoSlug`] when nothing usable is left (a name of only punctuation or non-ASCII
/// letters): the operator gives one with `--slug`.
pub fn derive_slug(client_name: &str) -> Result<String, AmqpError> {
    let mut slug = String::with_capacity(client_name.len().min(MAX_SLUG));
    for c in client_name.chars() {
        if slug.len() >= MAX_SLUG {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    match check_slug(&slug) {
        Ok(()) => Ok(slug),
        Err(_) => Err(AmqpError::NoSlug(client_name.to_owned())),
    }
}

/// The vhost and user of a slug under the configured naming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub slug: String,
    pub vhost: String,
    pub user: String,
}

impl Names {
    /// # Errors
    /// [`AmqpError::InvalidSlug`].
    pub fn new(config: &AmqpConfig, slug: &str) -> Result<Names, AmqpError> {
        check_slug(slug)?;
        Ok(Names {
            slug: slug.to_owned(),
            vhost: format!("{}{slug}", config.vhost_prefix),
            user: format!("{}{slug}", config.user_prefix),
        })
    }
}

/// Whether a broker user name falls under the configured naming (for the drift check: only
/// these are keygate's to compare).
pub(crate) fn is_tenant_user(config: &AmqpConfig, user: &str) -> bool {
    !config.user_prefix.is_empty()
        && user
            .strip_prefix(&config.user_prefix)
            .is_some_and(|slug| check_slug(slug).is_ok())
}

/// Whether a vhost name falls under the configured naming.
pub(crate) fn is_tenant_vhost(config: &AmqpConfig, vhost: &str) -> bool {
    vhost
        .strip_prefix(&config.vhost_prefix)
        .is_some_and(|slug| check_slug(slug).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_slugs() {
        assert_eq!(derive_slug("Acme Sportsbook").unwrap(), "acme-sportsbook");
        assert_eq!(derive_slug("  ACME--bet365!! ").unwrap(), "acme-bet365");
        assert_eq!(derive_slug("../../etc/passwd").unwrap(), "etc-passwd");
        assert_eq!(derive_slug("a/b%2Fc").unwrap(), "a-b-2fc");
        assert_eq!(derive_slug("Zürich Odds").unwrap(), "z-rich-odds");
        assert_eq!(derive_slug(&"x".repeat(500)).unwrap().len(), MAX_SLUG);
        assert_eq!(derive_slug(&"ab-".repeat(100)).unwrap().len(), MAX_SLUG);
    }

    #[test]
    fn names_without_letters_need_an_explicit_slug() {
        for name in ["/", "..", "%%", "日本語", "🦀", "-", ""] {
            assert!(
                matches!(derive_slug(name), Err(AmqpError::NoSlug(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn explicit_slugs_are_checked() {
        for bad in [
            "", "/", "a/b", "..", "a..b", "%2f", "A", "a b", "-a", "a-", "a--b", "a:b", "a@b", "ü",
            "a\u{0}b",
        ] {
            assert!(check_slug(bad).is_err(), "{bad:?}");
        }
        assert!(check_slug(&"a".repeat(MAX_SLUG + 1)).is_err());
        assert!(check_slug("acme-2").is_ok());
    }
}
