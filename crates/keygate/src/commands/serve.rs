//! `keygate serve`: the gateway, until SIGINT or SIGTERM.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use keygate_server::access_log::AccessFirst;
use keygate_server::{Config, Overrides};
use keygate_store::{MigrateMode, OpenOptions, Store};

use crate::cli::ServeArgs;

/// Logs go to stderr, so stdout stays for what commands print; the access log through a
/// buffer per thread (`crate::log_writer`). Text logs are coloured only on a terminal (and not
/// under `NO_COLOR`): escape codes in a file or a pipe are noise for every reader and log
/// shipper.
pub(crate) fn init_logging(format: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(crate::log_writer::Stderr::start());
    // Access lines by keygate's own formatter (the same bytes, a fraction of the time), the
    // rest by the fmt layer's.
    let formatter = tracing_subscriber::fmt::format;
    if format == "json" {
        builder
            .json()
            .event_format(AccessFirst::json(formatter().json()))
            .init();
    } else {
        builder.event_format(AccessFirst::text(formatter())).init();
    }
    // Panics go to the log like everything else (JSON when asked), with where they happened.
    // The payload is kept to its first line and 200 bytes: enough to find the bug, and no room
    // for a request dump.
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let first = payload.lines().next().unwrap_or("");
        let cut = first
            .char_indices()
            .nth(200)
            .map_or(first, |(i, _)| &first[..i]);
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, message = cut, "Panicked.");
        crate::log_writer::flush();
    }));
}

pub(crate) fn overrides(db: Option<String>, args: &ServeArgs) -> Overrides {
    Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        portal_listen: args.portal_listen,
        db,
        upstream: args.upstream.clone(),
        workers: args.workers,
        tooling: false,
        skip_tls_files: false,
    }
}

/// The configuration to serve: the file's, or the built-in default.
pub(crate) fn config(path: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    match path {
        Some(p) => super::load_config(p, overrides),
        None => Ok(keygate_server::config::default_config(overrides)?),
    }
}

/// Opens the store for serving: SQLite files are migrated in place; a shared PostgreSQL must
/// already be at this build's schema (`keygate migrate`).
pub(crate) async fn open_store(db: &str) -> anyhow::Result<Store> {
    let migrate = if db.starts_with("postgres") {
        MigrateMode::Require
    } else {
        MigrateMode::Apply
    };
    Ok(Store::open(
        db,
        OpenOptions {
            migrate,
            ..OpenOptions::default()
        },
    )
    .await?)
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) fn run(db: Option<String>, path: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    // Validate everything before binding a socket.
    let overrides = overrides(db, &args);
    let config = config(path, &overrides)?;
    init_logging(&args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let sockets = super::systemd::inherited_sockets()?;
    let served = runtime.block_on(async move {
        let store = open_store(&config.db).await?;
        let clock = std::sync::Arc::new(keygate_core::SystemClock);
        let running = keygate_server::start_on(config, store, clock, sockets).await?;
        if let Some(path) = path {
            running.reload_from(keygate_server::Source {
                path: path.to_owned(),
                overrides,
            });
        }
        serve_until_stopped(running).await;
        Ok(())
    });
    // Tasks still running (the admin listener, the feed, a second signal's abandoned drain)
    // are dropped; dropping the runtime instead would wait for its blocking tasks.
    runtime.shutdown_background();
    served
}

/// Serves until SIGINT or SIGTERM, then shuts down within `shutdown_grace`; a second signal
/// ends it at once. The caller then shuts its runtime down with `shutdown_background`.
pub(crate) async fn serve_until_stopped(running: keygate_server::Running) {
    // Both run until the stop signal: readiness is told once, reloads as often as asked.
    let serving = async {
        tokio::join!(ready_when_loaded(&running), reload_on_hangup(&running));
    };
    tokio::select! {
        () = stop_signal() => {}
        () = serving => {}
    }
    super::systemd::stopping();
    let grace = running.gateway().config.shutdown_grace;
    tracing::info!(
        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        "Stopping: no new connections; in-flight requests may finish."
    );
    exit_after(grace + EXIT_MARGIN);
    tokio::select! {
        () = running.shutdown() => tracing::info!("Stopped."),
        () = stop_signal() => tracing::warn!("A second stop signal; exiting without draining."),
    }
}

/// Reloads the configuration on each SIGHUP, for as long as the node runs (a refused file is
/// logged by the reload with every error; the configuration in force keeps serving).
async fn reload_on_hangup(running: &keygate_server::Running) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    super::systemd::reloading();
                    let _ = running.reload("signal").await;
                    super::systemd::ready();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGHUP; reload with `keygate reload`.")
            }
        }
    }
    std::future::pending::<()>().await;
}

/// Tells systemd the node is ready once its replica is loaded (`/ready` answers 200 from then),
/// so a unit ordered after it finds keys being served.
async fn ready_when_loaded(running: &keygate_server::Running) {
    while !running.gateway().replica.is_loaded() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    super::systemd::ready();
}

/// How long past `shutdown_grace` the process may take before [`exit_after`] ends it.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// Ends the process `after` from now if it is still running: the last word on shutdown, on a
/// thread of its own so that no stuck task, blocked runtime or held lock can keep the process
/// alive past its grace. `Running::shutdown` bounds each of its waits, so this fires only if
/// something it does not know of hangs.
fn exit_after(after: Duration) {
    let watchdog = std::thread::Builder::new()
        .name("keygate-exit".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                "Shutdown did not finish within the grace; exiting."
            );
            crate::log_writer::flush();
            std::process::exit(1);
        });
    if let Err(e) = watchdog {
        tracing::warn!(error = %e, "Cannot start the shutdown watchdog.");
    }
}
