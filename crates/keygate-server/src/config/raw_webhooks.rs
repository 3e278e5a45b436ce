//! `[[webhooks]]` and `[outbox]` as written; compiled by `compile_webhooks`.

use serde::Deserialize;

use super::errors::DurationSetting;

/// One receiver of events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    /// Stable name deliveries are recorded under (default: the URL without its query).
    pub(crate) name: Option<String>,
    pub(crate) url: Option<String>,
    /// The signing secret itself; or, to keep it out of the file, `secret_env`.
    pub(crate) secret: Option<String>,
    /// The environment variable holding the signing secret.
    pub(crate) secret_env: Option<String>,
    /// Event names, `family.*` or `*`.
    pub(crate) events: Option<Vec<String>>,
    /// Budget of one attempt (default 10s).
    pub(crate) timeout: Option<DurationSetting>,
    /// Attempts before a delivery is dead (default 12).
    pub(crate) max_attempts: Option<i64>,
    /// Delay before the first retry, doubled for each further one (default 5s).
    pub(crate) backoff: Option<DurationSetting>,
    /// CA certificates (PEM) to trust for an `https://` URL instead of the system's.
    pub(crate) ca_file: Option<String>,
}

/// How nodes work the webhook outbox.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutbox {
    /// How often a node looks at the outbox (default 1s).
    pub(crate) poll: Option<DurationSetting>,
    /// How long before its expiry a key's `key.expiring` is sent (default 7d).
    pub(crate) key_expiring_ahead: Option<DurationSetting>,
    /// How long settled deliveries and their events are kept (default 30d).
    pub(crate) retention: Option<DurationSetting>,
}
