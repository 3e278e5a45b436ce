//! When each key was last used, recorded coarsely so the hot path pays one atomic load.
//!
//! Every key in the replica carries the time it was last seen authenticating. A use less than
//! [`GRANULARITY`] after the recorded one changes nothing; a later one moves the time (one
//! compare-and-swap, so each key enters the pending set at most once per minute per node) and
//! queues it for the usage flush, which writes it to the store and puts it back if the store is
//! down. What the store shows is therefore at most a minute plus the flush interval old.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use keygate_core::{KeyId, Timestamp};
use keygate_store::{Store, StoreError};
use smol_str::SmolStr;

use crate::state::locks::lock;
use crate::state::replica::KeyEntry;

/// How far apart two recorded uses of one key are at least.
pub(crate) const GRANULARITY: std::time::Duration = std::time::Duration::from_secs(60);

/// Uses not yet written to the store: key subject (`k:key_…`, inline, so queuing allocates
/// only the map slot) to milliseconds.
#[derive(Debug, Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<SmolStr, i64>>,
}

impl LastUsed {
    /// Notes that `key`, whose last use the replica keeps in `last_used`, authenticated at `now`.
    pub fn touch(&self, key: &KeyEntry, last_used: &AtomicI64, now: Timestamp) {
        let now = now.as_millis();
        let seen = last_used.load(Ordering::Relaxed);
        if now.saturating_sub(seen) < GRANULARITY.as_millis() as i64 {
            return;
        }
        // Of concurrent uses only one wins the swap; the others are within the same minute.
        if last_used
            .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.queue(key.limit_subject.clone(), now);
        }
    }

    fn queue(&self, subject: SmolStr, at: i64) {
        let mut pending = lock(&self.pending);
        let slot = pending.entry(subject).or_insert(at);
        *slot = (*slot).max(at);
    }

    /// How many keys have a use not yet written.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Writes the pending uses; on failure keeps them for the next flush.
    ///
    /// # Errors
    /// The store's error.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let taken = std::mem::take(&mut *lock(&self.pending));
        if taken.is_empty() {
            return Ok(0);
        }
        let uses: Vec<(KeyId, Timestamp)> = taken
            .iter()
            .filter_map(|(subject, &at)| {
                let id = subject.strip_prefix(crate::state::replica::KEY_SUBJECT_PREFIX)?;
                Some((KeyId::parse(id).ok()?, Timestamp::from_millis(at)))
            })
            .collect();
        match store.record_key_use(&uses).await {
            Ok(()) => Ok(uses.len()),
            Err(e) => {
                for (subject, at) in taken {
                    self.queue(subject, at);
                }
                Err(e)
            }
        }
    }
}
