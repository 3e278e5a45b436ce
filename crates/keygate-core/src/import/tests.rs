use sha2::Digest as _;

use super::*;
use crate::legacy_format::{Charset, LegacyFormat};
use crate::{Digester, KeyFormat};

const LEGACY: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";

fn issuer() -> Issuer {
    let format = KeyFormat::default();
    let legacy = LegacyFormat::new("sk_live_", Charset::Base62, 24, &format).unwrap();
    Issuer {
        legacy: vec![legacy],
        ..Issuer::new(format, Digester::plain())
    }
}

fn sha_hex(key: &str) -> String {
    crate::digest::hex(&sha2::Sha256::digest(key.as_bytes()))
}

fn one(kind: FileKind, lines: &[&str]) -> Vec<Result<Option<ImportKey>, ImportProblem>> {
    let issuer = issuer();
    let mut reader = LineReader::new(&issuer, kind);
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| reader.next_line(i as u64 + 1, l.as_bytes()))
        .collect()
}

#[test]
fn json_lines_of_plaintext_and_sha256() {
    let own = issuer().format.generate();
    let lines = [
        format!(
            r#"{{"client": "acme", "key": "{}", "label": "prod"}}"#,
            own.expose()
        ),
        String::new(),
        format!(
            r#"{{"client": "acme", "sha256": "{}", "hint": "sk_live_...p7dc", "expires_at": "2099-01-01T00:00:00Z"}}"#,
            sha_hex(LEGACY).to_uppercase()
        ),
        format!(r#"{{"client": "acme", "key": "{LEGACY}", "label": null}}"#),
    ];
    let got = one(
        FileKind::JsonLines,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let first = got[0].clone().unwrap().unwrap();
    assert_eq!(first.material, issuer().material_of(&own).unwrap());
    assert_eq!((first.line, first.label.as_str()), (1, "prod"));
    assert_eq!(got[1], Ok(None));
    let by_sha = got[2].clone().unwrap().unwrap();
    assert_eq!(by_sha.material.hint, "sk_live_...p7dc");
    assert_eq!(
        by_sha.expires_at,
        Some(Timestamp::parse_rfc3339("2099-01-01T00:00:00Z").unwrap())
    );
    let plain = got[3].clone().unwrap().unwrap();
    assert_eq!(plain.material.digest, by_sha.material.digest);
    assert_eq!(plain.label, "");
}

#[test]
fn csv_with_a_header_quotes_and_empty_cells() {
    let got = one(
        FileKind::Csv,
        &[
            "\u{feff}Client,key,sha256,label",
            &format!(r#""Acme, Inc.",{LEGACY},,"the ""old"" key""#),
            &format!("acme,,{},", sha_hex(LEGACY)),
            "acme,\"open,,",
            "acme,a,b",
        ],
    );
    assert_eq!(got[0], Ok(None));
    let k = got[1].clone().unwrap().unwrap();
    assert_eq!(
        (k.client.as_str(), k.label.as_str()),
        ("Acme, Inc.", r#"the "old" key"#)
    );
    assert_eq!(
        got[2].clone().unwrap().unwrap().material.digest,
        k.material.digest
    );
    assert_eq!(got[3], Err(ImportProblem::CsvQuote));
    assert_eq!(
        got[4],
        Err(ImportProblem::CsvColumns {
            expected: 4,
            found: 3
        })
    );
    assert_eq!(
        one(FileKind::Csv, &["client,key,client"])[0],
        Err(ImportProblem::DuplicateColumn)
    );
    assert_eq!(
        one(FileKind::Csv, &["client,secret"])[0],
        Err(ImportProblem::UnknownField)
    );
}

#[test]
fn every_bad_line_has_its_problem_and_never_its_values() {
    let cases: Vec<(String, ImportProblem)> = vec![
        (
            format!(r#"{{"key": "{LEGACY}"}}"#),
            ImportProblem::Missing("client"),
        ),
        (r#"{"client": "a"}"#.into(), ImportProblem::Missing("key")),
        (
            format!(
                r#"{{"client": "a", "key": "{LEGACY}", "sha256": "{}"}}"#,
                sha_hex(LEGACY)
            ),
            ImportProblem::KeyAndSha256,
        ),
        (
            r#"{"client": "a", "key": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"}"#.into(),
            ImportProblem::KeyShape("wrong_prefix"),
        ),
        (
            r#"{"client": "a", "sha256": "abc"}"#.into(),
            ImportProblem::BadSha256,
        ),
        (
            format!(r#"{{"client": "a", "sha256": "{}"}}"#, "zz".repeat(32)),
            ImportProblem::BadSha256,
        ),
        (
            format!(
                r#"{{"client": "a", "sha256": "{}", "hint": "a b"}}"#,
                sha_hex(LEGACY)
            ),
            ImportProblem::BadHint,
        ),
        (
            format!(r#"{{"client": "a", "key": "{LEGACY}", "label": "a\nb"}}"#),
            ImportProblem::BadLabel,
        ),
        (
            format!(r#"{{"client": "a", "key": "{LEGACY}", "expires_at": "tomorrow"}}"#),
            ImportProblem::BadExpiry,
        ),
        (
            format!(r#"{{"client": "a", "key": "{LEGACY}", "scopes": ["x"]}}"#),
            ImportProblem::Scopes,
        ),
        (
            format!(r#"{{"client": 7, "key": "{LEGACY}"}}"#),
            ImportProblem::NotAString("client"),
        ),
        (format!(r#"{{"{LEGACY}": 1}}"#), ImportProblem::UnknownField),
        (
            format!(r#"{{"client": "a", "key": "{LEGACY}""#),
            ImportProblem::NotJson(57),
        ),
        ("[1, 2]".into(), ImportProblem::NotJson(1)),
    ];
    for (line, want) in cases {
        let got = one(FileKind::JsonLines, &[&line]).remove(0);
        assert_eq!(got, Err(want.clone()), "{line}");
        let shown = want.to_string();
        assert!(
            !shown.contains(LEGACY) && !shown.contains("4eC39"),
            "{shown}"
        );
    }
    let issuer = issuer();
    let mut reader = LineReader::new(&issuer, FileKind::JsonLines);
    assert_eq!(
        reader.next_line(1, b"{\"client\": \"\xff\"}"),
        Err(ImportProblem::NotUtf8)
    );
}

#[test]
fn a_keyed_digest_refuses_sha256_without_a_legacy_shape() {
    let issuer = Issuer::new(KeyFormat::default(), Digester::keyed(b"0123456789abcdef"));
    let mut reader = LineReader::new(&issuer, FileKind::JsonLines);
    let line = format!(r#"{{"client": "a", "sha256": "{}"}}"#, sha_hex(LEGACY));
    assert_eq!(
        reader.next_line(1, line.as_bytes()),
        Err(ImportProblem::Sha256Refused(
            DigestImportError::KeyedWithoutLegacy
        ))
    );
}
