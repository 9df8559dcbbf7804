//! The link model: what can happen to one datagram between two nodes.
//!
//! A [`LinkConfig`] applies to a directed link (sender → receiver); the [`Network`] has
//! one default and optional per-pair overrides. The steps a datagram goes through, in
//! this order (the order fixes which random draws are made, so it is part of what makes
//! a seed replay):
//!
//! 1. larger than [`LinkConfig::max_datagram_size`] → dropped (as an MTU would);
//! 2. the link is partitioned → dropped;
//! 3. lost with probability [`LinkConfig::loss`];
//! 4. with a [`Bandwidth`], queued behind the bytes already on that link and serialized
//!    at its rate; a full queue drops it (tail drop);
//! 5. one bit flipped with probability [`LinkConfig::corrupt`];
//! 6. duplicated with probability [`LinkConfig::duplicate`];
//! 7. each copy then takes [`LinkConfig::delay`] plus a uniform jitter in
//!    `[0, jitter]`, plus [`LinkConfig::reorder_delay`] with probability
//!    [`LinkConfig::reorder`].
//!
//! Jitter alone already lets datagrams overtake one another (as netem's jitter does);
//! with `jitter` zero and `reorder` zero a link is FIFO.
//!
//! [`Network`]: super::Network

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The behaviour of one directed link. `LinkConfig::default()` is a quiet LAN: 1 ms, no
/// jitter, no loss, unlimited bandwidth, datagrams up to the UDP maximum.
///
/// Probabilities are in `[0, 1]`; [`Network`](super::Network) checks them (with
/// [`validate`](LinkConfig::validate)) when the config is set, so the model never panics
/// mid-run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Propagation delay every copy takes at least.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per copy.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice (each copy with its own delay).
    pub duplicate: f64,
    /// Probability that a copy is held back by an extra [`reorder_delay`](Self::reorder_delay),
    /// so later datagrams overtake it.
    pub reorder: f64,
    /// The extra delay of a reordered copy.
    pub reorder_delay: Duration,
    /// Probability that one random bit of a datagram is flipped (a bad checksum
    /// that slipped through, or an attacker): the receiver must reject it.
    pub corrupt: f64,
    /// Serialization rate and queue; `None` is infinitely fast.
    pub bandwidth: Option<Bandwidth>,
    /// Datagrams longer than this many bytes are dropped.
    pub max_datagram_size: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            corrupt: 0.0,
            bandwidth: None,
            // The largest UDP payload over IPv4.
            max_datagram_size: 65_507,
        }
    }
}

/// A link's rate and the queue in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Serialization rate; a datagram of `n` bytes occupies the link for
    /// `n / bytes_per_sec` seconds (rounded up to the nanosecond).
    pub bytes_per_sec: u64,
    /// Bytes that may wait for, or be on, the link; a datagram that does not fit is
    /// dropped (tail drop). A datagram larger than this never fits.
    pub queue_bytes: usize,
}

impl Bandwidth {
    /// How long `len` bytes occupy the link.
    pub fn serialization_time(&self, len: usize) -> Duration {
        let nanos = (len as u128 * 1_000_000_000).div_ceil(u128::from(self.bytes_per_sec));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A [`LinkConfig`] that the model cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinkConfigError {
    #[error("link {field} must be a probability in [0, 1], not {value}")]
    Probability { field: &'static str, value: f64 },
    #[error("link bandwidth must be at least one byte per second")]
    ZeroBandwidth,
}

impl LinkConfig {
    /// Checks that every probability is in `[0, 1]` (not NaN) and the bandwidth is not
    /// zero.
    pub fn validate(&self) -> Result<(), LinkConfigError> {
        for (field, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(LinkConfigError::Probability { field, value });
            }
        }
        match self.bandwidth {
            Some(Bandwidth {
                bytes_per_sec: 0, ..
            }) => Err(LinkConfigError::ZeroBandwidth),
            _ => Ok(()),
        }
    }

    /// Step 7: the time one copy spends in flight after leaving the queue.
    pub(crate) fn propagation_delay(&self, rng: &mut ChaCha8Rng) -> Duration {
        let mut delay = self.delay;
        if !self.jitter.is_zero() {
            let max = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
            delay += Duration::from_nanos(rng.random_range(0..=max));
        }
        if chance(rng, self.reorder) {
            delay += self.reorder_delay;
        }
        delay
    }
}

/// Draws an event of probability `p`. No draw is made for `p == 0`, so an ideal link
/// consumes no randomness. `p` was validated to be in `[0, 1]`.
pub(crate) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.random_bool(p)
}

/// The FIFO in front of one directed link with a [`Bandwidth`].
///
/// Invariant: `pending` holds, in order, the datagrams that have not finished
/// serializing, with their finish times (non-decreasing) and lengths; `bytes` is the sum
/// of those lengths; `busy_until` is the last finish time (or earlier, when idle).
#[derive(Debug, Default)]
pub(crate) struct LinkQueue {
    pending: VecDeque<(Instant, usize)>,
    bytes: usize,
    busy_until: Option<Instant>,
}

impl LinkQueue {
    /// Queues `len` bytes sent at `now`; returns when the last bit leaves, or `None`
    /// when the queue is full (the datagram is tail-dropped).
    pub(crate) fn admit(&mut self, now: Instant, len: usize, bw: Bandwidth) -> Option<Instant> {
        while let Some(&(finish, done)) = self.pending.front() {
            if finish > now {
                break;
            }
            self.pending.pop_front();
            self.bytes -= done;
        }
        if self.bytes + len > bw.queue_bytes {
            return None;
        }
        let start = self.busy_until.map_or(now, |busy| busy.max(now));
        let finish = start + bw.serialization_time(len);
        self.busy_until = Some(finish);
        self.pending.push_back((finish, len));
        self.bytes += len;
        Some(finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_probabilities_and_zero_bandwidth() {
        assert_eq!(LinkConfig::default().validate(), Ok(()));
        let bad = LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(LinkConfigError::Probability { field: "loss", .. })
        ));
        let nan = LinkConfig {
            reorder: f64::NAN,
            ..LinkConfig::default()
        };
        assert!(matches!(
            nan.validate(),
            Err(LinkConfigError::Probability {
                field: "reorder",
                ..
            })
        ));
        let negative = LinkConfig {
            duplicate: -0.1,
            ..LinkConfig::default()
        };
        assert!(negative.validate().is_err());
        let zero = LinkConfig {
            bandwidth: Some(Bandwidth {
                bytes_per_sec: 0,
                queue_bytes: 1,
            }),
            ..LinkConfig::default()
        };
        assert_eq!(zero.validate(), Err(LinkConfigError::ZeroBandwidth));
    }

    #[test]
    fn serialization_time_rounds_up() {
        let bw = Bandwidth {
            bytes_per_sec: 3,
            queue_bytes: 10,
        };
        assert_eq!(bw.serialization_time(1), Duration::from_nanos(333_333_334));
        assert_eq!(bw.serialization_time(3), Duration::from_secs(1));
        assert_eq!(bw.serialization_time(0), Duration::ZERO);
    }

    #[test]
    fn queue_serializes_back_to_back_and_frees_space_as_bytes_leave() {
        let t0 = Instant::now();
        let bw = Bandwidth {
            bytes_per_sec: 1000,
            queue_bytes: 250,
        };
        let mut q = LinkQueue::default();
        assert_eq!(q.admit(t0, 100, bw), Some(t0 + Duration::from_millis(100)));
        assert_eq!(q.admit(t0, 100, bw), Some(t0 + Duration::from_millis(200)));
        assert_eq!(
            q.admit(t0, 100, bw),
            None,
            "300 bytes exceed the 250-byte queue"
        );
        // At 100 ms the first datagram has left, so there is room again, behind the second.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(q.admit(t1, 100, bw), Some(t0 + Duration::from_millis(300)));
        // Once idle, a datagram starts at once.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(q.admit(t2, 100, bw), Some(t2 + Duration::from_millis(100)));
    }
}
