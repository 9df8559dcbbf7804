//! The session layer: a reliable, authenticated, encrypted message channel between two
//! peers over UDP, as a sans-IO state machine (after quinn-proto).
//!
//! An [`Endpoint`] owns the sessions of one local address and routes datagrams to them
//! by connection id; each [`Connection`] runs one session:
//!
//! - **Handshake** (SIGMA-style, 1.5 round trips, [`handshake`]): X25519 ephemerals, each
//!   side's RSA-PSS signature over the transcript, verified against the peer's key from a
//!   caller-provided [`PeerKeys`]; a stateless retry cookie ([`cookie`]) first, so an
//!   unproven source costs no state and no RSA work.
//! - **Protection** ([`crypto`]): ChaCha20-Poly1305 with the header as associated data,
//!   the packet number as nonce, a duplicate/replay filter, and key updates after a
//!   packet count or a time.
//! - **Reliability** ([`recovery`], after RFC 9002): ACK ranges, RTT estimation, probe
//!   timeouts with backoff, packet- and time-threshold loss detection, NewReno; lost
//!   *frames* are re-sent in new packets.
//! - **Messages** ([`streams`]): three classes (ordered, reliable, unreliable), fragmented
//!   and reassembled, with bounded buffers on both sides.
//!
//! ```text
//! driver ──handle_datagram(now, from, bytes)──▶ Endpoint ──▶ Connection
//!        ──handle_timeout(now)───────────────▶
//!        ◀──poll_transmit / poll_event / poll_timeout──
//! ```
//!
//! Nothing here reads a clock, a socket or an ambient random source: time comes in as
//! `Instant`s, randomness from the seed given to [`Endpoint::new`].

pub mod connection;
pub mod cookie;
pub mod crypto;
pub mod endpoint;
pub mod handshake;
pub mod ranges;
pub mod recovery;
pub mod streams;

use std::time::Duration;

pub use connection::{CloseReason, Connection, ConnectionStats, Event, Role};
pub use crypto::{PeerKeys, RsaKeyring, RsaSigner, Signer};
pub use endpoint::{ConnectionHandle, Endpoint, EndpointStats, Transmit};
pub use streams::{MessageId, SendError};

/// The tunables of a session. Defaults match config.yml's `timing` and `transport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest datagram sent (`transport.datagram_size`).
    pub datagram_size: usize,
    /// A session with nothing received for this long is dropped.
    pub idle_timeout: Duration,
    /// A handshake not complete after this long fails.
    pub handshake_timeout: Duration,
    /// A peer that acknowledges nothing for this long, while data is outstanding, is
    /// declared unreachable.
    pub unreachable_after: Duration,
    /// How long a receiver may hold an ACK (RFC 9000 §13.2.1).
    pub max_ack_delay: Duration,
    /// RTT assumed before the first sample; LAN-sized.
    pub initial_rtt: Duration,
    /// The longest the backed-off probe timeout grows, so a healed link is noticed soon.
    pub max_probe_timeout: Duration,
    /// Bytes of messages a session holds for sending.
    pub send_buffer: usize,
    /// Bytes of messages a session holds while reassembling and before delivery.
    pub recv_buffer: usize,
    /// Update the sending key after this many packets...
    pub rekey_after_packets: u64,
    /// ...or this much time, whichever comes first.
    pub rekey_after: Duration,
    /// How long a retry cookie stays valid.
    pub cookie_lifetime: Duration,
    /// Most sessions an endpoint keeps; INITIALs beyond are dropped.
    pub max_connections: usize,
    /// Keep each session's traffic secrets for [`Connection::keylog_secrets`] (a
    /// debugging aid, `SOCKMSG_KEYLOG`; off by default: whoever reads the file can
    /// decrypt the sessions).
    pub keylog: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            datagram_size: crate::limits::DEFAULT_DATAGRAM_SIZE,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(2),
            unreachable_after: Duration::from_secs(5),
            max_ack_delay: Duration::from_millis(5),
            initial_rtt: Duration::from_millis(50),
            max_probe_timeout: Duration::from_secs(1),
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            rekey_after_packets: 1 << 30,
            rekey_after: Duration::from_secs(120),
            cookie_lifetime: Duration::from_secs(10),
            max_connections: 1024,
            keylog: false,
        }
    }
}
