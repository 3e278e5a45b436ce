//! `keygate client ...`

use keygate_core::{Client, LimitOverrides};
use keygate_store::{ClientFilter, ClientUpdate, LimitPatch, NewClient};

use super::Context;
use crate::cli::{ClientCommand, ClientCreate, ClientList, ClientUpdateArgs};
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Create(args) => create(ctx, args).await,
        ClientCommand::List(args) => list(ctx, args).await,
        ClientCommand::Show { name } => show_one(ctx, &ctx.store.client(&name).await?),
        ClientCommand::Update(args) => update(ctx, args).await,
        ClientCommand::Disable { name } => show_one(
            ctx,
            &ctx.store
                .set_client_active(&ctx.actor, &name, false)
                .await?,
        ),
        ClientCommand::Enable { name } => show_one(
            ctx,
            &ctx.store.set_client_active(&ctx.actor, &name, true).await?,
        ),
    }
}

async fn create(ctx: &Context, args: ClientCreate) -> anyhow::Result<()> {
    let l = args.limits;
    let new = NewClient {
        name: args.name,
        plan: args.plan,
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
    };
    let client = ctx.store.create_client(&ctx.actor, new).await?;
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
    let clients = ctx.store.list_clients(&filter).await?;
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
    };
    let client = ctx
        .store
        .update_client(&ctx.actor, &args.name, update)
        .await?;
    show_one(ctx, &client)
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
