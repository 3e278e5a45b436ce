//! `keygate webhooks`: the outbox's deliveries, listed, shown with their body, replayed.

use keygate_store::{Delivery, DeliveryFilter, DeliveryState};

use super::Context;
use crate::cli::WebhooksCommand;
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: WebhooksCommand) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::List(args) => {
            let filter = DeliveryFilter {
                limit: args.limit,
                before: args.before,
                state: args.state.as_deref().and_then(DeliveryState::parse),
                webhook: args.webhook,
                event_type: args.event,
                event_id: args.event_id,
            };
            let rows = ctx.backend.deliveries(&filter).await?;
            if ctx.json {
                output::json(&rows);
                return Ok(());
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.state.as_str().to_owned(),
                        d.event_type.clone(),
                        d.event_id.clone(),
                        d.webhook.clone(),
                        d.attempts.to_string(),
                        d.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID",
                    "STATE",
                    "EVENT",
                    "EVENT ID",
                    "WEBHOOK",
                    "ATTEMPTS",
                    "LAST ERROR",
                ],
                &table,
            );
        }
        WebhooksCommand::Show { id } => {
            let (delivery, body) = ctx.backend.delivery(id).await?;
            if ctx.json {
                let mut doc = serde_json::json!(delivery);
                doc["body"] = body;
                output::json(&doc);
                return Ok(());
            }
            print_delivery(&delivery);
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        WebhooksCommand::Replay { id } => {
            let delivery = ctx.backend.replay_delivery(&ctx.actor, id).await?;
            if ctx.json {
                output::json(&delivery);
                return Ok(());
            }
            println!(
                "Delivery {id} ({} to `{}`) is pending again; a node sends it at its next poll.",
                delivery.event_type, delivery.webhook
            );
        }
    }
    Ok(())
}

fn print_delivery(d: &Delivery) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    output::fields(&[
        ("id", d.id.to_string()),
        ("state", d.state.as_str().to_owned()),
        ("event", d.event_type.clone()),
        ("event id", d.event_id.clone()),
        ("webhook", d.webhook.clone()),
        ("attempts", d.attempts.to_string()),
        ("next attempt", d.next_at.to_string()),
        ("last status", opt(d.last_status.map(|s| s.to_string()))),
        ("last error", opt(d.last_error.clone())),
        ("created", d.created_at.to_string()),
        ("delivered", opt(d.delivered_at.map(|t| t.to_string()))),
    ]);
}
