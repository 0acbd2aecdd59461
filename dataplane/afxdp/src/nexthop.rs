//! Where a frame a worker sends out of the uplink goes next: the Ethernet
//! address of its gateway, or of the destination itself when it is on the
//! link, from the kernel's routes and neighbours of the uplink.
//!
//! The agent's control thread reads them over netlink and publishes a new
//! [`NextHops`] on every change; a worker reads the current one once a
//! batch, without a lock ([`arc_swap::ArcSwap`]). A next hop the kernel has
//! no neighbour for is noted in [`Unresolved`] for the control thread to
//! resolve; its frame is dropped, as a router drops what it cannot
//! resolve at once (TCP retransmits it).

use std::sync::atomic::{AtomicU32, Ordering};

use heels_dataplane::translate::Prefix;

/// One route of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destinations it covers.
    pub prefix: Prefix,
    /// Its gateway; `None` for a destination on the link.
    pub gateway: Option<[u8; 4]>,
}

/// What a worker does with a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Send to this Ethernet address.
    Mac([u8; 6]),
    /// The route's next hop has no neighbour entry (yet).
    Unresolved([u8; 4]),
    /// No route of the uplink covers it.
    NoRoute,
}

/// The uplink's routes and neighbours, as the kernel had them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NextHops {
    /// Longest prefix first.
    routes: Vec<Route>,
    /// Sorted by address.
    neighbours: Vec<([u8; 4], [u8; 6])>,
}

impl NextHops {
    /// The table for `routes` and `neighbours` (any order).
    pub fn new(mut routes: Vec<Route>, mut neighbours: Vec<([u8; 4], [u8; 6])>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        neighbours.sort_unstable();
        neighbours.dedup_by_key(|(addr, _)| *addr);
        NextHops { routes, neighbours }
    }

    /// Where a frame to `dst` goes: longest prefix match over the routes
    /// (a handful on a host: a scan), then the next hop's neighbour.
    #[inline]
    pub fn hop(&self, dst: [u8; 4]) -> Hop {
        let Some(route) = self.routes.iter().find(|r| r.prefix.contains(dst)) else {
            return Hop::NoRoute;
        };
        let next = route.gateway.unwrap_or(dst);
        match self.neighbours.binary_search_by_key(&next, |(addr, _)| *addr) {
            Ok(i) => Hop::Mac(self.neighbours[i].1),
            Err(_) => Hop::Unresolved(next),
        }
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The neighbours, by address.
    pub fn neighbours(&self) -> &[([u8; 4], [u8; 6])] {
        &self.neighbours
    }
}

/// Next hops workers met without a neighbour, for the control thread to
/// resolve: a few slots a worker stores into (no lock, no allocation); a
/// full slot is overwritten, and a next hop lost that way is noted again
/// by its next frame.
#[derive(Debug, Default)]
pub struct Unresolved {
    slots: [AtomicU32; 8],
}

impl Unresolved {
    /// Notes `next` (not 0.0.0.0, which marks an empty slot).
    pub fn note(&self, next: [u8; 4]) {
        let value = u32::from_be_bytes(next);
        let slot = &self.slots[(value as usize ^ (value as usize >> 8)) % self.slots.len()];
        if slot.load(Ordering::Relaxed) != value {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Every next hop noted since the last call.
    pub fn take(&self) -> Vec<[u8; 4]> {
        let mut out: Vec<[u8; 4]> = self
            .slots
            .iter()
            .map(|slot| slot.swap(0, Ordering::Relaxed))
            .filter(|&value| value != 0)
            .map(u32::to_be_bytes)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NextHops {
        NextHops::new(
            vec![
                Route { prefix: "0.0.0.0/0".parse().unwrap(), gateway: Some([10, 10, 1, 1]) },
                Route { prefix: "10.10.1.0/24".parse().unwrap(), gateway: None },
                Route { prefix: "10.10.7.0/24".parse().unwrap(), gateway: Some([10, 10, 1, 7]) },
            ],
            vec![([10, 10, 1, 1], [2, 0, 0, 0, 0, 1]), ([10, 10, 1, 9], [2, 0, 0, 0, 0, 9])],
        )
    }

    #[test]
    fn the_longest_prefix_chooses_the_next_hop() {
        let hops = table();
        // Off link: the default gateway.
        assert_eq!(hops.hop([10, 10, 0, 11]), Hop::Mac([2, 0, 0, 0, 0, 1]));
        // On link: the destination's own entry.
        assert_eq!(hops.hop([10, 10, 1, 9]), Hop::Mac([2, 0, 0, 0, 0, 9]));
        assert_eq!(hops.hop([10, 10, 1, 8]), Hop::Unresolved([10, 10, 1, 8]));
        // A more specific route through a gateway nobody resolved.
        assert_eq!(hops.hop([10, 10, 7, 3]), Hop::Unresolved([10, 10, 1, 7]));
        assert_eq!(NextHops::default().hop([1, 2, 3, 4]), Hop::NoRoute);
    }

    #[test]
    fn unresolved_next_hops_are_taken_once() {
        let unresolved = Unresolved::default();
        unresolved.note([10, 10, 1, 7]);
        unresolved.note([10, 10, 1, 7]);
        unresolved.note([10, 10, 1, 8]);
        assert_eq!(unresolved.take(), vec![[10, 10, 1, 7], [10, 10, 1, 8]]);
        assert_eq!(unresolved.take(), Vec::<[u8; 4]>::new());
    }
}
