//! `[portal]` and `[portal.smtp]` as written; compiled by `compile_portal`.

use serde::Deserialize;

use super::choice::Choice;
use super::compile_portal::CpuPriority;
use super::errors::DurationSetting;
use super::raw::RawTls;
use super::spanned::Spanned;

/// The customer portal: its listener, the provider's look and which features are on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPortal {
    /// `127.0.0.1:8082`; the portal is off when absent.
    pub(crate) listen: Option<String>,
    /// Where customers reach the portal (`https://portal.example.com`), for links in mails.
    pub(crate) base_url: Option<String>,
    /// The provider's name in titles and mails.
    pub(crate) name: Option<String>,
    /// A `data:image/png;base64,...` or `data:image/svg+xml;base64,...` URI, so the logo ships
    /// in the configuration and no third-party origin is loaded.
    pub(crate) logo: Option<String>,
    #[serde(default)]
    pub(crate) colors: RawColors,
    /// New customers may sign up (they start on the profile's default plan).
    #[serde(default)]
    pub(crate) sign_up: bool,
    /// Customers on a plan with `bookmaker_selection` pick their bookmakers.
    #[serde(default)]
    pub(crate) bookmaker_selection: bool,
    /// Bookmakers offered for selection (slugs).
    #[serde(default)]
    pub(crate) bookmakers: Vec<String>,
    /// Customers see their child accounts (portfolio bots) and regenerate their keys.
    #[serde(default)]
    pub(crate) child_bots: bool,
    /// With `[amqp]`: customers may provision their own messaging feed from the portal
    /// ("Request feed"). Off by default: feeds are provisioned by the operator on request.
    #[serde(default)]
    pub(crate) feed_requests: bool,
    /// How long a sign-in lasts (default `12h`).
    pub(crate) session_lifetime: Option<DurationSetting>,
    /// Longest grace a customer may give the old key when rotating (default: none, the old
    /// key stops at once).
    pub(crate) rotate_grace: Option<DurationSetting>,
    /// Sign-in requests per address, and per source address, in 15 minutes (defaults 5, 20).
    pub(crate) sign_in_per_address: Option<i64>,
    pub(crate) sign_in_per_source: Option<i64>,
    /// Requests per source address in a minute, any page (default 600).
    pub(crate) requests_per_source: Option<i64>,
    /// Most open connections on the portal's listener (default 1024).
    pub(crate) max_connections: Option<i64>,
    /// `low` (default), `idle` or `normal`: how the portal's thread yields to the gateway.
    pub(crate) priority: Option<Choice<CpuPriority>>,
    /// `[portal.tls]`: TLS on the portal's own listener, the fields of `[server.tls]`.
    pub(crate) tls: Option<Spanned<RawTls>>,
    pub(crate) smtp: Option<RawSmtp>,
}

/// The provider's colours, CSS hex (`#0a7f5a`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawColors {
    pub(crate) primary: Option<String>,
    pub(crate) background: Option<String>,
    pub(crate) text: Option<String>,
}

/// Where sign-in mail goes out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtp {
    /// `smtp://host:port` or `smtps://host:port` (TLS from the first byte).
    pub(crate) url: String,
    /// On `smtp://`: upgrade with STARTTLS, refusing to send without it (default: on, except
    /// for a loopback host).
    pub(crate) starttls: Option<bool>,
    /// Environment variables holding the SMTP user name and password.
    pub(crate) username_env: Option<String>,
    pub(crate) password_env: Option<String>,
    /// The sender, `Name <addr@domain>` or `addr@domain`.
    pub(crate) from: String,
}
