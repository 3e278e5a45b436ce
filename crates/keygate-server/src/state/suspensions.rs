//! Scoped suspensions as this node sees them: made by an operator (`keygate suspend`, the
//! admin API), stored, and followed by every node through the change feed. A request that a
//! suspension holds is refused `suspended` at authorization, where its route, scopes, sport,
//! bookmaker and client are known (`Gateway::authorize`, for HTTP, forward-auth and WebSocket
//! alike).
//!
//! While none is in force a request pays one relaxed atomic load; the list itself is read only
//! while one is. An `until` is compared with the clock per request, and the follower clears the
//! flag once every suspension has run out, so an expiry needs no write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use keygate_core::decision::{Denial, Reason};
use keygate_core::suspension::{self, Request, Suspension, DEFAULT_MESSAGE};
use keygate_core::{SuspensionId, Timestamp};

use crate::state::locks::lock;

/// The suspensions in force on this node.
#[derive(Debug, Default)]
pub struct SuspensionSet {
    /// True while any suspension may hold a request: the one load a request pays otherwise.
    any: AtomicBool,
    active: ArcSwap<Vec<Suspension>>,
    /// The ids that held requests at the last look (the feed's), to tell which ended since:
    /// lifted, or run out by the clock.
    in_force: Mutex<Vec<SuspensionId>>,
}

/// What changed in the set at one look of the feed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Suspensions new to this node (their sessions are told or closed).
    pub added: Vec<Suspension>,
    /// Suspensions in force at the last look and no more (the sessions told of them hear of
    /// the lift).
    pub ended: Vec<SuspensionId>,
}

impl SuspensionSet {
    /// Follows the stored set; logs each suspension that starts or ends, and says which are
    /// new to this node and which ended.
    pub fn set(&self, stored: Vec<Suspension>, now: Timestamp) -> Changes {
        let before = self.active.load();
        let added: Vec<Suspension> = stored
            .iter()
            .filter(|s| !before.iter().any(|b| b.id == s.id))
            .cloned()
            .collect();
        for s in &added {
            tracing::warn!(
                id = %s.id,
                kind = s.target.kind(),
                value = s.target.value(),
                client = s.client_id.as_ref().map_or("-", |c| c.as_str()),
                until = %s.until.map_or("-".to_owned(), Timestamp::to_rfc3339),
                by = s.created_by,
                "Suspension in force: refusing the requests it holds with `suspended`."
            );
        }
        for s in before
            .iter()
            .filter(|b| !stored.iter().any(|s| s.id == b.id))
        {
            tracing::warn!(id = %s.id, "Suspension ended (lifted, or its until passed).");
        }
        let any = stored.iter().any(|s| s.is_active(now));
        let ended = self.follow(&stored, now);
        self.active.store(Arc::new(stored));
        self.any.store(any, Ordering::Release);
        Changes { added, ended }
    }

    /// Notes which suspensions ran out by the clock (the feed follower calls this each
    /// interval, store or no store) and returns them; clears the flag once none holds, so
    /// requests stop paying for a list that holds nothing.
    pub fn refresh(&self, now: Timestamp) -> Vec<SuspensionId> {
        if !self.is_on() {
            return Vec::new();
        }
        let active = self.active.load();
        let ended = self.follow(&active, now);
        if !active.iter().any(|s| s.is_active(now)) {
            self.any.store(false, Ordering::Release);
            tracing::info!("Every suspension has run out.");
        }
        ended
    }

    /// Records the ids of `list` in force at `now`; returns those in force before and not now.
    fn follow(&self, list: &[Suspension], now: Timestamp) -> Vec<SuspensionId> {
        let now_in_force: Vec<SuspensionId> = list
            .iter()
            .filter(|s| s.is_active(now))
            .map(|s| s.id.clone())
            .collect();
        let mut in_force = lock(&self.in_force);
        let ended = in_force
            .iter()
            .filter(|id| !now_in_force.contains(id))
            .cloned()
            .collect();
        *in_force = now_in_force;
        ended
    }

    /// Whether any suspension may hold a request.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The suspensions held in memory (some may have run out by the clock).
    pub fn active(&self) -> Arc<Vec<Suspension>> {
        self.active.load_full()
    }

    /// The refusal of a request a suspension holds: its subject is the operator's message, or
    /// the default sentence.
    pub fn denial(&self, request: &Request<'_>, now: Timestamp) -> Option<Denial> {
        if !self.is_on() {
            return None;
        }
        let active = self.active.load();
        suspension::holding(&active, request, now).map(refusal)
    }
}

/// The `suspended` refusal of one suspension.
pub(crate) fn refusal(s: &Suspension) -> Denial {
    Denial::about(
        Reason::Suspended,
        s.message.as_deref().unwrap_or(DEFAULT_MESSAGE),
    )
    .lifting_at(s.until)
}

#[cfg(test)]
mod tests {
    use keygate_core::policy::Requirements;
    use keygate_core::suspension::Target;
    use keygate_core::{Slug, SuspensionId};

    use super::*;

    fn sport(name: &str, until: Option<i64>) -> Suspension {
        Suspension {
            id: SuspensionId::generate(),
            target: Target::Sport(Slug::new(name).unwrap()),
            client_id: None,
            message: Some(format!("{name} is on hold.")),
            until: until.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(0),
            created_by: "cli:test".into(),
            lifted_at: None,
            lifted_by: None,
        }
    }

    #[test]
    fn follows_the_store_and_the_clock() {
        let set = SuspensionSet::default();
        let needs = Requirements::default();
        let request = |sport| Request {
            client: "cli_0000000000000001",
            route: "matches",
            needs: &needs,
            params: &[],
            sport: Some(sport),
            bookmaker: None,
        };
        let t = Timestamp::from_millis;
        assert!(!set.is_on());
        assert!(set.denial(&request("cs2"), t(1)).is_none());
        let cs2 = sport("cs2", Some(1000));
        let changes = set.set(vec![cs2.clone()], t(1));
        assert_eq!(changes.added, vec![cs2.clone()]);
        assert!(changes.ended.is_empty());
        assert!(set.is_on());
        let d = set.denial(&request("cs2"), t(1)).unwrap();
        assert_eq!(d.reason, Reason::Suspended);
        assert_eq!(d.subject.as_deref(), Some("cs2 is on hold."));
        assert_eq!(d.lifts_at(), Some(t(1000)), "the answer's Retry-After");
        assert!(set.denial(&request("dota2"), t(1)).is_none());
        // Seen again: nothing new, nothing ended.
        let again = set.set(vec![cs2.clone()], t(2));
        assert!(again.added.is_empty() && again.ended.is_empty());
        // `until` lifts it by the clock, then the flag goes down; it is reported ended once.
        assert!(set.denial(&request("cs2"), t(1000)).is_none());
        assert!(set.refresh(t(999)).is_empty());
        assert!(set.is_on());
        assert_eq!(set.refresh(t(1000)), vec![cs2.id.clone()]);
        assert!(!set.is_on());
        assert!(set.refresh(t(1001)).is_empty());
        // Lifted in the store: reported ended at the look that no longer lists it.
        let dota = sport("dota2", None);
        set.set(vec![dota.clone()], t(2));
        assert!(set.is_on());
        let lifted = set.set(Vec::new(), t(3));
        assert_eq!(lifted.ended, vec![dota.id.clone()]);
        assert!(!set.is_on());
    }
}
