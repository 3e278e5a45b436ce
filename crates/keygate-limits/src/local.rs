//! The in-process limiter: counters in a sharded map, for a single node (and as the fallback
//! when Redis fails).
//!
//! The counters of one subject (a key, a client, a source address) sit together behind one
//! `Arc<Mutex<_>>` in a `DashMap` keyed by the subject: a request's limits nearly always share
//! their subject, so it finds and locks one entry however many limits it carries, and requests
//! for different subjects never wait on each other. A request locks the subjects it names in
//! one consistent order (sorted), which keeps it deadlock-free and makes the check
//! all-or-nothing: every limit is decided on the locked values and the new values are written
//! only if all of them allow.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use keygate_core::limit::{gcra, lease, window, LimitKind, LimitState, Window};
use keygate_core::Timestamp;
use smallvec::SmallVec;
use smol_str::SmolStr;

use crate::{Check, LimitKey, Verdict};

/// Most requests carry a handful of limits; more spill to the heap.
const INLINE: usize = 4;

/// Which counter of a subject; mirrors the Redis key names (`kg:l:{subject}:{slot}` for a
/// rate, `…:{window_start_ms}` for a quota, `…:{window_start_ms}:{epoch}` after a reset), so a
/// new quota window, or a reset one, is a new counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CellId {
    slot: u32,
    window_start: Option<i64>,
    epoch: u32,
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

/// The counters of one subject.
#[derive(Debug, Default)]
struct Cells(SmallVec<[(CellId, Cell); INLINE]>);

impl Cells {
    fn find(&self, id: CellId) -> Option<usize> {
        self.0.iter().position(|(c, _)| *c == id)
    }

    fn get(&self, id: CellId) -> Option<Cell> {
        self.find(id).map(|i| self.0[i].1)
    }

    /// The index of counter `id`, created as `fresh` if missing.
    fn index_or_insert(&mut self, id: CellId, fresh: Cell) -> usize {
        self.find(id).unwrap_or_else(|| {
            self.0.push((id, fresh));
            self.0.len() - 1
        })
    }
}

type Shared = Arc<Mutex<Cells>>;

/// What one check computes with.
#[derive(Clone, Copy)]
enum Plan {
    Rate(gcra::Params),
    Quota {
        window: Window,
        max: u64,
        end: Timestamp,
        cost: u64,
    },
}

impl Plan {
    fn of(check: &Check, now: Timestamp) -> (CellId, Plan) {
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
                        cost: check.units(),
                    },
                )
            }
        };
        let id = CellId {
            slot: check.key.slot,
            window_start,
            epoch: if window_start.is_some() {
                check.epoch
            } else {
                0
            },
        };
        (id, plan)
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
            (
                Plan::Quota {
                    window, max, cost, ..
                },
                Cell::Quota { count, end },
            ) => {
                let state = window::check_n(window, max, count, cost, now);
                let next = state.allowed.then(|| Cell::Quota {
                    count: count.saturating_add(cost),
                    end,
                });
                (state, next)
            }
            // A counter's kind is part of its `CellId`, so kinds cannot meet; be total anyway.
            (plan, _) => plan.apply(plan.fresh(), now),
        }
    }
}

/// Recovers a poisoned lock: a cell is plain data, valid whatever a panicking holder did.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Leases = SmallVec<[(u64, Timestamp); INLINE]>;

/// The maps' hasher: foldhash, seeded at random per map (SipHash, the default, was a sixth of
/// a one-limit check). Subjects are ids keygate generated, except a public route's source
/// address (`s:…`), which is the connection's peer (or a trusted proxy's word for it), reduced
/// to a /64 for IPv6: a caller picks only among addresses it really holds, and cannot aim
/// them at colliding buckets without the process's random seed (foldhash is built to be
/// minimally DoS-resistant in just that sense).
type Hasher = foldhash::fast::RandomState;

/// Decides `checks` on the locked counters of their subjects (`guards[group_of(i)]` for check
/// `i`), on copies and in the checks' order (a repeated counter applies one request after the
/// other), and writes the copies back only if every limit allows.
fn decide(
    checks: &[Check],
    now: Timestamp,
    group_of: impl Fn(usize) -> usize,
    guards: &mut [MutexGuard<'_, Cells>],
) -> Verdict {
    // (group, index in its cells, value so far) of each counter the checks touch.
    let mut touched: SmallVec<[(usize, usize, Cell); INLINE]> = SmallVec::new();
    let verdict = Verdict::from_checks(
        checks,
        checks.iter().enumerate().map(|(i, check)| {
            let (id, plan) = Plan::of(check, now);
            let group = group_of(i);
            let index = guards[group].index_or_insert(id, plan.fresh());
            let at = touched
                .iter()
                .position(|&(g, x, _)| g == group && x == index)
                .unwrap_or_else(|| {
                    touched.push((group, index, guards[group].0[index].1));
                    touched.len() - 1
                });
            let (state, next) = plan.apply(touched[at].2, now);
            if let Some(cell) = next {
                touched[at].2 = cell;
            }
            state
        }),
    );
    // `from_states` stops at the first denial, which binds and consumes nothing.
    if verdict.allowed {
        for (group, index, value) in touched {
            guards[group].0[index].1 = value;
        }
    }
    verdict
}

/// The in-process limiter.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    cells: DashMap<SmolStr, Shared, Hasher>,
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
        let Some(first) = checks.first() else {
            return Verdict::UNLIMITED;
        };
        // Usually every check names the same subject: one lookup, one lock, no sort.
        if checks.iter().all(|c| c.key.subject == first.key.subject) {
            let cells = self.cells_of(&first.key.subject);
            let mut guard = lock(&cells);
            return decide(checks, now, |_| 0, std::slice::from_mut(&mut guard));
        }
        // Unique subjects in sorted order; `group_of[i]` is the subject of check `i`.
        let subject = |i: usize| &checks[i].key.subject;
        let mut order: SmallVec<[usize; INLINE]> = (0..checks.len()).collect();
        order.sort_unstable_by(|&a, &b| subject(a).cmp(subject(b)));
        let mut groups: SmallVec<[Shared; INLINE]> = SmallVec::new();
        let mut group_of: SmallVec<[usize; INLINE]> = SmallVec::from_elem(0, checks.len());
        let mut last: Option<usize> = None;
        for &i in &order {
            if last.is_none_or(|l| subject(l) != subject(i)) {
                groups.push(self.cells_of(subject(i)));
            }
            group_of[i] = groups.len() - 1;
            last = Some(i);
        }
        // Locked in subject order.
        let mut guards: SmallVec<[MutexGuard<'_, Cells>; INLINE]> =
            groups.iter().map(|g| lock(g)).collect();
        decide(checks, now, |i| group_of[i], &mut guards)
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
                let (id, plan) = Plan::of(c, now);
                let cell = self
                    .cells
                    .get(&c.key.subject)
                    .and_then(|cells| lock(cells.value()).get(id));
                plan.peek(cell, now)
            })
            .collect();
        Verdict::from_states(states)
    }

    /// The counters of `subject`, created empty if missing.
    fn cells_of(&self, subject: &SmolStr) -> Shared {
        if let Some(cells) = self.cells.get(subject) {
            return Arc::clone(cells.value());
        }
        let entry = self.cells.entry(subject.clone()).or_default();
        Arc::clone(entry.value())
    }

    /// Removes the state that no longer matters at `now` (rates whose bucket is full again,
    /// quota windows that ended, expired leases) and returns how many entries went.
    ///
    /// A subject in use by a request at that moment is kept whole, so a sweep never loses a
    /// count.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let mut removed = 0;
        self.cells.retain(|_, cells| {
            // The shard is write-locked here, so no request can pick up these cells meanwhile;
            // a count of 1 means no request holds them, so the lock below never waits.
            if Arc::strong_count(cells) > 1 {
                return true;
            }
            let mut cells = lock(cells);
            let before = cells.0.len();
            cells.0.retain(|(_, cell)| !cell.is_stale(now));
            removed += before - cells.0.len();
            !cells.0.is_empty()
        });
        let leases = self.leases.len();
        self.leases.retain(|_, leases| {
            leases.retain(|(_, expires)| *expires > now);
            !leases.is_empty()
        });
        removed + leases.saturating_sub(self.leases.len())
    }

    /// Counters and lease sets held.
    pub fn len(&self) -> usize {
        let counters: usize = self.cells.iter().map(|e| lock(e.value()).0.len()).sum();
        counters + self.leases.len()
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

    fn check(subject: &str, slot: u32, limit: Limit) -> Check {
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
