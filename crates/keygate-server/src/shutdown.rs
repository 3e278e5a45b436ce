//! Graceful shutdown: one signal every long-lived piece of work can watch, and a count of the
//! work that must end before the process exits.
//!
//! On SIGTERM the gateway stops accepting, lets each HTTP connection finish its in-flight
//! request (idle keep-alive connections close at once), and waits for every [`Hold`] to be
//! released, all within `[server] shutdown_grace`; what is left then is cut. Long-lived
//! sessions (WebSocket, streams) take a [`Hold`] and watch [`Drain::stopping`] to end
//! themselves cleanly, e.g. with a close frame that gives the reason.

use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The shutdown signal and the work that holds it open.
#[derive(Debug, Default)]
pub struct Drain {
    token: CancellationToken,
    tracker: TaskTracker,
}

/// Keeps the process from exiting (up to the grace period) while it lives.
#[derive(Debug)]
pub struct Hold(#[allow(dead_code)] TaskTrackerToken);

/// Why shutdown is under way, for close frames and logs.
pub const REASON: &str = "server shutting down";

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

    /// Begins shutdown: every watcher of [`Drain::stopping`] wakes.
    pub fn begin(&self) {
        self.tracker.close();
        self.token.cancel();
    }

    /// Waits until every [`Hold`] is released, up to `grace`; the number still held after it.
    pub async fn wait(&self, grace: Duration) -> usize {
        match tokio::time::timeout(grace, self.tracker.wait()).await {
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
        drain.begin();
        assert!(drain.is_stopping());
        assert_eq!(drain.wait(Duration::from_secs(1)).await, 0);
        session.await.unwrap();

        let stuck = Drain::new();
        let _hold = stuck.hold();
        stuck.begin();
        assert_eq!(stuck.wait(Duration::from_secs(1)).await, 1);
    }
}
