//! `keygate plan list|show`: plans are configuration; this shows what a deployment offers.

use anyhow::anyhow;
use serde_json::Value;

use super::Context;
use crate::cli::PlanCommand;
use crate::output;

pub(crate) async fn run(ctx: &Context, cmd: PlanCommand) -> anyhow::Result<()> {
    let plans = ctx.backend.plans(&ctx.config).await?;
    match cmd {
        PlanCommand::List => {
            if ctx.json {
                output::json(&plans);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = plans
                .iter()
                .map(|p| vec![text(&p["name"]), features(p), limits(p)])
                .collect();
            output::table(&["NAME", "FEATURES", "LIMITS"], &rows);
        }
        PlanCommand::Show { name } => {
            let plan = plans
                .iter()
                .find(|p| p["name"] == name.as_str())
                .ok_or_else(|| anyhow!("no plan named `{name}` in the configuration"))?;
            if ctx.json {
                output::json(plan);
                return Ok(());
            }
            output::fields(&[
                ("name", text(&plan["name"])),
                ("features", features(plan)),
                ("limits", limits(plan)),
                ("limits by", text(&plan["limits_by"])),
            ]);
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn features(plan: &Value) -> String {
    let names: Vec<&str> = plan["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    output::list(&names)
}

fn limits(plan: &Value) -> String {
    match plan["limits"].as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "none".to_owned(),
    }
}
