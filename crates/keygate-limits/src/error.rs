//! Why a limiter could not answer (as opposed to answering "no", which is a [`crate::Verdict`]).

use std::time::Duration;

/// A limiter call that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimiterError {
    /// The Redis URL does not parse; the message quotes it (password masked) and says why.
    #[error("bad Redis URL: {0}")]
    BadUrl(String),
    /// Redis could not be reached, or the call or script failed.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis did not answer within the configured time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// `url` with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("redis://user:p@ss@host/0?x=@"),
            "redis://user:***@host/0?x=@"
        );
        assert_eq!(redact("redis://user@host"), "redis://user@host");
        assert_eq!(redact("not a url"), "not a url");
    }
}
