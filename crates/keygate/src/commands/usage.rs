//! `keygate usage`: request counts per hour, day, client, key, route and status, read through
//! the same filter parser and store query as `GET /v1/analytics` (locally from the database,
//! or from the node behind --admin-url), printed as a table, CSV or JSON.

use keygate_server::analytics::{self, RawFilters};
use serde_json::Value;

use crate::cli::AnalyticsArgs;
use crate::commands::Context;
use crate::output;

pub(crate) async fn run(ctx: &Context, args: AnalyticsArgs) -> anyhow::Result<()> {
    if args.csv && ctx.json {
        anyhow::bail!("--csv and --json exclude each other");
    }
    let raw = RawFilters {
        from: args.from,
        to: args.to,
        client: args.client,
        key: args.key,
        route: args.route,
        upstream: None,
        status: args.status,
        group_by: args.by,
        limit: args.limit,
        cursor: args.cursor,
    };
    let answer = ctx.backend.analytics(&raw).await?;
    if ctx.json {
        output::json(&answer);
        return Ok(());
    }
    // The next page's cursor goes to stderr beside CSV (stdout stays one CSV document).
    let next = answer["next"].as_str().map(|c| {
        format!(
            "More rows follow: the same command with --from {} --to {} --cursor {c}",
            answer["from"].as_str().unwrap_or("-"),
            last_hour(&answer)
        )
    });
    if args.csv {
        print!("{}", analytics::to_csv(&answer));
        if let Some(n) = next {
            eprintln!("{n}");
        }
        return Ok(());
    }
    let columns: Vec<String> = answer["group_by"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = answer["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            columns
                .iter()
                .map(String::as_str)
                .chain(["requests"])
                .map(|c| match &row[c] {
                    Value::String(s) => s
                        .chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect(),
                    Value::Null => "-".to_owned(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    println!(
        "{} requests from {} to {}.",
        answer["requests"],
        answer["from"].as_str().unwrap_or("-"),
        answer["to"].as_str().unwrap_or("-")
    );
    let mut headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    headers.push("REQUESTS".to_owned());
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    output::table(&headers, &rows);
    if let Some(n) = next {
        println!("{n}");
    }
    Ok(())
}

/// The answer's last hour (its `to` is the end of that hour), as `--to` takes it.
fn last_hour(answer: &Value) -> String {
    answer["to"]
        .as_str()
        .and_then(|t| keygate_core::Timestamp::parse_rfc3339(t).ok())
        .map_or_else(
            || "-".to_owned(),
            |t| keygate_core::Timestamp::from_millis(t.as_millis() - 3_600_000).to_rfc3339(),
        )
}
