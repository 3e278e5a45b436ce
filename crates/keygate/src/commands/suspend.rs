//! `keygate suspend`, `keygate resume ID` and `keygate suspensions`: scoped holds every node
//! follows within its feed interval. Emergency mode stays the global switch.

use anyhow::Context as _;
use keygate_core::suspension::{RouteName, Suspension, Target};
use keygate_store::NewSuspension;

use super::Context;
use crate::cli::{SuspendArgs, Until};
use crate::output;

pub(crate) async fn suspend(ctx: &Context, args: SuspendArgs) -> anyhow::Result<()> {
    // clap's `target` group guarantees exactly one.
    let target = match (args.scope, args.sport, args.bookmaker, args.route) {
        (Some(s), ..) => Target::Scope(s),
        (_, Some(s), ..) => Target::Sport(s),
        (_, _, Some(b), _) => Target::Bookmaker(b),
        (_, _, _, Some(r)) => Target::Route(RouteName::new(&r).context("--route")?),
        (None, None, None, None) => {
            anyhow::bail!("give one of --scope, --sport, --bookmaker or --route")
        }
    };
    let until = args.until.map(|u| match u {
        Until::At(at) => at,
        Until::In(d) => ctx.backend.now().plus(d),
    });
    let new = NewSuspension {
        target,
        client: args.client,
        message: args.message,
        until,
    };
    let s = ctx.backend.suspend(&ctx.actor, new).await?;
    if ctx.json {
        output::json(&s);
    } else {
        println!(
            "Suspended {} `{}`: every node refuses the requests it holds with `suspended`.",
            s.target.kind(),
            s.target.value()
        );
        show(&s);
    }
    Ok(())
}

pub(crate) async fn resume(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let s = ctx.backend.resume(&ctx.actor, id).await?;
    if ctx.json {
        output::json(&s);
    } else {
        println!(
            "Lifted {}: {} `{}` is served again on every node.",
            s.id,
            s.target.kind(),
            s.target.value()
        );
    }
    Ok(())
}

pub(crate) async fn list(ctx: &Context, all: bool) -> anyhow::Result<()> {
    let list = ctx.backend.suspensions(all).await?;
    if ctx.json {
        output::json(&list);
        return Ok(());
    }
    let now = ctx.backend.now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.target.kind().to_owned(),
                s.target.value().to_owned(),
                s.client_id
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string),
                s.until.map_or("-".to_owned(), |t| t.to_string()),
                s.state(now).to_owned(),
                s.message.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    output::table(
        &["ID", "KIND", "VALUE", "CLIENT", "UNTIL", "STATE", "MESSAGE"],
        &rows,
    );
    Ok(())
}

fn show(s: &Suspension) {
    output::fields(&[
        ("id", s.id.to_string()),
        (
            "client",
            s.client_id
                .as_ref()
                .map_or("everyone".to_owned(), ToString::to_string),
        ),
        (
            "message",
            s.message.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        (
            "until",
            s.until.map_or("resumed".to_owned(), |t| t.to_string()),
        ),
    ]);
}
