//! A watch channel's changes, cheap to poll on every wake of a busy task (an HTTP connection,
//! a WebSocket relay).
//!
//! `watch::Receiver::changed()` registers the task with the channel's `Notify` (a mutex and a
//! list) when it is first polled, takes that mutex again on every later poll, and unregisters
//! when dropped. In a `select!` rebuilt on every turn of a loop that is a registration per turn:
//! `perf` put it at a fifth of the WebSocket relay's user time (BENCHMARKS.md). Here one
//! `changed()` stays registered while nothing changes, and it is polled again only when
//! `has_changed` (one atomic load) says the value moved; the send wakes the task through the
//! waker registered by the first poll.

use std::future::poll_fn;
use std::task::{ready, Context, Poll};

use tokio::sync::watch::{self, error::RecvError};
use tokio_util::sync::ReusableBoxFuture;

type Next<T> = (Result<(), RecvError>, watch::Receiver<T>);

/// The changes of one watch channel, for one task.
pub(crate) struct Changes<T> {
    /// Read for `has_changed` and the current value; never awaited.
    probe: watch::Receiver<T>,
    /// The pending `changed()`, owning its receiver.
    next: ReusableBoxFuture<'static, Next<T>>,
    /// Whether `next` was polled (so registered) since it was made.
    armed: bool,
}

async fn next_change<T>(mut rx: watch::Receiver<T>) -> Next<T> {
    let changed = rx.changed().await;
    (changed, rx)
}

impl<T: Send + Sync + 'static> Changes<T> {
    /// Changes after what `rx` has seen.
    pub(crate) fn new(rx: watch::Receiver<T>) -> Self {
        Self {
            probe: rx.clone(),
            next: ReusableBoxFuture::new(next_change(rx)),
            armed: false,
        }
    }

    /// Ready once the value changed since the last `Ready` (or since [`Self::new`]); an error
    /// once the sender is gone, and on every poll after that.
    pub(crate) fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        if self.armed && !self.probe.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.armed = true;
        let (changed, rx) = ready!(self.next.poll(cx));
        // Seen up to where `rx` has: a later send shows in `has_changed` again, and the new
        // `changed()` is polled (registered) on the next call in any case.
        self.probe.mark_unchanged();
        self.next.set(next_change(rx));
        self.armed = false;
        Poll::Ready(changed)
    }

    /// [`Self::poll_changed`] as a future (cheap to make: it registers nothing itself).
    pub(crate) fn changed(
        &mut self,
    ) -> impl std::future::Future<Output = Result<(), RecvError>> + '_ {
        poll_fn(move |cx| self.poll_changed(cx))
    }

    /// The current value.
    pub(crate) fn borrow(&self) -> watch::Ref<'_, T> {
        self.probe.borrow()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Changes;
    use tokio::sync::watch;

    #[tokio::test]
    async fn each_change_is_seen_once_and_a_waiting_task_is_woken() {
        let (tx, rx) = watch::channel(0u32);
        let mut changes = Changes::new(rx);
        // Nothing changed: pending (and now registered).
        let pending = tokio::time::timeout(Duration::from_millis(20), changes.changed()).await;
        assert!(pending.is_err());
        tx.send(1).unwrap();
        changes.changed().await.unwrap();
        assert_eq!(*changes.borrow(), 1);
        // Seen: pending again until the next send, which wakes a task waiting on it.
        let waiter = tokio::spawn(async move {
            changes.changed().await.unwrap();
            let seen = *changes.borrow();
            (changes, seen)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        tx.send(2).unwrap();
        let (mut changes, seen) = waiter.await.unwrap();
        assert_eq!(seen, 2);
        // Two sends before a poll are one change; the sender's drop is an error from then on.
        tx.send(3).unwrap();
        tx.send(4).unwrap();
        changes.changed().await.unwrap();
        assert_eq!(*changes.borrow(), 4);
        drop(tx);
        assert!(changes.changed().await.is_err());
        assert!(changes.changed().await.is_err());
    }

    #[tokio::test]
    async fn a_change_before_the_first_poll_is_not_lost() {
        let (tx, rx) = watch::channel("a");
        let mut changes = Changes::new(rx);
        tx.send("b").unwrap();
        changes.changed().await.unwrap();
        assert_eq!(*changes.borrow(), "b");
    }
}
