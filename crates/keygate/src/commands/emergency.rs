//! `keygate emergency on|off|status`: every node follows within its feed interval.

use keygate_store::Emergency;

use super::Context;
use crate::cli::EmergencyCommand;
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: EmergencyCommand) -> anyhow::Result<()> {
    let state = match cmd {
        EmergencyCommand::On { message } => {
            ctx.backend
                .set_emergency(&ctx.actor, true, message.as_deref())
                .await?
        }
        EmergencyCommand::Off => ctx.backend.set_emergency(&ctx.actor, false, None).await?,
        EmergencyCommand::Status => ctx.backend.emergency().await?,
    };
    show(ctx, &state);
    Ok(())
}

fn show(ctx: &Context, e: &Emergency) {
    if ctx.json {
        output::json(e);
        return;
    }
    if e.on {
        println!("Emergency mode is ON: every non-infra request is answered 503.");
    } else {
        println!("Emergency mode is off.");
    }
    output::fields(&[
        (
            "message",
            e.message.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        (
            "changed",
            e.changed_at.map_or("never".to_owned(), |t| t.to_string()),
        ),
        ("by", e.changed_by.clone().unwrap_or_else(|| "-".to_owned())),
    ]);
}
