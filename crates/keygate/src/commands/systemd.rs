//! systemd integration: listening sockets passed by socket activation (`LISTEN_FDS`), and
//! readiness, reload and stop notifications (`NOTIFY_SOCKET`). Both are no-ops outside
//! systemd. `deploy/keygate.service` and `deploy/keygate.socket` are the shipped units.

use anyhow::Context as _;
use keygate_server::Sockets;
use sd_notify::NotifyState;

/// The sockets systemd passed, by name (`FileDescriptorName=admin` in the socket unit makes
/// one the admin listener; any other is the public one), else by order (public, then admin).
///
/// # Errors
/// A passed descriptor that is not a listening TCP socket, or more than two of them.
pub(crate) fn inherited_sockets() -> anyhow::Result<Sockets> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut sockets = Sockets::default();
    if fds.len() == 0 {
        return Ok(sockets);
    }
    if fds.len() > 2 {
        anyhow::bail!(
            "systemd passed {} sockets; keygate takes a public one and an optional admin one",
            fds.len()
        );
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    for i in 0..fds.len() {
        let listener = fds
            .take_tcp_listener(i)
            .with_context(|| format!("socket {i} passed by systemd is not a TCP listener"))?
            .with_context(|| format!("socket {i} passed by systemd was taken already"))?;
        let admin = match names.get(i).map(String::as_str) {
            Some("admin") => true,
            Some(n) if !n.is_empty() && n != "unknown" && n != "stored" => false,
            _ => i == 1,
        };
        let slot = if admin {
            &mut sockets.admin
        } else {
            &mut sockets.public
        };
        if slot.replace(listener).is_some() {
            anyhow::bail!("systemd passed two sockets for the same listener");
        }
    }
    if sockets.public.is_none() {
        anyhow::bail!("systemd passed only an admin socket; pass the public one too");
    }
    Ok(sockets)
}

/// Tells systemd (when it is listening) what the service is doing; otherwise nothing.
pub(crate) fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "Cannot notify systemd.");
    }
}

pub(crate) fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Before a reload: systemd waits for the next [`ready`].
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}
