//! Where log lines go: stderr, with the access log (`keygate::access`, one line per request)
//! buffered per thread.
//!
//! Written straight to stderr, every access line cost a `write(2)` on the request's path, about
//! a fifth of the gated proxy's throughput (issue 24, BENCHMARKS.md). Here each worker thread
//! appends its lines to a buffer of its own (an uncontended lock) and the buffer reaches stderr
//! in one write when it holds [`FLUSH_BYTES`], every [`FLUSH_EVERY`] from a flusher thread, when
//! its thread ends, and at shutdown ([`flush`]). Hand-written rather than `tracing-appender`'s
//! non-blocking writer: that one sends every line through a channel to a writer thread (an
//! allocation, and a wake-up of that thread per line when it sleeps), which is the per-request
//! cost this removes; buffers per thread need neither.
//!
//! - Lines never tear or interleave: the formatter hands over one whole line per event, a buffer
//!   is written whole under stderr's lock, and every other event (startup, warnings, errors) is
//!   written unbuffered under that same lock.
//! - A thread's lines keep their order; lines of different threads reach the file up to
//!   [`FLUSH_EVERY`] apart (each carries its own timestamp).
//! - When stderr cannot keep up, writers wait (no line is dropped): the thread whose buffer is
//!   full writes it itself, so a stalled log stalls requests as the unbuffered log did.

use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use keygate_server::access_log::TARGET as ACCESS_TARGET;
use tracing_subscriber::fmt::MakeWriter;

/// A buffer is written once it holds this much (nginx's `access_log … buffer=64k`).
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;
/// The longest an access line waits in a buffer (nginx's `flush=` is the same idea).
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every live thread's buffer, for the flusher and [`flush`].
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a buffer leaves whole lines in it: keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A thread's buffer; at the thread's end its lines are written and it leaves [`BUFFERS`].
struct Local(Buffer);

impl Drop for Local {
    fn drop(&mut self) {
        write_out(&self.0);
        lock(&BUFFERS).retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = {
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES)));
        lock(&BUFFERS).push(Arc::clone(&buffer));
        Local(buffer)
    };
}

/// Writes what `buffer` holds to stderr. Stderr's lock is taken first and held through the
/// write, so two writers of one buffer (its thread and the flusher) keep its lines in order.
fn write_out(buffer: &Mutex<Vec<u8>>) {
    let stderr = std::io::stderr();
    let mut out = stderr.lock();
    let mut buf = lock(buffer);
    if buf.is_empty() {
        return;
    }
    // A failed write (stderr closed) loses these lines, as it did unbuffered: nothing to tell.
    let _ = out.write_all(&buf);
    buf.clear();
}

/// Writes every thread's buffered lines; called at shutdown, before an exit and on panic.
pub(crate) fn flush() {
    let buffers: Vec<Buffer> = lock(&BUFFERS).clone();
    for b in &buffers {
        write_out(b);
    }
}

/// Starts the thread that writes the buffers every [`FLUSH_EVERY`] (once per process).
fn start_flusher() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("keygate-log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        if let Err(e) = spawned {
            // Without the flusher, lines would wait for a full buffer: write them at once.
            eprintln!("keygate: cannot start the log flusher ({e}); the access log is unbuffered");
            UNBUFFERED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

static UNBUFFERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The `MakeWriter` for the fmt layer: access lines into the thread's buffer, the rest to
/// stderr directly.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stderr;

impl Stderr {
    /// The writer, with its flusher started.
    pub(crate) fn start() -> Self {
        start_flusher();
        Self
    }
}

/// One event's writer: the fmt layer formats the whole line first and writes it in one call.
pub(crate) enum Writer {
    Direct(std::io::Stderr),
    Buffered,
}

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Direct(out) => out.write(bytes),
            Self::Buffered => {
                let full = LOCAL
                    .try_with(|local| {
                        let mut buf = lock(&local.0);
                        buf.extend_from_slice(bytes);
                        buf.len() >= FLUSH_BYTES
                    })
                    .map_err(|_| std::io::Error::other("thread ending"))?;
                if full {
                    LOCAL.with(|local| write_out(&local.0));
                }
                Ok(bytes.len())
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Direct(out) => out.write_all(bytes),
            Self::Buffered => match self.write(bytes) {
                Ok(_) => Ok(()),
                // The thread's buffer is gone (its thread is ending): write the line directly.
                Err(_) => std::io::stderr().write_all(bytes),
            },
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Direct(out) => out.flush(),
            Self::Buffered => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        Writer::Direct(std::io::stderr())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Writer {
        if meta.target() == ACCESS_TARGET && !UNBUFFERED.load(std::sync::atomic::Ordering::Relaxed)
        {
            Writer::Buffered
        } else {
            Writer::Direct(std::io::stderr())
        }
    }
}
