//! Which directed links are cut.
//!
//! Partitions are kept as explicit directed pairs plus a set of isolated nodes (cut from
//! everyone, including nodes added later). A cut is checked both when a datagram is sent
//! and when it would be delivered, so a datagram in flight when a link is cut is lost,
//! and one sent across a cut stays lost after the cut heals.

use std::collections::BTreeSet;
use std::net::SocketAddr;

#[derive(Debug, Default)]
pub(crate) struct Cuts {
    /// (from, to) pairs that cannot reach each other in that direction.
    directed: BTreeSet<(SocketAddr, SocketAddr)>,
    /// Nodes cut from every other address, both ways.
    isolated: BTreeSet<SocketAddr>,
}

impl Cuts {
    /// Cuts every link from a node in `from` to a node in `to` (one direction).
    pub(crate) fn cut(&mut self, from: &[SocketAddr], to: &[SocketAddr]) {
        for &f in from {
            for &t in to {
                if f != t {
                    self.directed.insert((f, t));
                }
            }
        }
    }

    pub(crate) fn isolate(&mut self, addr: SocketAddr) {
        self.isolated.insert(addr);
    }

    pub(crate) fn heal(&mut self) {
        self.directed.clear();
        self.isolated.clear();
    }

    /// Whether a datagram from `from` to `to` is dropped. A node can always reach itself.
    pub(crate) fn blocks(&self, from: SocketAddr, to: SocketAddr) -> bool {
        from != to
            && (self.isolated.contains(&from)
                || self.isolated.contains(&to)
                || self.directed.contains(&(from, to)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::loopback;
    use super::*;

    #[test]
    fn cuts_are_directed_and_isolation_is_total() {
        let (a, b, c) = (loopback(1, 1), loopback(2, 1), loopback(3, 1));
        let mut cuts = Cuts::default();
        cuts.cut(&[a], &[b]);
        assert!(cuts.blocks(a, b));
        assert!(!cuts.blocks(b, a));
        assert!(!cuts.blocks(a, c));
        cuts.isolate(c);
        assert!(cuts.blocks(a, c) && cuts.blocks(c, b));
        assert!(!cuts.blocks(c, c));
        cuts.heal();
        assert!(!cuts.blocks(a, b) && !cuts.blocks(a, c));
    }
}
