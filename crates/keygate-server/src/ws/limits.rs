//! Connection limits of a session: leased counters for open connections per key and per
//! client (released on close, expiring if this node dies), the daily connection quota, and the
//! plan's channel caps: per session (counted here) and per client (one lease per channel
//! held, on the same lease sets, so the cap holds across nodes when limits are shared).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::limit::{Limit, LimitState, Window};
use keygate_limits::{Check, LimitKey};

use crate::policy::ratelimit::LimitBy;
use crate::policy::ws::WsLimits;
use crate::state::gateway::{Admitted, Gateway};

/// Counter slots of WebSocket limits: between the plan's (0..5) and the routes' (from
/// `ROUTE_SLOTS`).
const SLOT_PER_KEY: u32 = 8;
const SLOT_PER_CLIENT: u32 = 9;
const SLOT_PER_DAY: u32 = 10;
const SLOT_CHANNELS: u32 = 11;

/// A connection refused by a limit, with the limit's state for the answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused {
    pub state: LimitState,
    /// The limit's window for the IETF `RateLimit-Policy` (`w`): a day for the daily quota,
    /// the lease's lifetime for a connection cap.
    pub window_seconds: u64,
    /// The shared limiter failed and the policy is fail-closed.
    pub unavailable: bool,
}

/// The leases one session holds: given back by [`Leases::release`] when the session ends, or
/// on drop by any path that forgot to (a task then releases them), so no error path has to
/// remember and no place stays taken until its lease expires.
#[derive(Debug)]
pub(crate) struct Leases {
    held: Vec<LimitKey>,
    id: u64,
    /// The client's channel lease set, when its plan caps channels per client.
    channel_key: Option<LimitKey>,
    /// Channels held under `channel_key`, each with its own lease id.
    channels: Vec<(String, u64)>,
    gw: Arc<Gateway>,
}

/// What of a subscribe fits the plan's channel caps.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fit {
    /// Channels the session may now hold (those it held already included), in asked order.
    pub kept: Vec<String>,
    /// Channels past a cap, refused.
    pub over: Vec<String>,
    /// The cap that refused them (the first one reached).
    pub limit: u64,
    /// The shared limiter failed (fail-closed): `over` holds every channel not yet held.
    pub unavailable: bool,
}

impl Drop for Leases {
    fn drop(&mut self) {
        if self.held.is_empty() && self.channels.is_empty() {
            return;
        }
        // Outside a runtime (the process is ending) the leases expire at their TTL instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = Leases {
            held: std::mem::take(&mut self.held),
            id: self.id,
            channel_key: self.channel_key.take(),
            channels: std::mem::take(&mut self.channels),
            gw: Arc::clone(&self.gw),
        };
        runtime.spawn(async move { rest.release().await });
    }
}

fn lease_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS provides randomness");
    u64::from_le_bytes(b)
}

fn unavailable() -> Refused {
    Refused {
        state: LimitState {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset: keygate_core::Timestamp::from_millis(0),
            retry_after: Duration::from_secs(1),
        },
        window_seconds: 0,
        unavailable: true,
    }
}

impl Leases {
    /// Takes the connection leases and counts the connection against the daily quota; on any
    /// refusal, gives back what was taken and consumes nothing.
    ///
    /// # Errors
    /// [`Refused`] with the deciding limit's state.
    pub(crate) async fn acquire(
        gw: &Arc<Gateway>,
        who: &Admitted,
        limits: &WsLimits,
    ) -> Result<Leases, Refused> {
        let ttl = gw.config.ws.profile.lease_ttl;
        let mut leases = Leases {
            held: Vec::with_capacity(2),
            id: lease_id(),
            channel_key: limits
                .channels_per_client
                .map(|_| LimitKey::new(who.client.limit_subject.clone(), SLOT_CHANNELS)),
            channels: Vec::new(),
            gw: Arc::clone(gw),
        };
        let wanted = [
            (
                limits.connections_per_key,
                &who.key.limit_subject,
                SLOT_PER_KEY,
            ),
            (
                limits.connections_per_client,
                &who.client.limit_subject,
                SLOT_PER_CLIENT,
            ),
        ];
        for (max, subject, slot) in wanted {
            let Some(max) = max else { continue };
            let key = LimitKey::new(subject.clone(), slot);
            let now = gw.clock.now();
            match gw
                .limits
                .acquire_lease(&key, max.get(), leases.id, ttl, now)
                .await
            {
                Ok(state) if state.allowed => leases.held.push(key),
                Ok(state) => {
                    leases.release().await;
                    return Err(Refused {
                        state,
                        window_seconds: ttl.as_secs().max(1),
                        unavailable: false,
                    });
                }
                Err(_) => {
                    leases.release().await;
                    return Err(unavailable());
                }
            }
        }
        if let Some(per_day) = limits.connections_per_day {
            let subject = match limits.connections_per_day_by {
                // compile_ws accepts only `client` and `key` here.
                LimitBy::Client | LimitBy::Source => &who.client.limit_subject,
                LimitBy::Key => &who.key.limit_subject,
            };
            let check = Check::new(
                LimitKey::new(subject.clone(), SLOT_PER_DAY),
                Limit::quota(Window::Day, per_day),
            );
            match gw.limits.check(&[check], gw.clock.now()).await {
                Ok(v) if v.allowed => {}
                Ok(v) => {
                    leases.release().await;
                    let (_, state) = v.binding.expect("a denial names its limit");
                    return Err(Refused {
                        state,
                        window_seconds: Window::Day.seconds_hint(),
                        unavailable: false,
                    });
                }
                Err(_) => {
                    leases.release().await;
                    return Err(unavailable());
                }
            }
        }
        Ok(leases)
    }

    /// Whether there is nothing to renew, now or later (no connection lease, no channel cap).
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.channel_key.is_none()
    }

    /// Fits `wanted` (deduplicated, authorized channels of one subscribe) to the plan's caps:
    /// channels the session holds already are kept at no cost; new ones are kept in order while
    /// the session's count stays within `channels_per_session` and a per-client lease is
    /// granted, and the rest are refused. `held` tells whether the session holds a channel,
    /// `held_count` how many it holds.
    pub(crate) async fn fit_channels(
        &mut self,
        limits: &WsLimits,
        held: impl Fn(&str) -> bool,
        held_count: usize,
        wanted: Vec<String>,
    ) -> Fit {
        let mut fit = Fit::default();
        let room = limits.channels_per_session.map(|cap| {
            usize::try_from(cap.get())
                .unwrap_or(usize::MAX)
                .saturating_sub(held_count)
        });
        let mut added = 0usize;
        let ttl = self.gw.config.ws.profile.lease_ttl;
        for channel in wanted {
            if held(&channel) {
                fit.kept.push(channel);
                continue;
            }
            if !fit.over.is_empty() || room.is_some_and(|room| added >= room) {
                if fit.over.is_empty() {
                    fit.limit = limits.channels_per_session.map_or(0, NonZeroU64::get);
                }
                fit.over.push(channel);
                continue;
            }
            if let (Some(key), Some(max)) = (&self.channel_key, limits.channels_per_client) {
                let id = lease_id();
                let now = self.gw.clock.now();
                match self
                    .gw
                    .limits
                    .acquire_lease(key, max.get(), id, ttl, now)
                    .await
                {
                    Ok(state) if state.allowed => self.channels.push((channel.clone(), id)),
                    Ok(_) => {
                        fit.limit = max.get();
                        fit.over.push(channel);
                        continue;
                    }
                    Err(_) => {
                        fit.unavailable = true;
                        fit.over.push(channel);
                        continue;
                    }
                }
            }
            added += 1;
            fit.kept.push(channel);
        }
        fit
    }

    /// Gives back the per-client leases of channels the session no longer holds.
    pub(crate) async fn release_channels(&mut self, gone: &[String]) {
        let Some(key) = &self.channel_key else { return };
        let mut freed = Vec::new();
        self.channels.retain(|(c, id)| {
            let keep = !gone.contains(c);
            if !keep {
                freed.push(*id);
            }
            keep
        });
        for id in freed {
            self.gw.limits.release_lease(key, id).await;
        }
    }

    /// Renews every lease; false when one is lost and cannot be taken again (the session must
    /// end: someone else holds the place it had).
    pub(crate) async fn renew(&self, gw: &Gateway, limits: &WsLimits) -> bool {
        let ttl = gw.config.ws.profile.lease_ttl;
        for key in &self.held {
            let now = gw.clock.now();
            match gw.limits.renew_lease(key, self.id, ttl, now).await {
                Ok(true) => {}
                // Fail-closed with Redis down: keep what is open rather than cut live sessions.
                Err(_) => {}
                Ok(false) => {
                    let max = if key.slot == SLOT_PER_KEY {
                        limits.connections_per_key
                    } else {
                        limits.connections_per_client
                    };
                    let Some(max) = max else { continue };
                    match gw
                        .limits
                        .acquire_lease(key, max.get(), self.id, ttl, now)
                        .await
                    {
                        Ok(state) if !state.allowed => return false,
                        _ => {}
                    }
                }
            }
        }
        // A channel's lease lost (this node stalled past its TTL) and taken by another
        // session meanwhile: the client holds more than its cap, so this session ends.
        if let (Some(key), Some(max)) = (&self.channel_key, limits.channels_per_client) {
            for (_, id) in &self.channels {
                let now = gw.clock.now();
                if let Ok(false) = gw.limits.renew_lease(key, *id, ttl, now).await {
                    match gw.limits.acquire_lease(key, max.get(), *id, ttl, now).await {
                        Ok(state) if !state.allowed => return false,
                        _ => {}
                    }
                }
            }
        }
        true
    }

    /// Gives every lease back now (a session's end awaits it, so its place is free when the
    /// close completes).
    pub(crate) async fn release(&mut self) {
        for key in std::mem::take(&mut self.held) {
            self.gw.limits.release_lease(&key, self.id).await;
        }
        if let Some(key) = &self.channel_key {
            for (_, id) in std::mem::take(&mut self.channels) {
                self.gw.limits.release_lease(key, id).await;
            }
        }
    }
}
