//! The documents cite tests as the proof of their promises; a renamed or moved test must not
//! leave a citation that proves nothing. Every `crates/….rs` path in SECURITY.md and
//! README.md must exist, and every `crates/….rs::name` (or `` `crates/….rs` (`name`) ``) must
//! name a function or module in it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each `crates/…` citation in `text`: the path and the item after `::`, if any.
fn citations(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crates/") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_-/.:".contains(c)))
            .unwrap_or(tail.len());
        let cited = tail[..end].trim_end_matches(['.', ':']);
        rest = &tail[end..];
        let (path, item) = match cited.split_once("::") {
            Some((p, i)) => (p, Some(i.to_owned())),
            // The older style: `path` (`test_name`).
            None => (
                cited,
                rest.strip_prefix("` (`")
                    .and_then(|r| r.split_once('`'))
                    .map(|(i, _)| i.to_owned())
                    .filter(|i| i.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
            ),
        };
        if path.ends_with(".rs") {
            out.push((path.to_owned(), item));
        }
    }
    out
}

#[test]
fn every_test_the_documents_cite_exists() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for doc in ["SECURITY.md", "README.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for (path, item) in citations(&text) {
            checked += 1;
            let Ok(source) = std::fs::read_to_string(root().join(&path)) else {
                wrong.push(format!("{doc}: {path} does not exist"));
                continue;
            };
            if let Some(item) = item {
                let found = [format!("fn {item}("), format!("mod {item} ")]
                    .iter()
                    .any(|needle| source.contains(needle.as_str()));
                if !found {
                    wrong.push(format!("{doc}: {path} has no `{item}`"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 20, "only {checked} citations found");
}

#[test]
fn citations_are_read_with_their_test_names() {
    assert_eq!(
        citations("by `crates/a/tests/b.rs::c_d`, crates/e/src/f.rs. `crates/g.rs` (`h_i`)"),
        vec![
            ("crates/a/tests/b.rs".to_owned(), Some("c_d".to_owned())),
            ("crates/e/src/f.rs".to_owned(), None),
            ("crates/g.rs".to_owned(), Some("h_i".to_owned())),
        ]
    );
}
