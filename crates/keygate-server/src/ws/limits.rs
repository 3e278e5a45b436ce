//! Connection limits of a session: leased counters for open connections per key and per
//! client (released on close, expiring if this node dies), and the daily connection quota.

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
    gw: Arc<Gateway>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // Outside a runtime (the process is ending) the leases expire at their TTL instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = Leases {
            held: std::mem::take(&mut self.held),
            id: self.id,
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

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
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
        true
    }

    /// Gives every lease back now (a session's end awaits it, so its place is free when the
    /// close completes).
    pub(crate) async fn release(&mut self) {
        for key in std::mem::take(&mut self.held) {
            self.gw.limits.release_lease(&key, self.id).await;
        }
    }
}
