//! Key-sharing detection's rule (`[plans.NAME.sharing]`): how many distinct source networks a
//! key may be used from in one UTC hour before it is suspected of being shared, and what a
//! suspicion does. A network is a /24 for IPv4 and a /48 for IPv6 (an IPv4-mapped IPv6 address
//! counts as IPv4), so one household or office, or one mobile carrier's pool, is one network.

use std::net::IpAddr;

pub(crate) use keygate_store::SharingAction;

/// Most networks a threshold may name: the local counter keeps that many per watched key.
pub(crate) const MAX_NETWORKS_PER_HOUR: u32 = 10_000;

/// A plan's sharing rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharing {
    /// Suspected at this many distinct networks in one hour (2 to [`MAX_NETWORKS_PER_HOUR`]).
    pub networks_per_hour: u32,
    pub action: SharingAction,
}

/// The network of a caller's address as a number: the /24 or /48 prefix, tagged by family so
/// that an IPv4 and an IPv6 network never share a value.
pub(crate) fn network(ip: IpAddr) -> u64 {
    match crate::policy::guard::unmap(ip) {
        IpAddr::V4(v4) => (1 << 48) | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => (2 << 48) | (u128::from(v6) >> 80) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> u64 {
        network(s.parse().unwrap())
    }

    #[test]
    fn networks_are_v4_slash_24_and_v6_slash_48() {
        assert_eq!(n("203.0.113.1"), n("203.0.113.254"));
        assert_ne!(n("203.0.113.1"), n("203.0.114.1"));
        assert_eq!(n("::ffff:203.0.113.9"), n("203.0.113.1"));
        assert_eq!(n("2001:db8:1::1"), n("2001:db8:1:ffff::2"));
        assert_ne!(n("2001:db8:1::1"), n("2001:db8:2::1"));
        // The families never collide: 0.0.0.0/24 is not ::/48.
        assert_ne!(n("0.0.0.1"), n("::1"));
    }
}
