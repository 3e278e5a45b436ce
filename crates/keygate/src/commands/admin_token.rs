//! `keygate admin-token ...`: credentials for the admin API, shown once at creation.

use keygate_core::key_format::KeyFormat;
use keygate_core::{Digester, Issuer};
use keygate_store::AdminToken;
use serde_json::json;

use super::Context;
use crate::cli::AdminTokenCommand;
use crate::output;

fn show(ctx: &Context, t: &AdminToken) {
    if ctx.json {
        output::json(t);
        return;
    }
    output::fields(&[
        ("name", t.name.clone()),
        ("id", t.id.clone()),
        ("hint", t.hint.clone()),
        ("access", access(t).to_owned()),
        ("created", t.created_at.to_string()),
        (
            "revoked",
            t.revoked_at.map_or("-".to_owned(), |at| at.to_string()),
        ),
    ]);
}

fn access(t: &AdminToken) -> &'static str {
    if t.read_only {
        "read-only"
    } else {
        "read-write"
    }
}

pub(crate) async fn run(ctx: &Context, cmd: AdminTokenCommand) -> anyhow::Result<()> {
    let store = ctx.backend.local("admin-token")?;
    match cmd {
        AdminTokenCommand::Create { name, read_only } => {
            // Admin tokens have their own fixed format and a plain SHA-256 digest, so the admin
            // plane never depends on a profile's key settings.
            let issuer = Issuer::new(KeyFormat::admin_token(), Digester::plain());
            let (secret, material) = issuer.issue();
            let t = store
                .create_admin_token(&ctx.actor, &name, read_only, material)
                .await?;
            if ctx.json {
                output::json(&json!({
                    "id": t.id,
                    "name": t.name,
                    "token": secret.expose(),
                    "hint": t.hint,
                    "read_only": t.read_only,
                    "created_at": t.created_at,
                }));
            } else {
                println!("Created {} admin token `{}`.", access(&t), t.name);
                println!(
                    "Store this token now; it is shown only once:\n\n    {}\n",
                    secret.expose()
                );
            }
            Ok(())
        }
        AdminTokenCommand::List => {
            let tokens = store.list_admin_tokens().await?;
            if ctx.json {
                output::json(&tokens);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.id.clone(),
                        t.hint.clone(),
                        access(t).to_owned(),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                        .to_owned(),
                        t.created_at.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "ID", "HINT", "ACCESS", "STATE", "CREATED"], &rows);
            Ok(())
        }
        AdminTokenCommand::Revoke { name } => {
            let t = store.revoke_admin_token(&ctx.actor, &name).await?;
            show(ctx, &t);
            Ok(())
        }
    }
}
