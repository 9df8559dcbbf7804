//! A deterministic network simulator for sans-IO state machines.
//!
//! A [`Network`] owns a set of [`Node`]s, each at a `SocketAddr` (by convention a
//! loopback-looking one from [`loopback`]; no socket is ever opened), a virtual clock and
//! one seeded random number generator. Each [`Network::step`]
//!
//! 1. drains every live node's [`Node::poll_transmit`], passing each datagram through the
//!    [`LinkConfig`] of its directed link (drop if too large or partitioned, random loss,
//!    the bandwidth queue, random corruption and duplication, delay with jitter and
//!    random reordering), which schedules zero, one or two deliveries;
//! 2. reads every live node's [`Node::poll_timeout`];
//! 3. takes the earliest event, a delivery or a node timer, advances the clock to its time
//!    and hands it to the node ([`Node::handle_datagram`] or [`Node::handle_timeout`]).
//!
//! # Determinism
//!
//! A run depends only on the seed, the configuration and what the nodes do with their
//! inputs. Nothing reads the real clock (the epoch is captured once, and every behaviour
//! depends on offsets from it), nodes are kept in a `BTreeMap` and polled in address
//! order, every random draw comes from one `ChaCha8Rng` in an order fixed by the event
//! order, and events at the same instant are ordered by a sequence number taken when the
//! datagram was sent or the timer armed — never by hash order. Nodes must keep their side
//! of the bargain: no `Instant::now()`, no `thread_rng()`, no `HashMap` iteration that
//! decides what they send. [`Network::derived_rng`] gives them seeded randomness.
//!
//! [`Network::trace_hash`] folds every delivery and timer (time offset, addresses, bytes)
//! into one number, so a test asserts that two runs with one seed are identical, and
//! [`for_each_seed`] runs a test over many seeds and names the one that fails.
//!
//! # Bounds
//!
//! The `run_*` methods never loop forever: each stops after [`Limits::max_steps`] events
//! or at its virtual-time bound, and a node that returns more than
//! [`Limits::max_transmits_per_poll`] datagrams in one poll is reported, not drained
//! forever. Bounds are errors ([`SimError`]), so a livelocked protocol fails its test.

mod error;
mod link;
mod network;
mod partition;
mod seeds;
mod stats;
mod trace;

#[cfg(test)]
mod tests;

pub use error::SimError;
pub use link::{Bandwidth, LinkConfig, LinkConfigError};
pub use network::{Limits, Network};
pub use seeds::{for_each_seed, SeedEnvError, Seeds, SEEDS_ENV, SEED_ENV};
pub use stats::{DropReason, Stats};
pub use trace::{SimEvent, SimEventKind};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// A sans-IO participant the simulator drives: a peer's group state machine, a proxy, a
/// key manager, or a test's toy.
///
/// This is the quinn-proto vocabulary: the simulator feeds `handle_*` and drains `poll_*`.
/// After any `handle_*` call (and at the start of every step) the simulator calls
/// [`poll_transmit`](Node::poll_transmit) until it returns `None`, then
/// [`poll_timeout`](Node::poll_timeout). `now` never goes backwards.
pub trait Node {
    /// A datagram from `from` arrived at `now`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);

    /// The deadline last returned by [`poll_timeout`](Node::poll_timeout) has passed.
    ///
    /// The node must move or clear that deadline: one that is still due after this call
    /// fires again at once, and a node that never moves it is stopped by
    /// [`Limits::max_steps`].
    fn handle_timeout(&mut self, now: Instant);

    /// Next datagram to send, if any: (destination, bytes). The source is the node's own
    /// address.
    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)>;

    /// When the node next wants [`handle_timeout`](Node::handle_timeout), if ever. A
    /// deadline in the past fires at the current time.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Boxed nodes are nodes, so one network can mix peers, a proxy and a key manager as
/// `Network<Box<dyn Node>>`.
impl<T: Node + ?Sized> Node for Box<T> {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        (**self).handle_datagram(now, from, datagram);
    }

    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        (**self).poll_transmit(now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
}

/// `127.0.0.host:port`: the conventional address of a simulated node. It only names the
/// node; nothing is bound.
pub fn loopback(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), port)
}
