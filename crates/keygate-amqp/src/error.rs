//! What can go wrong with a feed credential, each variant one sentence an operator can act on,
//! with a stable code shared by the CLI's JSON errors and the admin API.

use keygate_store::StoreError;

/// A failed feed operation. "The broker is down" ([`AmqpError::BrokerUnreachable`],
/// [`AmqpError::Broker`]) is kept apart from "the answer is no" (a taken slug, a feed that does
/// not exist), so the admin API answers the first 503 and the second 4xx.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("the RabbitMQ management API at {url} is unreachable ({reason}); nothing was changed on the broker or in the store")]
    BrokerUnreachable { url: String, reason: String },
    #[error("the RabbitMQ management API refused `{step}` with HTTP {status}: {message}; nothing was left half-made")]
    Broker {
        step: String,
        status: u16,
        message: String,
    },
    #[error("the management API rejected the operator credentials (HTTP {0}); check KEYGATE_AMQP_USER / KEYGATE_AMQP_PASSWORD and the user's `administrator` tag")]
    OperatorRefused(u16),
    #[error("messaging feeds are not configured: add an [amqp] table to the configuration")]
    NotConfigured,
    #[error("client `{0}` has no messaging feed; `keygate amqp provision` makes one")]
    NotProvisioned(String),
    #[error(
        "client `{0}` already has a messaging feed; `keygate amqp rotate` issues a new password"
    )]
    AlreadyProvisioned(String),
    #[error("client `{0}` is disabled; enable it before provisioning or rotating its feed")]
    ClientInactive(String),
    #[error(
        "`{0}` is not a feed slug: 1 to 40 lowercase ASCII letters, digits and single inner `-`"
    )]
    InvalidSlug(String),
    #[error("no feed slug can be made from the client name `{0}`; give one explicitly (--slug)")]
    NoSlug(String),
    #[error("the feed slug `{slug}` is taken by client `{holder}`; give another (--slug)")]
    SlugTaken { slug: String, holder: String },
    #[error("the broker already has a {what} `{name}` that keygate did not make; keygate will not take it over (remove it, or give another --slug)")]
    NameTakenOnBroker { what: &'static str, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AmqpError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AmqpError::BrokerUnreachable { .. } => "broker_unavailable",
            AmqpError::Broker { .. } => "broker_error",
            AmqpError::OperatorRefused(_) => "broker_operator_refused",
            AmqpError::NotConfigured => "amqp_not_configured",
            AmqpError::NotProvisioned(_) => "feed_not_provisioned",
            AmqpError::AlreadyProvisioned(_) => "feed_already_provisioned",
            AmqpError::ClientInactive(_) => "client_inactive",
            AmqpError::InvalidSlug(_) => "invalid_slug",
            AmqpError::NoSlug(_) => "slug_required",
            AmqpError::SlugTaken { .. } => "slug_taken",
            AmqpError::NameTakenOnBroker { .. } => "broker_name_taken",
            AmqpError::Store(e) => e.code(),
        }
    }

    /// The HTTP status the admin API answers with.
    pub fn status(&self) -> u16 {
        match self {
            AmqpError::BrokerUnreachable { .. }
            | AmqpError::Broker { .. }
            | AmqpError::OperatorRefused(_) => 503,
            // A node without `[amqp]` has no feed endpoints to offer: not a failure of anything.
            AmqpError::NotConfigured | AmqpError::NotProvisioned(_) => 404,
            AmqpError::AlreadyProvisioned(_)
            | AmqpError::SlugTaken { .. }
            | AmqpError::NameTakenOnBroker { .. }
            | AmqpError::ClientInactive(_) => 409,
            AmqpError::InvalidSlug(_) | AmqpError::NoSlug(_) => 422,
            AmqpError::Store(StoreError::ClientNotFound(_)) => 404,
            AmqpError::Store(StoreError::Invalid(_)) => 422,
            AmqpError::Store(StoreError::Conflict(_)) => 409,
            AmqpError::Store(_) => 503,
        }
    }
}
