//! The `[amqp]` table: where the broker's management API is, what address tenants are told,
//! how vhosts and users are named, and what a tenant may do inside its vhost.
//!
//! The operator's credentials never appear in the file (a file is shared and reviewed): they
//! come from `KEYGATE_AMQP_USER` / `KEYGATE_AMQP_PASSWORD`, read through a lookup function so
//! tests pass their own map.

use std::time::Duration;

use serde::Deserialize;

/// Environment variable holding the management API user.
pub const USER_ENV: &str = "KEYGATE_AMQP_USER";
/// Environment variable holding the management API password.
pub const PASSWORD_ENV: &str = "KEYGATE_AMQP_PASSWORD";

/// `[amqp]` as written.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmqp {
    /// The management API, `http://127.0.0.1:15672`.
    pub management_url: String,
    /// `host:port` shown to tenants in their URL (`mq.ticktock.bet:5672`).
    pub public_address: String,
    /// Prefix of tenant user names (default `op-`, seed 001's `op-<slug>`).
    pub user_prefix: Option<String>,
    /// Prefix of tenant vhost names (default none: the vhost is the slug).
    pub vhost_prefix: Option<String>,
    /// Permission patterns inside the tenant's own vhost.
    #[serde(default)]
    pub permissions: RawPermissions,
    /// Per-vhost limits (`max-connections`, `max-queues`); absent: none.
    pub max_connections: Option<u32>,
    pub max_queues: Option<u32>,
    /// How often the drift check compares the broker with the store (default `30s`).
    pub check_interval: Option<String>,
    /// Timeout of one management API call (default `5s`).
    pub timeout: Option<String>,
}

/// Configure/write/read regular expressions, as RabbitMQ takes them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermissions {
    pub configure: Option<String>,
    pub write: Option<String>,
    pub read: Option<String>,
}

/// Permissions granted inside a tenant's vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The operator's management API credentials. `Debug` never shows the password.
#[derive(Clone)]
pub struct Operator {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// `[amqp]`, checked.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Without a trailing `/`.
    pub management_url: String,
    pub public_address: String,
    pub operator: Operator,
    pub user_prefix: String,
    pub vhost_prefix: String,
    pub permissions: Permissions,
    pub max_connections: Option<u32>,
    pub max_queues: Option<u32>,
    pub check_interval: Duration,
    pub timeout: Duration,
}

fn duration(field: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(format!(
                "amqp.{field}: `{text}` is not a positive duration (e.g. \"30s\")"
            )),
        },
    }
}

/// A name prefix must itself be a valid piece of a slug-made name, so no prefix can smuggle a
/// `/` into a vhost or a `:` into a URL's user part.
fn prefix(field: &str, value: Option<&str>, default: &str) -> Result<String, String> {
    let value = value.unwrap_or(default);
    let ok = value.len() <= 20
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "amqp.{field}: `{value}` must be at most 20 lowercase letters, digits, `-` or `_`"
        ))
    }
}

impl AmqpConfig {
    /// Checks `[amqp]` and reads the operator's credentials through `env`.
    ///
    /// # Errors
    /// Every problem, one message each (`amqp.FIELD: ...`).
    pub fn compile(
        raw: &RawAmqp,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AmqpConfig, Vec<String>> {
        let mut errors = Vec::new();
        let url = raw.management_url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            errors.push(format!(
                "amqp.management_url: `{}` must be an http:// or https:// URL",
                raw.management_url
            ));
        }
        if url.starts_with("https://") {
            errors.push("amqp.management_url: https is not built in; reach the management API on loopback or through a TLS tunnel".to_owned());
        }
        let address_ok = raw
            .public_address
            .rsplit_once(':')
            .is_some_and(|(host, port)| {
                !host.is_empty()
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
                    && host.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
                    })
            });
        if !address_ok {
            errors.push(format!(
                "amqp.public_address: `{}` must be host:port (e.g. mq.example.com:5672)",
                raw.public_address
            ));
        }
        let user = env(USER_ENV).filter(|u| !u.is_empty());
        let password = env(PASSWORD_ENV).filter(|p| !p.is_empty());
        if user.is_none() {
            errors.push(format!(
                "amqp: environment variable `{USER_ENV}` (the management API user) is not set"
            ));
        }
        if password.is_none() {
            errors.push(format!(
                "amqp: environment variable `{PASSWORD_ENV}` (the management API password) is not set"
            ));
        }
        let user_prefix = prefix("user_prefix", raw.user_prefix.as_deref(), "op-");
        let vhost_prefix = prefix("vhost_prefix", raw.vhost_prefix.as_deref(), "");
        let check_interval = duration(
            "check_interval",
            raw.check_interval.as_deref(),
            Duration::from_secs(30),
        );
        let timeout = duration("timeout", raw.timeout.as_deref(), Duration::from_secs(5));
        let pattern = |p: &Option<String>| p.clone().unwrap_or_else(|| ".*".to_owned());
        let permissions = Permissions {
            configure: pattern(&raw.permissions.configure),
            write: pattern(&raw.permissions.write),
            read: pattern(&raw.permissions.read),
        };
        for (what, n) in [
            ("max_connections", raw.max_connections),
            ("max_queues", raw.max_queues),
        ] {
            if n == Some(0) {
                errors.push(format!(
                    "amqp.{what}: 0 would refuse every tenant; give a positive number or leave it out"
                ));
            }
        }
        let (user_prefix, vhost_prefix, check_interval, timeout) =
            match (user_prefix, vhost_prefix, check_interval, timeout) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
                (a, b, c, d) => {
                    errors.extend(a.err());
                    errors.extend(b.err());
                    errors.extend(c.err());
                    errors.extend(d.err());
                    return Err(errors);
                }
            };
        match (user, password) {
            (Some(user), Some(password)) if errors.is_empty() => Ok(AmqpConfig {
                management_url: url,
                public_address: raw.public_address.clone(),
                operator: Operator { user, password },
                user_prefix,
                vhost_prefix,
                permissions,
                max_connections: raw.max_connections,
                max_queues: raw.max_queues,
                check_interval,
                timeout,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawAmqp {
        RawAmqp {
            management_url: "http://127.0.0.1:15672/".into(),
            public_address: "mq.ticktock.bet:5672".into(),
            ..RawAmqp::default()
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            USER_ENV => Some("keygate".into()),
            PASSWORD_ENV => Some("s3cret-operator".into()),
            _ => None,
        }
    }

    #[test]
    fn defaults_follow_seed_001() {
        let c = AmqpConfig::compile(&raw(), &env).unwrap();
        assert_eq!(c.management_url, "http://127.0.0.1:15672");
        assert_eq!(c.user_prefix, "op-");
        assert_eq!(c.vhost_prefix, "");
        assert_eq!(c.permissions.read, ".*");
        assert!(!format!("{c:?}").contains("s3cret-operator"));
    }

    #[test]
    fn every_problem_is_named() {
        let bad = RawAmqp {
            management_url: "ftp://x".into(),
            public_address: "no-port".into(),
            user_prefix: Some("op/".into()),
            max_queues: Some(0),
            ..RawAmqp::default()
        };
        let errors = AmqpConfig::compile(&bad, &|_| None).unwrap_err();
        let text = errors.join("\n");
        for needle in [
            "amqp.management_url",
            "amqp.public_address",
            "KEYGATE_AMQP_USER",
            "KEYGATE_AMQP_PASSWORD",
            "amqp.user_prefix",
            "amqp.max_queues",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
