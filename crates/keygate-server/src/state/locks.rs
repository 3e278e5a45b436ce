//! The one way this crate takes a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering a poisoned lock: every mutex here guards a plain collection of
/// counts or handles that stays valid whatever a panicking holder left half-done, and one
/// request's panic must not disable the structure for every other request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
