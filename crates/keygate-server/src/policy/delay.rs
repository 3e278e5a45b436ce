//! Delayed tiers (`[plans.NAME] delay`): a plan whose callers get the data later than it
//! happens, as sports-data providers sell "delayed" next to "live".
//!
//! The plan's WebSocket sessions receive each upstream message `delay` after it arrived, in
//! order (`crate::ws::delayed`); its REST requests go to a route's `delayed_upstream` when the
//! route has one, and to the route's `upstream` otherwise; either upstream is told the delay
//! in the identity header `X-Keygate-Delay` (seconds), so an upstream serving both tiers
//! can answer from its delayed data. A plan without `delay` costs the hot path one branch.

use std::time::Duration;

use http::HeaderValue;

/// The longest delay a plan may have: past an hour the data is history, and a session would
/// hold an hour of messages.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The bound of what one delayed session holds; a session that would hold more is closed
/// (`delay_overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayBuffer {
    /// Most payload bytes held (`[profile.ws] delay_buffer_bytes`).
    pub bytes: usize,
    /// Most messages held (`[profile.ws] delay_buffer_messages`), which also bounds the
    /// per-message overhead the byte count does not see.
    pub messages: usize,
}

/// Largest `delay_buffer_bytes`: 1 GiB for one session is already a mistake.
pub(crate) const MAX_BUFFER_BYTES: u64 = 1 << 30;
/// Largest `delay_buffer_messages`.
pub(crate) const MAX_BUFFER_MESSAGES: u64 = 10_000_000;

impl Default for DelayBuffer {
    /// 16 MiB and 100,000 messages: a minute of a 1,000 messages/s feed of messages up to
    /// about 250 bytes, the rate BENCHMARKS.md measures.
    fn default() -> Self {
        DelayBuffer {
            bytes: 16 << 20,
            messages: 100_000,
        }
    }
}

/// The delay's value in the identity header: whole seconds (`60`), or seconds with the
/// milliseconds when the delay has them (`1.5`).
pub(crate) fn header_value(delay: Duration) -> HeaderValue {
    let ms = delay.subsec_millis();
    let text = if ms == 0 {
        delay.as_secs().to_string()
    } else {
        let frac = format!("{ms:03}");
        format!("{}.{}", delay.as_secs(), frac.trim_end_matches('0'))
    };
    HeaderValue::from_str(&text).expect("digits and a dot are a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_says_seconds() {
        assert_eq!(header_value(Duration::from_secs(60)), "60");
        assert_eq!(header_value(Duration::from_millis(1500)), "1.5");
        assert_eq!(header_value(Duration::from_millis(250)), "0.25");
        assert_eq!(header_value(MAX_DELAY), "3600");
    }
}
