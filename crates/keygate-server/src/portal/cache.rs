//! What the portal read from the store for its pages, kept until anything is written.
//!
//! Every signed-in page needs its session (a join of three tables) and the Keys page the
//! client's keys (a [`Listing`], which also keeps its rendered rows). Read from the store each time, those two queries were most of a page's cost
//! (each a hand-off to the store's worker thread and back, BENCHMARKS.md, issue 20), on the cores
//! the gateway's requests need. An entry is used only while nothing has been written since it was
//! read:
//! - not through this process's store handle ([`Store::writes_committed`]): this node's own
//!   changes, a sign-out or a key made on this page among them, count at once;
//! - not by anyone else as far as this node's replica has seen (the change feed's version):
//!   another node's or the CLI's writes, a disabled user or client among them, count within the
//!   feed's delay, the same bound as a revoked key has at the gateway.
//!
//! Entries also age out after [`MAX_AGE`], so what the feed does not carry (a key's last use)
//! is never older than that. Only what the store found is kept: an unknown session token costs
//! a query each time (and is limited per source), so it cannot fill the map.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygate_core::ClientId;
use keygate_store::{PortalSession, Store};

use super::keys::Listing;
use crate::state::locks::lock;

/// The longest an entry is used, however quiet the store.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);

/// Entries per map; past it, the entries no longer usable go, and if none do, all of them.
const CAPACITY: usize = 10_000;

/// Where the store stood when an entry was read: the feed version this node's replica had
/// applied and this process's committed writes, both noted before the read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    feed: i64,
    local: u64,
}

impl Stamp {
    /// Where the store stands now, as far as this node knows.
    pub(crate) fn now(feed: i64, store: &Store) -> Stamp {
        Stamp {
            feed,
            local: store.writes_committed(),
        }
    }
}

struct Entry<T> {
    stamp: Stamp,
    read: Instant,
    value: T,
}

/// One map of entries read at some [`Stamp`].
struct Map<K, T>(Mutex<HashMap<K, Entry<T>>>);

impl<K: Hash + Eq, T: Clone> Map<K, T> {
    fn new() -> Self {
        Map(Mutex::new(HashMap::new()))
    }

    /// The value kept for `key`, if it was read at `now` and is younger than [`MAX_AGE`].
    fn get(&self, key: &K, now: Stamp) -> Option<T> {
        let map = lock(&self.0);
        let e = map.get(key)?;
        (e.stamp == now && e.read.elapsed() < MAX_AGE).then(|| e.value.clone())
    }

    /// Keeps `value`, read at `stamp` (noted before the read).
    fn put(&self, key: K, stamp: Stamp, value: T) {
        let mut map = lock(&self.0);
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            map.retain(|_, e| e.stamp == stamp && e.read.elapsed() < MAX_AGE);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            key,
            Entry {
                stamp,
                read: Instant::now(),
                value,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// The portal's sessions (by token digest) and key listings (by client).
pub(crate) struct PageCache {
    sessions: Map<[u8; 32], PortalSession>,
    keys: Map<ClientId, Arc<Listing>>,
}

impl PageCache {
    pub(crate) fn new() -> Self {
        PageCache {
            sessions: Map::new(),
            keys: Map::new(),
        }
    }

    pub(crate) fn session(&self, digest: &[u8; 32], now: Stamp) -> Option<PortalSession> {
        self.sessions.get(digest, now)
    }

    pub(crate) fn keep_session(&self, digest: [u8; 32], read_at: Stamp, session: PortalSession) {
        self.sessions.put(digest, read_at, session);
    }

    pub(crate) fn keys(&self, client: &ClientId, now: Stamp) -> Option<Arc<Listing>> {
        self.keys.get(client, now)
    }

    pub(crate) fn keep_keys(&self, client: ClientId, read_at: Stamp, keys: Arc<Listing>) {
        self.keys.put(client, read_at, keys);
    }

    /// Entries held (sessions, key listings), for tests.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.sessions.len(), self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(feed: i64, local: u64) -> Stamp {
        Stamp { feed, local }
    }

    #[test]
    fn an_entry_is_used_only_at_the_stamp_it_was_read_at() {
        let m: Map<u32, &str> = Map::new();
        m.put(1, stamp(7, 3), "a");
        assert_eq!(m.get(&1, stamp(7, 3)), Some("a"));
        // Another node wrote (the replica moved), or this process did.
        assert_eq!(m.get(&1, stamp(8, 3)), None);
        assert_eq!(m.get(&1, stamp(7, 4)), None);
        assert_eq!(m.get(&2, stamp(7, 3)), None);
    }

    #[test]
    fn a_full_map_drops_what_is_stale_first_and_never_grows_past_capacity() {
        let c = PageCache::new();
        let client = ClientId::parse("cli_0123456789abcdef").unwrap();
        c.keep_keys(
            client.clone(),
            stamp(1, 0),
            Arc::new(Listing::new(Vec::new())),
        );
        for i in 0..CAPACITY as u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            c.sessions.0.lock().unwrap().insert(
                d,
                Entry {
                    stamp: stamp(1, 0),
                    read: Instant::now(),
                    value: session(),
                },
            );
        }
        assert_eq!(c.len().0, CAPACITY);
        // Every kept session is of an older stamp: they all go, the new one stays.
        c.keep_session([9u8; 32], stamp(2, 0), session());
        assert_eq!(c.len().0, 1);
        assert!(c.session(&[9u8; 32], stamp(2, 0)).is_some());
        assert!(c.keys(&client, stamp(1, 0)).is_some());
    }

    fn session() -> PortalSession {
        PortalSession {
            user: keygate_store::PortalUser {
                id: keygate_core::model::PortalUserId::parse("pu_0123456789abcdef").unwrap(),
                client_id: ClientId::parse("cli_0123456789abcdef").unwrap(),
                email: "ann@acme.test".into(),
                disabled: false,
                created_at: keygate_core::Timestamp::from_millis(0),
            },
            expires_at: keygate_core::Timestamp::from_millis(86_400_000),
        }
    }
}
