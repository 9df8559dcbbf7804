//! The run's fingerprint ([`Network::trace_hash`](super::Network::trace_hash)) and its
//! optional event log.
//!
//! The hash is 64-bit FNV-1a: fixed, keyless and defined byte by byte, so it is the same
//! on every platform and every build (unlike `std`'s `DefaultHasher`, whose algorithm may
//! change). It is not collision resistant and need not be: it only tells apart runs of
//! one test.

use std::net::SocketAddr;
use std::time::Duration;

use super::DropReason;

/// One thing that happened, at `at` since the network's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    pub at: Duration,
    pub kind: SimEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEventKind {
    /// A copy of a datagram of `len` bytes reached `to`'s `handle_datagram`.
    Delivered {
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
    },
    /// A datagram, or one copy of it, was dropped (at send or at delivery time).
    Dropped {
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
        reason: DropReason,
    },
    /// `node`'s `handle_timeout` ran.
    Timeout { node: SocketAddr },
}

/// Folds deliveries and timeouts into the trace hash and, when enabled, keeps the log.
#[derive(Debug)]
pub(crate) struct Recorder {
    hash: u64,
    log: Option<Vec<SimEvent>>,
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Tags keep a delivery and a timeout with the same bytes from hashing alike.
const TAG_DELIVERY: u8 = 0;
const TAG_TIMEOUT: u8 = 1;

impl Default for Recorder {
    fn default() -> Self {
        Self {
            hash: FNV_OFFSET_BASIS,
            log: None,
        }
    }
}

impl Recorder {
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    pub(crate) fn set_logging(&mut self, on: bool) {
        match (on, self.log.is_some()) {
            (true, false) => self.log = Some(Vec::new()),
            (false, true) => self.log = None,
            _ => {}
        }
    }

    pub(crate) fn log(&self) -> &[SimEvent] {
        self.log.as_deref().unwrap_or(&[])
    }

    pub(crate) fn take_log(&mut self) -> Vec<SimEvent> {
        self.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(crate) fn delivered(
        &mut self,
        at: Duration,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
    ) {
        self.write(&[TAG_DELIVERY]);
        self.write_time(at);
        self.write_addr(from);
        self.write_addr(to);
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
        self.push(
            at,
            SimEventKind::Delivered {
                from,
                to,
                len: bytes.len(),
            },
        );
    }

    pub(crate) fn timeout(&mut self, at: Duration, node: SocketAddr) {
        self.write(&[TAG_TIMEOUT]);
        self.write_time(at);
        self.write_addr(node);
        self.push(at, SimEventKind::Timeout { node });
    }

    /// Drops are logged but not hashed: they follow from the seed and the deliveries,
    /// which are hashed.
    pub(crate) fn dropped(
        &mut self,
        at: Duration,
        from: SocketAddr,
        to: SocketAddr,
        len: usize,
        reason: DropReason,
    ) {
        self.push(
            at,
            SimEventKind::Dropped {
                from,
                to,
                len,
                reason,
            },
        );
    }

    fn push(&mut self, at: Duration, kind: SimEventKind) {
        if let Some(log) = &mut self.log {
            log.push(SimEvent { at, kind });
        }
    }

    fn write_time(&mut self, at: Duration) {
        self.write(&at.as_nanos().to_le_bytes());
    }

    fn write_addr(&mut self, addr: SocketAddr) {
        match addr {
            SocketAddr::V4(v4) => {
                self.write(&[4]);
                self.write(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                self.write(&[6]);
                self.write(&v6.ip().octets());
            }
        }
        self.write(&addr.port().to_le_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv): FNV-1a 64 of "" and of "a".
        let mut r = Recorder::default();
        assert_eq!(r.hash(), 0xcbf2_9ce4_8422_2325);
        r.write(b"a");
        assert_eq!(r.hash(), 0xaf63_dc4c_8601_ec8c);
    }
}
