//! `keygate portal invite CLIENT --email ADDR`: a portal user and a mailed sign-in link, on the
//! database (with the configuration's `[portal]`) or through a node's admin API.

use anyhow::Context as _;
use serde_json::{json, Value};

use super::Context;
use crate::backend::Backend;
use crate::cli::PortalCommand;
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: PortalCommand) -> anyhow::Result<()> {
    let PortalCommand::Invite { client, email } = cmd;
    let answer: Value = match &ctx.backend {
        Backend::Remote(remote) => remote.portal_invite(&client, &email).await?,
        Backend::Local(store) => {
            let settings = ctx.config.portal.as_ref().context(
                "the configuration has no [portal] with `listen` (give --config with the portal's settings)",
            )?;
            let invitation =
                keygate_server::portal::invite(store, settings, &ctx.actor, &client, &email)
                    .await?;
            serde_json::to_value(invitation)?
        }
    };
    let link = answer["link"].as_str().unwrap_or_default();
    if ctx.json {
        output::json(&json!({ "link": link }));
    } else {
        if answer["mailed"].as_bool() == Some(true) {
            println!(
                "Mailed a sign-in link to {}.",
                answer["email"].as_str().unwrap_or(&email)
            );
        } else {
            println!(
                "No [portal.smtp] is configured; nothing was mailed. Send this link yourself:"
            );
        }
        println!("{link}");
        println!("It works once, within 15 minutes.");
    }
    Ok(())
}
