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
pub mod ratelimit;
pub mod recovery;
pub mod streams;

use std::time::Duration;

pub use connection::{CloseReason, Connection, ConnectionStats, Event, Role, SignatureError};
pub use crypto::{PeerKeys, RsaKeyring, RsaSigner, Signer};
pub use endpoint::{ConnectionHandle, Endpoint, EndpointStats, SignRequest, Transmit};
pub use streams::{MessageId, SendError};

/// Default [`SessionConfig::max_half_open`]: twice the largest group (SPEC §11
/// `MAX_MEMBERS`), so a whole group restarting at once is never refused.
pub const DEFAULT_MAX_HALF_OPEN: usize = 128;
/// Default [`SessionConfig::handshake_burst`]: room for every node of a 32-node machine
/// (they share one IP address) to open a session at once.
pub const DEFAULT_HANDSHAKE_BURST: u32 = 32;
/// Default [`SessionConfig::handshake_refill`]: ten handshakes a second per source
/// afterwards (an initiator refused retransmits its INITIAL within 100-800 ms, well
/// inside the cookie's life, so an honest handshake is delayed, not lost).
pub const DEFAULT_HANDSHAKE_REFILL: Duration = Duration::from_millis(100);
/// Default [`SessionConfig::handshake_sources`] (SPEC §11 `MAX_HANDSHAKE_SOURCES`).
pub const DEFAULT_HANDSHAKE_SOURCES: usize = 4096;

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
    /// Most responder handshakes in progress at once (cookie verified, FINISH not yet):
    /// a cookie-verified INITIAL beyond is dropped before any RSA work (SPEC §5.1).
    pub max_half_open: usize,
    /// Handshakes one source IP address may start at once (its token bucket's size):
    /// each cookie-verified INITIAL that would make us sign takes a token, and one that
    /// finds none is dropped before any RSA work (SPEC §5.1).
    pub handshake_burst: u32,
    /// One token is added back to a source's bucket per this interval.
    pub handshake_refill: Duration,
    /// Most source addresses whose buckets are remembered (least recently used evicted
    /// first; SPEC §11).
    pub handshake_sources: usize,
    /// Sign handshake transcripts outside the endpoint: instead of calling
    /// [`Signer::sign`] on its own thread, the endpoint hands out
    /// [`SignRequest`]s ([`Endpoint::poll_sign_request`]) and the handshake waits until
    /// the driver gives the signature back ([`Endpoint::provide_signature`]), so RSA never
    /// runs on the event loop. Off by default: [`Signer::sign`] is called synchronously.
    pub defer_signatures: bool,
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
            max_half_open: DEFAULT_MAX_HALF_OPEN,
            handshake_burst: DEFAULT_HANDSHAKE_BURST,
            handshake_refill: DEFAULT_HANDSHAKE_REFILL,
            handshake_sources: DEFAULT_HANDSHAKE_SOURCES,
            defer_signatures: false,
            keylog: false,
        }
    }
}
