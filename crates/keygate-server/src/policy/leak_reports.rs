//! `[leak_reports]` as compiled: where GitHub's secret-scanning reports arrive, the keys they
//! are signed with, and what a report does. The endpoint is `crate::leak_reports`.

use std::sync::Arc;

use keygate_store::LeakAction;
use tokio::sync::Semaphore;

use super::scanner_keys::ScannerKeys;

/// The path GitHub is given when the configuration names none.
pub(crate) const DEFAULT_PATH: &str = "/_keygate/secret-scanning";
/// Largest report body by default: GitHub batches matches, each a few hundred bytes.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Reports verified and applied at once on one node; more are answered 503 at once, and GitHub
/// retries. Bounds what a flood of reports with a known key identifier costs in ECDSA checks.
const IN_FLIGHT: usize = 4;

/// `[leak_reports]`, compiled.
#[derive(Clone, Debug)]
pub struct LeakReports {
    /// Where on the public listener reports arrive.
    pub path: String,
    pub keys: ScannerKeys,
    pub action: LeakAction,
    pub max_body_bytes: usize,
    /// Places for reports verified at once (shared by every worker of the node).
    pub in_flight: Arc<Semaphore>,
}

impl LeakReports {
    pub fn new(path: String, keys: ScannerKeys, action: LeakAction, max_body: usize) -> Self {
        LeakReports {
            path,
            keys,
            action,
            max_body_bytes: max_body,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}
