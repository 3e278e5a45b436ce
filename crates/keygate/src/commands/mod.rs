//! One function per command. Each opens what it needs, does one thing, prints one result.

mod admin_token;
mod audit;
mod client;
mod demo;
mod key;
mod serve;

use std::path::Path;

use anyhow::Context as _;
use keygate_core::Issuer;
use keygate_server::{Config, Overrides};
use keygate_store::{Actor, OpenOptions, Store};

use crate::cli::{Cli, Command};

/// What every store command gets: the store, the key issuer, the acting operator, the output
/// mode.
pub(crate) struct Context {
    pub(crate) store: Store,
    pub(crate) issuer: Issuer,
    pub(crate) actor: Actor,
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
    let config = match &cli.config {
        Some(path) => Some(load_config(
            path,
            &Overrides {
                tooling: true,
                ..Overrides::default()
            },
        )?),
        None => None,
    };
    let db = cli
        .db
        .clone()
        .or_else(|| config.as_ref().map(|c| c.db.clone()))
        .unwrap_or_else(|| "keygate.db".to_owned());
    let store = Store::open(&db, OpenOptions::default()).await?;
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let ctx = Context {
        store,
        issuer: config.map(|c| c.issuer).unwrap_or_default(),
        actor: Actor(format!("cli:{user}")),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Client(cmd) => client::run(&ctx, cmd).await,
        Command::Key(cmd) => key::run(&ctx, cmd).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::AdminToken(cmd) => admin_token::run(&ctx, cmd).await,
        Command::Migrate => migrate(&ctx).await,
        Command::Serve(_) | Command::Demo(_) | Command::CheckConfig { .. } => {
            unreachable!("handled before the store opens")
        }
    };
    ctx.store.close().await;
    result
}

async fn migrate(ctx: &Context) -> anyhow::Result<()> {
    // Opening already applied pending migrations (or refused a newer schema).
    let version = keygate_store::latest_version(ctx.store.backend());
    if ctx.json {
        crate::output::json(
            &serde_json::json!({ "database": ctx.store.target(), "schema_version": version }),
        );
    } else {
        println!(
            "Database {} is at schema version {version}.",
            ctx.store.target()
        );
    }
    Ok(())
}
