//! What a delayed session holds (`crate::policy::delay`): upstream messages in arrival order,
//! each stamped with the instant it arrived, released at arrival + the plan's delay.
//!
//! One queue and one timer per session, never one per message: the relay sleeps until the
//! oldest message is due. The delay is read when a message is released, not when it is held,
//! so a plan change reaches the messages already held: a shorter delay (or none) releases
//! them sooner, a longer one holds them longer, and arrival order is kept either way.
//!
//! The bound: at most `[profile.ws] delay_buffer_bytes` of payload and
//! `delay_buffer_messages` messages. A message past it is not held and the session is closed
//! (`delay_overflow`): dropping messages instead would leave a client of an odds or scores
//! feed with a state built on deltas it never got, while a close makes it reconnect and
//! resubscribe, which gets it a fresh snapshot.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::policy::delay::DelayBuffer;

/// Held upstream messages, oldest first.
#[derive(Debug)]
pub(crate) struct Held {
    queue: VecDeque<(Instant, Message)>,
    bytes: usize,
    bound: DelayBuffer,
}

/// Holding one more message would pass the session's bound.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full {
    pub messages: usize,
    pub bytes: usize,
}

impl Held {
    /// An empty queue; it allocates on the first message held, so an undelayed session
    /// costs nothing.
    pub(crate) fn new(bound: DelayBuffer) -> Held {
        Held {
            queue: VecDeque::new(),
            bytes: 0,
            bound,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Holds `msg`, which arrived at `at` (not before the last one held).
    ///
    /// # Errors
    /// [`Full`] (and the message is not held) when it would pass the bound.
    pub(crate) fn push(&mut self, at: Instant, msg: Message) -> Result<(), Full> {
        let bytes = self.bytes.saturating_add(msg.len());
        if self.queue.len() >= self.bound.messages || bytes > self.bound.bytes {
            return Err(Full {
                messages: self.queue.len(),
                bytes: self.bytes,
            });
        }
        self.bytes = bytes;
        self.queue.push_back((at, msg));
        Ok(())
    }

    /// When the oldest held message is due under `delay`.
    pub(crate) fn next_due(&self, delay: Duration) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at + delay)
    }

    /// The oldest held message, if it is due at `now` under `delay`.
    pub(crate) fn pop_due(&mut self, now: Instant, delay: Duration) -> Option<Message> {
        if self.next_due(delay)? > now {
            return None;
        }
        let (_, msg) = self.queue.pop_front()?;
        self.bytes -= msg.len();
        if self.queue.is_empty() && self.queue.capacity() > IDLE_CAPACITY {
            // A burst's queue is not kept for the rest of the session.
            self.queue.shrink_to(IDLE_CAPACITY);
        }
        Some(msg)
    }
}

/// Capacity an emptied queue keeps.
const IDLE_CAPACITY: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn released_in_order_no_earlier_than_arrival_plus_delay() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(60);
        let mut held = Held::new(DelayBuffer::default());
        for (i, m) in ["a", "b", "c"].into_iter().enumerate() {
            held.push(t0 + Duration::from_secs(i as u64), text(m))
                .unwrap();
        }
        assert_eq!(held.next_due(delay), Some(t0 + delay));
        assert_eq!(
            held.pop_due(t0 + delay - Duration::from_millis(1), delay),
            None
        );
        assert_eq!(held.pop_due(t0 + delay, delay), Some(text("a")));
        assert_eq!(held.pop_due(t0 + delay, delay), None);
        let later = t0 + delay + Duration::from_secs(5);
        assert_eq!(held.pop_due(later, delay), Some(text("b")));
        assert_eq!(held.pop_due(later, delay), Some(text("c")));
        assert!(held.is_empty());
        assert_eq!(held.bytes, 0);
    }

    #[test]
    fn a_shorter_delay_releases_what_is_held_sooner_in_order() {
        let t0 = Instant::now();
        let mut held = Held::new(DelayBuffer::default());
        held.push(t0, text("a")).unwrap();
        held.push(t0 + Duration::from_secs(1), text("b")).unwrap();
        let now = t0 + Duration::from_secs(2);
        assert_eq!(held.pop_due(now, Duration::from_secs(60)), None);
        // The plan moved to real time: everything is due, oldest first.
        assert_eq!(held.pop_due(now, Duration::ZERO), Some(text("a")));
        assert_eq!(held.pop_due(now, Duration::ZERO), Some(text("b")));
    }

    #[test]
    fn the_bound_is_by_count_and_by_bytes() {
        let t0 = Instant::now();
        let mut held = Held::new(DelayBuffer {
            bytes: 10,
            messages: 3,
        });
        held.push(t0, text("12345")).unwrap();
        held.push(t0, text("1234")).unwrap();
        // 5 + 4 + 2 = 11 bytes: over.
        assert_eq!(
            held.push(t0, text("12")),
            Err(Full {
                messages: 2,
                bytes: 9
            })
        );
        held.push(t0, text("1")).unwrap();
        // A fourth message: over the count whatever its size.
        assert_eq!(
            held.push(t0, text("")),
            Err(Full {
                messages: 3,
                bytes: 10
            })
        );
        assert_eq!(held.pop_due(t0, Duration::ZERO), Some(text("12345")));
        held.push(t0, text("")).unwrap();
    }
}
