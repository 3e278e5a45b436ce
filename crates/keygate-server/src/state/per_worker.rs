//! Per-worker copies of what every request writes (counters), so that worker threads never
//! write to the same cache line: one shared counter bounced between the two cores on each
//! request and cost the second worker most of its gain (BENCHMARKS.md). Readers sum the copies.

use std::cell::Cell;

thread_local! {
    /// This thread's slot: 0 off the worker threads (admin API, tests), `1 + worker` on them.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index` (`crate::runtime::server` calls it as each worker starts).
pub(crate) fn enter(index: usize) {
    SLOT.set(index + 1);
}

/// A value on a cache line (two, for the adjacent-line prefetcher) of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One `T` per worker thread, plus one for every other thread.
#[derive(Debug)]
pub(crate) struct PerWorker<T> {
    slots: Box<[Padded<T>]>,
}

impl<T> PerWorker<T> {
    /// Slots for `workers` worker threads and the others.
    pub(crate) fn new(workers: usize, mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            slots: (0..=workers).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's copy (the shared one if it is a worker of another gateway with
    /// more workers, which only tests run).
    pub(crate) fn local(&self) -> &T {
        let i = SLOT.get();
        &self.slots.get(i).unwrap_or(&self.slots[0]).0
    }

    /// Every copy, for readers.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn each_worker_writes_its_own_copy_and_readers_see_all() {
        let counts = std::sync::Arc::new(PerWorker::new(2, || AtomicU64::new(0)));
        counts.local().fetch_add(1, Ordering::Relaxed);
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let counts = std::sync::Arc::clone(&counts);
                std::thread::spawn(move || {
                    enter(w);
                    counts
                        .local()
                        .fetch_add(10 * (w as u64 + 1), Ordering::Relaxed);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let each: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(each, [1, 10, 20]);
        // A worker index past the slots falls back to the shared copy.
        std::thread::spawn({
            let counts = std::sync::Arc::clone(&counts);
            move || {
                enter(7);
                counts.local().fetch_add(100, Ordering::Relaxed);
            }
        })
        .join()
        .unwrap();
        assert_eq!(counts.iter().next().unwrap().load(Ordering::Relaxed), 101);
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}
