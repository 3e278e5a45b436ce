//! Leak reports from GitHub's secret-scanning partner program: when a key of ours is pushed to a
//! public repository, GitHub POSTs it to `[leak_reports] path` on the public listener, and
//! keygate revokes (or flags) it within the request, on every node through the change feed.
//!
//! The caller is anonymous until its signature verifies, so the order is: method, a place among
//! the reports verified at once (a flood waits nowhere), the declared and streamed size, the
//! signature over the raw bytes, and only then JSON. Each token is digested and looked up; the
//! plaintext is never stored, logged or answered: the answer names tokens by SHA-256, as the
//! program's feedback format allows (`token_hash`, `token_type`, `label`).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use keygate_store::{Actor, LeakFinding, LeakReport};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::policy::leak_reports::LeakReports;
use crate::policy::scanner_keys;
use crate::request::body::Body;
use crate::request::respond;
use crate::state::gateway::Gateway;

/// Most tokens one report may carry; each costs a digest and a lookup.
pub const MAX_TOKENS: usize = 1000;
/// Longest wait for the store; past it the answer is 503 and the scanner retries.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `url`, `type` or `source` kept from a report (the audit entry stores them).
const MAX_FIELD: usize = 2048;
/// Who the audit log names for what a report did.
const ACTOR: &str = "secret-scanning";

/// One match in a report (GitHub's fields; `url` and `source` may be absent).
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// Answers one report. Every answer, refusals included, leaves through the caller's
/// [`crate::request::exit::Trail`] as a local answer: logged and counted once.
pub(crate) async fn answer(
    gw: &Gateway,
    config: &LeakReports,
    req: &mut Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::POST {
        let mut resp = problem(StatusCode::METHOD_NOT_ALLOWED, "Reports are POSTed.");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Ok(_place) = config.in_flight.try_acquire() else {
        let mut resp = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many reports at once; retry.",
        );
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    if crate::request::bounds::body_too_large(req.headers(), config.max_body_bytes as u64) {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, "The report is too large.");
    }
    let body: Bytes = match Limited::new(req.body_mut(), config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return problem(StatusCode::PAYLOAD_TOO_LARGE, "The report is too large.")
        }
        Err(_) => return problem(StatusCode::BAD_REQUEST, "The report was cut off."),
    };
    let headers = req.headers();
    let header = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    if let Err(e) = config.keys.verify(
        header(scanner_keys::KEY_ID_HEADER),
        header(scanner_keys::SIGNATURE_HEADER),
        &body,
    ) {
        tracing::warn!(error = %e, "A leak report was refused: its signature did not verify.");
        return problem(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let matches: Vec<Match> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "The report is not a JSON array of matches.",
            )
        }
    };
    if matches.len() > MAX_TOKENS {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("A report may carry at most {MAX_TOKENS} matches."),
        );
    }
    apply(gw, config, &matches).await
}

/// Looks every reported token up and applies the configured action, then answers the labels.
async fn apply(gw: &Gateway, config: &LeakReports, matches: &[Match]) -> Response<Body> {
    let Some(store) = gw.writer.get() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store is not open yet.",
        );
    };
    // A token of neither the profile's format nor a legacy shape is no key of ours: it is
    // answered `false_positive` without a lookup, as the gateway refuses it unread.
    let issuer = &gw.config.issuer;
    let shaped: Vec<Option<LeakReport>> = matches
        .iter()
        .map(|m| {
            let digest = issuer.digest_presented(&m.token).ok()?;
            Some(LeakReport {
                digest,
                kind: clip(&m.kind),
                url: clip(&m.url),
                source: clip(&m.source),
            })
        })
        .collect();
    let reports: Vec<LeakReport> = shaped.iter().flatten().cloned().collect();
    let actor = Actor(ACTOR.to_owned());
    let found = match tokio::time::timeout(
        STORE_TIMEOUT,
        store.report_leaks(&actor, &reports, config.action),
    )
    .await
    {
        Ok(Ok(findings)) => findings,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "A leak report could not be applied; the scanner will retry.");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The store is unavailable; retry.",
            );
        }
        Err(_) => {
            tracing::error!("A leak report timed out at the store; the scanner will retry.");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The store is unavailable; retry.",
            );
        }
    };
    // Back in the report's order: a token of neither shape found nothing.
    let mut found = found.into_iter();
    let findings: Vec<LeakFinding> = shaped
        .iter()
        .map(|s| s.as_ref().and_then(|_| found.next()).unwrap_or_default())
        .collect();
    let mut labels = Vec::with_capacity(matches.len());
    let mut revoked = false;
    for (m, finding) in matches.iter().zip(&findings) {
        if let Some(key) = &finding.key {
            tracing::warn!(
                key = %key.id,
                client = %key.client_id,
                hint = %key.hint,
                url = %clip(&m.url),
                revoked = finding.revoked,
                "A key was reported leaked in public."
            );
        }
        revoked |= finding.revoked;
        labels.push(json!({
            "token_hash": keygate_core::digest::hex(&Sha256::digest(m.token.as_bytes())),
            "token_type": clip(&m.kind),
            "label": if finding.key.is_some() { "true_positive" } else { "false_positive" },
        }));
    }
    gw.metrics.record_leak_reports(
        findings.len(),
        findings.iter().filter(|f| f.key.is_some()).count(),
        findings.iter().filter(|f| f.revoked).count(),
    );
    if revoked {
        // This node refuses the key before the answer leaves; others follow the feed.
        crate::selfservice::caught_up(gw, store).await;
    }
    respond::json(StatusCode::OK, &serde_json::Value::Array(labels))
}

/// At most [`MAX_FIELD`] bytes of a reported field, cut at a character boundary.
fn clip(field: &str) -> String {
    let mut end = field.len().min(MAX_FIELD);
    while !field.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].to_owned()
}

/// A refusal for the scanner: a problem document, never the profile's customer-facing body
/// (the caller is GitHub, not a customer).
fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let mut resp = respond::json(
        status,
        &json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": detail,
        }),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(2000);
        let clipped = clip(&long);
        assert_eq!(clipped.len(), 2048);
        assert!(clipped.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(2000));
        assert_eq!(clip(&odd).len(), 2047);
    }
}
