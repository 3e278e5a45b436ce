//! Helpers shared by the limiter test binaries: the Redis URL, the CI rule, unique subjects.

use std::sync::Arc;

/// `KEYGATE_TEST_REDIS_URL`, or the local default.
pub(crate) fn redis_url() -> String {
    std::env::var("KEYGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Under CI an unreachable service fails its tests instead of skipping them.
pub(crate) fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A subject unique to this run, so parallel tests never share a Redis key.
pub(crate) fn subject(name: &str) -> Arc<str> {
    let suffix = getrandom::u64().expect("OS randomness");
    format!("t:{name}:{suffix:016x}").into()
}
