//! Fault injection for tests of the real binary, compiled into debug builds only: release
//! builds have an empty function here and read no environment.
//!
//! `KEYGATE_DEBUG_PANIC_ROUTE=NAME` makes a request admitted to route `NAME` panic inside its
//! handler, after authentication and limits, where a real bug would hold the caller's key in
//! scope. The no-secrets test uses it to prove that the panic path (the hook's log line, the
//! 500 answer, the metrics) shows no key.

/// Panics if this debug build was told to fail on `route`.
#[cfg(debug_assertions)]
pub(crate) fn panic_if_injected(route: &str) {
    static ROUTE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let injected = ROUTE.get_or_init(|| std::env::var("KEYGATE_DEBUG_PANIC_ROUTE").ok());
    if injected.as_deref() == Some(route) {
        panic!("injected fault: the handler of route {route} panicked");
    }
}

/// Release builds inject nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn panic_if_injected(_route: &str) {}
