//! The closed set of reasons a request is refused, each with a stable code.
//!
//! The gateway decides with these; a profile maps each code to the status and body its
//! provider publishes. Logs and metrics carry the code, never the key.

use std::fmt;
use std::num::NonZeroU32;

use crate::time::Timestamp;

/// Why a request was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No credential in any accepted place.
    MissingKey,
    /// A credential that fails the offline format check (never looked up).
    MalformedKey,
    /// Two credentials in one request that disagree.
    ConflictingCredentials,
    /// Well-formed but not a live key (never issued, revoked, or rotated away).
    UnknownKey,
    KeyDisabled,
    KeyExpired,
    ClientInactive,
    /// The route needs a scope the client lacks.
    ScopeMissing,
    /// The client has the route's scope but this key was narrowed without it (issue 22).
    KeyScopeMissing,
    /// The caller's address is outside the key's CIDR allowlist (issue 22).
    IpNotAllowed,
    /// The sport namespace is not in the client's allowlist.
    SportNotAllowed,
    /// The bookmaker is not in the client's allowlist.
    BookmakerNotAllowed,
    /// The route needs a bookmaker and the client's plan requires one to be selected.
    BookmakerNotConfigured,
    /// The route needs a plan feature (live, websocket, ...) the client's plan lacks.
    FeatureNotOnPlan,
    RateLimited,
    /// A connection limit (open WebSocket sessions per key or client, or per day) is reached.
    TooManyConnections,
    /// A WebSocket subscribe would hold more channels than the plan's cap (per session, or
    /// per client across its sessions): the channels past the cap are refused.
    ChannelLimit,
    /// A WebSocket session sent no login message within the profile's deadline.
    LoginTimeout,
    /// The shared limiter is unreachable and the policy is to refuse rather than guess.
    LimiterUnavailable,
    /// The gateway is in emergency mode.
    Emergency,
    /// An operator suspended what the request asks for (`keygate suspend`: a scope, a sport,
    /// a bookmaker or a route, maybe for one client).
    Suspended,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// A WebSocket upgrade in a protocol version the gateway does not speak (RFC 6455 §4.2.2).
    UpgradeRequired,
    /// A gated query parameter (a bookmaker, a sport) appears more than once, under any
    /// spelling of its name: upstreams disagree on which copy counts.
    DuplicateParameter,
    /// The request itself is malformed (bad body on a verify endpoint, etc).
    BadRequest,
    /// The request body is larger than the gateway forwards.
    PayloadTooLarge,
    /// A well-formed body whose content is refused (unknown field, wrong type, too long).
    InvalidBody,
    /// The change conflicts with existing state (a name already taken).
    Conflict,
    /// A self-service write cannot reach the store right now (the data plane keeps serving).
    StoreUnavailable,
    /// The caller's own request body failed while it was forwarded (the caller closed or reset
    /// the connection mid-body, or sent malformed chunking): the caller's failure, never the
    /// upstream's, so no circuit breaker counts it.
    RequestBodyFailed,
}

impl Reason {
    /// Every reason, for profiles that must configure each one.
    pub const ALL: [Reason; 34] = [
        Reason::MissingKey,
        Reason::MalformedKey,
        Reason::ConflictingCredentials,
        Reason::UnknownKey,
        Reason::KeyDisabled,
        Reason::KeyExpired,
        Reason::ClientInactive,
        Reason::ScopeMissing,
        Reason::KeyScopeMissing,
        Reason::IpNotAllowed,
        Reason::SportNotAllowed,
        Reason::BookmakerNotAllowed,
        Reason::BookmakerNotConfigured,
        Reason::FeatureNotOnPlan,
        Reason::RateLimited,
        Reason::TooManyConnections,
        Reason::ChannelLimit,
        Reason::LoginTimeout,
        Reason::LimiterUnavailable,
        Reason::Emergency,
        Reason::Suspended,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::NotAcceptable,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
        Reason::UpgradeRequired,
        Reason::DuplicateParameter,
        Reason::BadRequest,
        Reason::PayloadTooLarge,
        Reason::InvalidBody,
        Reason::Conflict,
        Reason::StoreUnavailable,
        Reason::RequestBodyFailed,
    ];

    /// Position in [`Reason::ALL`], for tables indexed by reason.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable machine-readable code.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::MalformedKey => "malformed_key",
            Reason::ConflictingCredentials => "conflicting_credentials",
            Reason::UnknownKey => "unknown_key",
            Reason::KeyDisabled => "key_disabled",
            Reason::KeyExpired => "key_expired",
            Reason::ClientInactive => "client_inactive",
            Reason::ScopeMissing => "scope_missing",
            Reason::KeyScopeMissing => "key_scope_missing",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::SportNotAllowed => "sport_not_allowed",
            Reason::BookmakerNotAllowed => "bookmaker_not_allowed",
            Reason::BookmakerNotConfigured => "bookmaker_not_configured",
            Reason::FeatureNotOnPlan => "feature_not_on_plan",
            Reason::RateLimited => "rate_limited",
            Reason::TooManyConnections => "too_many_connections",
            Reason::ChannelLimit => "channel_limit",
            Reason::LoginTimeout => "login_timeout",
            Reason::LimiterUnavailable => "limiter_unavailable",
            Reason::Emergency => "emergency",
            Reason::Suspended => "suspended",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::NotAcceptable => "not_acceptable",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpgradeRequired => "upgrade_required",
            Reason::DuplicateParameter => "duplicate_parameter",
            Reason::BadRequest => "bad_request",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::InvalidBody => "invalid_body",
            Reason::Conflict => "conflict",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::RequestBodyFailed => "request_body_failed",
        }
    }

    /// Parses a code (profile configuration keys).
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The status of the default profile.
    pub const fn default_status(self) -> u16 {
        match self {
            Reason::MissingKey
            | Reason::MalformedKey
            | Reason::UnknownKey
            | Reason::KeyDisabled
            | Reason::KeyExpired
            | Reason::ClientInactive => 401,
            Reason::ConflictingCredentials
            | Reason::BadRequest
            | Reason::DuplicateParameter
            | Reason::RequestBodyFailed => 400,
            Reason::ScopeMissing
            | Reason::KeyScopeMissing
            | Reason::IpNotAllowed
            | Reason::SportNotAllowed
            | Reason::BookmakerNotAllowed
            | Reason::BookmakerNotConfigured
            | Reason::FeatureNotOnPlan => 403,
            Reason::RateLimited | Reason::TooManyConnections | Reason::ChannelLimit => 429,
            Reason::LoginTimeout => 408,
            Reason::Emergency | Reason::LimiterUnavailable => 503,
            // Not 403: a suspension is a temporary hold on a slice of the service (an
            // integrity hold during a match, a bookmaker's outage), not a verdict on the
            // caller's rights. 503 tells clients and their retry logic "not now, later", as
            // emergency mode does; a 403 would send integrators to support about their key.
            Reason::Suspended => 503,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::NotAcceptable => 406,
            Reason::UpstreamUnavailable => 502,
            Reason::UpstreamTimeout => 504,
            Reason::UpgradeRequired => 426,
            Reason::PayloadTooLarge => 413,
            Reason::InvalidBody => 422,
            Reason::Conflict => 409,
            Reason::StoreUnavailable => 503,
        }
    }

    /// One sentence for the default profile's `detail`. `{subject}` is the scope, sport,
    /// bookmaker or feature concerned.
    pub const fn default_detail(self) -> &'static str {
        match self {
            Reason::MissingKey => {
                "No API key was sent; send it in the X-API-Key header or as a Bearer token."
            }
            Reason::MalformedKey => "The API key is not in the expected format.",
            Reason::ConflictingCredentials => {
                "The request carries more than one API key and they differ."
            }
            Reason::UnknownKey => "The API key is not valid.",
            Reason::KeyDisabled => "The API key is disabled.",
            Reason::KeyExpired => "The API key has expired.",
            Reason::ClientInactive => "The account this API key belongs to is disabled.",
            Reason::ScopeMissing => {
                "The API key lacks the scope '{subject}' this endpoint requires."
            }
            Reason::KeyScopeMissing => {
                "This API key is restricted and does not have the scope '{subject}' this endpoint requires."
            }
            Reason::IpNotAllowed => "This API key may not be used from this address.",
            Reason::SportNotAllowed => {
                "The sport '{subject}' is not in this API key's sport allowlist."
            }
            Reason::BookmakerNotAllowed => {
                "The bookmaker '{subject}' is not in this API key's bookmaker allowlist."
            }
            Reason::BookmakerNotConfigured => "No bookmaker is selected for this account.",
            Reason::FeatureNotOnPlan => "The plan of this API key does not include '{subject}'.",
            Reason::RateLimited => "Rate limit exceeded; retry after {retry_after} seconds.",
            Reason::TooManyConnections => {
                "Connection limit reached; retry after {retry_after} seconds."
            }
            Reason::ChannelLimit => "Channel limit reached ({subject} allowed).",
            Reason::LoginTimeout => "No login message arrived within the deadline.",
            Reason::LimiterUnavailable => "Rate limits cannot be checked right now; retry shortly.",
            Reason::Emergency => "{subject}",
            Reason::Suspended => "{subject}",
            Reason::NotFound => "No such endpoint.",
            Reason::MethodNotAllowed => "This endpoint does not accept this method.",
            Reason::NotAcceptable => "The Accept header admits neither JSON nor XML.",
            Reason::UpstreamUnavailable => "The upstream service is unavailable.",
            Reason::UpstreamTimeout => "The upstream service did not answer in time.",
            Reason::UpgradeRequired => "{subject}",
            Reason::DuplicateParameter => {
                "The query parameter '{subject}' appears more than once; send it once."
            }
            Reason::BadRequest => "The request is malformed: {subject}",
            Reason::PayloadTooLarge => "The request body is larger than {subject} bytes.",
            Reason::InvalidBody => "The request body is invalid: {subject}",
            Reason::Conflict => "{subject}",
            Reason::StoreUnavailable => "This change cannot be made right now; retry shortly.",
            Reason::RequestBodyFailed => "The request body ended before it was complete.",
        }
    }

    /// True for reasons that say "who are you" (401-class), counted as failed authentications.
    pub const fn is_authentication_failure(self) -> bool {
        matches!(
            self,
            Reason::MissingKey
                | Reason::MalformedKey
                | Reason::ConflictingCredentials
                | Reason::UnknownKey
                | Reason::KeyDisabled
                | Reason::KeyExpired
                | Reason::ClientInactive
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: the reason and, where it has one, the scope, sport, bookmaker or feature concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub subject: Option<Box<str>>,
    /// When what is refused is expected to work again, where an operator said so (a
    /// suspension's `until`), in Unix seconds rounded up: the answer's `Retry-After`. Seconds
    /// in 32 bits fit in the padding beside `reason`, so a refusal stays as small as before.
    until: Option<NonZeroU32>,
}

impl Denial {
    pub fn new(reason: Reason) -> Self {
        Denial {
            reason,
            subject: None,
            until: None,
        }
    }

    pub fn about(reason: Reason, subject: &str) -> Self {
        Denial {
            reason,
            subject: Some(subject.into()),
            until: None,
        }
    }

    /// The same refusal, expected to lift at `until` (an instant past 2106 is not quoted).
    #[must_use]
    pub fn lifting_at(self, until: Option<Timestamp>) -> Self {
        let until = until.and_then(|t| {
            let seconds = crate::limit::div_ceil_i64(t.as_millis(), 1000);
            u32::try_from(seconds).ok().and_then(NonZeroU32::new)
        });
        Denial { until, ..self }
    }

    /// When the refused thing is expected to work again, to the second (rounded up).
    pub fn lifts_at(&self) -> Option<Timestamp> {
        self.until
            .map(|s| Timestamp::from_millis(i64::from(s.get()) * 1000))
    }
}

impl From<Reason> for Denial {
    fn from(reason: Reason) -> Self {
        Denial::new(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lift_instant_rounds_up_to_the_second_and_costs_no_room() {
        let d = Denial::new(Reason::Suspended);
        assert_eq!(d.lifts_at(), None);
        let at = |ms| {
            d.clone()
                .lifting_at(Some(Timestamp::from_millis(ms)))
                .lifts_at()
        };
        assert_eq!(at(5_000), Some(Timestamp::from_millis(5_000)));
        assert_eq!(at(5_001), Some(Timestamp::from_millis(6_000)));
        assert_eq!(at(0), None, "the epoch itself is no instant to quote");
        assert_eq!(at(-5_000), None);
        assert_eq!(at(i64::MAX), None, "past 2106");
        // Beside the reason, in its padding: a refusal carries it at no cost in size.
        assert_eq!(std::mem::size_of::<Denial>(), 24);
    }

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }
}
