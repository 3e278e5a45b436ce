//! Which configuration a node serves: its version (1 at start, one more per reload), when and
//! by whom it was loaded, and how reloads went (`/status`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keygate_core::Timestamp;

use crate::state::locks::lock;

/// How a reload ended, as `keygate_config_reloads_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new configuration is in force.
    Applied,
    /// The file had errors (or could not be read); the old configuration keeps serving.
    Refused,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Applied, ReloadResult::Refused];

    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Refused => "refused",
        }
    }
}

/// The loaded configuration's bookkeeping.
#[derive(Debug)]
pub struct Loaded {
    version: AtomicU64,
    last: Mutex<(Timestamp, String)>,
    applied: AtomicU64,
    refused: AtomicU64,
}

impl Loaded {
    /// Version 1, loaded at `now` by the process's start.
    pub fn new(now: Timestamp) -> Loaded {
        Loaded {
            version: AtomicU64::new(1),
            last: Mutex::new((now, "start".to_owned())),
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// When the configuration in force was loaded, and by whom (`start`, `signal`, or the
    /// admin token's name).
    pub fn last(&self) -> (Timestamp, String) {
        lock(&self.last).clone()
    }

    /// Counts a reload; an applied one becomes the next version, loaded at `now` by `by`.
    /// Returns the version in force afterwards.
    pub fn record(&self, result: ReloadResult, now: Timestamp, by: &str) -> u64 {
        match result {
            ReloadResult::Applied => {
                self.applied.fetch_add(1, Ordering::Relaxed);
                let mut last = lock(&self.last);
                *last = (now, by.to_owned());
                self.version.fetch_add(1, Ordering::AcqRel) + 1
            }
            ReloadResult::Refused => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.version()
            }
        }
    }

    /// `/status` `config`: the file, its hash and version, and when and by whom it was loaded.
    pub fn status(&self, config: &crate::config::Config) -> serde_json::Value {
        let (at, by) = self.last();
        serde_json::json!({
            "source": config.source,
            "hash": config.hash,
            "version": self.version(),
            "loaded_at": at.to_rfc3339(),
            "loaded_by": by,
        })
    }

    /// `keygate_config_reloads_total{result}`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP keygate_config_reloads_total Configuration reloads by result (applied, or refused for errors).\n");
        out.push_str("# TYPE keygate_config_reloads_total counter\n");
        for result in ReloadResult::ALL {
            let _ = writeln!(
                out,
                "keygate_config_reloads_total{{result=\"{}\"}} {}",
                result.label(),
                self.count(result)
            );
        }
    }

    pub fn count(&self, result: ReloadResult) -> u64 {
        match result {
            ReloadResult::Applied => self.applied.load(Ordering::Relaxed),
            ReloadResult::Refused => self.refused.load(Ordering::Relaxed),
        }
    }
}
