//! Graceful shutdown: one signal every long-lived piece of work can watch, and a count of the
//! work that must end before the process exits.
//!
//! On SIGTERM the gateway stops accepting, lets each HTTP connection finish its in-flight
//! request (idle keep-alive connections, and connections that have sent nothing yet, close at
//! once), and waits for every [`Hold`] to be released, all within `[server] shutdown_grace`;
//! what is left then is cut. Long-lived sessions (WebSocket, streams) take a [`Hold`] and
//! watch [`Drain::stopping`] to end themselves cleanly, e.g. with a close frame that gives the
//! reason.
//!
//! Every wait of the shutdown ends by one of two instants fixed when it begins, never by a
//! grace counted again from wherever it happens to start (two such waits in a row took twice
//! the grace): [`Drain::drain_deadline`] for connections and sessions, and the end of the
//! grace, [`Drain::deadline`], for the last usage write that follows them.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the work that holds it open.
#[derive(Debug, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
    /// When shutdown began and the grace it was given.
    began: OnceLock<(Instant, Duration)>,
}

/// The part of the grace kept for the last usage write: a fifth, at most a second. Draining
/// ends this much before the grace does, so requests that outlive it cannot leave the write
/// no time.
pub(crate) fn write_reserve(grace: Duration) -> Duration {
    (grace / 5).min(Duration::from_secs(1))
}

/// Keeps the process from exiting (up to the grace period) while it lives.
#[derive(Debug)]
pub struct Hold(#[allow(dead_code)] TaskTrackerToken);

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Registers a piece of work that shutdown waits for.
    pub fn hold(&self) -> Hold {
        Hold(self.tracker.token())
    }

    /// Resolves once shutdown has begun.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// An owned handle on the signal, for tasks that outlive a borrow of the gateway.
    pub fn signal(&self) -> CancellationToken {
        self.token.child_token()
    }

    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins shutdown, to be over within `grace` from now: every watcher of
    /// [`Drain::stopping`] wakes. A second call changes nothing.
    pub fn begin(&self, grace: Duration) {
        let _ = self.began.set((Instant::now(), grace));
        self.tracker.close();
        self.token.cancel();
    }

    /// When the whole shutdown must be over: the grace after [`Drain::begin`] (or from now if
    /// shutdown has not begun).
    pub fn deadline(&self, grace: Duration) -> Instant {
        let (began, grace) = self.began.get().copied().unwrap_or((Instant::now(), grace));
        began + grace
    }

    /// When connections and sessions have had their time: the deadline less the
    /// [`write_reserve`].
    pub fn drain_deadline(&self, grace: Duration) -> Instant {
        let grace = self.began.get().map_or(grace, |&(_, g)| g);
        self.deadline(grace) - write_reserve(grace)
    }

    /// Waits until every [`Hold`] is released, up to `deadline`; the number still held then.
    pub async fn wait_until(&self, deadline: Instant) -> usize {
        match tokio::time::timeout_at(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }

    /// Work currently holding shutdown open.
    pub fn held(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_delay_shutdown_until_released_or_the_grace_ends() {
        let drain = std::sync::Arc::new(Drain::new());
        let hold = drain.hold();
        let session = {
            let drain = std::sync::Arc::clone(&drain);
            tokio::spawn(async move {
                drain.stopping().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(hold);
            })
        };
        assert!(!drain.is_stopping());
        drain.begin(Duration::from_secs(1));
        assert!(drain.is_stopping());
        assert_eq!(
            drain.wait_until(drain.drain_deadline(Duration::ZERO)).await,
            0
        );
        session.await.unwrap();

        let stuck = Drain::new();
        let _hold = stuck.hold();
        let began = Instant::now();
        stuck.begin(Duration::from_secs(10));
        let deadline = stuck.drain_deadline(Duration::ZERO);
        assert_eq!(
            deadline,
            began + Duration::from_secs(9),
            "a second kept for the write"
        );
        assert_eq!(stuck.wait_until(deadline).await, 1);
        assert_eq!(Instant::now(), deadline);
        // A later wait ends by the same instant, not a grace counted again.
        assert_eq!(stuck.wait_until(deadline).await, 1);
        assert_eq!(Instant::now(), deadline);
        assert_eq!(
            stuck.deadline(Duration::ZERO),
            began + Duration::from_secs(10)
        );
    }

    #[test]
    fn the_write_reserve_is_a_fifth_of_the_grace_and_at_most_a_second() {
        assert_eq!(
            write_reserve(Duration::from_millis(300)),
            Duration::from_millis(60)
        );
        assert_eq!(
            write_reserve(Duration::from_secs(15)),
            Duration::from_secs(1)
        );
    }
}
