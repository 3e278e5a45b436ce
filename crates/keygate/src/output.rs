//! Printing results: aligned tables for people, one JSON document for scripts, and errors on
//! stderr in the same two forms.

use std::io::Write;

use keygate_store::StoreError;
use serde::Serialize;

/// Prints one JSON document to stdout.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) {
    let text = serde_json::to_string_pretty(value).expect("output types serialize");
    println!("{text}");
}

/// A plain aligned table; a dozen lines that do not justify a dependency.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&mut headers.iter().copied()));
    for row in rows {
        let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
    }
}

/// Label/value lines for one record.
pub(crate) fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        println!("{k:<width$}  {v}");
    }
}

/// Prints an error: one sentence for people, `{"error": {code, message}}` for scripts.
pub(crate) fn print_error(e: &anyhow::Error, json: bool) {
    let code = match (
        e.downcast_ref::<StoreError>().or_else(|| {
            match e.downcast_ref::<keygate_amqp::AmqpError>() {
                Some(keygate_amqp::AmqpError::Store(s)) => Some(s),
                _ => None,
            }
        }),
        e.downcast_ref::<crate::backend::RemoteError>(),
        e.downcast_ref::<keygate_server::config::PlanChoiceError>(),
    ) {
        (Some(store), _, _) => store.code(),
        (None, Some(remote), _) => remote.code.as_str(),
        (None, None, Some(plan)) => plan.code(),
        (None, None, None) => e
            .downcast_ref::<keygate_amqp::AmqpError>()
            .map_or("error", keygate_amqp::AmqpError::code),
    };
    let message = format!("{e:#}");
    if json {
        let doc = serde_json::json!({ "error": { "code": code, "message": message } });
        eprintln!("{doc}");
    } else {
        eprintln!("error: {message}");
    }
}

/// A list shown as `a, b` or `-` when empty.
pub(crate) fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
}
