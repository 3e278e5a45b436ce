//! One function per command. Each opens what it needs, does one thing, prints one result.

mod admin_token;
mod amqp;
mod audit;
mod client;
mod demo;
mod emergency;
mod import;
mod key;
mod plan;
mod portal;
mod reload;
mod serve;
mod suspend;
mod systemd;
mod usage;
mod webhooks;

use std::path::Path;

use anyhow::Context as _;
use keygate_core::Issuer;
use keygate_server::{Config, Overrides};
use keygate_store::{Actor, OpenOptions, Store};

use crate::backend::{Backend, Remote};

use crate::cli::{Cli, Command};

/// What every store command gets: where it takes effect, the key issuer, the acting operator,
/// the configuration (plans), the output mode.
pub(crate) struct Context {
    pub(crate) backend: Backend,
    pub(crate) issuer: Issuer,
    pub(crate) actor: Actor,
    pub(crate) config: Config,
    pub(crate) json: bool,
}

/// Runs a parsed command line to completion.
///
/// # Errors
/// Whatever the command failed with, for `main` to print.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => return check_config(&file, cli.json),
        Command::Serve(args) => return serve::run(cli.db, cli.config.as_deref(), args),
        Command::Demo(args) => return demo::run(cli.db, cli.config.as_deref(), args),
        _ => {}
    }
    if matches!(cli.command, Command::Reload) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        return runtime.block_on(reload::run(&cli));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

/// Reads and compiles a configuration file.
///
/// # Errors
/// The file cannot be read, or every problem in it.
pub(crate) fn load_config(path: &Path, overrides: &Overrides) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration `{}`", path.display()))?;
    Ok(keygate_server::config::load(
        &text,
        &path.display().to_string(),
        overrides,
    )?)
}

/// How `--admin-url https://…` checks the node and shows itself (`--admin-ca`, `--admin-cert`,
/// `--admin-key`).
pub(crate) fn admin_tls(cli: &Cli) -> keygate_server::tls::ClientFiles {
    keygate_server::tls::ClientFiles {
        ca_file: cli.admin_ca.clone(),
        client_cert: cli
            .admin_cert
            .clone()
            .zip(cli.admin_key.clone())
            .map(|(cert, key)| keygate_server::tls::CertFiles { cert, key }),
    }
}

/// The admin token `--admin-url` (and `reload`) authenticate with.
pub(crate) fn admin_token() -> anyhow::Result<String> {
    std::env::var("KEYGATE_ADMIN_TOKEN").map_err(|_| {
        anyhow::anyhow!("--admin-url needs an admin token in KEYGATE_ADMIN_TOKEN (`keygate admin-token create` makes one)")
    })
}

fn check_config(file: &Path, json: bool) -> anyhow::Result<()> {
    let overrides = Overrides {
        tooling: true,
        ..Overrides::default()
    };
    let config = load_config(file, &overrides)?;
    let routes = config.routes.routes().len();
    if json {
        crate::output::json(&serde_json::json!({
            "file": file.display().to_string(),
            "valid": true,
            "routes": routes,
            "profile": &*config.profile.name,
        }));
    } else {
        println!(
            "{}: valid ({routes} routes, profile {}).",
            file.display(),
            config.profile.name
        );
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let tooling = Overrides {
        tooling: true,
        skip_tls_files: true,
        ..Overrides::default()
    };
    let config = match &cli.config {
        Some(path) => Some(load_config(path, &tooling)?),
        None => None,
    };
    let backend = match &cli.admin_url {
        Some(url) => {
            if cli.db.is_some() {
                anyhow::bail!(
                    "give --db (a database) or --admin-url (a node's admin API), not both"
                );
            }
            Backend::Remote(Remote::new(url, &admin_token()?, &admin_tls(&cli))?)
        }
        None => {
            let db = cli
                .db
                .clone()
                .or_else(|| config.as_ref().map(|c| c.db.clone()))
                .unwrap_or_else(|| "keygate.db".to_owned());
            Backend::Local(Store::open(&db, OpenOptions::default()).await?)
        }
    };
    let config = match config {
        Some(c) => c,
        None => keygate_server::config::default_config(&tooling)?,
    };
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let ctx = Context {
        backend,
        issuer: config.issuer.clone(),
        actor: Actor(format!("cli:{user}")),
        config,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Client(cmd) => client::run(&ctx, cmd).await,
        Command::Key(cmd) => key::run(&ctx, cmd).await,
        Command::Import(args) => import::run(&ctx, args).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Usage(args) => usage::run(&ctx, args).await,
        Command::Plan(cmd) => plan::run(&ctx, cmd).await,
        Command::Emergency(cmd) => emergency::run(&ctx, cmd).await,
        Command::Suspend(args) => suspend::suspend(&ctx, args).await,
        Command::Resume { id } => suspend::resume(&ctx, &id).await,
        Command::Suspensions { all } => suspend::list(&ctx, all).await,
        Command::AdminToken(cmd) => admin_token::run(&ctx, cmd).await,
        Command::Amqp(cmd) => amqp::run(&ctx, cmd).await,
        Command::Portal(cmd) => portal::run(&ctx, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&ctx, cmd).await,
        Command::Migrate => migrate(&ctx).await,
        Command::Serve(_) | Command::Demo(_) | Command::CheckConfig { .. } | Command::Reload => {
            unreachable!("handled before the store opens")
        }
    };
    ctx.backend.close().await;
    result
}

async fn migrate(ctx: &Context) -> anyhow::Result<()> {
    let store = ctx.backend.local("migrate")?;
    // Opening already applied pending migrations (or refused a newer schema).
    let version = keygate_store::latest_version(store.backend());
    if ctx.json {
        crate::output::json(
            &serde_json::json!({ "database": store.target(), "schema_version": version }),
        );
    } else {
        println!(
            "Database {} is at schema version {version}.",
            store.target()
        );
    }
    Ok(())
}
