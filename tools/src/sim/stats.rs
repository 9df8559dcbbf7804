//! Counters of what the network did with the datagrams it was given.

/// Why a datagram (or one copy of it) was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Lost at random ([`LinkConfig::loss`](super::LinkConfig::loss)).
    Loss,
    /// The link was cut when it was sent or when it would have arrived.
    Partition,
    /// The link's bandwidth queue was full (tail drop).
    Queue,
    /// Larger than [`LinkConfig::max_datagram_size`](super::LinkConfig::max_datagram_size).
    Size,
    /// No node at the destination, or the node there had crashed, when it arrived.
    Unreachable,
}

/// Counts over the whole life of a [`Network`](super::Network).
///
/// Conservation: `sent + duplicated == delivered + dropped() + in_flight()` at every
/// moment (duplication creates a copy after the loss and queue checks; each copy is then
/// delivered or dropped once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to the network (by nodes or [`inject`](super::Network::inject)).
    pub sent: u64,
    /// Copies handed to a node's `handle_datagram`.
    pub delivered: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
    /// Datagrams that had a bit flipped.
    pub corrupted: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    pub dropped_queue: u64,
    pub dropped_size: u64,
    pub dropped_unreachable: u64,
    /// Node timers fired.
    pub timeouts: u64,
    /// Events processed (deliveries, drops at delivery time, and timers).
    pub steps: u64,
    /// Polls in which a node returned more than
    /// [`Limits::max_transmits_per_poll`](super::Limits::max_transmits_per_poll)
    /// datagrams.
    pub floods: u64,
}

impl Stats {
    /// All drops, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_partition
            + self.dropped_queue
            + self.dropped_size
            + self.dropped_unreachable
    }

    /// The counter for one reason.
    pub fn dropped_by(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Loss => self.dropped_loss,
            DropReason::Partition => self.dropped_partition,
            DropReason::Queue => self.dropped_queue,
            DropReason::Size => self.dropped_size,
            DropReason::Unreachable => self.dropped_unreachable,
        }
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        *match reason {
            DropReason::Loss => &mut self.dropped_loss,
            DropReason::Partition => &mut self.dropped_partition,
            DropReason::Queue => &mut self.dropped_queue,
            DropReason::Size => &mut self.dropped_size,
            DropReason::Unreachable => &mut self.dropped_unreachable,
        } += 1;
    }
}
