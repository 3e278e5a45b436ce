//! The registry of open WebSocket sessions, so a change to a key or a client closes them.
//!
//! Each session registers the digest of its key, what its route required and the channels it
//! holds. [`Sessions::revalidate`] re-runs authentication and authorization for every open
//! session against the current replica and clock, and stops each one that no longer passes.
//! The change feed calls it after every applied change (rotation, revocation, disable, scope
//! change: milliseconds after the write on every node) and a sweep calls it every
//! [`SWEEP_INTERVAL`] (expiry is a matter of time, not of a write). [`Sessions::suspended`]
//! tells or closes the sessions a new suspension holds (`[profile.ws] on_suspend`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use keygate_core::decision::{Denial, Reason};
use keygate_core::policy::{authorize, Grantee, RequestFacts};
use keygate_core::render::Value;
use keygate_core::suspension::{self, Suspension, DEFAULT_MESSAGE};
use keygate_core::{KeyDigest, SuspensionId, Timestamp};
use smallvec::SmallVec;
use tokio::sync::{mpsc, watch};

use crate::policy::channels;
use crate::policy::routes::Route;
use crate::policy::routes::MAX_PARAMS;
use crate::policy::ws::{CloseEvent, MessageKind, OnSuspend, WsProfile};
use crate::state::gateway::Gateway;
use crate::state::locks::lock;

/// How often open sessions are checked against the clock (expiry) besides every change.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Messages waiting for one session (suspension notices): a session that does not read them
/// loses the surplus rather than growing a queue.
const NOTICES: usize = 8;

/// Why the gateway stops a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub event: CloseEvent,
    pub reason: Reason,
}

/// What a session was admitted with, to check again later.
#[derive(Debug)]
pub struct Admission {
    pub digest: KeyDigest,
    /// The caller's address at the upgrade (the guard's rule), for a key's CIDR allowlist
    /// when the key changes later.
    pub address: std::net::IpAddr,
    pub route_index: usize,
    /// The route's name: after a reload the same route may sit at another index, or be gone.
    pub route_name: Arc<str>,
    pub sport: Option<Box<str>>,
    pub bookmaker: Option<Box<str>>,
    /// The path parameters, when the route's scopes are templated by them (else empty).
    pub params: Box<[Box<str>]>,
    /// The plan's delay at the upgrade (`crate::policy::delay`).
    pub delay: Option<Duration>,
}

/// A session's delay as its plan has it now (`None`: real time), kept current by every
/// revalidation (each change, and the sweep): the relay keeps a copy and is woken only when
/// it changes (a client moved to another plan, a reload), so a message costs it no look at
/// the replica.
pub(crate) type SessionDelay = watch::Receiver<Option<Duration>>;

#[derive(Debug)]
struct Entry {
    admission: Admission,
    channels: Arc<Mutex<BTreeSet<String>>>,
    stop: watch::Sender<Option<Stop>>,
    /// Messages the gateway itself sends the client (a suspension's notice).
    notices: mpsc::Sender<String>,
    /// The suspensions this session was told of (`on_suspend = "notify"`), to tell it of
    /// their end.
    told: Mutex<Vec<SuspensionId>>,
    delay: watch::Sender<Option<Duration>>,
}

/// Every open session of this node.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: DashMap<u64, Entry>,
}

/// A registered session: its stop signal and channel set. Unregisters when dropped.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    gateway: Arc<Gateway>,
    pub stop: watch::Receiver<Option<Stop>>,
    /// Messages for the client from the gateway (the relay sends them in turn).
    pub notices: mpsc::Receiver<String>,
    pub channels: Arc<Mutex<BTreeSet<String>>>,
    /// The session's sport (the route's `sport_param`), for channel scopes naming it.
    pub sport: Option<Box<str>>,
    /// The session's delay, following its plan.
    pub delay: SessionDelay,
    /// The session's route, for counting its in-session refusals.
    pub route_index: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gateway.ws_sessions.open.remove(&self.id);
    }
}

impl Registration {
    /// Adds channels the session now holds; false (and nothing added) past the session cap.
    pub fn add_channels(&self, new: &[String]) -> bool {
        let mut set = lock(&self.channels);
        let added = new.iter().filter(|c| !set.contains(*c)).count();
        if set.len() + added > channels::MAX_CHANNELS_PER_SESSION {
            return false;
        }
        set.extend(new.iter().cloned());
        true
    }

    /// Of `wanted`, the channels the session holds already, and how many it holds in all.
    pub fn holding(&self, wanted: &[String]) -> (Vec<String>, usize) {
        let set = lock(&self.channels);
        let held = wanted
            .iter()
            .filter(|c| set.contains(*c))
            .cloned()
            .collect();
        (held, set.len())
    }

    pub fn remove_channels(&self, gone: &[String]) {
        let mut set = lock(&self.channels);
        for c in gone {
            set.remove(c);
        }
    }
}

impl Sessions {
    /// Registers a session.
    pub fn register(gw: &Arc<Gateway>, admission: Admission) -> Registration {
        let sessions = &gw.ws_sessions;
        let id = sessions.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let (notices, notices_rx) = mpsc::channel(NOTICES);
        let channels = Arc::new(Mutex::new(BTreeSet::new()));
        let sport = admission.sport.clone();
        let (delay_tx, delay) = watch::channel(admission.delay);
        let route_index = admission.route_index;
        sessions.open.insert(
            id,
            Entry {
                admission,
                channels: Arc::clone(&channels),
                stop: tx,
                notices,
                told: Mutex::new(Vec::new()),
                delay: delay_tx,
            },
        );
        Registration {
            id,
            gateway: Arc::clone(gw),
            stop: rx,
            notices: notices_rx,
            channels,
            sport,
            delay,
            route_index,
        }
    }

    /// Open sessions on this node.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Stops every session that no longer passes; returns how many were stopped.
    pub fn revalidate(&self, gw: &Gateway) -> usize {
        let mut stopped = 0;
        for entry in &self.open {
            if entry.stop.borrow().is_some() {
                continue;
            }
            if let Err(denial) = check(gw, &entry.admission, &entry.channels, &entry.delay) {
                let _ = entry.stop.send(Some(Stop {
                    event: CloseEvent::Revoked,
                    reason: denial.reason,
                }));
                stopped += 1;
            }
        }
        if stopped > 0 {
            tracing::info!(
                sessions = stopped,
                "Closed WebSocket sessions whose key stopped being valid."
            );
        }
        stopped
    }

    /// Tells or closes (`[profile.ws] on_suspend`) every open session one of `added` (new
    /// suspensions) holds; returns how many. Sessions a suspension holds are found as a new
    /// handshake would be: the key's client, the route, its scopes, sport and bookmaker.
    pub fn suspended(&self, gw: &Gateway, added: &[Suspension]) -> usize {
        let profile = &gw.config.ws.profile;
        let now = gw.clock.now();
        let mut held = 0;
        for entry in &self.open {
            if entry.stop.borrow().is_some() {
                continue;
            }
            let Some(s) = holding(gw, &entry.admission, added, now) else {
                continue;
            };
            held += 1;
            match profile.on_suspend {
                OnSuspend::Close => {
                    let _ = entry.stop.send(Some(Stop {
                        event: CloseEvent::Suspended,
                        reason: Reason::Suspended,
                    }));
                }
                OnSuspend::Notify => {
                    lock(&entry.told).push(s.id.clone());
                    let _ = entry.notices.try_send(notice(profile, s));
                }
            }
        }
        if held > 0 {
            tracing::info!(
                sessions = held,
                on_suspend = ?profile.on_suspend,
                "WebSocket sessions held by a new suspension."
            );
        }
        held
    }

    /// Tells every session that heard of one of `ended` (suspensions lifted or run out) that
    /// it ended, in the profile's `resumed` message; returns how many were told.
    pub fn resumed(&self, gw: &Gateway, ended: &[SuspensionId]) -> usize {
        let profile = &gw.config.ws.profile;
        let mut told = 0;
        for entry in &self.open {
            let mut heard = lock(&entry.told);
            for id in ended {
                let Some(at) = heard.iter().position(|h| h == id) else {
                    continue;
                };
                heard.swap_remove(at);
                let vars = [
                    ("code", Value::Str("resumed".into())),
                    ("id", Value::Str(id.to_string())),
                ];
                let _ = entry
                    .notices
                    .try_send(profile.message(MessageKind::Resumed, &vars));
                told += 1;
            }
        }
        if told > 0 {
            tracing::info!(
                sessions = told,
                "WebSocket sessions told a suspension ended."
            );
        }
        told
    }

    /// Stops every session (the gateway is shutting down).
    pub fn stop_all(&self, event: CloseEvent) {
        for entry in &self.open {
            let _ = entry.stop.send(Some(Stop {
                event,
                reason: Reason::Emergency,
            }));
        }
    }
}

/// The route a session was admitted on, by index, or by name after a reload moved it.
fn route_of<'g>(gw: &'g Gateway, a: &Admission) -> Option<&'g Route> {
    let routes = gw.config.routes.routes();
    routes
        .get(a.route_index)
        .filter(|r| r.name == a.route_name)
        .or_else(|| routes.iter().find(|r| r.name == a.route_name))
}

/// The first of `added` that holds the session (none for a key no longer valid: the
/// revalidation closes those).
fn holding<'s>(
    gw: &Gateway,
    a: &Admission,
    added: &'s [Suspension],
    now: Timestamp,
) -> Option<&'s Suspension> {
    let who = gw.authenticate_digest(&a.digest).ok()?;
    let route = route_of(gw, a)?;
    let params: SmallVec<[&str; MAX_PARAMS]> = a.params.iter().map(|p| &**p).collect();
    let request = suspension::Request {
        client: who.client.policy.id.as_str(),
        route: &route.name,
        needs: &route.needs,
        params: &params,
        sport: a.sport.as_deref(),
        bookmaker: a.bookmaker.as_deref(),
    };
    suspension::holding(added, &request, now)
}

/// The profile's `suspended` message for a suspension.
fn notice(profile: &WsProfile, s: &Suspension) -> String {
    let vars = [
        ("code", Value::Str("suspended".into())),
        (
            "detail",
            Value::Str(s.message.as_deref().unwrap_or(DEFAULT_MESSAGE).to_owned()),
        ),
        ("id", Value::Str(s.id.to_string())),
        (
            "until",
            Value::Str(s.until.map(Timestamp::to_rfc3339).unwrap_or_default()),
        ),
    ];
    profile.message(MessageKind::Suspended, &vars)
}

/// Authentication, the route's requirements and every held channel, as of now; and the
/// session's delay from its plan as of now.
fn check(
    gw: &Gateway,
    a: &Admission,
    held: &Mutex<BTreeSet<String>>,
    delay: &watch::Sender<Option<Duration>>,
) -> Result<(), Denial> {
    let who = gw.authenticate_digest(&a.digest)?;
    let now = who.client.delay;
    delay.send_if_modified(|d| std::mem::replace(d, now) != now);
    let route = route_of(gw, a).ok_or(Reason::NotFound)?;
    let params: SmallVec<[&str; MAX_PARAMS]> = a.params.iter().map(|p| &**p).collect();
    if let Some(rules) = &who.key.rules {
        crate::state::gateway::key_address(rules, || a.address)?;
    }
    authorize(
        &who.client.policy,
        &route.needs,
        RequestFacts {
            sport: a.sport.as_deref(),
            bookmaker: a.bookmaker.as_deref(),
            params: &params,
        },
    )?;
    if let Some(rules) = &who.key.rules {
        rules.authorize(&route.needs, &params)?;
    }
    let grantee = Grantee {
        client: &who.client.policy,
        key: who.key.rules.as_deref(),
    };
    let map = &gw.config.ws.profile.channels;
    let held = lock(held);
    for c in held.iter() {
        channels::allowed(map, grantee, a.sport.as_deref(), c)
            .map_err(|r| Denial::about(Reason::ScopeMissing, r.scope.as_deref().unwrap_or(c)))?;
    }
    Ok(())
}

/// Checks open sessions against the clock until shutdown.
pub(crate) async fn sweep(live: Arc<crate::state::live::Live>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.changed() => {
                live.load().ws_sessions.stop_all(CloseEvent::GoingAway);
                return;
            }
        }
        let gw = live.load();
        if !gw.ws_sessions.is_empty() {
            gw.ws_sessions.revalidate(&gw);
        }
    }
}
