//! The gateway in force, replaced whole by a reload.
//!
//! A request loads it once, when it starts, and keeps that [`Gateway`] to its end: it is
//! answered by one configuration even if a reload lands meanwhile. Worker threads also hear
//! of each replacement, to carry their upstream pools over (`crate::runtime::server`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::state::gateway::Gateway;

/// The current [`Gateway`], and the news of its replacement.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Gateway>,
    changed: watch::Sender<Arc<Gateway>>,
}

impl Live {
    pub fn new(gateway: Arc<Gateway>) -> Arc<Live> {
        Arc::new(Live {
            current: ArcSwap::new(Arc::clone(&gateway)),
            changed: watch::Sender::new(gateway),
        })
    }

    /// The gateway in force now.
    pub fn load(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Puts `gateway` in force: requests that start from now on use it.
    pub fn replace(&self, gateway: Arc<Gateway>) {
        self.current.store(Arc::clone(&gateway));
        self.changed.send_replace(gateway);
    }

    /// Tells of each replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Gateway>> {
        self.changed.subscribe()
    }
}
