//! What a simulation can refuse or run into.

use std::net::SocketAddr;
use std::time::Duration;

use super::LinkConfigError;

/// An error from a [`Network`](super::Network). The bound variants (`StepLimit`,
/// `TimeLimit`, `Quiescent`, `TransmitFlood`) mean the run stopped early; the network is
/// left consistent at that point and can be inspected or run further.
///
/// Times are offsets from the network's epoch, so messages are the same on every replay.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("a node already exists at {0}")]
    DuplicateNode(SocketAddr),
    #[error("no node at {0}")]
    UnknownNode(SocketAddr),
    #[error(transparent)]
    LinkConfig(#[from] LinkConfigError),
    /// The run processed [`Limits::max_steps`](super::Limits::max_steps) events without
    /// reaching its goal: usually a node whose timer never moves (a livelock).
    #[error("step limit of {limit} events reached at t={at:?}")]
    StepLimit { limit: u64, at: Duration },
    /// The run's virtual-time budget ran out before its goal was met.
    #[error("time limit reached at t={at:?} before the run's goal was met")]
    TimeLimit { at: Duration },
    /// Nothing was in flight and no timer was armed, yet the run's predicate still held:
    /// it can never change.
    #[error("network went quiet at t={at:?} while the predicate still held")]
    Quiescent { at: Duration },
    /// A node returned more than
    /// [`Limits::max_transmits_per_poll`](super::Limits::max_transmits_per_poll)
    /// datagrams in one poll; the rest stay queued in the node.
    #[error("node {node} sent more than {limit} datagrams in one poll at t={at:?}")]
    TransmitFlood {
        node: SocketAddr,
        limit: usize,
        at: Duration,
    },
}
