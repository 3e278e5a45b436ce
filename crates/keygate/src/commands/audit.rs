//! `keygate audit`

use keygate_store::AuditFilter;

use super::Context;
use crate::cli::AuditArgs;
use crate::output;

pub(crate) async fn run(ctx: &Context, args: AuditArgs) -> anyhow::Result<()> {
    let entries = ctx
        .backend
        .audit(&AuditFilter {
            limit: args.limit,
            before: args.before,
            actor: args.actor,
            action: args.action,
            target: args.target,
        })
        .await?;
    if ctx.json {
        output::json(&entries);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "AT", "ACTOR", "ACTION", "TARGET"], &rows);
    Ok(())
}
