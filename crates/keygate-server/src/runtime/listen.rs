//! Listening sockets: the public port bound once per worker without letting another process
//! join it, the open-file limit, a cap on open connections per listener, and an accept loop
//! that backs off when the process runs out of file descriptors.
//!
//! SO_REUSEPORT lets any socket of the same user with the option join a port, and the kernel
//! then splits connections between the processes. So before the per-worker sockets are bound
//! the address is probed with a socket that has SO_REUSEADDR but not SO_REUSEPORT: a listening
//! socket of any process (another keygate's workers included) makes that bind fail with
//! EADDRINUSE, while connections of a previous run left in TIME_WAIT do not (SO_REUSEADDR).
//! The probe is held until the workers listen: a non-listening SO_REUSEADDR socket does not
//! stand in the way of the workers' own binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::runtime::server::ServeError;
use crate::state::connections::{ConnectionCap, Slot};

/// Accept errors are logged at most once per this period per listener socket (the rest are
/// counted in the next line), so a process out of descriptors cannot flood its log.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// First and longest wait after an accept error that is not one connection's own failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Descriptors kept aside for everything that is not a client connection (store, runtimes,
/// logs) when checking the open-file limit against the connection caps.
const FD_RESERVE: u64 = 64;

fn socket_for(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restart must not wait for its predecessor's connections to leave TIME_WAIT.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds one socket per worker on the same port, after making sure no other process listens
/// there (see the module's documentation).
///
/// # Errors
/// [`ServeError::AddressInUse`] when something already listens on `addr`;
/// [`ServeError::Bind`] for any other failure.
pub(crate) fn bind_public(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, ServeError> {
    let bind_err = |source| ServeError::Bind { addr, source };
    let probe = socket_for(addr).map_err(bind_err)?;
    if let Err(source) = probe.bind(&addr.into()) {
        return Err(if source.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::AddressInUse { addr, source }
        } else {
            ServeError::Bind { addr, source }
        });
    }
    // Port 0: the workers share the port the probe was given.
    let actual = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| bind_err(std::io::Error::other("the probe socket has no address")))?;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        listeners.push(reuseport_listener(actual).map_err(bind_err)?);
    }
    drop(probe);
    Ok(listeners)
}

/// The workers' sockets on a listening socket the process was given (systemd socket
/// activation): each worker accepts on its own descriptor of that one socket, so the kernel
/// wakes one of them per connection (without SO_REUSEPORT's spreading, which needs a socket
/// per worker bound by this process).
///
/// # Errors
/// [`ServeError::Bind`] when the socket has no address or cannot be duplicated.
pub(crate) fn adopt_public(
    listener: std::net::TcpListener,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ServeError> {
    let unknown: SocketAddr = ([0, 0, 0, 0], 0).into();
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: unknown,
        source,
    })?;
    let bind_err = |source| ServeError::Bind { addr, source };
    listener.set_nonblocking(true).map_err(bind_err)?;
    let mut listeners = Vec::with_capacity(workers.max(1));
    for _ in 1..workers.max(1) {
        listeners.push(listener.try_clone().map_err(bind_err)?);
    }
    listeners.push(listener);
    Ok((addr, listeners))
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit, which the process may
/// do by itself, and says so; returns the soft limit in force afterwards (`None`: unlimited
/// or unknown). Many systems start services at a soft limit of 1024, which a few hundred
/// proxied connections exhaust.
pub(crate) fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current?;
    // No hard limit (macOS): the kernel's own ceiling applies, which setrlimit would
    // refuse to exceed; leave the soft limit as it is.
    let Some(hard) = limit.maximum.filter(|&hard| hard > soft) else {
        tracing::info!(
            limit = soft,
            "The open-file limit (RLIMIT_NOFILE) is already at its hard limit."
        );
        return Some(soft);
    };
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    ) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "Raised the open-file limit (RLIMIT_NOFILE) to its hard limit."
            );
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                limit = soft,
                "Cannot raise the open-file limit (RLIMIT_NOFILE); keeping it."
            );
            Some(soft)
        }
    }
}

/// Warns when the open-file limit cannot hold both listeners full: a public connection may
/// need a second descriptor for its upstream.
pub(crate) fn check_fd_budget(limit: Option<u64>, public: usize, admin: usize) {
    let Some(limit) = limit else { return };
    let needed = (public as u64)
        .saturating_mul(2)
        .saturating_add(admin as u64)
        .saturating_add(FD_RESERVE);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            max_connections = public,
            admin_max_connections = admin,
            "The open-file limit is below what max_connections may need; lower \
             [server] max_connections or raise the limit. Past it, accepting waits until \
             descriptors are freed."
        );
    }
}

/// Logs one kind of event at most once per [`ACCEPT_LOG_EVERY`], counting the rest.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// `Some(count of events not logged since the last line)` when this one may be logged.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections on one listening socket within its listener's [`ConnectionCap`].
#[derive(Debug)]
pub(crate) struct Acceptor {
    listener: TcpListener,
    cap: Arc<ConnectionCap>,
    backoff: Duration,
    errors: Throttled,
    refusals: Throttled,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, cap: Arc<ConnectionCap>) -> Acceptor {
        Acceptor {
            listener,
            cap,
            backoff: Duration::ZERO,
            errors: Throttled::default(),
            refusals: Throttled::default(),
        }
    }

    /// The next connection under the cap. Connections past the cap are closed at once; when
    /// accepting fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    /// it waits (10 ms, doubling up to 1 s) instead of retrying at once, which would spin a
    /// core and starve the other listeners. Cancel-safe.
    pub(crate) async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => {
                    self.backoff = Duration::ZERO;
                    if let Some(slot) = self.cap.try_acquire() {
                        return (stream, remote, slot);
                    }
                    drop(stream);
                    if let Some(suppressed) = self.refusals.admit() {
                        tracing::warn!(
                            listener = self.cap.name,
                            max_connections = self.cap.max,
                            suppressed,
                            "Connection closed: the listener is at its max_connections."
                        );
                    }
                }
                // One connection's failure (reset before it was accepted): nothing to wait for.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    self.backoff = (self.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
                    if let Some(suppressed) = self.errors.admit() {
                        tracing::warn!(
                            listener = self.cap.name,
                            error = %e,
                            backoff_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
                            suppressed,
                            "Accept failed; waiting before the next try."
                        );
                    }
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttled_lines_count_what_they_skip() {
        let mut t = Throttled::default();
        assert_eq!(t.admit(), Some(0));
        assert_eq!(t.admit(), None);
        assert_eq!(t.admit(), None);
        tokio::time::advance(ACCEPT_LOG_EVERY).await;
        assert_eq!(t.admit(), Some(2));
    }
}
