//! Human durations for operators: `90s`, `15m`, `1h`, `30d`, `1h30m`.

use std::time::Duration;

/// A duration an operator typed that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a duration; use forms like 90s, 15m, 1h, 30d or 1h30m")]
pub struct DurationError {
    pub input: String,
}

/// Parses a human duration. Bare numbers are refused: `30` could mean seconds or days.
///
/// # Errors
/// [`DurationError`] quoting the input.
///
/// ```
/// use keygate_core::duration::parse_duration;
/// assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
/// assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86400);
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    humantime::parse_duration(trimmed).map_err(|_| err())
}

/// Formats a duration the way operators type them.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 2d ").unwrap(),
            Duration::from_secs(172_800)
        );
    }

    #[test]
    fn refuses_nonsense_with_the_input_quoted() {
        for bad in ["", "30", "abc", "-1h", "1x", "1h-"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
