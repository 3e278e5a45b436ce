//! The in-process limiter: counters in a sharded map, for a single node (and as the fallback
//! when Redis fails).
//!
//! Each counter is an `Arc<Mutex<Cell>>` in a `DashMap`, so requests for different subjects
//! never wait on each other and there is no global lock. A request locks the cells of all its
//! limits in one consistent order (sorted by key), which keeps it deadlock-free and makes the
//! check all-or-nothing: every limit is decided on the locked values and the new values are
//! written only if all of them allow.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use keygate_core::limit::{gcra, lease, window, LimitKind, LimitState, Window};
use keygate_core::Timestamp;
use smallvec::SmallVec;

use crate::{Check, LimitKey, Verdict};

/// Most requests carry a handful of limits; more spill to the heap.
const INLINE: usize = 4;

/// The map key of one counter; mirrors the Redis key names (`kg:l:{subject}:{slot}` for a
/// rate, `…:{window_start_ms}` for a quota), so a new quota window is a new counter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CellKey {
    subject: Arc<str>,
    slot: u16,
    window_start: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    /// GCRA theoretical arrival time in µs (`None`: a full bucket).
    Rate { tat: Option<i64> },
    /// Requests counted in the window ending at `end`.
    Quota { count: u64, end: Timestamp },
}

impl Cell {
    fn is_stale(&self, now: Timestamp) -> bool {
        match *self {
            Cell::Rate { tat } => tat.is_none_or(|tat| !gcra::is_live(tat, now)),
            Cell::Quota { end, .. } => end <= now,
        }
    }
}

/// What one check computes with.
#[derive(Clone, Copy)]
enum Plan {
    Rate(gcra::Params),
    Quota {
        window: Window,
        max: u64,
        end: Timestamp,
    },
}

impl Plan {
    fn of(check: &Check, now: Timestamp) -> (CellKey, Plan) {
        let (window_start, plan) = match check.limit.kind {
            LimitKind::Rate { period, burst } => (
                None,
                Plan::Rate(gcra::Params::new(check.limit.max.get(), period, burst)),
            ),
            LimitKind::Quota { window } => {
                let (start, end) = window.bounds(now);
                (
                    Some(start.as_millis()),
                    Plan::Quota {
                        window,
                        max: check.limit.max.get(),
                        end,
                    },
                )
            }
        };
        let key = CellKey {
            subject: check.key.subject.clone(),
            slot: check.key.slot,
            window_start,
        };
        (key, plan)
    }

    fn fresh(&self) -> Cell {
        match *self {
            Plan::Rate(_) => Cell::Rate { tat: None },
            Plan::Quota { end, .. } => Cell::Quota { count: 0, end },
        }
    }

    /// What a request would be told on `cell`, nothing consumed.
    fn peek(&self, cell: Option<Cell>, now: Timestamp) -> LimitState {
        match (*self, cell) {
            (Plan::Rate(p), Some(Cell::Rate { tat })) => gcra::peek_with(&p, tat, now),
            (Plan::Quota { window, max, .. }, Some(Cell::Quota { count, .. })) => {
                window::peek(window, max, count, now)
            }
            (plan, _) => plan.peek(Some(plan.fresh()), now),
        }
    }

    /// Decides on `cell` and returns the state and, when allowed, the cell's new value.
    fn apply(&self, cell: Cell, now: Timestamp) -> (LimitState, Option<Cell>) {
        match (*self, cell) {
            (Plan::Rate(p), Cell::Rate { tat }) => {
                let (state, tat) = gcra::check_with(&p, tat, now);
                (state, tat.map(|tat| Cell::Rate { tat: Some(tat) }))
            }
            (Plan::Quota { window, max, .. }, Cell::Quota { count, end }) => {
                let state = window::check(window, max, count, now);
                let next = state.allowed.then(|| Cell::Quota {
                    count: count.saturating_add(1),
                    end,
                });
                (state, next)
            }
            // A key's kind is part of its `CellKey`, so kinds cannot meet; be total anyway.
            (plan, _) => plan.apply(plan.fresh(), now),
        }
    }
}

/// Recovers a poisoned lock: a cell is plain data, valid whatever a panicking holder did.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Leases = SmallVec<[(u64, Timestamp); INLINE]>;

/// The maps' hasher: foldhash, seeded per map. Subjects are ids keygate generated, not
/// caller input, and SipHash (the default) was a sixth of a one-limit check.
type Hasher = foldhash::fast::RandomState;

/// The in-process limiter.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    cells: DashMap<CellKey, Arc<Mutex<Cell>>, Hasher>,
    leases: DashMap<LimitKey, Leases, Hasher>,
}

impl LocalLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        LocalLimiter::default()
    }

    /// Checks one request against all its limits at `now`: if every limit allows, each counter
    /// is consumed once; if any denies, none is.
    pub fn check(&self, checks: &[Check], now: Timestamp) -> Verdict {
        if checks.is_empty() {
            return Verdict::UNLIMITED;
        }
        let planned: SmallVec<[(CellKey, Plan); INLINE]> =
            checks.iter().map(|c| Plan::of(c, now)).collect();

        // Unique cells in key order; `slot_of[i]` is the cell of check `i`.
        let mut order: SmallVec<[usize; INLINE]> = (0..checks.len()).collect();
        order.sort_unstable_by(|&a, &b| planned[a].0.cmp(&planned[b].0));
        let mut slot_of: SmallVec<[usize; INLINE]> = SmallVec::from_elem(0, checks.len());
        let mut cells: SmallVec<[Arc<Mutex<Cell>>; INLINE]> = SmallVec::new();
        let mut last: Option<usize> = None;
        for &i in &order {
            let same = last.is_some_and(|l| planned[l].0 == planned[i].0);
            if !same {
                let (key, plan) = &planned[i];
                cells.push(self.cell(key, plan));
            }
            slot_of[i] = cells.len() - 1;
            last = Some(i);
        }

        // Lock in key order; decide on copies; write back only if all allow.
        let mut guards: SmallVec<[MutexGuard<'_, Cell>; INLINE]> =
            cells.iter().map(|c| lock(c)).collect();
        let mut values: SmallVec<[Cell; INLINE]> = guards.iter().map(|g| **g).collect();
        let mut allowed = true;
        let mut states: SmallVec<[LimitState; INLINE]> = SmallVec::new();
        for (i, (_, plan)) in planned.iter().enumerate() {
            let slot = slot_of[i];
            let (state, next) = plan.apply(values[slot], now);
            match next {
                Some(cell) => values[slot] = cell,
                None => allowed = false,
            }
            states.push(state);
        }
        if allowed {
            for (guard, value) in guards.iter_mut().zip(values) {
                **guard = value;
            }
        }
        drop(guards);
        Verdict::from_states(states)
    }

    /// What [`LocalLimiter::check`] would report for `checks` at `now`, consuming nothing: each
    /// limit's state as a request would see it (`remaining` counts what is still admitted).
    ///
    /// Reads only: a counter that does not exist is not created, so peeking at subjects that
    /// never made a request (any number of them) holds no memory. Each limit reads its own
    /// counter; repeated keys are not applied one after the other as in a check.
    pub fn peek(&self, checks: &[Check], now: Timestamp) -> Verdict {
        if checks.is_empty() {
            return Verdict::UNLIMITED;
        }
        let states: SmallVec<[LimitState; INLINE]> = checks
            .iter()
            .map(|c| {
                let (key, plan) = Plan::of(c, now);
                let cell = self.cells.get(&key).map(|cell| *lock(cell.value()));
                plan.peek(cell, now)
            })
            .collect();
        Verdict::from_states(states)
    }

    fn cell(&self, key: &CellKey, plan: &Plan) -> Arc<Mutex<Cell>> {
        if let Some(cell) = self.cells.get(key) {
            return Arc::clone(cell.value());
        }
        let entry = self
            .cells
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(plan.fresh())));
        Arc::clone(entry.value())
    }

    /// Removes the state that no longer matters at `now` (rates whose bucket is full again,
    /// quota windows that ended, expired leases) and returns how many entries went.
    ///
    /// A cell in use by a request at that moment is kept, so a sweep never loses a count.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let before = self.len();
        self.cells.retain(|_, cell| {
            // The shard is write-locked here, so no request can pick up this cell meanwhile;
            // a count of 1 means no request holds it.
            Arc::strong_count(cell) > 1 || !lock(cell).is_stale(now)
        });
        self.leases.retain(|_, leases| {
            leases.retain(|(_, expires)| *expires > now);
            !leases.is_empty()
        });
        before.saturating_sub(self.len())
    }

    /// Counters and lease sets held.
    pub fn len(&self) -> usize {
        self.cells.len() + self.leases.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes lease `lease_id` on `key` (at most `max` live at once) until `now + ttl`.
    ///
    /// Taking a lease already held renews it (allowed while the others number fewer than
    /// `max`). A denied request leaves the leases as they were.
    pub fn acquire_lease(
        &self,
        key: &LimitKey,
        max: u64,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> LimitState {
        let mut leases = self.leases.entry(key.clone()).or_default();
        leases.retain(|(_, expires)| *expires > now);
        let others = leases.iter().filter(|(id, _)| *id != lease_id).count();
        let state = lease::acquire(max, others, now, ttl);
        if state.allowed {
            let expires = now.plus(ttl);
            match leases.iter_mut().find(|(id, _)| *id == lease_id) {
                Some(held) => held.1 = expires,
                None => leases.push((lease_id, expires)),
            }
        }
        let empty = leases.is_empty();
        drop(leases);
        if empty {
            self.leases.remove_if(key, |_, l| l.is_empty());
        }
        state
    }

    /// Extends a live lease to `now + ttl`; `false` if it is not held (released, or expired:
    /// the holder must acquire again).
    pub fn renew_lease(
        &self,
        key: &LimitKey,
        lease_id: u64,
        ttl: Duration,
        now: Timestamp,
    ) -> bool {
        let Some(mut leases) = self.leases.get_mut(key) else {
            return false;
        };
        match leases
            .iter_mut()
            .find(|(id, expires)| *id == lease_id && *expires > now)
        {
            Some(held) => {
                held.1 = now.plus(ttl);
                true
            }
            None => false,
        }
    }

    /// Gives lease `lease_id` back (a no-op if it is not held).
    pub fn release_lease(&self, key: &LimitKey, lease_id: u64) {
        if let Some(mut leases) = self.leases.get_mut(key) {
            leases.retain(|(id, _)| *id != lease_id);
        }
        self.leases.remove_if(key, |_, l| l.is_empty());
    }

    /// Live leases on `key` at `now`.
    pub fn lease_count(&self, key: &LimitKey, now: Timestamp) -> usize {
        self.leases
            .get(key)
            .map_or(0, |leases| lease::active(&leases, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::limit::Limit;
    use proptest::prelude::*;
    use std::num::NonZeroU64;

    const T0: i64 = 1_790_000_000_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(T0 + ms)
    }

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn check(subject: &str, slot: u16, limit: Limit) -> Check {
        Check::new(LimitKey::new(subject, slot), limit)
    }

    #[test]
    fn sweep_drops_full_buckets_and_ended_windows_only() {
        let l = LocalLimiter::new();
        let rate = check("k:a", 0, Limit::per_second(nz(10)));
        let day = check("k:a", 1, Limit::quota(Window::Day, nz(10)));
        assert!(l.check(&[rate.clone(), day.clone()], at(0)).allowed);
        l.acquire_lease(
            &LimitKey::new("k:a", 2),
            3,
            7,
            Duration::from_secs(30),
            at(0),
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l.sweep(at(50)), 0);
        // The bucket refills after one interval (100 ms); the lease expires after 30 s.
        assert_eq!(l.sweep(at(100)), 1);
        assert_eq!(l.sweep(at(30_000)), 1);
        assert_eq!(l.len(), 1);
        let (_, end) = Window::Day.bounds(at(0));
        assert_eq!(l.sweep(end), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn peek_reads_without_creating_or_consuming() {
        let l = LocalLimiter::new();
        let rate = check("k:p", 0, Limit::per_second(nz(3)));
        let day = check("k:p", 1, Limit::quota(Window::Day, nz(5)));
        let both = [rate.clone(), day.clone()];
        let v = l.peek(&both, at(0));
        assert!(v.allowed);
        assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((0, 3)));
        assert!(l.is_empty(), "a peek creates no counter");
        assert!(l.check(&both, at(0)).allowed);
        for _ in 0..10 {
            let v = l.peek(&both, at(0));
            assert_eq!(v.binding.map(|(i, s)| (i, s.remaining)), Some((0, 2)));
        }
        assert_eq!(l.check(&both, at(0)).binding.unwrap().1.remaining, 1);
    }

    #[test]
    fn duplicate_keys_share_one_counter() {
        let l = LocalLimiter::new();
        let q = check("k:dup", 0, Limit::quota(Window::Hour, nz(3)));
        let v = l.check(&[q.clone(), q.clone()], at(0));
        assert!(v.allowed);
        assert_eq!(v.binding.unwrap().1.remaining, 1);
        // Two more would make four: denied, and nothing consumed.
        assert!(!l.check(&[q.clone(), q.clone()], at(0)).allowed);
        assert!(l.check(std::slice::from_ref(&q), at(0)).allowed);
        assert!(!l.check(&[q], at(0)).allowed);
    }

    #[test]
    fn lease_reacquire_renews_and_release_frees() {
        let l = LocalLimiter::new();
        let key = LimitKey::new("k:ws", 0);
        let ttl = Duration::from_secs(10);
        assert!(l.acquire_lease(&key, 1, 1, ttl, at(0)).allowed);
        assert!(!l.acquire_lease(&key, 1, 2, ttl, at(0)).allowed);
        assert!(l.acquire_lease(&key, 1, 1, ttl, at(5_000)).allowed);
        assert_eq!(l.lease_count(&key, at(14_999)), 1);
        assert!(l.renew_lease(&key, 1, ttl, at(14_999)));
        assert!(!l.renew_lease(&key, 1, ttl, at(24_999)));
        assert!(!l.renew_lease(&key, 9, ttl, at(0)));
        l.release_lease(&key, 1);
        assert_eq!(l.lease_count(&key, at(0)), 0);
        assert!(l.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Rate(u8, u16),
        Quota(u8, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 1u16..5).prop_map(|(s, m)| Op::Rate(s, m)),
            (0u8..3, 1u16..8).prop_map(|(s, m)| Op::Quota(s, m)),
        ]
    }

    fn to_check(op: &Op) -> Check {
        match *op {
            Op::Rate(s, m) => check(&format!("s{s}"), 0, Limit::per_second(nz(m.into()))),
            Op::Quota(s, m) => check(
                &format!("s{s}"),
                1,
                Limit::quota(Window::Hour, nz(m.into())),
            ),
        }
    }

    proptest! {
        /// A request is all-or-nothing: after a denial every later answer is the same as if the
        /// denied request had never been made.
        #[test]
        fn denied_requests_consume_nothing(
            requests in prop::collection::vec((prop::collection::vec(op(), 1..4), 0i64..400), 1..60),
        ) {
            let with = LocalLimiter::new();
            let without = LocalLimiter::new();
            let mut now = 0;
            for (ops, step) in &requests {
                now += step;
                let checks: Vec<Check> = ops.iter().map(to_check).collect();
                let v = with.check(&checks, at(now));
                if v.allowed {
                    prop_assert_eq!(without.check(&checks, at(now)), v);
                }
                // Both limiters agree on a probe of every single limit.
                for c in &checks {
                    let probe = [c.clone()];
                    prop_assert_eq!(
                        with.check(&probe, at(now)).allowed,
                        without.check(&probe, at(now)).allowed
                    );
                }
            }
        }
    }
}
