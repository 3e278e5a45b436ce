//! Emergency mode as this node sees it: switched by an operator (`keygate emergency on`, or the
//! admin API), stored, and followed by every node through the change feed. While it is on,
//! every request that is not an infra endpoint is answered 503 before any other work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use keygate_core::decision::{Denial, Reason};
use keygate_store::Emergency;

/// The switch every request reads: one atomic load while off.
#[derive(Debug, Default)]
pub struct EmergencySwitch {
    on: AtomicBool,
    /// The operator's message, read only while on.
    message: RwLock<Option<Arc<str>>>,
}

impl EmergencySwitch {
    /// Follows the stored state; logs once per switch.
    pub fn set(&self, stored: &Emergency) {
        let message = stored.message.as_deref().map(Arc::<str>::from);
        *self
            .message
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = message;
        let was = self.on.swap(stored.on, Ordering::AcqRel);
        if was != stored.on {
            if stored.on {
                tracing::warn!(
                    by = stored.changed_by.as_deref().unwrap_or("-"),
                    "Emergency mode is on: refusing every non-infra request with 503."
                );
            } else {
                tracing::warn!(
                    by = stored.changed_by.as_deref().unwrap_or("-"),
                    "Emergency mode is off."
                );
            }
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The refusal while on: its subject is the operator's message, or the default sentence.
    pub fn denial(&self) -> Option<Denial> {
        if !self.is_on() {
            return None;
        }
        let message = self
            .message
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Some(match message {
            Some(m) => Denial::about(Reason::Emergency, &m),
            None => Denial::about(Reason::Emergency, DEFAULT_MESSAGE),
        })
    }
}

/// What callers read when the operator gave no message.
pub(crate) const DEFAULT_MESSAGE: &str = "The service is temporarily unavailable.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_stored_state() {
        let s = EmergencySwitch::default();
        assert!(s.denial().is_none());
        s.set(&Emergency {
            on: true,
            message: Some("Upstream maintenance until 14:00 UTC.".into()),
            ..Emergency::default()
        });
        let d = s.denial().unwrap();
        assert_eq!(d.reason, Reason::Emergency);
        assert_eq!(
            d.subject.as_deref(),
            Some("Upstream maintenance until 14:00 UTC.")
        );
        s.set(&Emergency {
            on: true,
            ..Emergency::default()
        });
        assert_eq!(
            s.denial().unwrap().subject.as_deref(),
            Some(DEFAULT_MESSAGE)
        );
        s.set(&Emergency::default());
        assert!(s.denial().is_none());
    }
}
