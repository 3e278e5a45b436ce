//! Which limits apply to a request, and the headers that report them.
//!
//! A client's limits are its plan's, each overridden by the client's per-contract value, folded
//! into the replica's client entry when the client changes; a route may add its own (seed 002:
//! 5/minute on key regeneration). Per request the gateway only lists precompiled checks.

use std::num::NonZeroU64;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use keygate_core::limit::{Limit, LimitState, Window};
use keygate_core::{LimitOverrides, Timestamp};
use keygate_limits::{Check, LimitKey};
use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::policy::repeat::{repeated, Repeat};

/// Whose counter a limit uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitBy {
    #[default]
    Client,
    Key,
    /// The caller's address (as the guard sees it, through trusted proxies): for public
    /// routes such as self-service registration, where there is no key yet.
    Source,
}

/// Limits as configured on a plan or a route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitSet {
    pub rps: Option<NonZeroU64>,
    pub per_minute: Option<NonZeroU64>,
    pub per_hour: Option<NonZeroU64>,
    pub per_day: Option<NonZeroU64>,
    pub per_month: Option<NonZeroU64>,
    /// Burst of the rate limits (default: the limit itself).
    pub burst: Option<u32>,
    pub by: LimitBy,
}

impl LimitSet {
    pub fn is_empty(&self) -> bool {
        self.rps.is_none()
            && self.per_minute.is_none()
            && self.per_hour.is_none()
            && self.per_day.is_none()
            && self.per_month.is_none()
    }

    /// The plan's set with a client's per-contract overrides applied.
    pub fn overridden(&self, o: &LimitOverrides) -> LimitSet {
        LimitSet {
            rps: o.rps.or(self.rps),
            per_minute: o.per_minute.or(self.per_minute),
            per_hour: o.per_hour.or(self.per_hour),
            per_day: o.per_day.or(self.per_day),
            per_month: o.per_month.or(self.per_month),
            burst: self.burst,
            by: self.by,
        }
    }

    /// The limits with their slot numbers (slot = `base` + position), in a fixed order.
    pub fn compile(&self, base: u32) -> Vec<(u32, Limit)> {
        let burst = |l: Limit| match self.burst {
            Some(b) => l.with_burst(b),
            None => l,
        };
        [
            self.rps.map(|n| burst(Limit::per_second(n))),
            self.per_minute.map(|n| burst(Limit::per_minute(n))),
            self.per_hour.map(|n| Limit::quota(Window::Hour, n)),
            self.per_day.map(|n| Limit::quota(Window::Day, n)),
            self.per_month.map(|n| Limit::quota(Window::Month, n)),
        ]
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (base + i as u32, l)))
        .collect()
    }
}

/// Slots of routes' limits start here (`route_slots`); below are the plan's and WebSocket's.
pub(crate) const ROUTE_SLOTS: u32 = 16;

/// The first of a route's eight counter slots: from a hash of what names the route (its name,
/// pattern and methods), not its place in the table, so a reload that adds or moves routes
/// and every node of a cluster, whatever its file's order, count a route in the same counters.
/// FNV-1a: stable across builds and processes, which the standard hasher does not promise.
pub(crate) fn route_slots(route: &crate::policy::routes::Route) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0]) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    };
    eat(route.name.as_bytes());
    eat(route.pattern.as_bytes());
    for m in route.methods.iter().flatten() {
        eat(m.as_str().as_bytes());
    }
    // Eight slots per route, all above ROUTE_SLOTS and within u32.
    ROUTE_SLOTS + (h % ((u32::MAX - ROUTE_SLOTS) / 8)) * 8
}

/// A client's compiled limits, stored in its replica entry: inline (at most five), so listing a
/// request's checks reads the entry's own memory, not a buffer elsewhere.
#[derive(Clone, Debug, Default)]
pub struct ClientLimits {
    pub limits: SmallVec<[(u32, Limit); 5]>,
    pub by: LimitBy,
    /// Requests per minute for whoami's `rate_limit_rpm` (per-minute limit, else rps × 60).
    pub rpm: Option<u64>,
}

impl ClientLimits {
    pub fn build(plan: &LimitSet, overrides: &LimitOverrides) -> ClientLimits {
        let set = plan.overridden(overrides);
        ClientLimits {
            limits: set.compile(0).into_iter().collect(),
            by: set.by,
            rpm: set
                .per_minute
                .map(NonZeroU64::get)
                .or_else(|| set.rps.map(|n| n.get().saturating_mul(60))),
        }
    }
}

/// Appends the checks for one request.
pub(crate) fn checks(
    out: &mut impl Extend<Check>,
    limits: &[(u32, Limit)],
    by: LimitBy,
    client_subject: &SmolStr,
    key_subject: &SmolStr,
) {
    let subject = match by {
        LimitBy::Client | LimitBy::Source => client_subject,
        LimitBy::Key => key_subject,
    };
    out.extend(
        limits
            .iter()
            .map(|&(slot, limit)| Check::new(LimitKey::new(subject.clone(), slot), limit)),
    );
}

/// How a profile reports limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub x_ratelimit: bool,
    /// `X-RateLimit-Reset` as epoch seconds (true) or seconds from now (false).
    pub reset_epoch: bool,
    /// IETF `RateLimit-Policy` and `RateLimit` structured fields.
    pub ietf: bool,
    /// `Retry-After` on 429.
    pub retry_after: bool,
    /// Report on every answer (`when = "always"`), not only on those the limiter counted
    /// (forwarded responses and its 429s). A refusal that consumes nothing then reports the
    /// caller's budget as it stands, read without consuming (`keygate_limits::Limits::peek`):
    /// an admitted caller's limits for the route; for a caller without a key, the route's
    /// `by = "source"` limits, or else the brute-force guard's budget of failed
    /// authentications for its address (`Guard::budget`).
    pub always: bool,
}

impl Default for HeaderStyle {
    fn default() -> Self {
        HeaderStyle {
            x_ratelimit: true,
            reset_epoch: true,
            ietf: true,
            retry_after: true,
            always: false,
        }
    }
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// A structured field `"default";A=a;B=b` (IETF `RateLimit`/`RateLimit-Policy`), built in a
/// stack buffer with `itoa`: these go on every forwarded response, and `format!` cost about as
/// much as the rest of the header writing together (callgrind, BENCHMARKS.md).
fn ietf_field(a_key: u8, a: u64, b_key: u8, b: u64) -> HeaderValue {
    // 10 + 2 + 20 digits + 3 + 20 digits at most.
    let mut out = [0u8; 64];
    let mut len = 0;
    let (mut fa, mut fb) = (itoa::Buffer::new(), itoa::Buffer::new());
    for part in [
        b"\"default\";".as_slice(),
        &[a_key, b'='],
        fa.format(a).as_bytes(),
        &[b';', b_key, b'='],
        fb.format(b).as_bytes(),
    ] {
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    HeaderValue::from_bytes(&out[..len]).expect("ASCII digits and punctuation")
}

thread_local! {
    static LIMIT: Repeat<u64> = const { Repeat::new() };
    static RESET: Repeat<u64> = const { Repeat::new() };
    static POLICY: Repeat<(u64, u64)> = const { Repeat::new() };
}

/// The budget headers' names: constants, checked once at compile time (`from_static` called
/// on the request path validates the name on every call).
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Writes the headers for a budget of `state.limit` per `window_seconds` (the IETF policy's
/// `w`) in `state`; `Retry-After` only when the state is a denial and the style wants it.
pub(crate) fn write_state(
    headers: &mut HeaderMap,
    style: HeaderStyle,
    window_seconds: u64,
    state: &LimitState,
    now: Timestamp,
) {
    let reset_in = secs_ceil(Duration::from_millis(
        u64::try_from(state.reset.as_millis() - now.as_millis()).unwrap_or(0),
    ));
    // One growth of the map for all of them, not one per insert.
    headers.reserve(6);
    if style.x_ratelimit {
        headers.insert(X_RATELIMIT_LIMIT, repeated(&LIMIT, state.limit, number));
        headers.insert(X_RATELIMIT_REMAINING, number(state.remaining));
        let reset = if style.reset_epoch {
            u64::try_from(state.reset.as_secs()).unwrap_or(0)
        } else {
            reset_in
        };
        headers.insert(X_RATELIMIT_RESET, repeated(&RESET, reset, number));
    }
    if style.ietf {
        headers.insert(
            RATELIMIT_POLICY,
            repeated(&POLICY, (state.limit, window_seconds), |(q, w)| {
                ietf_field(b'q', q, b'w', w)
            }),
        );
        headers.insert(RATELIMIT, ietf_field(b'r', state.remaining, b't', reset_in));
    }
    if style.retry_after && !state.allowed {
        headers.insert(RETRY_AFTER, number(secs_ceil(state.retry_after).max(1)));
    }
}
