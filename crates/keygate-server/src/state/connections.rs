//! The cap on open connections per listener, shared by its accept loops and shown in `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The connection caps of the listeners.
#[derive(Debug)]
pub struct Connections {
    pub public: Arc<ConnectionCap>,
    pub admin: Arc<ConnectionCap>,
    /// The customer portal's, apart from the admin listener's: the portal faces customers, so
    /// a flood on it must not take the operators' slots. Shown only where a portal runs.
    pub portal: Option<Arc<ConnectionCap>>,
}

impl Connections {
    pub fn new(
        limits: &crate::config::HttpLimits,
        portal: Option<&crate::config::PortalSettings>,
    ) -> Connections {
        Connections {
            public: ConnectionCap::new("public", limits.max_connections),
            admin: ConnectionCap::new("admin", limits.admin_max_connections),
            portal: portal.map(|p| ConnectionCap::new("portal", p.max_connections)),
        }
    }

    /// Prometheus lines: open connections and connections refused at the cap, per listener.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let caps: Vec<&Arc<ConnectionCap>> = [&self.public, &self.admin]
            .into_iter()
            .chain(self.portal.as_ref())
            .collect();
        out.push_str("# HELP keygate_connections_open Open connections by listener.\n");
        out.push_str("# TYPE keygate_connections_open gauge\n");
        for cap in &caps {
            let _ = writeln!(
                out,
                "keygate_connections_open{{listener=\"{}\"}} {}",
                cap.name,
                cap.open()
            );
        }
        out.push_str("# HELP keygate_connections_refused_total Connections closed at once because their listener was at max_connections.\n");
        out.push_str("# TYPE keygate_connections_refused_total counter\n");
        for cap in &caps {
            let _ = writeln!(
                out,
                "keygate_connections_refused_total{{listener=\"{}\"}} {}",
                cap.name,
                cap.refused()
            );
        }
    }
}

/// One listener's count of open connections, shared by every socket of that listener.
#[derive(Debug)]
pub struct ConnectionCap {
    pub(crate) name: &'static str,
    pub(crate) max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionCap {
    /// A cap of `max` open connections for the listener called `name` (in logs and metrics).
    pub fn new(name: &'static str, max: usize) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            name,
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The listener's name (`public`, `admin`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the cap was reached, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(self)))
    }
}

/// One open connection's place under its listener's cap, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<ConnectionCap>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_and_gives_back() {
        let cap = ConnectionCap::new("t", 2);
        let a = cap.try_acquire().unwrap();
        let b = cap.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none());
        assert_eq!((cap.open(), cap.refused()), (2, 1));
        drop(a);
        let _c = cap.try_acquire().unwrap();
        drop(b);
        assert_eq!(cap.open(), 1);
    }
}
