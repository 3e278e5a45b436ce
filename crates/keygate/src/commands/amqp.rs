//! `keygate amqp provision|rotate|revoke|show|reconcile`: a client's messaging feed on RabbitMQ.
//!
//! Locally the CLI calls the broker itself (with `[amqp]` from `--config` and the operator's
//! credentials from `KEYGATE_AMQP_USER` / `KEYGATE_AMQP_PASSWORD`); with `--admin-url` the node
//! does, through its admin API, and the output is the same.

use anyhow::Context as _;
use keygate_amqp::{AmqpConfig, AmqpError, Feeds};
use serde_json::Value;

use super::Context;
use crate::backend::Backend;
use crate::cli::AmqpCommand;
use crate::output;

pub(crate) fn feeds(ctx: &Context, store: &keygate_store::Store) -> anyhow::Result<Feeds> {
    let raw = ctx.config.amqp.as_ref().ok_or(AmqpError::NotConfigured)?;
    let config = AmqpConfig::compile(raw, &|name| std::env::var(name).ok())
        .map_err(|errors| anyhow::anyhow!(errors.join("; ")))?;
    Ok(Feeds::new(store.clone(), config)?)
}

pub(crate) async fn run(ctx: &Context, cmd: AmqpCommand) -> anyhow::Result<()> {
    let doc: Value = match &ctx.backend {
        Backend::Local(store) => {
            let f = feeds(ctx, store)?;
            let a = &ctx.actor;
            match &cmd {
                AmqpCommand::Provision { client, slug } => {
                    serde_json::to_value(f.provision(a, client, slug.as_deref()).await?)?
                }
                AmqpCommand::Rotate { client } => serde_json::to_value(f.rotate(a, client).await?)?,
                AmqpCommand::Revoke { client } => serde_json::to_value(f.revoke(a, client).await?)?,
                AmqpCommand::Show { client } => serde_json::to_value(f.show(client).await?)?,
                AmqpCommand::Reconcile { client, check } => {
                    let only = match client {
                        Some(c) => Some(store.client(c).await?.name),
                        None => None,
                    };
                    if *check {
                        let mut drift = f.drift().await?;
                        if only.is_some() {
                            drift.items.retain(|d| d.client == only);
                        }
                        serde_json::to_value(drift)?
                    } else {
                        serde_json::to_value(f.reconcile(a, client.as_deref()).await?)?
                    }
                }
            }
        }
        Backend::Remote(remote) => remote
            .amqp(&cmd)
            .await
            .context("the node's admin API refused the feed operation")?,
    };
    print(ctx, &cmd, &doc);
    Ok(())
}

fn text(doc: &Value, field: &str) -> String {
    match &doc[field] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print(ctx: &Context, cmd: &AmqpCommand, doc: &Value) {
    if ctx.json {
        output::json(doc);
        return;
    }
    match cmd {
        AmqpCommand::Provision { .. } | AmqpCommand::Rotate { .. } => {
            println!("Feed URL (shown once, store it now):");
            println!("{}", text(doc, "url"));
            output::fields(&[
                ("client", text(doc, "client")),
                ("vhost", text(doc, "vhost")),
                ("user", text(doc, "user")),
                ("address", text(doc, "address")),
            ]);
        }
        AmqpCommand::Revoke { .. } | AmqpCommand::Show { .. } => output::fields(&[
            ("client", text(doc, "client")),
            ("state", text(doc, "state")),
            ("client active", text(doc, "client_active")),
            ("vhost", text(doc, "vhost")),
            ("user", text(doc, "user")),
            ("url", text(doc, "url_hint")),
            ("created", text(doc, "created_at")),
            ("rotated", text(doc, "rotated_at")),
            ("revoked", text(doc, "revoked_at")),
        ]),
        AmqpCommand::Reconcile { .. } => {
            let items = doc
                .get("items")
                .or_else(|| doc.get("found"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if items.is_empty() {
                println!("No drift: the broker matches the store.");
                return;
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|d| vec![text(d, "kind"), text(d, "name"), text(d, "client")])
                .collect();
            output::table(&["DRIFT", "NAME", "CLIENT"], &rows);
            if let Some(n) = doc.get("repaired") {
                println!(
                    "Repaired {n}; left alone (not made by keygate): {}.",
                    doc["left"].as_array().map_or(0, Vec::len)
                );
            }
        }
    }
}
