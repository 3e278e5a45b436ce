//! Leaked keys reported by a secret scanner (GitHub's secret-scanning partner program): each
//! reported token arrives here as its digest only, is looked up in any state, and is revoked or
//! flagged in one transaction with an audit entry per key found (`key.leak_reported`).

use keygate_core::{ApiKey, KeyDigest, KeyState};
use serde_json::json;

use crate::keys::{change_state, find_by_digest};
use crate::{Actor, Store, StoreError};

/// What to do with a live key a scanner found in public.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakAction {
    /// Revoke it at once: whoever copied it from the public page is locked out.
    Revoke,
    /// Keep it working and record the report (audit, event), for a provider who calls its
    /// customer first.
    Flag,
}

/// One reported token, without its plaintext.
#[derive(Clone, Debug)]
pub struct LeakReport {
    pub digest: KeyDigest,
    /// The scanner's name for the pattern that matched (`type` in GitHub's report).
    pub kind: String,
    /// Where it was found (may be empty).
    pub url: String,
    /// Which kind of place (`content`, `commit`, `npm`, ...).
    pub source: String,
}

/// What a report found, in the order of the reports (`Default`: no key of ours).
#[derive(Clone, Debug, Default)]
pub struct LeakFinding {
    /// The key the token is (in any state), or `None` when it is no key of ours.
    pub key: Option<ApiKey>,
    /// Whether this report revoked it (false for a key already revoked, or when flagging).
    pub revoked: bool,
}

impl Store {
    /// Looks each reported digest up and, for every key found, records `key.leak_reported` and
    /// applies `action`, all in one write. A report that matches no key writes nothing, so a
    /// flood of made-up tokens costs lookups only.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::Full`]; nothing is applied then.
    pub async fn report_leaks(
        &self,
        actor: &Actor,
        reports: &[LeakReport],
        action: LeakAction,
    ) -> Result<Vec<LeakFinding>, StoreError> {
        // A read first, stopping at the first key found, so a report of made-up tokens never
        // takes the write lock; the write then reads every report again inside it.
        let mut known = false;
        for report in reports {
            known = sqlx::query("SELECT 1 FROM keys WHERE digest = $1")
                .bind(report.digest.as_bytes().to_vec())
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if known {
                break;
            }
        }
        if !known {
            return Ok(vec![LeakFinding::default(); reports.len()]);
        }
        let mut tx = self.begin_write().await?;
        let mut findings = Vec::with_capacity(reports.len());
        for report in reports {
            let Some(mut key) = find_by_digest(&mut tx, &report.digest).await? else {
                findings.push(LeakFinding::default());
                continue;
            };
            let was_revoked = key.state == KeyState::Revoked;
            let revoke = action == LeakAction::Revoke && !was_revoked;
            let taken = match (was_revoked, revoke) {
                (true, _) => "already_revoked",
                (false, true) => "revoked",
                (false, false) => "flagged",
            };
            tx.audit(
                actor,
                "key.leak_reported",
                key.id.as_str(),
                json!({
                    "client": key.client_id.as_str(),
                    "hint": key.hint,
                    "type": report.kind,
                    "url": report.url,
                    "source": report.source,
                    "action": taken,
                }),
            )
            .await?;
            if revoke {
                change_state(&mut tx, actor, &mut key, KeyState::Revoked).await?;
            }
            findings.push(LeakFinding {
                key: Some(key),
                revoked: revoke,
            });
        }
        tx.commit().await?;
        Ok(findings)
    }
}
