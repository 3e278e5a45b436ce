//! The in-memory replica: every live key, by digest, pointing at its client's shared policy.
//!
//! Key entries live inline in the table, beside their digests: a lookup reads the table's own
//! cache lines and no separate allocation (with a million keys each such read is a cache and
//! TLB miss: the entry's own allocation was a third of an authentication). Readers take one
//! shard read lock (dashmap) to copy the entry out, then one atomic load for the client policy;
//! no store I/O, no allocation. A client change swaps one `ArcSwap` that all of its keys point
//! at, so narrowing scopes or disabling a client reaches every key at once. Writers are the
//! change-feed task and the initial load.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::HeaderValue;
use keygate_core::policy::{ClientPolicy, KeyPolicy, KeyRules};
use keygate_core::{ApiKey, Client, ClientId, KeyDigest, KeyState, LimitOverrides, Timestamp};
use keygate_store::{Delta, Snapshot};
use smol_str::{format_smolstr, SmolStr};

use crate::policy::ratelimit::{ClientLimits, LimitSet};
use crate::state::per_worker::PerWorker;

/// A client's policy plus the identity header values forwarded for it and its compiled limits,
/// built once per change.
#[derive(Debug)]
pub struct ClientEntry {
    pub policy: ClientPolicy,
    pub limits: ClientLimits,
    /// Subject of this client's limit counters (`c:cli_…`, inline).
    pub limit_subject: SmolStr,
    /// The plan's key-sharing rule; `None` (the usual case) costs the hot path one branch.
    pub sharing: Option<crate::policy::sharing::Sharing>,
    /// The plan's delay (`crate::policy::delay`); `None` (real time) costs the hot path one
    /// branch.
    pub delay: Option<std::time::Duration>,
    /// The identity header values, one copy per worker thread: a value cloned onto a request
    /// bumps its buffer's reference count, and one shared copy had both cores writing that
    /// count for every request of the client (`crate::state::per_worker`).
    headers: PerWorker<IdentityValues>,
    /// The stored client it was built from, to build it again when a reload changes plans;
    /// `None` for the stand-in of a client not yet known.
    source: Option<Client>,
}

/// A client's identity header values (the key id's is built per answer).
#[derive(Debug)]
pub struct IdentityValues {
    pub id: HeaderValue,
    pub name: HeaderValue,
    pub scopes: HeaderValue,
    pub plan: HeaderValue,
    /// The sport allowlist, comma separated; empty when there is none (no sport-gated route
    /// then passes).
    pub sports: HeaderValue,
    /// The bookmakers the client may see, comma separated: [`ALL_BOOKMAKERS`] when every
    /// one (no allowlist, on a plan without `bookmaker_selection`), empty when none (a
    /// selecting plan's client that has picked none). Never absent, so an upstream cannot
    /// take a missing header for "all".
    pub bookmakers: HeaderValue,
    /// The plan's delay in seconds; `None` for a plan without one (no header is sent).
    pub delay: Option<HeaderValue>,
}

/// The bookmakers value meaning "every bookmaker": `*` is no bookmaker slug.
pub(crate) const ALL_BOOKMAKERS: &str = "*";

/// The bookmaker header's text for a client policy (see [`IdentityValues::bookmakers`]).
pub(crate) fn bookmakers_value(policy: &ClientPolicy) -> String {
    if policy.bookmakers.is_empty() && !policy.selects_bookmakers {
        ALL_BOOKMAKERS.to_owned()
    } else {
        policy.bookmakers.join(",")
    }
}

impl IdentityValues {
    fn empty() -> IdentityValues {
        IdentityValues {
            id: HeaderValue::from_static(""),
            name: HeaderValue::from_static(""),
            scopes: HeaderValue::from_static(""),
            plan: HeaderValue::from_static(""),
            sports: HeaderValue::from_static(""),
            bookmakers: HeaderValue::from_static(""),
            delay: None,
        }
    }
}

impl ClientEntry {
    /// The calling worker's copy of the identity header values.
    pub fn identity(&self) -> &IdentityValues {
        self.headers.local()
    }

    fn build(client: &Client, plans: &dyn PlanCatalog, workers: usize) -> ClientEntry {
        let mut policy = ClientPolicy::compile(client, &plans.features(&client.plan));
        policy.selects_bookmakers = plans.bookmaker_selection(&client.plan).is_some();
        let limits = ClientLimits::build(&plans.limits(&client.plan), &client.limits);
        let value = |s: &str| {
            // Names are validated printable text; bytes outside visible ASCII stay opaque.
            HeaderValue::from_bytes(s.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        let scopes = policy.scopes.join(" ");
        let sports = policy.sports.join(",");
        let bookmakers = bookmakers_value(&policy);
        let delay = plans.delay(&client.plan);
        // `value` copies its text: each worker's copy is a buffer of its own.
        let headers = PerWorker::new(workers, || IdentityValues {
            id: value(policy.id.as_str()),
            name: value(&policy.name),
            scopes: value(&scopes),
            plan: value(&policy.plan),
            sports: value(&sports),
            bookmakers: value(&bookmakers),
            delay: delay.map(crate::policy::delay::header_value),
        });
        ClientEntry {
            limits,
            sharing: plans.sharing(&client.plan),
            delay,
            limit_subject: format_smolstr!("c:{}", policy.id),
            headers,
            policy,
            source: Some(client.clone()),
        }
    }

    /// A stand-in for a client not (yet) known: inactive, so its keys do not authenticate.
    fn unknown(id: &ClientId) -> ClientEntry {
        ClientEntry {
            limits: ClientLimits::default(),
            sharing: None,
            delay: None,
            limit_subject: format_smolstr!("c:{id}"),
            policy: ClientPolicy {
                id: id.clone(),
                name: "".into(),
                plan: "".into(),
                scopes: Vec::new(),
                sports: Vec::new(),
                bookmakers: Vec::new(),
                features: Vec::new(),
                limits: LimitOverrides::default(),
                active: false,
                selects_bookmakers: false,
            },
            headers: PerWorker::new(0, IdentityValues::empty),
            source: None,
        }
    }
}

/// The shared, swappable policy of one client.
#[derive(Debug)]
pub struct ClientSlot(ArcSwap<ClientEntry>);

impl ClientSlot {
    pub fn load(&self) -> Arc<ClientEntry> {
        self.0.load_full()
    }
}

/// One live key, as the replica holds it inline and hands it to a request (a copy: the policy,
/// the inline subject, and a reference on the client's shared slot). A replica holds a million
/// of these, so the key id is the subject's tail, not a string of its own.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub policy: KeyPolicy,
    /// Subject of this key's limit counters: `k:` and the key id (22 bytes, inline).
    pub limit_subject: SmolStr,
    pub client: Arc<ClientSlot>,
    /// The key's own restrictions (issue 22), `None` for a key that is just its client: the
    /// decision then does one pointer test, and the entry grows by one pointer. Shared, so a
    /// copy onto a request is a reference count, not the lists.
    pub rules: Option<Arc<KeyRules>>,
}

/// A key's slot in the table: its entry and when it last authenticated here or as stored (ms;
/// `i64::MIN` when never), kept by [`crate::state::last_used`] to a minute's precision.
#[derive(Debug)]
struct Stored {
    entry: KeyEntry,
    last_used: AtomicI64,
}

/// What precedes the key id in a key's limit subject.
pub(crate) const KEY_SUBJECT_PREFIX: &str = "k:";

impl KeyEntry {
    /// The key's id (`key_…`).
    pub fn id(&self) -> &str {
        self.limit_subject
            .get(KEY_SUBJECT_PREFIX.len()..)
            .unwrap_or_default()
    }
}

/// Hashes a [`KeyDigest`] by its own bytes. A digest is SHA-256 output, uniform already, and
/// only issued keys are in the map, so hashing it again (SipHash: about a third of a lookup)
/// buys nothing; callers cannot choose where a lookup lands without a preimage.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(19) ^ u64::from_le_bytes(word);
        }
    }
}

/// All live keys and clients of the deployment.
#[derive(Debug, Default)]
pub struct Replica {
    keys: DashMap<KeyDigest, Stored, DigestHash>,
    clients: DashMap<ClientId, Arc<ClientSlot>>,
    version: AtomicI64,
    loaded: AtomicBool,
    /// Worker threads that read it (each client's header values are copied per worker).
    workers: usize,
}

/// How the replica resolves a client's plan into features and limits.
pub trait PlanCatalog: Send + Sync {
    fn features(&self, plan: &str) -> Vec<String>;
    fn limits(&self, plan: &str) -> LimitSet;
    /// How many bookmakers clients on the plan pick (`None`: the plan serves every one).
    fn bookmaker_selection(&self, _plan: &str) -> Option<u32> {
        None
    }
    /// The plan's key-sharing rule (`None`: not watched).
    fn sharing(&self, _plan: &str) -> Option<crate::policy::sharing::Sharing> {
        None
    }
    /// The plan's delay (`None`: real time).
    fn delay(&self, _plan: &str) -> Option<std::time::Duration> {
        None
    }
}

/// Plans with features and no limits (tests).
impl<F: Fn(&str) -> Vec<String> + Send + Sync> PlanCatalog for F {
    fn features(&self, plan: &str) -> Vec<String> {
        self(plan)
    }

    fn limits(&self, _plan: &str) -> LimitSet {
        LimitSet::default()
    }
}

impl Replica {
    /// A replica read by one worker thread (and others: tests, the admin API).
    pub fn new() -> Self {
        Replica::for_workers(1)
    }

    /// A replica read by `workers` worker threads.
    pub fn for_workers(workers: usize) -> Self {
        Replica {
            workers,
            ..Replica::default()
        }
    }

    /// Looks a key up by digest.
    pub fn get(&self, digest: &KeyDigest) -> Option<KeyEntry> {
        self.lookup(digest, |entry, _| entry.clone())
    }

    /// Looks a key up by digest and runs `f` on its entry and its last use (ms since the
    /// epoch, for [`crate::state::last_used`]) under the shard's read lock: keep `f` short.
    pub fn lookup<R>(
        &self,
        digest: &KeyDigest,
        f: impl FnOnce(&KeyEntry, &AtomicI64) -> R,
    ) -> Option<R> {
        self.keys
            .get(digest)
            .map(|stored| f(&stored.entry, &stored.last_used))
    }

    pub fn client(&self, id: &ClientId) -> Option<Arc<ClientEntry>> {
        self.clients.get(id).map(|slot| slot.load())
    }

    /// Version of the last change applied.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether the initial snapshot is in.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Loads the initial snapshot and marks the replica ready.
    pub fn load(&self, snapshot: &Snapshot, plans: &dyn PlanCatalog) {
        for c in &snapshot.clients {
            self.upsert_client(c, plans);
        }
        for k in &snapshot.keys {
            self.upsert_key(k);
        }
        self.version.store(snapshot.version, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }

    /// Applies a delta.
    pub fn apply(&self, delta: &Delta, plans: &dyn PlanCatalog) {
        for c in &delta.clients {
            self.upsert_client(c, plans);
        }
        for k in &delta.keys {
            if k.state == KeyState::Revoked {
                self.keys.remove(&k.digest);
            } else {
                self.upsert_key(k);
            }
        }
        self.version.fetch_max(delta.version, Ordering::AcqRel);
    }

    /// Builds every known client again under `plans` (a reload changed them); each swap is
    /// atomic, so a request sees a client's old policy or its new one, never a mix.
    pub fn recompile(&self, plans: &dyn PlanCatalog) {
        let clients: Vec<Client> = self
            .clients
            .iter()
            .filter_map(|slot| slot.value().0.load().source.clone())
            .collect();
        for client in &clients {
            self.upsert_client(client, plans);
        }
    }

    fn upsert_client(&self, client: &Client, plans: &dyn PlanCatalog) {
        let entry = Arc::new(ClientEntry::build(client, plans, self.workers));
        match self.clients.get(&client.id) {
            Some(slot) => slot.0.store(entry),
            None => {
                self.clients
                    .entry(client.id.clone())
                    .and_modify(|slot| slot.0.store(Arc::clone(&entry)))
                    .or_insert_with(|| Arc::new(ClientSlot(ArcSwap::new(entry))));
            }
        }
    }

    fn slot(&self, id: &ClientId) -> Arc<ClientSlot> {
        if let Some(slot) = self.clients.get(id) {
            return Arc::clone(slot.value());
        }
        Arc::clone(
            self.clients
                .entry(id.clone())
                .or_insert_with(|| {
                    Arc::new(ClientSlot(ArcSwap::from_pointee(ClientEntry::unknown(id))))
                })
                .value(),
        )
    }

    fn upsert_key(&self, key: &ApiKey) {
        let entry = KeyEntry {
            limit_subject: format_smolstr!("{KEY_SUBJECT_PREFIX}{}", key.id),
            policy: KeyPolicy::from_key(key),
            client: self.slot(&key.client_id),
            rules: KeyRules::compile(&key.restrictions).map(Arc::new),
        };
        let last_used = AtomicI64::new(key.last_used_at.map_or(i64::MIN, Timestamp::as_millis));
        self.keys.insert(key.digest, Stored { entry, last_used });
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::{Digester, KeyId, Scope, Timestamp};

    use super::*;

    fn client(active: bool, scopes: &[&str]) -> Client {
        Client {
            id: ClientId::parse("cli_0000000000000001").unwrap(),
            name: "Acme".into(),
            plan: "pro".into(),
            scopes: scopes.iter().map(|s| Scope::new(s).unwrap()).collect(),
            sports: vec![],
            bookmakers: vec![],
            limits: LimitOverrides::default(),
            active,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            parent: None,
            metadata: Default::default(),
        }
    }

    fn key(secret: &str, state: KeyState) -> ApiKey {
        ApiKey {
            id: KeyId::generate(),
            client_id: ClientId::parse("cli_0000000000000001").unwrap(),
            digest: Digester::plain().digest(secret),
            hint: String::new(),
            label: String::new(),
            state,
            expires_at: None,
            created_at: Timestamp::from_millis(0),
            rotated_at: None,
            replaced_by: None,
            last_used_at: None,
            restrictions: Default::default(),
        }
    }

    fn plans(plan: &str) -> Vec<String> {
        if plan == "pro" {
            vec!["live".into()]
        } else {
            vec![]
        }
    }

    #[test]
    fn load_lookup_update_and_revoke() {
        let r = Replica::new();
        assert!(!r.is_loaded());
        let k = key("secret-a", KeyState::Active);
        r.load(
            &Snapshot {
                version: 2,
                clients: vec![client(true, &["a"])],
                keys: vec![k.clone()],
                ..Default::default()
            },
            &plans,
        );
        assert!(r.is_loaded());
        let d = Digester::plain().digest("secret-a");
        let entry = r.get(&d).unwrap();
        let c = entry.client.load();
        assert!(c.policy.has_scope("a") && c.policy.has_feature("live"));
        assert_eq!(c.identity().scopes, "a");

        // A client change reaches the key without touching it.
        r.apply(
            &Delta {
                version: 3,
                clients: vec![client(false, &["b"])],
                keys: vec![],
                ..Default::default()
            },
            &plans,
        );
        let c = entry.client.load();
        assert!(!c.policy.active && c.policy.has_scope("b"));
        assert_eq!(r.version(), 3);

        let mut revoked = k;
        revoked.state = KeyState::Revoked;
        r.apply(
            &Delta {
                version: 4,
                clients: vec![],
                keys: vec![revoked],
                ..Default::default()
            },
            &plans,
        );
        assert!(r.get(&d).is_none());
        assert_eq!(r.key_count(), 0);
    }

    #[test]
    fn each_worker_reads_its_own_copy_of_a_clients_header_values() {
        let r = Replica::for_workers(2);
        r.load(
            &Snapshot {
                version: 1,
                clients: vec![client(true, &["a", "b"])],
                ..Default::default()
            },
            &plans,
        );
        let id = ClientId::parse("cli_0000000000000001").unwrap();
        let entry = r.client(&id).unwrap();
        let on_worker = |w: usize| {
            let entry = Arc::clone(&entry);
            std::thread::spawn(move || {
                crate::state::per_worker::enter(w);
                let v = entry.identity();
                (v.scopes.clone(), v.scopes.as_bytes().as_ptr() as usize)
            })
            .join()
            .unwrap()
        };
        let (first, second) = (on_worker(0), on_worker(1));
        assert_eq!(first.0, "a b");
        assert_eq!(second.0, "a b");
        assert_eq!(entry.identity().plan, "pro");
        assert_ne!(first.1, second.1, "one buffer per worker");
    }

    #[test]
    fn a_key_before_its_client_is_inactive_until_the_client_arrives() {
        let r = Replica::new();
        r.apply(
            &Delta {
                version: 1,
                clients: vec![],
                keys: vec![key("s", KeyState::Active)],
                ..Default::default()
            },
            &plans,
        );
        let e = r.get(&Digester::plain().digest("s")).unwrap();
        assert!(!e.client.load().policy.active);
        r.apply(
            &Delta {
                version: 2,
                clients: vec![client(true, &[])],
                keys: vec![],
                ..Default::default()
            },
            &plans,
        );
        assert!(e.client.load().policy.active);
    }
}
