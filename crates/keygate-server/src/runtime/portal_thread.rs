//! The customer portal on a thread of its own, below the gateway's CPU priority.
//!
//! A customer reloading a page is worth less than a request's latency or a revocation reaching
//! this node within a second. The node's main runtime is one thread (admin API, change feed,
//! usage flush); on it, page loads queued beside the change feed, and the portal took CPU from
//! the gateway's workers (0.72x of the gateway's throughput in `bench/portal.sh`). So the
//! portal gets:
//! - one thread and its own runtime: at most one core's worth of CPU, nothing queued on the
//!   main runtime;
//! - its own small store pool, opened on that runtime, so its queries neither wait for nor hold
//!   the node's connections (and SQLite's connection threads start from this thread, which
//!   passes its scheduling on);
//! - `[portal] priority`: by default `nice` 10 above the process, so while a worker wants the
//!   core the portal gets about a tenth of it. `idle` (Linux's `SCHED_IDLE`) yields more (the
//!   portal then runs only on what the workers leave), but a saturated node would then all but
//!   stop the portal in the middle of a store write, holding the write lock others wait for;
//!   `bench/portal.sh` measured the two within a few percent of each other (BENCHMARKS.md).

use std::sync::Arc;

use keygate_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{CpuPriority, PortalSettings};
use crate::runtime::server::{serve_http1, ServeError};
use crate::state::live::Live;
use crate::tls::ServerTls;

/// Store connections of the portal's own pool: enough for a page's few queries to overlap,
/// few enough that a flood of page loads queues here rather than in the database.
const STORE_CONNECTIONS: u32 = 2;

/// Starts the portal's thread on `listener` and returns once it serves, or with why it cannot.
/// The thread holds `done` until it ends, like a worker, so shutdown waits for it the same way.
pub(crate) async fn start(
    live: Arc<Live>,
    store: &Store,
    (settings, listener, tls): (PortalSettings, TcpListener, Option<Arc<ServerTls>>),
    stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let listener = listener.into_std().map_err(ServeError::Thread)?;
    let store = store.clone();
    let (ready, started) = oneshot::channel();
    let handle = std::thread::Builder::new()
        .name("keygate-portal".to_owned())
        .spawn(move || {
            let _done = done;
            lower_priority(settings.priority);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(ServeError::Thread(e)));
                    return;
                }
            };
            runtime.block_on(serve(live, store, (settings, listener, tls), stop, ready));
        })
        .map_err(ServeError::Thread)?;
    match started.await {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        // The thread ended without a word: it panicked.
        Err(_) => Err(ServeError::Thread(std::io::Error::other(
            "the portal's thread ended while starting",
        ))),
    }
}

async fn serve(
    live: Arc<Live>,
    store: Store,
    (settings, listener, tls): (
        PortalSettings,
        std::net::TcpListener,
        Option<Arc<ServerTls>>,
    ),
    stop: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<(), ServeError>>,
) {
    let set_up = async {
        let listener = TcpListener::from_std(listener).map_err(ServeError::Thread)?;
        let store = store
            .sibling(STORE_CONNECTIONS)
            .await
            .map_err(|e| ServeError::Portal(e.into()))?;
        let state = crate::portal::PortalState::new(Arc::clone(&live), store, settings)
            .map_err(ServeError::Portal)?;
        Ok((listener, state))
    };
    let (listener, state) = match set_up.await {
        Ok(parts) => {
            let _ = ready.send(Ok(()));
            parts
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let gw = live.load();
    let cap = Arc::clone(
        gw.connections
            .portal
            .as_ref()
            .expect("a node with a portal has its connection cap"),
    );
    tokio::spawn(crate::portal::sweep_sources(state.clone(), stop.clone()));
    serve_http1(gw, crate::portal::router(state), (listener, tls), cap, stop).await;
}

/// Lowers this thread's scheduling (Linux keeps it per thread; threads it starts inherit it).
/// Lowering needs no privilege; a failure only costs the bound, so it is logged.
fn lower_priority(priority: CpuPriority) {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let done = match priority {
        CpuPriority::Normal => return,
        CpuPriority::Idle => set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )
        .map_err(|e| format!("{e:?}")),
        CpuPriority::Low => {
            let now = rustix::process::getpriority_process(None).unwrap_or(0);
            rustix::process::setpriority_process(None, (now + 10).min(19))
                .map_err(|e| e.to_string())
        }
    };
    if let Err(error) = done {
        tracing::warn!(%error, ?priority, "Cannot lower the portal thread's priority.");
    }
}
