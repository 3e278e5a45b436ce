//! `keygate client ...`

use keygate_core::{Client, LimitOverrides};
use keygate_store::{ClientFilter, ClientUpdate, LimitPatch, NewClient};

use serde_json::Value;

use super::Context;
use crate::backend::Backend;
use crate::cli::{ClientCommand, ClientCreate, ClientList, ClientUpdateArgs, QuotaArgs, UsageArgs};
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Create(args) => create(ctx, args).await,
        ClientCommand::List(args) => list(ctx, args).await,
        ClientCommand::Show { name } => show_one(ctx, &ctx.backend.client(&name).await?),
        ClientCommand::Update(args) => update(ctx, args).await,
        ClientCommand::Disable { name } => show_one(
            ctx,
            &ctx.backend
                .set_client_active(&ctx.actor, &name, false)
                .await?,
        ),
        ClientCommand::Delete { name } => delete(ctx, &name).await,
        ClientCommand::Usage(args) => usage(ctx, args).await,
        ClientCommand::Quota(args) => quota(ctx, args).await,
        ClientCommand::Enable { name } => show_one(
            ctx,
            &ctx.backend
                .set_client_active(&ctx.actor, &name, true)
                .await?,
        ),
    }
}

async fn create(ctx: &Context, args: ClientCreate) -> anyhow::Result<()> {
    let plan = args
        .plan
        .unwrap_or_else(|| ctx.config.profile.default_plan.to_string());
    ctx.config.check_plan_choice(&plan, args.bookmakers.len())?;
    let l = args.limits;
    let new = NewClient {
        name: args.name,
        plan,
        scopes: args.scopes,
        sports: args.sports,
        bookmakers: args.bookmakers,
        limits: LimitOverrides {
            rps: l.rps,
            per_minute: l.per_minute,
            per_hour: l.per_hour,
            per_day: l.per_day,
            per_month: l.per_month,
            ws_connections: l.ws_connections,
        },
        parent: args.parent,
        ..NewClient::default()
    };
    let client = ctx.backend.create_client(&ctx.actor, new).await?;
    show_one(ctx, &client)
}

async fn list(ctx: &Context, args: ClientList) -> anyhow::Result<()> {
    let active = match (args.active, args.inactive) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let filter = ClientFilter {
        plan: args.plan,
        active,
        after: args.after,
        limit: args.limit,
    };
    let clients = ctx.backend.list_clients(&filter).await?;
    if ctx.json {
        output::json(&clients);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.id.to_string(),
                c.plan.clone(),
                if c.active { "active" } else { "disabled" }.to_owned(),
                output::list(&c.scopes),
                output::list(&c.sports),
                output::list(&c.bookmakers),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "ID",
            "PLAN",
            "STATE",
            "SCOPES",
            "SPORTS",
            "BOOKMAKERS",
        ],
        &rows,
    );
    Ok(())
}

async fn update(ctx: &Context, args: ClientUpdateArgs) -> anyhow::Result<()> {
    if args.plan.is_some() || args.bookmakers.is_some() {
        // The plan and picks the client will have after this update.
        let (plan, picked) = match (&args.plan, &args.bookmakers) {
            (Some(plan), Some(b)) => (plan.clone(), b.0.len()),
            (plan, bookmakers) => {
                let current = ctx.backend.client(&args.name).await?;
                (
                    plan.clone().unwrap_or(current.plan),
                    bookmakers
                        .as_ref()
                        .map_or(current.bookmakers.len(), |b| b.0.len()),
                )
            }
        };
        ctx.config.check_plan_choice(&plan, picked)?;
    }
    let update = ClientUpdate {
        name: args.rename,
        plan: args.plan,
        scopes: args.scopes.map(|l| l.0),
        sports: args.sports.map(|l| l.0),
        bookmakers: args.bookmakers.map(|l| l.0),
        limits: LimitPatch {
            rps: args.rps.map(|c| c.0),
            per_minute: args.per_minute.map(|c| c.0),
            per_hour: args.per_hour.map(|c| c.0),
            per_day: args.per_day.map(|c| c.0),
            per_month: args.per_month.map(|c| c.0),
            ws_connections: args.ws_connections.map(|c| c.0),
        },
        ..ClientUpdate::default()
    };
    let client = ctx
        .backend
        .update_client(&ctx.actor, &args.name, update)
        .await?;
    show_one(ctx, &client)
}

/// Deletes locally (removing the feed from the broker too when `[amqp]` and the operator's
/// credentials are at hand; otherwise the running node acting on the broker does) or through
/// the admin API; the same document either way.
async fn delete(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let doc = match &ctx.backend {
        Backend::Local(store) => {
            let deleted = store.delete_client(&ctx.actor, name).await?;
            let feeds = match (&deleted.feed, &ctx.config.amqp) {
                (Some(_), Some(_)) => super::amqp::feeds(ctx, store).ok(),
                _ => None,
            };
            serde_json::to_value(
                keygate_server::admin::finish_deletion(feeds.as_ref(), deleted).await,
            )?
        }
        Backend::Remote(r) => r.delete_client(name).await?,
    };
    if ctx.json {
        output::json(&doc);
        return Ok(());
    }
    let text = |f: &str| match &doc[f] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    output::fields(&[
        ("deleted", text("name")),
        ("id", text("id")),
        ("keys revoked", text("keys_revoked")),
        ("portal users", text("portal_users")),
        ("feed", text("feed")),
    ]);
    Ok(())
}

fn limits_text(l: &LimitOverrides) -> String {
    if l.is_empty() {
        return "plan defaults".to_owned();
    }
    let parts: Vec<String> = [
        ("rps", l.rps),
        ("per_minute", l.per_minute),
        ("per_hour", l.per_hour),
        ("per_day", l.per_day),
        ("per_month", l.per_month),
        ("ws_connections", l.ws_connections),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
    .collect();
    parts.join(" ")
}

fn show_one(ctx: &Context, c: &Client) -> anyhow::Result<()> {
    if ctx.json {
        output::json(c);
        return Ok(());
    }
    output::fields(&[
        ("name", c.name.clone()),
        ("id", c.id.to_string()),
        ("plan", c.plan.clone()),
        (
            "state",
            if c.active { "active" } else { "disabled" }.to_owned(),
        ),
        ("scopes", output::list(&c.scopes)),
        ("sports", output::list(&c.sports)),
        (
            "bookmakers",
            if c.bookmakers.is_empty() {
                "all".to_owned()
            } else {
                output::list(&c.bookmakers)
            },
        ),
        ("limits", limits_text(&c.limits)),
        ("created", c.created_at.to_string()),
        ("updated", c.updated_at.to_string()),
    ]);
    Ok(())
}

/// Days shown when `--from` is absent.
const USAGE_DAYS: i64 = 30;

async fn usage(ctx: &Context, args: UsageArgs) -> anyhow::Result<()> {
    let to = args.to.unwrap_or_else(|| ctx.backend.now().utc_day());
    let from = match args.from {
        Some(from) => from,
        None => {
            let end = keygate_core::Timestamp::parse_rfc3339(&format!("{to}T00:00:00Z"))?;
            keygate_core::Timestamp::from_millis(end.as_millis() - (USAGE_DAYS - 1) * 86_400_000)
                .utc_day()
        }
    };
    if from > to {
        anyhow::bail!("--from {from} is after --to {to}");
    }
    let report = ctx.backend.usage(&args.name, &from, &to).await?;
    if ctx.json {
        output::json(&report);
        return Ok(());
    }
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = report["days"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|d| {
            let statuses = d["by_status"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(status, n)| format!("{status}={n}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![
                d["day"].as_str().unwrap_or("-").to_owned(),
                d["requests"].to_string(),
                d["ws_messages"].as_u64().unwrap_or(0).to_string(),
                d["ws_bytes"].as_u64().unwrap_or(0).to_string(),
                statuses,
            ]
        })
        .collect();
    println!(
        "Client {}: {} requests, {} WebSocket messages ({} bytes) delivered from {from} to {to}.",
        report["client"].as_str().unwrap_or(&args.name),
        report["requests"],
        report["ws_messages"].as_u64().unwrap_or(0),
        report["ws_bytes"].as_u64().unwrap_or(0),
    );
    output::table(
        &["DAY", "REQUESTS", "WS MESSAGES", "WS BYTES", "BY STATUS"],
        &rows,
    );
    Ok(())
}

/// `keygate client quota`: a top-up or reset (stored and audited; every node applies it within
/// its feed interval), then the client's windows. On a database the CLI has no limiter to
/// read, so `used` shows only through a node (`--admin-url`).
async fn quota(ctx: &Context, args: QuotaArgs) -> anyhow::Result<()> {
    let window = args
        .window
        .as_deref()
        .map(keygate_store::parse_window)
        .transpose()?;
    let report = ctx
        .backend
        .quota(
            &ctx.actor,
            &ctx.config,
            &args.name,
            args.add,
            args.reset,
            window,
        )
        .await?;
    if ctx.json {
        output::json(&report);
        return Ok(());
    }
    if let Some(n) = args.add {
        println!(
            "Added {n} to the current window: every node admits them within its feed interval."
        );
    } else if args.reset {
        println!("Reset: every node counts the current window from zero within its feed interval.");
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = report["windows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|w| {
            [
                "window",
                "window_start",
                "plan",
                "topup",
                "allowance",
                "used",
                "remaining",
                "resets",
            ]
            .iter()
            .map(|f| text(&w[*f]))
            .collect()
        })
        .collect();
    output::table(
        &[
            "WINDOW",
            "STARTED",
            "PLAN",
            "TOPUP",
            "ALLOWANCE",
            "USED",
            "REMAINING",
            "RESETS",
        ],
        &rows,
    );
    if rows.is_empty() {
        println!("The client's plan has no quota.");
    }
    Ok(())
}
