//! `keygate key ...`: the plaintext appears in exactly two outputs, `create` and `rotate`.

use std::collections::HashMap;

use keygate_core::{ApiKey, ClientId, KeyState, SecretKey, Timestamp};
use keygate_store::{IssuedKey, KeyFilter, NewKey, Rotation};
use serde::Serialize;

use super::Context;
use crate::cli::{KeyCommand, KeyCreate, KeyList};
use crate::output;

/// A key as printed: the stored fields plus the client's name.
#[derive(Serialize)]
struct KeyView<'a> {
    #[serde(flatten)]
    key: &'a ApiKey,
    client: &'a str,
}

pub(crate) async fn run(ctx: &Context, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create(args) => create(ctx, args).await,
        KeyCommand::List(args) => list(ctx, args).await,
        KeyCommand::Show { id } => show_one(ctx, &ctx.store.key(&id).await?).await,
        KeyCommand::Rotate { id, grace } => {
            let (secret, material) = ctx.issuer.issue();
            let r = ctx
                .store
                .rotate_key(&ctx.actor, &id, material, grace)
                .await?;
            print_issued(ctx, &r.new, &secret, Some(&r)).await
        }
        KeyCommand::Revoke { id } => {
            let key = ctx
                .store
                .set_key_state(&ctx.actor, &id, KeyState::Revoked)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Disable { id } => {
            let key = ctx
                .store
                .set_key_state(&ctx.actor, &id, KeyState::Disabled)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Enable { id } => {
            let key = ctx
                .store
                .set_key_state(&ctx.actor, &id, KeyState::Active)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Expire { id, at, in_, never } => {
            let expires_at = match (at, in_, never) {
                (_, _, true) => None,
                (Some(at), _, _) => Some(at),
                (None, Some(d), _) => Some(ctx.store.now().plus(d)),
                (None, None, false) => unreachable!("clap requires --at, --in or --never"),
            };
            let key = ctx
                .store
                .set_key_expiry(&ctx.actor, &id, expires_at)
                .await?;
            show_one(ctx, &key).await
        }
    }
}

async fn create(ctx: &Context, args: KeyCreate) -> anyhow::Result<()> {
    let expires_at = match (args.expires_at, args.expires_in) {
        (Some(at), _) => Some(at),
        (None, Some(d)) => Some(ctx.store.now().plus(d)),
        (None, None) => None,
    };
    let (secret, material) = ctx.issuer.issue();
    let key = ctx
        .store
        .create_key(
            &ctx.actor,
            &args.client,
            NewKey {
                material,
                label: args.label,
                expires_at,
            },
        )
        .await?;
    print_issued(ctx, &key, &secret, None).await
}

async fn print_issued(
    ctx: &Context,
    key: &ApiKey,
    secret: &SecretKey,
    rotated: Option<&Rotation>,
) -> anyhow::Result<()> {
    let client = ctx.store.client(key.client_id.as_str()).await?;
    if ctx.json {
        match rotated {
            Some(r) => output::json(&IssuedKey::rotated(r, secret, &client.name)),
            None => output::json(&IssuedKey::created(key, secret, &client.name)),
        }
        return Ok(());
    }
    match rotated {
        None => println!("Created key {} for client {}.", key.id, client.name),
        Some(r) => println!(
            "Rotated key {} into {} for client {}; the old key works until {}.",
            r.old.id,
            key.id,
            client.name,
            r.old_valid_until()
                .map_or("now".to_owned(), |t| t.to_string())
        ),
    }
    println!(
        "Store this key now; it is shown only once:\n\n    {}\n",
        secret.expose()
    );
    output::fields(&[
        ("hint", key.hint.clone()),
        ("label", label_text(&key.label)),
        ("expires", expiry_text(key.expires_at)),
    ]);
    Ok(())
}

fn label_text(label: &str) -> String {
    if label.is_empty() {
        "-".to_owned()
    } else {
        label.to_owned()
    }
}

fn expiry_text(at: Option<Timestamp>) -> String {
    at.map_or("never".to_owned(), |t| t.to_string())
}

async fn list(ctx: &Context, args: KeyList) -> anyhow::Result<()> {
    let filter = KeyFilter {
        client: args.client,
        state: args.state.as_deref().and_then(KeyState::parse),
        after: args.after,
        limit: args.limit,
    };
    let keys = ctx.store.list_keys(&filter).await?;
    let mut names: HashMap<ClientId, String> = HashMap::new();
    for k in &keys {
        if !names.contains_key(&k.client_id) {
            let c = ctx.store.client(k.client_id.as_str()).await?;
            names.insert(c.id, c.name);
        }
    }
    let name = |k: &ApiKey| names.get(&k.client_id).map_or("", String::as_str);
    if ctx.json {
        let views: Vec<KeyView<'_>> = keys
            .iter()
            .map(|k| KeyView {
                key: k,
                client: name(k),
            })
            .collect();
        output::json(&views);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.to_string(),
                name(k).to_owned(),
                label_text(&k.label),
                k.hint.clone(),
                k.state.to_string(),
                expiry_text(k.expires_at),
                k.created_at.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "CLIENT", "LABEL", "HINT", "STATE", "EXPIRES", "CREATED",
        ],
        &rows,
    );
    Ok(())
}

async fn show_one(ctx: &Context, key: &ApiKey) -> anyhow::Result<()> {
    let client = ctx.store.client(key.client_id.as_str()).await?;
    if ctx.json {
        output::json(&KeyView {
            key,
            client: &client.name,
        });
        return Ok(());
    }
    output::fields(&[
        ("id", key.id.to_string()),
        ("client", client.name.clone()),
        ("label", label_text(&key.label)),
        ("hint", key.hint.clone()),
        ("state", key.state.to_string()),
        ("expires", expiry_text(key.expires_at)),
        ("created", key.created_at.to_string()),
        (
            "rotated",
            key.rotated_at.map_or("-".to_owned(), |t| t.to_string()),
        ),
        (
            "replaced by",
            key.replaced_by
                .as_ref()
                .map_or("-".to_owned(), ToString::to_string),
        ),
    ]);
    Ok(())
}
