//! One function per command. Each opens what it needs, does one thing, prints one result.

mod audit;
mod client;
mod key;

use anyhow::Context as _;
use keygate_core::Issuer;
use keygate_store::{Actor, OpenOptions, Store};

use crate::cli::{Cli, Command};

/// What every command gets: the store, the key issuer, the acting operator, the output mode.
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let store = Store::open(&cli.db, OpenOptions::default()).await?;
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let ctx = Context {
        store,
        issuer: Issuer::default(),
        actor: Actor(format!("cli:{user}")),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Client(cmd) => client::run(&ctx, cmd).await,
        Command::Key(cmd) => key::run(&ctx, cmd).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Migrate => migrate(&ctx).await,
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
