//! The gateway's shared state and its decision: who is calling, and may they do this.
//!
//! Everything here runs per request without store I/O: the route table and profile were
//! compiled at start, keys come from the replica, time from the clock.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use keygate_core::decision::{Denial, Reason};
use keygate_core::policy::{authorize, KeyRules, RequestFacts};
use keygate_core::{Clock, KeyDigest, Timestamp};

use crate::config::Config;
use crate::policy::guard::{Caller, Guard};
use crate::policy::profile::IdentityHeaders;
use crate::policy::ratelimit;
use crate::policy::routes::{BookmakerSource, Route};
use crate::state::metrics::{Gauges, Metrics};
use crate::state::quotas::{Crossing, QuotaSet};
use crate::state::replica::{ClientEntry, KeyEntry, Replica};
use crate::state::shutdown::Drain;
use keygate_core::limit::{Limit, LimitKind, LimitState};
use keygate_limits::Check;
use keygate_store::EventType;
use smallvec::SmallVec;

/// Whether the store answered lately (the data plane keeps serving either way).
#[derive(Debug, Default)]
pub struct StoreHealth {
    up: AtomicBool,
    /// Last successful read, ms since the epoch.
    last_ok: AtomicI64,
    /// Start of the current outage, ms since the epoch (0 = none).
    down_since: AtomicI64,
}

impl StoreHealth {
    pub fn mark_ok(&self, now: Timestamp) {
        self.up.store(true, Ordering::Release);
        self.last_ok.store(now.as_millis(), Ordering::Release);
        self.down_since.store(0, Ordering::Release);
    }

    /// Marks an outage; returns true when this starts a new one (log once per incident).
    pub fn mark_down(&self, now: Timestamp) -> bool {
        self.up.store(false, Ordering::Release);
        self.down_since
            .compare_exchange(0, now.as_millis(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn last_ok(&self) -> Option<Timestamp> {
        match self.last_ok.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }

    pub fn down_since(&self) -> Option<Timestamp> {
        match self.down_since.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Timestamp::from_millis(ms)),
        }
    }
}

/// A caller that authenticated: a copy of its key's entry and its client's policy.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub key: KeyEntry,
    pub client: Arc<ClientEntry>,
}

impl Admitted {
    /// The scopes this caller may use: its client's, narrowed by its key's when the key has
    /// them (whoami, verify and the scopes identity header).
    pub(crate) fn effective_scopes(&self) -> Vec<&str> {
        let client = &self.client.policy.scopes;
        match &self.key.rules {
            Some(rules) => rules.effective_scopes(client).map(|s| &**s).collect(),
            None => client.iter().map(|s| &**s).collect(),
        }
    }

    /// Sets the identity headers (client id, name, key id, scopes, plan, sport and bookmaker
    /// allowlists, and a delayed plan's delay) under the profile's names: on requests forwarded upstream and on
    /// forward-auth answers alike. The values were built once per client by the replica.
    pub fn write_identity(&self, headers: &mut http::HeaderMap, names: &IdentityHeaders) {
        let c = self.client.identity();
        headers.insert(names.client_id.clone(), c.id.clone());
        headers.insert(names.client_name.clone(), c.name.clone());
        // Built per answer (a 20-byte copy) rather than kept per key: a million keys' header
        // values cost more memory than the copy costs time.
        let key_id =
            HeaderValue::from_str(self.key.id()).unwrap_or_else(|_| HeaderValue::from_static(""));
        headers.insert(names.key_id.clone(), key_id);
        // A narrowed key forwards its effective scopes, so an upstream that reads the header
        // never sees more than the key may use (built per answer: such keys are rare).
        let scopes = match self.key.rules.as_deref().filter(|r| r.scopes.is_some()) {
            None => c.scopes.clone(),
            Some(_) => HeaderValue::from_str(&self.effective_scopes().join(" "))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        };
        headers.insert(names.scopes.clone(), scopes);
        headers.insert(names.plan.clone(), c.plan.clone());
        headers.insert(names.sports.clone(), c.sports.clone());
        headers.insert(names.bookmakers.clone(), c.bookmakers.clone());
        if let Some(delay) = &c.delay {
            headers.insert(names.delay.clone(), delay.clone());
        }
    }
}

/// What a node keeps for its whole life, whatever configuration it serves: the replica, the
/// limiter, the store's health, open sessions and connections, and counts not yet written.
pub struct Node {
    pub replica: Arc<Replica>,
    pub limits: keygate_limits::Limits,
    /// The shutdown signal long-lived sessions watch, and the count of those still open.
    pub drain: Drain,
    pub store: StoreHealth,
    /// Emergency mode, followed from the store.
    pub emergency: crate::state::emergency::EmergencySwitch,
    /// Scoped suspensions, followed from the store.
    pub suspensions: crate::state::suspensions::SuspensionSet,
    /// Quota top-ups and resets, followed from the store, and crossings to announce.
    pub quotas: crate::state::quotas::QuotaSet,
    /// Requests per client, day and status, until the next flush to the store.
    pub usage: crate::state::usage::UsageCounter,
    /// Keys' last uses, until the next flush to the store.
    pub last_used: crate::state::last_used::LastUsed,
    /// Key-sharing detection's queue and counts, until the next flush.
    pub sharing: crate::state::sharing::SharingDetector,
    pub started: Instant,
    pub clock: Arc<dyn Clock>,
    /// Open WebSocket sessions, so key and client changes close them.
    pub ws_sessions: crate::state::ws_sessions::Sessions,
    /// The store, for self-service writes (set when the gateway starts; the data plane
    /// itself never reads it).
    pub writer: std::sync::OnceLock<keygate_store::Store>,
    /// Wakes the change-feed follower at once (after a self-service write, or a NOTIFY).
    pub feed_wake: Arc<tokio::sync::Notify>,
    /// Open connections of each listener under its `max_connections` (`crate::runtime::listen`).
    pub connections: crate::state::connections::Connections,
    /// Messaging feeds (`[amqp]`), set when the gateway starts with one.
    pub amqp: std::sync::OnceLock<crate::state::amqp::AmqpNode>,
    /// The span exporter (`[tracing]`), set when the gateway starts with one; a reload
    /// keeps it (changing `[tracing]` needs a restart).
    pub tracer: std::sync::OnceLock<crate::state::traces::Tracer>,
    /// The configuration in force and its reloads (`crate::runtime::reload`).
    pub loaded: crate::state::loaded::Loaded,
    /// Held while clients are compiled into the replica under the plans in force (the change
    /// feed's apply, a reload's recompile), so none is compiled under a reload's old plans.
    pub replica_writes: std::sync::Mutex<()>,
    /// Held by a reload from reading the file to putting it in force, so two at once (a
    /// signal and an admin request) apply one after the other, each over the one before.
    pub reloading: tokio::sync::Mutex<()>,
    /// The file a reload reads; unset when the node was started without one.
    pub source: std::sync::OnceLock<crate::config::Source>,
    /// The TLS listeners' certificates, set when the gateway starts; a reload reconfigures
    /// them in place (`Tls::reconfigure`).
    pub tls: std::sync::OnceLock<Arc<crate::tls::Tls>>,
}

/// A node serving one configuration: what every request reads. A reload builds a new one
/// around the same [`Node`] (`Gateway::reconfigured`); requests already running keep the one
/// they started with.
pub struct Gateway {
    pub config: Config,
    /// Per-route counters; carried over to a reload's routes of the same name.
    pub metrics: Arc<Metrics>,
    /// Brute-force throttling, consulted when a key fails to authenticate; kept across a
    /// reload that leaves `[guard]` as it was.
    pub guard: Arc<Guard>,
    /// One circuit breaker per upstream, shared by every worker; kept across a reload for
    /// upstreams whose settings did not change.
    pub breakers: crate::state::breaker::Breakers,
    /// This configuration's routes and upstreams as the analytics counters name them.
    pub analytics_ids: crate::state::usage::AnalyticsIds,
    pub node: Arc<Node>,
}

/// A gateway reads the node's fields as its own (`gw.replica`): every request needs both.
impl std::ops::Deref for Gateway {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl<'a> From<&'a Gateway> for crate::state::usage::Unflushed<'a> {
    fn from(gw: &'a Gateway) -> Self {
        crate::state::usage::Unflushed {
            usage: &gw.usage,
            last_used: &gw.last_used,
            analytics: gw.config.analytics.enabled,
        }
    }
}

impl<'a> From<&'a Arc<Gateway>> for crate::state::usage::Unflushed<'a> {
    fn from(gw: &'a Arc<Gateway>) -> Self {
        crate::state::usage::Unflushed::from(&**gw)
    }
}

/// The configuration's plans, as the replica sees them when compiling clients.
pub struct Plans<'a>(pub &'a crate::config::Config);

impl crate::state::replica::PlanCatalog for Plans<'_> {
    fn features(&self, plan: &str) -> Vec<String> {
        self.0.plan_features(plan).to_vec()
    }

    fn limits(&self, plan: &str) -> crate::policy::ratelimit::LimitSet {
        self.0.plan_limits(plan)
    }

    fn bookmaker_selection(&self, plan: &str) -> Option<u32> {
        self.0.plans.get(plan).and_then(|p| p.bookmaker_selection)
    }

    fn sharing(&self, plan: &str) -> Option<crate::policy::sharing::Sharing> {
        self.0.plans.get(plan).and_then(|p| p.sharing)
    }

    fn delay(&self, plan: &str) -> Option<std::time::Duration> {
        self.0.plans.get(plan).and_then(|p| p.delay)
    }
}

/// The names the metrics count requests under, one per route in the table's order.
fn route_names(config: &Config) -> Vec<String> {
    config
        .routes
        .routes()
        .iter()
        .map(|r| r.name.to_string())
        .collect()
}

/// `config`'s routes and upstreams interned for the analytics counters.
fn analytics_ids(
    usage: &crate::state::usage::UsageCounter,
    config: &Config,
) -> crate::state::usage::AnalyticsIds {
    usage.ids(
        config.routes.routes().iter().map(|r| &*r.name),
        config.upstreams.iter().map(|u| &*u.name),
    )
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("source", &self.config.source)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        config: Config,
        replica: Arc<Replica>,
        limits: keygate_limits::Limits,
        clock: Arc<dyn Clock>,
    ) -> Gateway {
        let node = Node {
            connections: crate::state::connections::Connections::new(
                &config.http,
                config.portal.as_ref(),
            ),
            amqp: std::sync::OnceLock::new(),
            tracer: std::sync::OnceLock::new(),
            replica,
            drain: Drain::new(),
            limits,
            store: StoreHealth::default(),
            emergency: crate::state::emergency::EmergencySwitch::default(),
            suspensions: crate::state::suspensions::SuspensionSet::default(),
            quotas: crate::state::quotas::QuotaSet::default(),
            usage: crate::state::usage::UsageCounter::new(config.workers),
            last_used: crate::state::last_used::LastUsed::default(),
            sharing: crate::state::sharing::SharingDetector::default(),
            started: Instant::now(),
            loaded: crate::state::loaded::Loaded::new(clock.now()),
            source: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
            replica_writes: std::sync::Mutex::new(()),
            reloading: tokio::sync::Mutex::new(()),
            clock,
            ws_sessions: crate::state::ws_sessions::Sessions::default(),
            writer: std::sync::OnceLock::new(),
            feed_wake: Arc::new(tokio::sync::Notify::new()),
        };
        let analytics_ids = analytics_ids(&node.usage, &config);
        Gateway {
            analytics_ids,
            metrics: Arc::new(Metrics::new(route_names(&config), config.workers)),
            guard: Arc::new(Guard::new(
                config.guard.clone(),
                config.issuer.format.prefix(),
            )),
            breakers: crate::state::breaker::Breakers::new(&config.upstreams),
            config,
            node: Arc::new(node),
        }
    }

    /// This node serving `config` instead: what did not change is kept (the guard's counts,
    /// each unchanged upstream's breaker, every route's counters by name), the rest is new.
    pub fn reconfigured(&self, config: Config) -> Gateway {
        let names = route_names(&config);
        let metrics = if names.as_slice() == self.metrics.route_names() {
            Arc::clone(&self.metrics)
        } else {
            Arc::new(self.metrics.carried_to(names, config.workers))
        };
        let guard = if config.guard == self.config.guard {
            Arc::clone(&self.guard)
        } else {
            Arc::new(Guard::new(
                config.guard.clone(),
                config.issuer.format.prefix(),
            ))
        };
        let breakers = self
            .breakers
            .carried_to(&self.config.upstreams, &config.upstreams);
        Gateway {
            analytics_ids: analytics_ids(&self.node.usage, &config),
            config,
            metrics,
            guard,
            breakers,
            node: Arc::clone(&self.node),
        }
    }

    /// Authenticates a presented key: format, digest, lookup, state, expiry, client.
    ///
    /// # Errors
    /// A 401-class [`Reason`].
    pub fn authenticate(&self, key: &str) -> Result<Admitted, Reason> {
        self.authenticate_digest(&self.digest_presented(key)?)
    }

    /// The digest of a presented key, after the offline format check (the profile's format
    /// or a `[[keys.legacy]]` shape): a key of neither shape is never digested nor looked up.
    ///
    /// # Errors
    /// `MalformedKey`.
    pub fn digest_presented(&self, key: &str) -> Result<KeyDigest, Reason> {
        self.config
            .issuer
            .digest_presented(key)
            .map_err(|_| Reason::MalformedKey)
    }

    /// Authenticates a key by its digest: lookup, state, expiry, client.
    ///
    /// # Errors
    /// A 401-class [`Reason`].
    pub fn authenticate_digest(&self, digest: &KeyDigest) -> Result<Admitted, Reason> {
        let now = self.clock.now();
        self.replica
            .lookup(digest, |entry, last_used| {
                let client = entry.client.load();
                entry.policy.check(now, client.policy.active)?;
                self.last_used.touch(entry, last_used, now);
                Ok(Admitted {
                    key: entry.clone(),
                    client,
                })
            })
            .ok_or(Reason::UnknownKey)?
    }

    /// Key-sharing detection's step for an authorized caller (REST requests and WebSocket opens
    /// alike): one branch for a plan without `[plans.NAME.sharing]`.
    #[inline]
    pub fn observe_sharing(&self, who: &Admitted, caller: crate::policy::guard::Caller<'_>) {
        if let Some(rule) = who.client.sharing {
            self.sharing
                .observe(&who.key, rule, self.guard.source(caller));
        }
    }

    /// Authorizes an admitted caller for a route: scopes, sport, bookmaker, plan features.
    ///
    /// # Errors
    /// A 403-class [`Denial`], or `duplicate_parameter` for a gated query parameter sent twice.
    ///
    /// The sport and bookmaker it read are returned, so a caller that keeps them (a WebSocket
    /// session re-checks them later) does not read the request again.
    ///
    /// `source` gives the caller's address (the guard's rule: a trusted proxy's report, else
    /// the peer); it is asked only for a key with a CIDR allowlist.
    pub fn authorize<'a>(
        &self,
        who: &Admitted,
        route: &Route,
        params: &crate::policy::routes::Params<'_, 'a>,
        query: Option<&'a str>,
        source: impl FnOnce() -> IpAddr,
    ) -> Result<Named<'a>, Denial> {
        // A key that is just its client (nearly all) pays this pointer test and nothing else.
        if let Some(rules) = &who.key.rules {
            key_address(rules, source)?;
        }
        let named = Named::read(route, params, query)?;
        authorize(
            &who.client.policy,
            &route.needs,
            RequestFacts {
                sport: named.sport,
                bookmaker: named.bookmaker.as_deref(),
                params: params.values(),
            },
        )?;
        if let Some(rules) = &who.key.rules {
            rules.authorize(&route.needs, params.values())?;
        }
        // After authorization, so a caller learns of a suspension only for what its key may
        // reach. One atomic load while none is in force.
        if self.suspensions.is_on() {
            self.suspended(who, route, params.values(), &named)?;
        }
        Ok(named)
    }
}

/// Refuses `ip_not_allowed` a caller outside a restricted key's CIDR allowlist (the cold half of
/// [`Gateway::authorize`]; verify asks it too).
///
/// # Errors
/// The `ip_not_allowed` [`Denial`] (no subject: the caller is not told the allowlist).
#[cold]
pub(crate) fn key_address(rules: &KeyRules, source: impl FnOnce() -> IpAddr) -> Result<(), Denial> {
    if rules.source.allowed_cidrs.is_empty() || rules.allows_ip(source()) {
        Ok(())
    } else {
        Err(Denial::new(Reason::IpNotAllowed))
    }
}

impl Gateway {
    /// Refuses `suspended` a request that a suspension holds (the cold half of
    /// [`Gateway::authorize`]).
    ///
    /// # Errors
    /// The `suspended` [`Denial`] carrying the operator's message.
    #[cold]
    pub(crate) fn suspended(
        &self,
        who: &Admitted,
        route: &Route,
        params: &[&str],
        named: &Named<'_>,
    ) -> Result<(), Denial> {
        let request = keygate_core::suspension::Request {
            client: who.client.policy.id.as_str(),
            route: &route.name,
            needs: &route.needs,
            params,
            sport: named.sport,
            bookmaker: named.bookmaker.as_deref(),
        };
        match self.suspensions.denial(&request, self.clock.now()) {
            Some(denial) => Err(denial),
            None => Ok(()),
        }
    }

    /// Checks the limits that apply to an admitted caller on a route. `Ok(None)` when none
    /// apply; `Ok(Some)` with the deciding limit and its state otherwise.
    ///
    /// # Errors
    /// `LimiterUnavailable` when the shared limiter failed and the policy is fail-closed.
    pub async fn check_limits(
        &self,
        who: &Admitted,
        route: &Route,
        now: Timestamp,
    ) -> Result<Option<(Limit, LimitState)>, Reason> {
        let checks = caller_checks(who, Some(route), &self.quotas, now);
        let Some(verdict) = self.verdict(&checks, now).await? else {
            return Ok(None);
        };
        if !verdict.crossed.is_empty() {
            self.announce_crossings(who, &checks, verdict.crossed, now);
        }
        Ok(deciding(&checks, verdict))
    }

    /// Hands the client quota windows this request took past 80 % or 100 % to the background
    /// task that enqueues their events (`state::quotas`). Only the client's own (plan) quotas
    /// announce: a route's are the operator's, not the customer's budget.
    #[cold]
    fn announce_crossings(
        &self,
        who: &Admitted,
        checks: &[Check],
        crossed: keygate_limits::Crossings,
        now: Timestamp,
    ) {
        let plan = who.client.limits.limits.len();
        for (i, check) in checks.iter().enumerate().take(plan) {
            let LimitKind::Quota { window } = check.limit.kind else {
                continue;
            };
            let (p80, p100) = crossed.of(i);
            for (hit, event) in [(p80, EventType::Quota80), (p100, EventType::Quota100)] {
                if !hit {
                    continue;
                }
                let allowance = check.limit.max.get();
                let used = crossed.used(i).unwrap_or(allowance);
                self.quotas.crossed(Crossing {
                    client: who.client.policy.id.clone(),
                    window,
                    window_start: window.bounds(now).0,
                    used,
                    allowance,
                    event,
                });
            }
        }
    }

    /// Checks a public route's limits, counted per source address (`by = "source"`).
    ///
    /// # Errors
    /// `LimiterUnavailable` when the shared limiter failed and the policy is fail-closed.
    pub async fn check_source_limits(
        &self,
        route: &Route,
        source: std::net::IpAddr,
        now: Timestamp,
    ) -> Result<Option<(Limit, LimitState)>, Reason> {
        if route.compiled_limits.is_empty() {
            return Ok(None);
        }
        self.count(&source_checks(route, source), now).await
    }

    /// Counts `checks` (nothing when there are none) and says which limit decided.
    async fn count(
        &self,
        checks: &[Check],
        now: Timestamp,
    ) -> Result<Option<(Limit, LimitState)>, Reason> {
        Ok(self
            .verdict(checks, now)
            .await?
            .and_then(|verdict| deciding(checks, verdict)))
    }

    /// The limiter's answer to `checks` (none asked when there are none).
    async fn verdict(
        &self,
        checks: &[Check],
        now: Timestamp,
    ) -> Result<Option<keygate_limits::Verdict>, Reason> {
        if checks.is_empty() {
            return Ok(None);
        }
        self.limits
            .check(checks, now)
            .await
            .map(Some)
            .map_err(|_| Reason::LimiterUnavailable)
    }

    /// What [`Gateway::check_limits`] would report for an admitted caller, consuming nothing:
    /// the client's limits and, with a route, the route's. `None` when none apply or the
    /// limiter cannot answer (a peek never refuses anything).
    pub async fn peek_limits(
        &self,
        who: &Admitted,
        route: Option<&Route>,
        now: Timestamp,
    ) -> Option<(Limit, LimitState)> {
        let checks = caller_checks(who, route, &self.quotas, now);
        if checks.is_empty() {
            return None;
        }
        deciding(&checks, self.limits.peek(&checks, now).await.ok()?)
    }

    /// The budget an answer that consumed nothing reports under `when = "always"`
    /// (`ratelimit::HeaderStyle::always`), as the window of the IETF policy and the state:
    ///
    /// - an admitted caller: its limits for the route, peeked;
    /// - a caller without a key on a public route with `by = "source"` limits: those, peeked;
    /// - any other caller without a valid key (401s, and refusals before a route is known):
    ///   the brute-force guard's budget of failed authentications for its address, the only
    ///   budget such a caller spends; during a cool-down (the guard's 429) the cool-down the
    ///   answer quotes.
    ///
    /// `None` when nothing applies (no limits, the guard off, the limiter unavailable).
    pub async fn budget(
        &self,
        who: Option<&Admitted>,
        route: Option<&Route>,
        caller: Caller<'_>,
        reason: Option<Reason>,
        now: Timestamp,
    ) -> Option<(u64, LimitState)> {
        let guard_window = || self.guard.config().window.as_secs().max(1);
        if let Some(who) = who {
            return self
                .peek_limits(who, route, now)
                .await
                .map(|(limit, state)| (limit.window_seconds(), state));
        }
        if reason == Some(Reason::RateLimited) {
            // The guard's cool-down: what its refusal quotes (`Guard::facts`).
            let facts = self.guard.facts(now);
            let state = LimitState {
                allowed: false,
                limit: facts.limit,
                remaining: 0,
                reset: Timestamp::from_millis(
                    i64::try_from(facts.reset.saturating_mul(1000)).unwrap_or(i64::MAX),
                ),
                retry_after: std::time::Duration::from_secs(facts.retry_after),
            };
            return Some((guard_window(), state));
        }
        if let Some(route) = route.filter(|r| r.public && !r.compiled_limits.is_empty()) {
            let source = self.guard.source(caller);
            return self
                .peek_source_limits(route, source, now)
                .await
                .map(|(limit, state)| (limit.window_seconds(), state));
        }
        self.guard
            .budget(caller, now)
            .map(|state| (guard_window(), state))
    }

    /// What [`Gateway::check_source_limits`] would report, consuming nothing.
    async fn peek_source_limits(
        &self,
        route: &Route,
        source: std::net::IpAddr,
        now: Timestamp,
    ) -> Option<(Limit, LimitState)> {
        let checks = source_checks(route, source);
        deciding(&checks, self.limits.peek(&checks, now).await.ok()?)
    }

    pub fn gauges(&self) -> Gauges {
        let now = self.clock.now();
        let secs_since = |t: Option<Timestamp>| {
            t.map_or(0.0, |t| {
                (now.as_millis() - t.as_millis()).max(0) as f64 / 1000.0
            })
        };
        Gauges {
            replica_keys: self.replica.key_count(),
            replica_clients: self.replica.client_count(),
            feed_version: self.replica.version(),
            feed_lag_seconds: secs_since(self.store.last_ok()),
            store_up: self.store.is_up(),
            store_down_seconds: secs_since(self.store.down_since()),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            limiter: Some(self.limits.stats()),
        }
    }
}

/// The checks of an admitted caller: its client's limits, then the route's (if any). Inline
/// for the usual handful of limits: no allocation per request. A weighted route (`cost`)
/// spends its cost of every quota; a client with a top-up or a reset in force gets it on its
/// plan's quotas (`state::quotas`). Neither costs more than a compare and a load when unused.
fn caller_checks(
    who: &Admitted,
    route: Option<&Route>,
    quotas: &QuotaSet,
    now: Timestamp,
) -> SmallVec<[Check; 4]> {
    let mut checks: SmallVec<[Check; 4]> = SmallVec::new();
    let (client, key) = (&who.client.limit_subject, &who.key.limit_subject);
    let limits = &who.client.limits;
    ratelimit::checks(&mut checks, &limits.limits, limits.by, client, key);
    if let Some(route) = route {
        ratelimit::checks(
            &mut checks,
            &route.compiled_limits,
            route.limits.by,
            client,
            key,
        );
    }
    if quotas.is_on() {
        let plan = limits.limits.len();
        quotas.apply(&who.client.policy.id, &mut checks[..plan], now);
    }
    if let Some(cost) = route.map(|r| r.cost).filter(|&c| c > 1) {
        for check in &mut checks {
            check.cost = cost;
        }
    }
    checks
}

/// The checks of a public route's limits for a source address.
fn source_checks(route: &Route, source: std::net::IpAddr) -> SmallVec<[Check; 4]> {
    let subject = smol_str::format_smolstr!("s:{source}");
    let mut checks = SmallVec::new();
    let by = route.limits.by;
    ratelimit::checks(&mut checks, &route.compiled_limits, by, &subject, &subject);
    checks
}

/// The limit that decided a verdict over `checks`, with its state.
fn deciding(checks: &[Check], verdict: keygate_limits::Verdict) -> Option<(Limit, LimitState)> {
    verdict.binding.map(|(i, state)| (checks[i].limit, state))
}

/// The sport and bookmaker a request names, read as its route says: the one reading for HTTP,
/// forward-auth and WebSocket alike.
#[derive(Debug)]
pub struct Named<'a> {
    pub sport: Option<&'a str>,
    pub bookmaker: Option<Cow<'a, str>>,
}

impl<'a> Named<'a> {
    /// # Errors
    /// `duplicate_parameter` (about the parameter's name) when a gated query parameter
    /// appears more than once.
    pub fn read(
        route: &Route,
        params: &crate::policy::routes::Params<'_, 'a>,
        query: Option<&'a str>,
    ) -> Result<Named<'a>, Denial> {
        let sport = route.sport_param.as_deref().and_then(|p| params.get(p));
        let bookmaker = match &route.bookmaker {
            None => None,
            Some(BookmakerSource::Path(p)) => params.get(p).map(Cow::Borrowed),
            Some(BookmakerSource::Query(q)) => {
                query_param(query, q).map_err(|_| Denial::about(Reason::DuplicateParameter, q))?
            }
        };
        Ok(Named { sport, bookmaker })
    }
}

/// A gated query parameter that appears more than once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the query parameter appears more than once")]
pub(crate) struct Repeated;

/// The value of a gated query parameter, percent-decoded (empty counts as absent).
///
/// Upstreams disagree on a repeated parameter (first wins, last wins, a list) and on how they
/// read its name, so a gated parameter must have one reading: its name is matched after
/// percent-decoding and without regard to ASCII case (`Bookm%61ker`), pairs are split at `;`
/// as well as `&` (as some frameworks do), and a name seen twice is refused, never guessed.
///
/// # Errors
/// [`Repeated`] when the parameter appears more than once, even with an empty value.
pub(crate) fn query_param<'q>(
    query: Option<&'q str>,
    name: &str,
) -> Result<Option<Cow<'q, str>>, Repeated> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut found: Option<&'q str> = None;
    let mut seen = false;
    for pair in query.split(['&', ';']) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let matches = if k.contains('%') {
            percent_encoding::percent_decode_str(k)
                .decode_utf8_lossy()
                .eq_ignore_ascii_case(name)
        } else {
            k.eq_ignore_ascii_case(name)
        };
        if !matches {
            continue;
        }
        if seen {
            return Err(Repeated);
        }
        seen = true;
        found = Some(v);
    }
    Ok(found
        .filter(|v| !v.is_empty())
        .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        fn q(query: &str) -> Result<Option<Cow<'_, str>>, Repeated> {
            query_param(Some(query), "bookmaker")
        }
        assert_eq!(q("a=1&bookmaker=bet365"), Ok(Some("bet365".into())));
        assert_eq!(q("bookmaker="), Ok(None));
        assert_eq!(query_param(None, "bookmaker"), Ok(None));
        assert_eq!(q("bookmaker=bet%33%365"), Ok(Some("bet365".into())));
        // Every spelling of a second copy is refused.
        for polluted in [
            "bookmaker=bet365&bookmaker=pinnacle",
            "bookm%61ker=pinnacle&bookmaker=bet365",
            "bookmaker=bet365&BOOKMAKER=pinnacle",
            "x=1;bookmaker=pinnacle&bookmaker=bet365",
            "bookmaker=&bookmaker=pinnacle",
            "bookmaker&bookmaker=pinnacle",
        ] {
            assert_eq!(q(polluted), Err(Repeated), "{polluted}");
        }
        assert_eq!(q("bookmakers=a&bookmaker=b"), Ok(Some("b".into())));
    }
}
