//! Instants as UTC milliseconds since the epoch, and the clock that produces them.
//!
//! Milliseconds in an `i64` are what both stores hold natively, compare in one instruction on the
//! hot path, and convert losslessly to RFC 3339 for people.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// An RFC 3339 instant that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an RFC 3339 instant (for example 2026-12-31T23:59:59Z)")]
pub struct TimestampError {
    pub input: String,
}

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// Parses RFC 3339 (`2026-12-31T23:59:59Z`, offsets allowed).
    ///
    /// # Errors
    /// [`TimestampError`] quoting the input.
    pub fn parse_rfc3339(input: &str) -> Result<Self, TimestampError> {
        DateTime::parse_from_rfc3339(input.trim())
            .map(|dt| Timestamp(dt.timestamp_millis()))
            .map_err(|_| TimestampError {
                input: input.to_owned(),
            })
    }

    /// RFC 3339 in UTC, with milliseconds only when there are some.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(dt) if self.0 % 1000 == 0 => dt.to_rfc3339_opts(SecondsFormat::Secs, true),
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => self.0.to_string(),
        }
    }

    /// The UTC calendar day, `YYYY-MM-DD` (usage is counted per day).
    pub fn utc_day(self) -> String {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(dt) => dt.format("%Y-%m-%d").to_string(),
            None => "0000-00-00".to_owned(),
        }
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    pub fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::<Utc>::from_timestamp_millis(self.0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// The source of "now". Everything that decides by time takes a clock so tests can fix it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days() {
        let t = Timestamp::parse_rfc3339("2026-12-31T23:59:59.999Z").unwrap();
        assert_eq!(t.utc_day(), "2026-12-31");
        assert_eq!(t.plus(Duration::from_millis(1)).utc_day(), "2027-01-01");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-12-31T23:59:59Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-31T23:59:59Z");
        let t = Timestamp::parse_rfc3339("2026-12-31T23:59:59.250+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-31T22:59:59.250Z");
        assert!(Timestamp::parse_rfc3339("tomorrow").is_err());
        assert!(Timestamp::parse_rfc3339("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(i64::MAX - 5);
        assert_eq!(
            t.plus(Duration::from_secs(1)),
            Timestamp::from_millis(i64::MAX)
        );
        assert_eq!(Timestamp::from_millis(-1).as_secs(), -1);
    }
}

/// A clock that only moves when told to; for tests and benchmarks.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(at: Timestamp) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(at.as_millis()))
    }

    pub fn set(&self, at: Timestamp) {
        self.0
            .store(at.as_millis(), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
