//! `keygate key ...`: the plaintext appears in exactly two outputs, `create` and `rotate`.

use std::collections::HashMap;

use keygate_core::{ApiKey, ClientId, KeyRestrictions, KeyState, RestrictionsChange, Timestamp};
use keygate_store::KeyFilter;
use serde::Serialize;

use super::Context;
use crate::backend::Issued;
use crate::cli::{KeyCommand, KeyCreate, KeyList, KeyRestrict, KeyRestrictionArgs};
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
        KeyCommand::Show { id } => show_one(ctx, &ctx.backend.key(&id).await?).await,
        KeyCommand::Rotate { id, grace } => {
            let issued = ctx
                .backend
                .rotate_key(&ctx.actor, &ctx.issuer, &id, grace)
                .await?;
            print_issued(ctx, &issued)
        }
        KeyCommand::Revoke { id } => {
            let key = ctx
                .backend
                .set_key_state(&ctx.actor, &id, KeyState::Revoked)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Disable { id } => {
            let key = ctx
                .backend
                .set_key_state(&ctx.actor, &id, KeyState::Disabled)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Enable { id } => {
            let key = ctx
                .backend
                .set_key_state(&ctx.actor, &id, KeyState::Active)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Restrict(args) => {
            let change = restrict_change(&args);
            if change.is_empty() {
                anyhow::bail!("nothing to change: give --scopes, --cidrs, --metadata, --external-id or a --all-scopes/--clear-* option");
            }
            let key = ctx
                .backend
                .set_key_restrictions(&ctx.actor, &args.id, &change)
                .await?;
            show_one(ctx, &key).await
        }
        KeyCommand::Suspected { since } => suspected(ctx, since).await,
        KeyCommand::Expire { id, at, in_, never } => {
            let expires_at = match (at, in_, never) {
                (_, _, true) => None,
                (Some(at), _, _) => Some(at),
                (None, Some(d), _) => Some(ctx.backend.now().plus(d)),
                (None, None, false) => unreachable!("clap requires --at, --in or --never"),
            };
            let key = ctx
                .backend
                .set_key_expiry(&ctx.actor, &id, expires_at)
                .await?;
            show_one(ctx, &key).await
        }
    }
}

/// The restrictions a create asks for (options not given: unrestricted).
fn restrictions(args: &KeyRestrictionArgs) -> KeyRestrictions {
    KeyRestrictions {
        scopes: args.scopes.clone().map(|l| l.0),
        allowed_cidrs: args.cidrs.clone().map(|l| l.0).unwrap_or_default(),
        metadata: args.metadata.iter().cloned().collect(),
        external_id: args.external_id.clone(),
    }
}

/// The change `key restrict` asks for: each option given replaces, a `--clear-*` clears.
fn restrict_change(args: &KeyRestrict) -> RestrictionsChange {
    let set = &args.set;
    RestrictionsChange {
        scopes: match (&set.scopes, args.all_scopes) {
            (_, true) => Some(None),
            (Some(l), false) => Some(Some(l.0.clone())),
            (None, false) => None,
        },
        allowed_cidrs: set.cidrs.clone().map(|l| l.0),
        metadata: match (set.metadata.is_empty(), args.clear_metadata) {
            (_, true) => Some(Default::default()),
            (false, false) => Some(set.metadata.iter().cloned().collect()),
            (true, false) => None,
        },
        external_id: match (&set.external_id, args.clear_external_id) {
            (_, true) => Some(None),
            (Some(e), false) => Some(Some(e.clone())),
            (None, false) => None,
        },
    }
}

async fn create(ctx: &Context, args: KeyCreate) -> anyhow::Result<()> {
    let expires_at = match (args.expires_at, args.expires_in) {
        (Some(at), _) => Some(at),
        (None, Some(d)) => Some(ctx.backend.now().plus(d)),
        (None, None) => None,
    };
    let issued = ctx
        .backend
        .create_key(
            &ctx.actor,
            &ctx.issuer,
            &args.client,
            args.label,
            expires_at,
            restrictions(&args.restrictions),
        )
        .await?;
    print_issued(ctx, &issued)
}

fn print_issued(ctx: &Context, issued: &Issued) -> anyhow::Result<()> {
    if ctx.json {
        output::json(issued);
        return Ok(());
    }
    match &issued.replaces {
        None => println!("Created key {} for client {}.", issued.id, issued.client),
        Some(old) => println!(
            "Rotated key {old} into {} for client {}; the old key works until {}.",
            issued.id,
            issued.client,
            issued
                .old_key_valid_until
                .map_or("now".to_owned(), |t| t.to_string())
        ),
    }
    println!(
        "Store this key now; it is shown only once:\n\n    {}\n",
        issued.key
    );
    output::fields(&[
        ("hint", issued.hint.clone()),
        ("label", label_text(&issued.label)),
        ("expires", expiry_text(issued.expires_at)),
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

/// A key's last use as recorded (to about a minute plus the usage flush), or `never`.
fn last_used_text(at: Option<Timestamp>) -> String {
    at.map_or("never".to_owned(), |t| t.to_string())
}

async fn list(ctx: &Context, args: KeyList) -> anyhow::Result<()> {
    let filter = KeyFilter {
        client: args.client,
        state: args.state.as_deref().and_then(KeyState::parse),
        external_id: args.external_id,
        after: args.after,
        limit: args.limit,
    };
    let keys = ctx.backend.list_keys(&filter).await?;
    let mut names: HashMap<ClientId, String> = HashMap::new();
    for k in &keys {
        if !names.contains_key(&k.client_id) {
            let c = ctx.backend.client(k.client_id.as_str()).await?;
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
                last_used_text(k.last_used_at),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "CLIENT",
            "LABEL",
            "HINT",
            "STATE",
            "EXPIRES",
            "CREATED",
            "LAST USED",
        ],
        &rows,
    );
    Ok(())
}

async fn show_one(ctx: &Context, key: &ApiKey) -> anyhow::Result<()> {
    let client = ctx.backend.client(key.client_id.as_str()).await?;
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
        ("last used", last_used_text(key.last_used_at)),
        ("scopes", restricted_scopes(&key.restrictions)),
        ("cidrs", cidrs_text(&key.restrictions)),
        ("metadata", metadata_text(&key.restrictions)),
        (
            "external id",
            key.restrictions
                .external_id
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
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

/// A key's own scopes, or that it has all of its client's.
fn restricted_scopes(r: &KeyRestrictions) -> String {
    match &r.scopes {
        None => "all of the client's".to_owned(),
        Some(s) if s.is_empty() => "none".to_owned(),
        Some(s) => s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
    }
}

fn cidrs_text(r: &KeyRestrictions) -> String {
    if r.allowed_cidrs.is_empty() {
        "anywhere".to_owned()
    } else {
        r.allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Metadata as `name=value` pairs; values are printable (bounded at write), so this line
/// cannot carry terminal escapes.
fn metadata_text(r: &KeyRestrictions) -> String {
    if r.metadata.is_empty() {
        return "-".to_owned();
    }
    r.metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `keygate key suspected [--since T]`: ids, hours and counts; never key material.
async fn suspected(ctx: &Context, since: Option<Timestamp>) -> anyhow::Result<()> {
    let found = ctx.backend.suspected_keys(since).await?;
    if ctx.json {
        output::json(&found);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|s| {
            vec![
                s.key_id.to_string(),
                s.client_id.to_string(),
                s.hour.to_string(),
                s.networks.to_string(),
                s.action.as_str().to_owned(),
                s.created_at.to_string(),
            ]
        })
        .collect();
    output::table(
        &["KEY", "CLIENT", "HOUR", "NETWORKS", "ACTION", "RECORDED"],
        &rows,
    );
    Ok(())
}
