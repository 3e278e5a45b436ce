//! Sockets and runtimes.
//!
//! The public listener is served by N worker threads, each with its own current-thread tokio
//! runtime, its own listening socket on the same port (SO_REUSEPORT: the kernel spreads
//! connections) and its own upstream pools. Measured on this class of machine this beats one
//! multi-thread runtime by 12–30% in throughput and 1–3 µs of CPU per request (DESIGN.md).
//! The admin listener and the change feed run on the caller's runtime. Binding (one process
//! per port), the connection caps and the accept loop are `crate::runtime::listen`'s; one connection's
//! life, HTTP/2 deadlines included, is `crate::runtime::connection`'s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use keygate_core::{Clock, SystemClock};
use keygate_store::Store;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{Config, HttpLimits, LimiterBackend};
use crate::request::bounds;
use crate::request::proxy::Upstreams;
use crate::runtime::connection::{self, H2Deadlines, Protocol, Streams, Tracked};
use crate::runtime::feed;
use crate::runtime::infra::{self, Infra};
use crate::runtime::listen::{self, Acceptor};
use crate::runtime::service::{self, Worker};
use crate::state::connections::Slot;
use crate::state::gateway::Gateway;
use crate::state::live::Live;
use crate::state::reload::{ReloadError, Reloaded};
use crate::state::replica::Replica;
use crate::tls::{ServerTls, Tls};
use arc_swap::ArcSwap;
use keygate_limits::Limits;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something (another keygate, most likely) already listens on the public address.
    /// Without this check SO_REUSEPORT would let the two processes split its traffic.
    #[error(
        "cannot listen on {addr}: another process is already listening there \
         (is another keygate running?): {source}"
    )]
    AddressInUse {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot set up rate limits: {0}")]
    Limiter(#[source] keygate_limits::LimiterError),
    #[error("cannot set up messaging feeds ([amqp]): {0}")]
    Amqp(String),
    #[error("cannot set up tracing ([tracing]): {0}")]
    Tracing(#[source] crate::state::traces::TracingError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    #[error("cannot set up the customer portal: {0}")]
    Portal(#[source] crate::portal::PortalError),
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The customer portal's address, when `[portal] listen` is set.
    pub portal_addr: Option<SocketAddr>,
    live: Arc<Live>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Closed when every worker thread has ended (each holds a sender until it returns), so
    /// shutdown can wait for them with a deadline, which `JoinHandle::join` cannot.
    workers_done: tokio::sync::mpsc::Receiver<()>,
    /// The usage flusher, awaited at shutdown.
    usage: tokio::task::JoinHandle<()>,
    store: Store,
}

impl Running {
    /// Graceful shutdown, over within `[server] shutdown_grace` whatever is still running:
    /// stops accepting, lets in-flight requests and held sessions (`crate::state::shutdown`) finish
    /// until the drain deadline, ends background tasks and the worker threads (a worker still
    /// running then is left to the process's exit), and writes the last usage counts in the
    /// rest of the grace.
    pub async fn shutdown(mut self) {
        let gateway = self.gateway();
        let grace = gateway.config.shutdown_grace;
        gateway.drain.begin(grace);
        let (drained, deadline) = (
            gateway.drain.drain_deadline(grace),
            gateway.drain.deadline(grace),
        );
        let _ = self.shutdown.send(true);
        let left = gateway.drain.wait_until(drained).await;
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "Sessions still open at the end of the shutdown grace; closing them."
            );
        }
        // The workers stop by the same deadline; a little past it, they are stuck.
        let workers_ended = tokio::time::timeout_at(deadline, self.workers_done.recv())
            .await
            .is_ok();
        if workers_ended {
            for w in self.workers {
                let _ = w.join();
            }
        } else {
            tracing::warn!("Worker threads still running at the end of the shutdown grace.");
        }
        let mut usage = self.usage;
        if tokio::time::timeout_at(drained, &mut usage).await.is_err() {
            usage.abort();
        }
        // After the workers have stopped: this flush holds every request they answered. Bounded
        // by the grace like everything else: a store that does not answer keeps the counts.
        match tokio::time::timeout_at(deadline, crate::state::usage::flush(&*gateway, &self.store))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot write the last usage counts at shutdown.");
            }
            Err(_) => tracing::warn!(
                "The store did not take the last usage counts within the shutdown grace."
            ),
        }
        if let Some(tracer) = gateway.tracer.get() {
            // The batch processor's thread waits on the collector: not on a runtime thread.
            let gw = Arc::clone(&gateway);
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(t) = gw.tracer.get() {
                    t.shutdown();
                }
            })
            .await;
            let _ = tracer;
        }
    }

    /// The gateway in force now (a reload replaces it).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.load()
    }

    /// Lets [`Running::reload`] (and `POST /v1/reload`) read the configuration again from
    /// `source`, the file and command-line values the node was started with.
    pub fn reload_from(&self, source: crate::config::Source) {
        let _ = self.live.load().source.set(source);
    }

    /// Reloads the configuration (SIGHUP, `keygate reload`); `by` names who asked.
    ///
    /// # Errors
    /// [`ReloadError`]: the configuration in force keeps serving.
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        crate::state::reload::reload(&self.live, by).await
    }

    /// Resolves when the gateway is asked to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Starts the gateway: binds every socket (errors come back before anything runs), starts the
/// workers, then loads the replica in the background (`/ready` is 503 until it is in) and
/// follows the change feed.
///
/// # Errors
/// [`ServeError`] when a socket cannot be bound or a thread cannot start.
pub async fn start(config: Config, store: Store) -> Result<Running, ServeError> {
    start_with_clock(config, store, Arc::new(SystemClock)).await
}

/// Listening sockets the process was given instead of binding its own (systemd socket
/// activation); `None` binds the configuration's address as usual.
#[derive(Debug, Default)]
pub struct Sockets {
    pub public: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

/// [`start`] with an injected clock.
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(
    config: Config,
    store: Store,
    clock: Arc<dyn Clock>,
) -> Result<Running, ServeError> {
    start_on(config, store, clock, Sockets::default()).await
}

/// [`start`] on sockets the process was given (each `None` is bound from the configuration).
///
/// # Errors
/// As [`start`].
pub async fn start_on(
    mut config: Config,
    store: Store,
    clock: Arc<dyn Clock>,
    sockets: Sockets,
) -> Result<Running, ServeError> {
    let fd_limit = listen::raise_fd_limit();
    listen::check_fd_budget(
        fd_limit,
        config.http.max_connections,
        config.http.admin_max_connections,
    );
    // The files were checked by the configuration's compile; read again now, they may have
    // changed since. Before any socket is bound, as every other start-up check.
    let tls = Arc::new(
        Tls::load(
            config.tls.as_ref(),
            config.admin_tls.as_ref(),
            config.portal.as_ref().and_then(|p| p.tls.as_ref()),
        )
        .map_err(ServeError::Tls)?,
    );
    let (addr, listeners) = match sockets.public {
        Some(given) => listen::adopt_public(given, config.workers)?,
        None => {
            let listeners = listen::bind_public(config.listen, config.workers)?;
            let addr = listeners[0]
                .local_addr()
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
            (addr, listeners)
        }
    };
    let admin_err = |source| ServeError::Bind {
        addr: config.admin_listen,
        source,
    };
    let admin = match sockets.admin {
        Some(given) => {
            given.set_nonblocking(true).map_err(admin_err)?;
            TcpListener::from_std(given).map_err(admin_err)?
        }
        None => TcpListener::bind(config.admin_listen)
            .await
            .map_err(admin_err)?,
    };
    let admin_addr = admin.local_addr().map_err(|source| ServeError::Bind {
        addr: config.admin_listen,
        source,
    })?;
    let portal = match &config.portal {
        Some(p) => {
            let listener =
                TcpListener::bind(p.listen)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: p.listen,
                        source,
                    })?;
            let addr = listener.local_addr().map_err(|source| ServeError::Bind {
                addr: p.listen,
                source,
            })?;
            Some((listener, addr, p.clone()))
        }
        None => None,
    };
    let portal_addr = portal.as_ref().map(|(_, addr, _)| *addr);
    // Without a configured base_url, links point at the address actually bound (port 0 in
    // tests), for the admin API's invitations as for the portal's own mail.
    if let (Some(p), Some(addr)) = (config.portal.as_mut(), portal_addr) {
        if p.base_url_follows_listen() {
            p.base_url = p.default_base_url(addr);
        }
    }
    let portal = portal.map(|(listener, addr, _)| (listener, addr, config.portal.clone()));
    let poll = config.feed_poll;
    let limits = match &config.limiter.backend {
        LimiterBackend::Local => Limits::local(),
        LimiterBackend::Redis { url, ca_file } => {
            let options = keygate_limits::RedisOptions {
                timeout: config.limiter.timeout,
                connect_timeout: config.limiter.connect_timeout,
                fail_closed: config.limiter.fail_closed,
            };
            // Checked by the configuration's compile; read now, as the listeners' files are.
            let roots = match ca_file {
                None => None,
                Some(path) => Some(std::fs::read(path).map_err(|source| {
                    ServeError::Tls(crate::tls::TlsError::Read {
                        path: path.clone(),
                        source,
                    })
                })?),
            };
            Limits::with_redis_tls(url, roots, options)
                .await
                .map_err(ServeError::Limiter)?
        }
    };
    let replica = Arc::new(Replica::for_workers(config.workers));
    let gw = Arc::new(Gateway::new(config, replica, limits, clock));
    let _ = gw.writer.set(store.clone());
    let live = Live::new(Arc::clone(&gw));
    let _ = gw.tls.set(Arc::clone(&tls));
    let (shutdown, stop) = watch::channel(false);
    crate::state::amqp::start(&gw, &store, stop.clone()).map_err(ServeError::Amqp)?;
    if let Some(t) = &gw.config.tracing {
        let tracer = crate::state::traces::Tracer::start(t).map_err(ServeError::Tracing)?;
        let _ = gw.tracer.set(tracer);
    }

    let mut workers = Vec::new();
    let (worker_done, workers_done) = tokio::sync::mpsc::channel(1);
    for (i, listener) in listeners.into_iter().enumerate() {
        let live = Arc::clone(&live);
        let stop = stop.clone();
        let done = worker_done.clone();
        let tls = tls.public.clone();
        let handle = std::thread::Builder::new()
            .name(format!("keygate-worker-{i}"))
            .spawn(move || {
                let _done = done;
                crate::state::per_worker::enter(i);
                run_worker(&live, listener, tls, stop)
            })
            .map_err(ServeError::Thread)?;
        workers.push(handle);
    }

    tokio::spawn(serve_admin(
        Arc::clone(&live),
        store.clone(),
        (admin, tls.admin.clone()),
        stop.clone(),
    ));
    // Certificate reloads: on a change of the files, and on SIGHUP (which also no longer
    // ends the process, TLS or not).
    tokio::spawn(Arc::clone(&tls).watch(stop.clone()));
    if let Some((listener, _, Some(settings))) = portal {
        let portal = crate::runtime::portal_thread::start(
            Arc::clone(&live),
            &store,
            (settings, listener, tls.portal.clone()),
            stop.clone(),
            worker_done.clone(),
        )
        .await?;
        workers.push(portal);
    }
    let usage_store = store.clone();
    let usage = tokio::spawn(crate::runtime::usage_flush::run(
        Arc::clone(&gw),
        store.clone(),
        gw.config.usage_flush,
        stop.clone(),
    ));
    tokio::spawn(crate::webhooks::worker::run(
        Arc::clone(&live),
        store.clone(),
        crate::state::amqp::node_name(),
        stop.clone(),
    ));
    if let Some(rx) = gw.quotas.take_receiver() {
        tokio::spawn(crate::state::quotas::run_events(
            rx,
            store.clone(),
            Arc::clone(&gw.quotas.dropped),
            stop.clone(),
        ));
    }
    let (feed_live, feed_stop) = (Arc::clone(&live), stop.clone());
    tokio::spawn(async move {
        feed::load(&feed_live, &store, feed_stop.clone()).await;
        feed::follow(feed_live, store, poll, feed_stop).await;
    });
    tokio::spawn(sweep_limits(Arc::clone(&live), stop.clone()));
    tokio::spawn(crate::state::ws_sessions::sweep(
        Arc::clone(&live),
        stop.clone(),
    ));
    tracing::info!(%addr, %admin_addr, workers = workers.len(), "keygate is listening.");
    Ok(Running {
        addr,
        admin_addr,
        portal_addr,
        live,
        shutdown,
        workers,
        workers_done,
        usage,
        store: usage_store,
    })
}

/// Drops local limiter state that no longer matters (full buckets, ended windows), so memory
/// follows the number of active callers rather than every caller ever seen.
async fn sweep_limits(live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
        let gw = live.load();
        gw.guard.sweep(gw.clock.now());
        let removed = gw.limits.sweep(gw.clock.now());
        if removed > 0 {
            tracing::debug!(removed, "Swept idle limiter state.");
        }
    }
}

fn run_worker(
    live: &Live,
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reloads = live.subscribe();
    let gw = live.load();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start a worker runtime.");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "Cannot adopt the listening socket.");
                return;
            }
        };
        let worker = Arc::new(Worker {
            upstreams: Upstreams::new(&gw.config.upstreams),
            identity: gw.config.profile.identity.copied(),
            gw,
        });
        // What each new request of this worker's connections loads: a reload replaces it.
        let current = Arc::new(ArcSwap::from(Arc::clone(&worker)));
        let limits = &worker.gw.config.http;
        let grace = worker.gw.config.shutdown_grace;
        let builder = bounds::connection_builder(limits);
        let (first_bytes, deadlines) = (limits.header_read_timeout, H2Deadlines::from(limits));
        let connections = TaskTracker::new();
        // One count for the listener, shared by every worker's socket.
        let mut acceptor = Acceptor::new(listener, Arc::clone(&worker.gw.connections.public));
        loop {
            let (stream, remote, slot) = tokio::select! {
                accepted = acceptor.accept() => accepted,
                Ok(()) = reloads.changed() => {
                    let gw = reloads.borrow_and_update().clone();
                    let before = current.load_full();
                    current.store(Arc::new(Worker {
                        upstreams: before.upstreams.carried_to(&before.gw.config.upstreams, &gw.config.upstreams),
                        identity: gw.config.profile.identity.copied(),
                        gw,
                    }));
                    continue;
                }
                _ = stop.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            connections.spawn(serve_public(
                Arc::clone(&current),
                builder.clone(),
                (stream, remote, slot),
                (first_bytes, deadlines, tls.clone()),
                stop.clone(),
            ));
        }
        // Stop accepting (the socket closes: new connections are refused), then let every
        // connection finish its in-flight request, within the grace period.
        drop(acceptor);
        connections.close();
        let drained = worker.gw.drain.drain_deadline(grace);
        let open = connections.len();
        if tokio::time::timeout_at(drained, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "Connections still open at the end of the shutdown grace; closing them."
            );
        } else if open > 0 {
            tracing::debug!(connections = open, "Connections drained.");
        }
        // Upgraded connections (WebSocket sessions) left hyper's count at the upgrade; they
        // run on this runtime, so it lives until they have sent their close frames.
        worker.gw.drain.wait_until(drained).await;
    });
    // What is still running now is past the grace: dropped, without waiting for blocking
    // tasks (a DNS lookup, say) as dropping the runtime would.
    runtime.shutdown_background();
}

/// Serves one connection of the public listener; `slot` holds its place under
/// `max_connections` until it closes. With TLS the handshake runs here, in the worker's
/// task, within the listener's `handshake_timeout`, and ALPN decides the protocol.
async fn serve_public(
    worker: Arc<ArcSwap<Worker>>,
    builder: auto::Builder<TokioExecutor>,
    (stream, remote, slot): (TcpStream, SocketAddr, Slot),
    (first_bytes, deadlines, tls): (std::time::Duration, H2Deadlines, Option<Arc<ServerTls>>),
    mut stop: watch::Receiver<bool>,
) {
    let _slot = slot;
    let Some(tls) = tls else {
        let protocol = tokio::select! {
            p = connection::sniff(&stream, first_bytes) => p,
            _ = stop.changed() => None,
        };
        // Silent past the header timeout: closed.
        if let Some(protocol) = protocol {
            serve_http(worker, builder, stream, remote, protocol, deadlines, stop).await;
        }
        return;
    };
    let accepted = tokio::select! {
        a = handshake(&tls, stream) => a,
        _ = stop.changed() => None,
    };
    let Some(stream) = accepted else { return };
    // ALPN: h2 only when the client asked for it; hyper then skips its own version sniffing
    // (and its header timer starts at once).
    let (protocol, builder) = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => (Protocol::Http2, builder.http2_only()),
        _ => (Protocol::Http1, builder.http1_only()),
    };
    serve_http(worker, builder, stream, remote, protocol, deadlines, stop).await;
}

/// The TLS handshake of a new connection within the listener's `handshake_timeout`; `None`
/// (the connection is closed) when it fails or is too slow.
async fn handshake(
    tls: &ServerTls,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed.");
            None
        }
        Err(_) => {
            tracing::debug!("No TLS handshake within handshake_timeout; closing the connection.");
            None
        }
    }
}

/// HTTP on one public connection, plain or TLS.
async fn serve_http<I>(
    worker: Arc<ArcSwap<Worker>>,
    builder: auto::Builder<TokioExecutor>,
    io: I,
    remote: SocketAddr,
    protocol: Protocol,
    deadlines: H2Deadlines,
    stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A combinator rather than an `async` block: the block would hold the handler's future
    // beside its own state (see `service::handle_guarded`).
    match protocol {
        Protocol::Http1 => {
            // Each request takes the worker (and so the configuration) in force when it starts.
            let service = service_fn(move |req: Request<Incoming>| {
                service::handle_guarded(worker.load_full(), req, remote).map(Ok::<_, Infallible>)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            connection::drive(conn, |c| c.graceful_shutdown(), None, stop).await;
        }
        Protocol::Http2 => {
            let streams = Streams::new();
            let tracker = Arc::clone(&streams);
            let service = service_fn(move |req: Request<Incoming>| {
                let stream = tracker.begin();
                service::handle_guarded(worker.load_full(), req, remote)
                    .map(move |resp| Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, stream))))
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let deadlines = Some((streams, deadlines));
            connection::drive(conn, |c| c.graceful_shutdown(), deadlines, stop).await;
        }
    }
}

/// The admin listener: the admin API (admin tokens) and the infra endpoints (always here,
/// whatever the profile makes public).
async fn serve_admin(
    live: Arc<Live>,
    store: Store,
    (listener, tls): (TcpListener, Option<Arc<ServerTls>>),
    stop: watch::Receiver<bool>,
) {
    let infra_route = |which: Infra| {
        let live = Arc::clone(&live);
        axum::routing::get(move || {
            let gw = live.load();
            async move { infra::answer(&gw, which).map(axum::body::Body::new) }
        })
    };
    let infra_routes = axum::Router::new()
        .route("/health", infra_route(Infra::Health))
        .route("/ready", infra_route(Infra::Ready))
        .route("/status", infra_route(Infra::Status))
        .route("/metrics", infra_route(Infra::Metrics));
    let gw = live.load();
    let app = admin::router(AdminState {
        live: Arc::clone(&live),
        store,
    })
    .merge(infra_routes);
    serve_http1(
        Arc::clone(&gw),
        app,
        (listener, tls),
        Arc::clone(&gw.connections.admin),
        stop,
    )
    .await;
}

/// Serves an axum app over HTTP/1 with the public listener's head bounds and accept loop: the
/// admin listener and the customer portal's. Each request carries its peer address
/// (`ConnectInfo`), which the portal's sign-in limits count by.
pub(super) async fn serve_http1(
    gw: Arc<Gateway>,
    app: axum::Router,
    (listener, tls): (TcpListener, Option<Arc<ServerTls>>),
    slots: Arc<crate::state::connections::ConnectionCap>,
    mut stop: watch::Receiver<bool>,
) {
    let limits: &HttpLimits = &gw.config.http;
    let builder = bounds::connection_builder(limits).http1_only();
    let first_bytes = limits.header_read_timeout;
    let connections = TaskTracker::new();
    let mut acceptor = Acceptor::new(listener, slots);
    loop {
        let (stream, remote, slot) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = stop.changed() => break,
        };
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote))),
        );
        let (builder, mut stop) = (builder.clone(), stop.clone());
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            if let Some(tls) = tls {
                // A client without an accepted certificate (mTLS) fails here.
                let accepted = tokio::select! {
                    a = handshake(&tls, stream) => a,
                    _ = stop.changed() => None,
                };
                if let Some(stream) = accepted {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    connection::drive(conn, |c| c.graceful_shutdown(), None, stop).await;
                }
                return;
            }
            let spoke = tokio::select! {
                p = connection::sniff(&stream, first_bytes) => p.is_some(),
                _ = stop.changed() => false,
            };
            if spoke {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                connection::drive(conn, |c| c.graceful_shutdown(), None, stop).await;
            }
        });
    }
    drop(acceptor);
    connections.close();
    connections.wait().await;
}
