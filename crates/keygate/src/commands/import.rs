//! `keygate import FILE`: keys another system issued, read line by line (each bounded, so a
//! hostile file costs at most a line's worth of memory per line), digested at once (the
//! plaintext is dropped with its line), then written by the store in one transaction.
//!
//! Problems name the line, the field and why, never a value from the file. Local only: a
//! file of 100,000 keys is a bulk write the admin API's bodies are not bounded for.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context as _;
use keygate_core::import::{
    FileKind, ImportKey, ImportProblem, LineReader, MAX_LINES, MAX_LINE_BYTES,
};
use keygate_store::ImportOutcome;
use serde_json::json;

use super::Context;
use crate::cli::ImportArgs;
use crate::output;

/// Problems printed (text) or listed (`--json`); the count is always complete.
const SHOWN_PROBLEMS: usize = 100;

/// Refused lines by number.
type Problems = Vec<(u64, ImportProblem)>;

pub(crate) async fn run(ctx: &Context, args: ImportArgs) -> anyhow::Result<()> {
    let store = ctx.backend.local("import")?;
    let (keys, mut problems) = read_file(ctx, &args)?;
    // With bad lines the store still checks the good ones (clients, conflicts), so one run
    // lists every problem; it writes nothing either way.
    let dry_run = args.dry_run || !problems.is_empty();
    let source = args.file.display().to_string();
    let mut outcome = store
        .import_keys(&ctx.actor, &source, &keys, dry_run)
        .await?;
    problems.append(&mut outcome.problems);
    problems.sort_by_key(|(line, _)| *line);
    report(ctx, &args, &source, &outcome, &problems);
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "nothing was imported: {} line{} of {source} {} problems",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            if problems.len() == 1 { "has" } else { "have" },
        )
    }
}

/// Every line of the file: the keys, and the problems by line number.
fn read_file(ctx: &Context, args: &ImportArgs) -> anyhow::Result<(Vec<ImportKey>, Problems)> {
    let path = &args.file;
    let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut input = BufReader::with_capacity(64 * 1024, file);
    let kind = match args.format.as_deref() {
        Some("csv") => FileKind::Csv,
        Some(_) => FileKind::JsonLines,
        None => kind_of(path, &mut input)?,
    };
    let mut reader = LineReader::new(&ctx.issuer, kind);
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut line = Vec::with_capacity(512);
    let mut number = 0u64;
    while let Some(fits) = next_line(&mut input, &mut line)
        .with_context(|| format!("cannot read `{}`", path.display()))?
    {
        number += 1;
        if number > MAX_LINES {
            anyhow::bail!(
                "`{}` has more than {MAX_LINES} lines; split it and import each part",
                path.display()
            );
        }
        let read = if fits {
            reader.next_line(number, &line)
        } else {
            Err(ImportProblem::LineTooLong)
        };
        match read {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(problem) => problems.push((number, problem)),
        }
    }
    Ok((keys, problems))
}

/// By extension, else by the first character that is not white space or a byte-order mark.
fn kind_of(path: &Path, input: &mut impl BufRead) -> anyhow::Result<FileKind> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("csv") {
        return Ok(FileKind::Csv);
    }
    if ["jsonl", "ndjson", "json"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e))
    {
        return Ok(FileKind::JsonLines);
    }
    let head = input.fill_buf()?;
    let first = head
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(head)
        .iter()
        .find(|b| !b.is_ascii_whitespace());
    Ok(match first {
        Some(b'{') => FileKind::JsonLines,
        _ => FileKind::Csv,
    })
}

/// Reads one line into `line` (without its `\n`): `Some(true)`, or `Some(false)` when it was
/// longer than [`MAX_LINE_BYTES`] (the rest was skipped, never held); `None` at the end.
fn next_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    line.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => (&buf[..end], Some(end + 1)),
            None => (buf, None),
        };
        if fits && line.len() + chunk.len() <= MAX_LINE_BYTES {
            line.extend_from_slice(chunk);
        } else {
            fits = false;
            line.clear();
        }
        let used = done.unwrap_or(chunk.len());
        input.consume(used);
        if done.is_some() {
            return Ok(Some(fits));
        }
    }
}

fn report(
    ctx: &Context,
    args: &ImportArgs,
    source: &str,
    outcome: &ImportOutcome,
    problems: &[(u64, ImportProblem)],
) {
    let written = outcome.version.is_some();
    if ctx.json {
        let shown: Vec<_> = problems
            .iter()
            .take(SHOWN_PROBLEMS)
            .map(|(line, p)| json!({ "line": line, "code": p.code(), "message": p.to_string() }))
            .collect();
        output::json(&json!({
            "file": source,
            "dry_run": args.dry_run,
            "written": written,
            "imported": if problems.is_empty() { outcome.imported } else { 0 },
            "unchanged": outcome.unchanged,
            "error_count": problems.len(),
            "errors": shown,
            "version": outcome.version,
        }));
        return;
    }
    for (line, p) in problems.iter().take(SHOWN_PROBLEMS) {
        println!("{source}:{line}: {p}");
    }
    if problems.len() > SHOWN_PROBLEMS {
        println!(
            "… and {} more lines with problems.",
            problems.len() - SHOWN_PROBLEMS
        );
    }
    if !problems.is_empty() {
        return;
    }
    if args.dry_run {
        println!(
            "Dry run: {} keys would be imported, {} are already there; nothing was written.",
            outcome.imported, outcome.unchanged
        );
    } else {
        println!(
            "Imported {} keys; {} were already there.",
            outcome.imported, outcome.unchanged
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<(Option<bool>, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(16, input);
        let mut out = Vec::new();
        let mut line = Vec::new();
        while let Some(fits) = next_line(&mut reader, &mut line).unwrap() {
            out.push((Some(fits), line.clone()));
        }
        out
    }

    #[test]
    fn lines_are_bounded_and_numbered_across_buffer_edges() {
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        let mut input = b"a\n\nbb".to_vec();
        input.extend_from_slice(b"b\n");
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nlast");
        let got = lines(&input);
        assert_eq!(
            got,
            vec![
                (Some(true), b"a".to_vec()),
                (Some(true), Vec::new()),
                (Some(true), b"bbb".to_vec()),
                (Some(false), Vec::new()),
                (Some(true), b"last".to_vec()),
            ]
        );
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"x\n").len(), 1);
    }
}
