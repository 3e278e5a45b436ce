//! `[leak_reports]`: the path must be one no other endpoint answers, and GitHub's keys document
//! is read and checked now (and again on every reload, when the operator has refreshed it).

use super::errors::Errors;
use super::raw::RawLeakReports;
use super::spanned::Spanned;
use crate::policy::leak_reports::{LeakReports, DEFAULT_MAX_BODY_BYTES, DEFAULT_PATH};
use crate::policy::profile::Profile;
use crate::policy::scanner_keys::ScannerKeys;
use keygate_store::LeakAction;

/// Longest path accepted.
const MAX_PATH: usize = 256;

pub(super) fn compile(
    raw: Option<&Spanned<RawLeakReports>>,
    profile: &Profile,
    read_files: bool,
    errors: &mut Errors<'_>,
) -> Option<LeakReports> {
    let spanned = raw?;
    let span = spanned.span();
    let r = spanned.get_ref();
    let before = errors.len();
    let path = r.path.clone().unwrap_or_else(|| DEFAULT_PATH.to_owned());
    let taken = crate::policy::paths::is_reserved(&path, profile.verify)
        || profile.whoami.as_deref() == Some(path.as_str());
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains(['?', '#', '%']) {
        errors.at(
            Some(&span),
            format!("leak_reports.path `{path}` must be a plain path starting with `/`, at most {MAX_PATH} characters"),
        );
    } else if taken {
        errors.at(
            Some(&span),
            format!("leak_reports.path `{path}` is already another endpoint's"),
        );
    }
    let action = super::choice::Choice::read(
        r.action.as_ref(),
        "leak_reports.action",
        Some(&span),
        errors,
    )
    .unwrap_or(LeakAction::Revoke);
    let max_body = errors
        .positive(
            Some(&span),
            "leak_reports.max_body_bytes",
            r.max_body_bytes,
            Some("it would refuse every report"),
        )
        .map_or(DEFAULT_MAX_BODY_BYTES, |n| {
            usize::try_from(n.get()).unwrap_or(usize::MAX)
        });
    let Some(file) = &r.public_keys_file else {
        errors.at(
            Some(&span),
            "leak_reports needs `public_keys_file`: GitHub's keys document, saved from https://api.github.com/meta/public_keys/secret_scanning",
        );
        return None;
    };
    let file = super::compile_tls::resolve(errors, file);
    let keys = if read_files {
        let parsed = std::fs::read(&file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))
            .and_then(|bytes| {
                ScannerKeys::parse(&bytes).map_err(|e| format!("`{}`: {e}", file.display()))
            });
        match parsed {
            Ok(keys) => Some(keys),
            Err(e) => {
                errors.at(Some(&span), format!("leak_reports.public_keys_file: {e}"));
                None
            }
        }
    } else {
        // Tools that check a file's shape without its files (`skip_tls_files`) still compile.
        None
    };
    if errors.len() > before {
        return None;
    }
    keys.map(|keys| LeakReports::new(path, keys, action, max_body))
}
