//! `sockmsg-tools`: tools for looking inside sockmsg: the deterministic network simulator
//! ([`sim`]) and the capture decoder behind `sockmsg-dump` ([`dump`]); the
//! `sockmsg-bench` binary will join them.
//!
//! The simulator ([`sim`]) is how we prove the protocol. Every sockmsg state machine is
//! sans-IO (DESIGN.md, "the one architectural rule"): it takes datagrams, the current
//! `Instant` and commands, and yields datagrams to send and its next deadline. That is
//! exactly the [`sim::Node`] trait, so a [`sim::Network`] can drive any of them over a
//! virtual network: a virtual clock that only the simulator advances, a seeded
//! [`rand_chacha::ChaCha8Rng`] behind every loss, duplication, reordering and delay
//! (configured per link by [`sim::LinkConfig`]), partitions, crashes and restarts. A run
//! is a pure function of the seed and of the nodes' behaviour, so a failing seed
//! ([`sim::for_each_seed`] prints it) replays bit-for-bit, and [`sim::Network::trace_hash`]
//! lets a test check that it does.
//!
//! ```text
//!          ┌──────────────────────────── Network::step ─────────────────────────────┐
//!  nodes ──poll_transmit──▶ link model ──▶ in flight, keyed (deliver at, seq) ───┐
//!    ▲                      size, partition, loss,                             │
//!    │                      bandwidth queue, duplicate, delay                  ▼
//!    └──── handle_datagram / handle_timeout ◀──── the earliest (time, seq) of
//!                                                 {deliveries, node timers}
//! ```
//!
//! A two-node round trip:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use sockmsg_tools::sim::{loopback, LinkConfig, Network, Node};
//!
//! /// Answers a `?` with a `!`, and counts what it hears.
//! #[derive(Default)]
//! struct Echo {
//!     outbox: Vec<(SocketAddr, Vec<u8>)>,
//!     heard: usize,
//! }
//!
//! impl Node for Echo {
//!     fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, datagram: &[u8]) {
//!         self.heard += 1;
//!         if datagram == b"?" {
//!             self.outbox.push((from, b"!".to_vec()));
//!         }
//!     }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//!     fn poll_transmit(&mut self, _now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
//!         self.outbox.pop()
//!     }
//!     fn poll_timeout(&self) -> Option<Instant> {
//!         None
//!     }
//! }
//!
//! let (a, b) = (loopback(1, 7402), loopback(2, 7402));
//! let mut net = Network::new(42);
//! net.set_default_link(LinkConfig { delay: Duration::from_millis(5), ..LinkConfig::default() })?;
//! net.add_node(a, Echo::default())?;
//! net.add_node(b, Echo::default())?;
//! net.node_mut(a).outbox.push((b, b"?".to_vec())); // a command, as a test would give one
//! net.run_until_quiet(Duration::from_secs(1))?;
//! assert_eq!(net.node(a).heard, 1); // the answer came back...
//! assert_eq!(net.elapsed(), Duration::from_millis(10)); // ...after one virtual round trip
//! # Ok::<(), sockmsg_tools::sim::SimError>(())
//! ```

pub mod bench;
pub mod dump;
pub mod groupsim;
pub mod sim;
