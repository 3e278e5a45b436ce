//! `keygate portal invite CLIENT --email ADDR`: a portal user and a mailed sign-in link, on the
//! database (with the configuration's `[portal]`) or through a node's admin API; `disable`,
//! `enable` and `users` manage the people on the database.

use anyhow::Context as _;
use keygate_store::PortalUser;
use serde_json::{json, Value};

use super::Context;
use crate::backend::Backend;
use crate::cli::PortalCommand;
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: PortalCommand) -> anyhow::Result<()> {
    match cmd {
        PortalCommand::Invite { client, email } => invite(ctx, &client, &email).await,
        PortalCommand::Disable { email } => set_disabled(ctx, &email, true).await,
        PortalCommand::Enable { email } => set_disabled(ctx, &email, false).await,
        PortalCommand::Users { client } => users(ctx, &client).await,
    }
}

async fn invite(ctx: &Context, client: &str, email: &str) -> anyhow::Result<()> {
    let answer: Value = match &ctx.backend {
        Backend::Remote(remote) => remote.portal_invite(client, email).await?,
        Backend::Local(store) => {
            let settings = ctx.config.portal.as_ref().context(
                "the configuration has no [portal] with `listen` (give --config with the portal's settings)",
            )?;
            let invitation =
                keygate_server::portal::invite(store, settings, &ctx.actor, client, email).await?;
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
                answer["email"].as_str().unwrap_or(email)
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

fn show(ctx: &Context, users: &[PortalUser]) {
    if ctx.json {
        output::json(users);
        return;
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.email.clone(),
                u.id.to_string(),
                if u.disabled { "disabled" } else { "active" }.to_owned(),
                u.created_at.to_string(),
            ]
        })
        .collect();
    output::table(&["email", "id", "state", "created"], &rows);
}

async fn set_disabled(ctx: &Context, email: &str, disabled: bool) -> anyhow::Result<()> {
    let store = ctx.backend.local("portal disable")?;
    let user = store
        .set_portal_user_disabled(&ctx.actor, email, disabled)
        .await?;
    show(ctx, std::slice::from_ref(&user));
    Ok(())
}

async fn users(ctx: &Context, client: &str) -> anyhow::Result<()> {
    let store = ctx.backend.local("portal users")?;
    let client = store.client(client).await?;
    show(ctx, &store.portal_users(&client.id).await?);
    Ok(())
}
