//! One session with one peer: its handshake, packet protection, acknowledgements, loss
//! recovery and message buffers.
//!
//! A `Connection` is created by the [`super::Endpoint`], which routes packets to it by
//! connection id. Its methods, in quinn-proto's vocabulary:
//!
//! - `handle_*`: feed it a packet ([`Connection::handle_packet`]) or the passing of time
//!   ([`Connection::handle_timeout`]);
//! - mutators: [`Connection::send`], [`Connection::close`];
//! - `poll_*`: drain it. After any `handle_*` or mutator call, poll in this order:
//!   [`Connection::poll_transmit`] until `None`, [`Connection::poll_event`] until `None`,
//!   then arm one timer at [`Connection::poll_timeout`].
//!
//! Life of a session:
//!
//! ```text
//! initiator: InitialSent ──RESPONSE verified──▶ Established ──▶ Closing/Draining ──▶ Closed
//! responder: (cookie checked by the endpoint) AwaitingFinish ──FINISH verified──▶ Established
//! ```
//!
//! Invariants kept:
//! - a packet number is never reused under one key (it only grows, and it is the nonce);
//! - nothing from the peer changes state unless it decrypted under the session's keys,
//!   and only after the peer's signature over the transcript has been verified;
//! - a packet is acknowledged only once everything in it was accepted, so a refused
//!   message fragment is retransmitted by the peer rather than lost.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;

use super::crypto::{
    derive_session_secrets, next_generation, AuthError, EphemeralKeyPair, PacketKey, PeerKeys,
    Signer,
};
use super::handshake::{
    signed_message, transcript_hash, HandshakeSide, INITIATOR_LABEL, RESPONDER_LABEL,
};
use super::ranges::RangeSet;
use super::recovery::{LossDetector, RecoveryConfig, TimeoutOutcome};
use super::streams::{FragmentRef, MessageId, RecvBuffer, SendError, SendQueue, MESSAGE_OVERHEAD};
use super::SessionConfig;
use crate::codec::{Encode, Name, Signature, Text, Token};
use crate::frame::{
    AckRange, Close, CloseCode, Frame, Frames, HandshakeFinish, HandshakeInit, HandshakeResponse,
    MessageClass, Padding,
};
use crate::limits::AEAD_TAG_LEN;
use crate::packet::{encode_cleartext_packet, Header, Packet, PacketFlags, PacketType, HEADER_LEN};

/// Smallest INITIAL packet (header and payload, SPEC.md §4): padding each INITIAL this far
/// is what lets a responder answer without becoming an amplifier. The name is historical:
/// the rule applies to the packet, and an INITIAL ends its datagram (SPEC.md §2).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;

/// [`MIN_INITIAL_DATAGRAM`] under the name that says what it bounds.
pub const MIN_INITIAL_PACKET: usize = MIN_INITIAL_DATAGRAM;

/// Packet numbers remembered for duplicate detection and ACK ranges.
const RECEIVED_RANGES: usize = 256;

/// Most RETRYs an initiator follows in one handshake.
const MAX_RETRIES: u32 = 8;

/// Handshake retransmissions back off up to 2^this times the first interval.
const MAX_HANDSHAKE_BACKOFF: u32 = 5;

/// Room kept in each packet for a piggybacked ACK when sizing message fragments.
const ACK_ROOM: usize = 32;

/// Which end of the handshake this connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// What happened on a connection, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: the peer proved it holds the key of `peer`.
    Connected { peer: String },
    /// A whole message arrived.
    Message { class: MessageClass, data: Vec<u8> },
    /// Every fragment of a reliable message was acknowledged by the peer.
    Acked(MessageId),
    /// The peer acknowledged nothing for `SessionConfig::unreachable_after` while data
    /// was outstanding; the session is closed right after this event.
    Unreachable,
    /// The session ended; no further events follow.
    Closed(CloseReason),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it ([`Connection::close`]).
    Local { code: CloseCode },
    /// The peer sent CLOSE.
    Peer { code: CloseCode, reason: String },
    /// Nothing was received for `SessionConfig::idle_timeout`.
    IdleTimeout,
    /// See [`Event::Unreachable`].
    Unreachable,
    /// The handshake did not complete within `SessionConfig::handshake_timeout`.
    HandshakeTimeout,
    /// A half-open responder handshake dropped, with every half-open slot taken, to make
    /// room for a source that held fewer of them (SPEC §5.1).
    Displaced,
    /// The peer's signature did not verify, or its name is not the one expected.
    AuthenticationFailed(String),
    /// The peer broke the protocol inside an authenticated packet.
    ProtocolViolation(&'static str),
}

/// Why [`super::Endpoint::provide_signature`] refused a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No such connection: it closed (e.g. the handshake timed out) and was forgotten.
    /// Not a fault: the driver drops the signature.
    #[error("no such connection (it has closed)")]
    UnknownConnection,
    /// The connection is not waiting for a signature (it never asked, it already got
    /// one, or it has closed).
    #[error("the connection is not waiting for a signature")]
    NotRequested,
    /// The signature does not fit a `Signature` field (SPEC §6); the session ended.
    #[error("a signature of {len} bytes does not fit the wire format")]
    TooLong { len: usize },
}

/// Counters of what a connection dropped or did; bad input is counted, never fatal
/// unless it was authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Did not decrypt: tampered, forged, or under a wrong key.
    pub dropped_decrypt: u64,
    /// A packet number already received (a replay or a network duplicate).
    pub dropped_duplicate: u64,
    /// From an address other than the peer's.
    pub dropped_wrong_address: u64,
    /// Not acceptable in the current state (e.g. DATA before the handshake completed).
    pub dropped_unexpected: u64,
    /// Refused for lack of buffer space; left unacknowledged for the peer to resend.
    pub refused_messages: u64,
    /// Message fragments sent again after a loss or a probe timeout.
    pub retransmitted_fragments: u64,
    pub probes_sent: u64,
    pub key_updates: u64,
    /// Handshake signatures that did not verify against the peer's key.
    pub auth_failures: u64,
}

/// What a sent DATA packet carried, returned by loss recovery when it is acknowledged or
/// lost.
#[derive(Debug, Clone, Default)]
struct SentRecord {
    fragments: Vec<FragmentRef>,
}

/// Keys of an established session: one direction's current key to send with, and the
/// other direction's current, next and previous keys to receive with.
struct Keys {
    tx: PacketKey,
    tx_secret: [u8; 32],
    tx_phase: bool,
    tx_phase_first_pn: u64,
    tx_phase_started: Instant,
    rx: PacketKey,
    rx_secret: [u8; 32],
    rx_phase: bool,
    rx_phase_first_pn: u64,
    rx_next: PacketKey,
    rx_previous: Option<PacketKey>,
}

impl Keys {
    fn new(tx_secret: [u8; 32], rx_secret: [u8; 32], now: Instant) -> Self {
        Keys {
            tx: PacketKey::new(&tx_secret),
            tx_secret,
            tx_phase: false,
            tx_phase_first_pn: 0,
            tx_phase_started: now,
            rx: PacketKey::new(&rx_secret),
            rx_secret,
            rx_phase: false,
            rx_phase_first_pn: 0,
            rx_next: PacketKey::new(&next_generation(&rx_secret)),
            rx_previous: None,
        }
    }

    /// Moves our sending direction to the next key generation (flipping KEY_PHASE).
    fn update_tx(&mut self, next_pn: u64, now: Instant) {
        self.tx_secret = next_generation(&self.tx_secret);
        self.tx = PacketKey::new(&self.tx_secret);
        self.tx_phase = !self.tx_phase;
        self.tx_phase_first_pn = next_pn;
        self.tx_phase_started = now;
    }

    /// Decrypts in place with the key the packet's phase and number point at; on
    /// success with the next generation, the receiving direction moves to it.
    fn open(&mut self, header: &Header, payload: &mut [u8]) -> Option<usize> {
        let pn = header.packet_number();
        let phase = header.flags().contains(PacketFlags::KEY_PHASE);
        let header_bytes = header.as_wire_bytes();
        if phase == self.rx_phase {
            return self.rx.open(pn, header_bytes, payload).ok();
        }
        if pn < self.rx_phase_first_pn {
            let previous = self.rx_previous.as_ref()?;
            return previous.open(pn, header_bytes, payload).ok();
        }
        let len = self.rx_next.open(pn, header_bytes, payload).ok()?;
        self.rx_secret = next_generation(&self.rx_secret);
        let next = PacketKey::new(&next_generation(&self.rx_secret));
        self.rx_previous = Some(std::mem::replace(
            &mut self.rx,
            std::mem::replace(&mut self.rx_next, next),
        ));
        self.rx_phase = phase;
        self.rx_phase_first_pn = pn;
        Some(len)
    }
}

/// Where the handshake stands.
enum State {
    /// Initiator: INITIAL sent; waiting for RETRY or HANDSHAKE_RESPONSE.
    InitialSent {
        ephemeral: Option<EphemeralKeyPair>,
        cookie: Vec<u8>,
        retries: u32,
    },
    /// Responder with deferred signing ([`SessionConfig::defer_signatures`]): keys
    /// derived, HANDSHAKE_RESPONSE waiting for our signature over the transcript.
    AwaitingResponseSignature {
        transcript: [u8; 32],
        ephemeral: [u8; 32],
    },
    /// Initiator with deferred signing: the responder's signature verified, keys derived,
    /// HANDSHAKE_FINISH waiting for our signature over the transcript.
    AwaitingFinishSignature,
    /// Responder: HANDSHAKE_RESPONSE sent, keys derived; waiting for HANDSHAKE_FINISH,
    /// which proves the initiator's identity. `response` is re-sent if the INITIAL is.
    AwaitingFinish {
        transcript: [u8; 32],
        response: Vec<u8>,
    },
    /// Keys in use. The initiator re-sends `finish` until the responder's first DATA
    /// packet shows that it arrived.
    Established {
        finish: Option<Vec<u8>>,
    },
    /// We sent CLOSE; we answer further packets with it until `until`.
    Closing {
        until: Instant,
    },
    /// The peer sent CLOSE; we stay silent until `until`, then forget the session.
    Draining {
        until: Instant,
    },
    Closed,
}

/// What a connection shares with its endpoint.
pub(crate) struct Shared {
    pub config: SessionConfig,
    pub group: String,
    pub signer: Arc<dyn Signer>,
    pub peer_keys: Arc<dyn PeerKeys>,
}

/// One session with one peer. See the module documentation for the call order.
pub struct Connection {
    shared: Arc<Shared>,
    role: Role,
    state: State,
    local_cid: u64,
    remote_cid: u64,
    peer_addr: SocketAddr,
    /// The peer's name: expected (initiator) or claimed until FINISH verifies (responder).
    peer_name: String,
    rng: ChaCha20Rng,
    keys: Option<Keys>,
    /// First-generation traffic secrets, kept only with `SessionConfig::keylog`.
    keylog: Option<[(u64, [u8; 32]); 2]>,
    next_pn: u64,
    received: RangeSet,
    /// Ack-eliciting packets received since our last ACK.
    unacked_eliciting: u32,
    ack_deadline: Option<Instant>,
    largest_received_at: Option<Instant>,
    loss: LossDetector<SentRecord>,
    send: SendQueue,
    recv: RecvBuffer,
    probes_due: usize,
    close_frame: Option<(CloseCode, String)>,
    /// A cleartext handshake datagram waiting to go out.
    handshake_out: Option<Vec<u8>>,
    handshake_started: Instant,
    handshake_retry_at: Option<Instant>,
    handshake_backoff: u32,
    last_received: Instant,
    events: VecDeque<Event>,
    closed_reported: bool,
    /// Why the last handshake signature from the peer was refused, for diagnostics.
    last_auth_error: Option<String>,
    /// With deferred signing: the message we need signed, until the endpoint hands it
    /// to the driver.
    sign_request: Option<Vec<u8>>,
    stats: ConnectionStats,
}

impl Connection {
    fn new(
        shared: Arc<Shared>,
        role: Role,
        now: Instant,
        local_cid: u64,
        peer: (SocketAddr, String),
        rng: ChaCha20Rng,
        state: State,
    ) -> Self {
        let (peer_addr, peer_name) = peer;
        let config = &shared.config;
        let budget = config.datagram_size - HEADER_LEN - AEAD_TAG_LEN;
        let fragment_len = budget.saturating_sub(MESSAGE_OVERHEAD + ACK_ROOM).max(1);
        let recovery = RecoveryConfig {
            initial_rtt: config.initial_rtt,
            max_ack_delay: config.max_ack_delay,
            max_datagram_size: config.datagram_size,
            max_pto: config.max_probe_timeout,
        };
        Connection {
            send: SendQueue::new(fragment_len, config.send_buffer),
            recv: RecvBuffer::new(config.recv_buffer),
            loss: LossDetector::new(recovery),
            shared,
            role,
            state,
            local_cid,
            remote_cid: 0,
            peer_addr,
            peer_name,
            rng,
            keys: None,
            keylog: None,
            next_pn: 0,
            received: RangeSet::new(RECEIVED_RANGES),
            unacked_eliciting: 0,
            ack_deadline: None,
            largest_received_at: None,
            probes_due: 0,
            close_frame: None,
            handshake_out: None,
            handshake_started: now,
            handshake_retry_at: None,
            handshake_backoff: 0,
            last_received: now,
            events: VecDeque::new(),
            closed_reported: false,
            last_auth_error: None,
            sign_request: None,
            stats: ConnectionStats::default(),
        }
    }

    /// Starts a session to `peer_name` at `peer_addr`: builds the first INITIAL.
    pub(crate) fn connect(
        shared: Arc<Shared>,
        now: Instant,
        local_cid: u64,
        peer_addr: SocketAddr,
        peer_name: String,
        mut rng: ChaCha20Rng,
    ) -> Self {
        let ephemeral = EphemeralKeyPair::generate(&mut rng);
        let state = State::InitialSent {
            ephemeral: Some(ephemeral),
            cookie: Vec::new(),
            retries: 0,
        };
        let mut connection = Connection::new(
            shared,
            Role::Initiator,
            now,
            local_cid,
            (peer_addr, peer_name),
            rng,
            state,
        );
        connection.queue_initial(now);
        connection
    }

    /// Answers a HANDSHAKE_INIT whose cookie the endpoint has checked: derives the keys,
    /// signs the transcript and queues HANDSHAKE_RESPONSE; with
    /// [`SessionConfig::defer_signatures`], asks for the signature instead
    /// ([`Connection::take_sign_request`]) and sends the response once it is given.
    /// Returns `None` if the initiator's ephemeral key is unusable.
    pub(crate) fn accept(
        shared: Arc<Shared>,
        now: Instant,
        local_cid: u64,
        peer_addr: SocketAddr,
        init: &HandshakeInit<'_>,
        mut rng: ChaCha20Rng,
    ) -> Option<Self> {
        let ephemeral = EphemeralKeyPair::generate(&mut rng);
        let our_public = ephemeral.public();
        let shared_secret = ephemeral.diffie_hellman(init.ephemeral).ok()?;
        let our_name = Name::new(shared.signer.name()).ok()?;
        let group = Name::new(&shared.group).ok()?;
        let transcript = transcript_hash(
            group,
            HandshakeSide {
                name: init.initiator,
                connection_id: init.initiator_cid,
                ephemeral: init.ephemeral,
            },
            HandshakeSide {
                name: our_name,
                connection_id: local_cid,
                ephemeral: &our_public,
            },
        );
        let secrets = derive_session_secrets(&shared_secret, &transcript);
        let mut connection = Connection::new(
            shared,
            Role::Responder,
            now,
            local_cid,
            (peer_addr, init.initiator.as_str().to_owned()),
            rng,
            State::AwaitingResponseSignature {
                transcript,
                ephemeral: our_public,
            },
        );
        connection.remote_cid = init.initiator_cid;
        connection.keylog = connection.shared.config.keylog.then_some([
            (local_cid, secrets.initiator_to_responder),
            (init.initiator_cid, secrets.responder_to_initiator),
        ]);
        connection.keys = Some(Keys::new(
            secrets.responder_to_initiator,
            secrets.initiator_to_responder,
            now,
        ));
        let message = signed_message(RESPONDER_LABEL, &transcript);
        if connection.shared.config.defer_signatures {
            connection.sign_request = Some(message);
        } else {
            let signature = connection.shared.signer.sign(&mut connection.rng, &message);
            connection.complete_response(&signature).ok()?;
        }
        Some(connection)
    }

    /// Builds HANDSHAKE_RESPONSE with our signature and queues it: the responder now
    /// waits for FINISH.
    fn complete_response(&mut self, signature: &[u8]) -> Result<(), SignatureError> {
        let State::AwaitingResponseSignature {
            transcript,
            ephemeral,
        } = self.state
        else {
            return Err(SignatureError::NotRequested);
        };
        let too_long = SignatureError::TooLong {
            len: signature.len(),
        };
        let our_name = Name::new(self.shared.signer.name()).map_err(|_| too_long.clone())?;
        let response = Frame::HandshakeResponse(HandshakeResponse {
            responder: our_name,
            responder_cid: self.local_cid,
            ephemeral: &ephemeral,
            signature: Signature::new(signature).map_err(|_| too_long.clone())?,
        });
        let mut datagram = Vec::with_capacity(response.encoded_len() + HEADER_LEN);
        encode_cleartext_packet(
            &mut datagram,
            PacketType::HANDSHAKE,
            self.remote_cid,
            0,
            &[response],
        )
        .map_err(|_| too_long)?;
        self.state = State::AwaitingFinish {
            transcript,
            response: datagram.clone(),
        };
        self.handshake_out = Some(datagram);
        Ok(())
    }

    // ----- getters -------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's name (verified once [`Event::Connected`] has been reported).
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// When the handshake started (for a responder, when its INITIAL was admitted).
    pub fn handshake_started(&self) -> Instant {
        self.handshake_started
    }

    /// Drops a half-open responder handshake to make room for another source's (see
    /// [`super::Endpoint`]); nothing is sent: the initiator retries or times out.
    pub(super) fn displace(&mut self) {
        if self.is_half_open() {
            self.terminate(CloseReason::Displaced);
        }
    }

    /// With [`SessionConfig::keylog`]: the session's first-generation traffic secrets, as
    /// (connection id the packets carry, secret) for each direction (SPEC.md §5.4), for a
    /// driver to write to its `SOCKMSG_KEYLOG` file. `None` otherwise, or before the keys
    /// exist.
    pub fn keylog_secrets(&self) -> Option<[(u64, [u8; 32]); 2]> {
        self.keylog
    }

    pub fn local_cid(&self) -> u64 {
        self.local_cid
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// A responder's handshake in progress: a cookie-verified INITIAL created it and the
    /// initiator's FINISH has not verified yet. The endpoint caps how many exist
    /// ([`SessionConfig::max_half_open`]).
    pub fn is_half_open(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingResponseSignature { .. } | State::AwaitingFinish { .. }
        )
    }

    /// Whether the handshake is waiting for our signature (deferred signing): asked for
    /// through [`super::Endpoint::poll_sign_request`], given with
    /// [`super::Endpoint::provide_signature`].
    pub fn is_awaiting_signature(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingResponseSignature { .. } | State::AwaitingFinishSignature
        )
    }

    /// The smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.loss.rtt().smoothed()
    }

    /// Bytes sent and neither acknowledged nor declared lost.
    pub fn bytes_in_flight(&self) -> usize {
        self.loss.bytes_in_flight()
    }

    /// The congestion window, in bytes.
    pub fn congestion_window(&self) -> usize {
        self.loss.congestion().window()
    }

    /// Consecutive probe timeouts without an acknowledgement.
    pub fn pto_count(&self) -> u32 {
        self.loss.pto_count()
    }

    pub fn stats(&self) -> ConnectionStats {
        self.stats
    }

    /// Why the peer's last handshake signature was refused, if one was.
    pub fn last_auth_error(&self) -> Option<&str> {
        self.last_auth_error.as_deref()
    }

    // ----- mutators ------------------------------------------------------------------

    /// Queues a message. Before the handshake completes it waits in the send buffer.
    pub fn send(&mut self, class: MessageClass, data: &[u8]) -> Result<MessageId, SendError> {
        if matches!(
            self.state,
            State::Closing { .. } | State::Draining { .. } | State::Closed
        ) {
            return Err(SendError::Closed);
        }
        self.send.push(class, data)
    }

    /// Closes the session gracefully: sends CLOSE and drains for three probe timeouts.
    /// Sends a PING (ack-eliciting, so the peer answers with an ACK): keeps an otherwise
    /// quiet session from its idle timeout on both sides, and refreshes the RTT. Does
    /// nothing before the handshake completes or once closing.
    pub fn ping(&mut self) {
        if matches!(self.state, State::Established { .. }) {
            self.probes_due = self.probes_due.max(1);
        }
    }

    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) {
        match self.state {
            State::Established { .. } | State::AwaitingFinish { .. } => {
                self.close_frame = Some((code, reason.to_owned()));
                self.probes_due = 1;
                self.state = State::Closing {
                    until: now + 3 * self.loss.pto(),
                };
                self.report_closed(CloseReason::Local { code });
            }
            // Nothing was sent under the keys yet (or no keys): just forget the session.
            State::InitialSent { .. }
            | State::AwaitingResponseSignature { .. }
            | State::AwaitingFinishSignature => self.terminate(CloseReason::Local { code }),
            State::Closing { .. } | State::Draining { .. } | State::Closed => {}
        }
    }

    /// With deferred signing: the message (label ‖ transcript hash, SPEC §9) this
    /// connection needs signed with our key, once; `None` otherwise.
    pub(crate) fn take_sign_request(&mut self) -> Option<Vec<u8>> {
        if self.is_awaiting_signature() {
            self.sign_request.take()
        } else {
            self.sign_request = None;
            None
        }
    }

    /// Takes our signature over the message of [`Connection::take_sign_request`] and
    /// sends HANDSHAKE_RESPONSE (responder) or HANDSHAKE_FINISH (initiator). The
    /// signature is not checked here: it is ours, made by the driver with our key. One
    /// that cannot be encoded (longer than `MAX_SIGNATURE_LEN`) ends the session.
    pub(crate) fn provide_signature(
        &mut self,
        now: Instant,
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        match self.state {
            State::AwaitingResponseSignature { .. } => {
                let result = self.complete_response(signature);
                if result.is_err() {
                    self.terminate(CloseReason::AuthenticationFailed(
                        "our signature does not fit the wire format".into(),
                    ));
                }
                result
            }
            State::AwaitingFinishSignature => self.complete_finish(now, signature),
            _ => Err(SignatureError::NotRequested),
        }
    }

    // ----- handle_* ------------------------------------------------------------------

    /// Takes one packet the endpoint routed here (any type but INITIAL, or a repeated
    /// INITIAL for this session).
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &Packet<'_>,
        datagram_len: usize,
    ) {
        if from != self.peer_addr {
            self.stats.dropped_wrong_address += 1;
            return;
        }
        self.stats.bytes_received += datagram_len as u64;
        match packet.packet_type() {
            PacketType::INITIAL => self.on_repeated_initial(),
            PacketType::RETRY => self.on_retry(now, packet),
            PacketType::HANDSHAKE => self.on_handshake(now, packet),
            PacketType::DATA => self.on_data(now, packet),
            _ => self.stats.dropped_unexpected += 1,
        }
    }

    /// Advances timers: handshake retransmission, delayed ACKs, loss and probe timers,
    /// idle and unreachable limits, the end of closing and draining.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closing { until } | State::Draining { until } => {
                if now >= until {
                    self.terminate(CloseReason::IdleTimeout);
                }
                return;
            }
            State::Closed => return,
            _ => {}
        }
        let config = &self.shared.config;
        if now >= self.last_received + config.idle_timeout {
            self.terminate(CloseReason::IdleTimeout);
            return;
        }
        if !self.is_established() && now >= self.handshake_started + config.handshake_timeout {
            self.terminate(CloseReason::HandshakeTimeout);
            return;
        }
        if self.handshake_retry_at.is_some_and(|at| now >= at) {
            self.retransmit_handshake(now);
        }
        if self.loss.timeout().is_some_and(|at| now >= at) {
            self.on_loss_timeout(now);
        }
        if self
            .loss
            .silent_since()
            .is_some_and(|since| now >= since + self.shared.config.unreachable_after)
        {
            self.events.push_back(Event::Unreachable);
            self.terminate(CloseReason::Unreachable);
        }
    }

    // ----- poll_* --------------------------------------------------------------------

    /// The next datagram to send to [`Connection::peer_addr`], if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(datagram) = self.handshake_out.take() {
            self.count_sent(datagram.len());
            return Some(datagram);
        }
        let datagram = self.build_data_packet(now)?;
        self.count_sent(datagram.len());
        Some(datagram)
    }

    /// The next event for the application. Messages that arrived before the session
    /// ended are handed out before [`Event::Closed`]: what the peer saw acknowledged is
    /// never lost.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.front() {
            if !matches!(event, Event::Closed(_)) {
                return self.events.pop_front();
            }
        }
        if let Some((class, data)) = self.recv.pop() {
            return Some(Event::Message { class, data });
        }
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let config = &self.shared.config;
        match self.state {
            State::Closing { until } | State::Draining { until } => return Some(until),
            State::Closed => return None,
            _ => {}
        }
        let handshake_deadline =
            (!self.is_established()).then(|| self.handshake_started + config.handshake_timeout);
        let unreachable_deadline = self
            .loss
            .silent_since()
            .map(|since| since + config.unreachable_after);
        [
            Some(self.last_received + config.idle_timeout),
            handshake_deadline,
            self.handshake_retry_at,
            self.ack_deadline,
            self.loss.timeout(),
            unreachable_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- handshake -----------------------------------------------------------------

    fn queue_initial(&mut self, now: Instant) {
        let State::InitialSent {
            ephemeral, cookie, ..
        } = &self.state
        else {
            return;
        };
        let Some(ephemeral) = ephemeral else {
            return;
        };
        let (Ok(group), Ok(initiator), Ok(cookie)) = (
            Name::new(&self.shared.group),
            Name::new(self.shared.signer.name()),
            Token::new(cookie),
        ) else {
            self.terminate(CloseReason::AuthenticationFailed(
                "our group or name is not a valid name".into(),
            ));
            return;
        };
        let public = ephemeral.public();
        let init = Frame::HandshakeInit(HandshakeInit {
            group,
            initiator,
            initiator_cid: self.local_cid,
            ephemeral: &public,
            cookie,
        });
        // Pad the datagram to MIN_INITIAL_DATAGRAM (SPEC.md §4).
        let padding = (MIN_INITIAL_DATAGRAM - HEADER_LEN).saturating_sub(init.encoded_len());
        let mut frames = vec![init];
        if let Ok(padding) = Padding::new(padding) {
            frames.push(Frame::Padding(padding));
        }
        let mut datagram = Vec::with_capacity(MIN_INITIAL_DATAGRAM);
        if encode_cleartext_packet(
            &mut datagram,
            PacketType::INITIAL,
            self.local_cid,
            0,
            &frames,
        )
        .is_ok()
        {
            self.handshake_out = Some(datagram);
            self.arm_handshake_retry(now);
        }
    }

    fn arm_handshake_retry(&mut self, now: Instant) {
        let base = self.shared.config.initial_rtt * 2;
        self.handshake_retry_at =
            Some(now + base * 2u32.pow(self.handshake_backoff.min(MAX_HANDSHAKE_BACKOFF)));
        self.handshake_backoff += 1;
    }

    fn retransmit_handshake(&mut self, now: Instant) {
        match &self.state {
            State::InitialSent { .. } => self.queue_initial(now),
            State::Established {
                finish: Some(finish),
            } => {
                self.handshake_out = Some(finish.clone());
                self.arm_handshake_retry(now);
            }
            _ => self.handshake_retry_at = None,
        }
    }

    /// The responder's answer was lost and the initiator tried again: answer the same.
    fn on_repeated_initial(&mut self) {
        if let State::AwaitingFinish { response, .. } = &self.state {
            self.handshake_out = Some(response.clone());
        }
    }

    fn single_frame<'a>(&mut self, packet: &Packet<'a>) -> Option<Frame<'a>> {
        let mut frames = packet
            .frames()
            .filter(|f| !matches!(f, Ok(Frame::Padding(_))));
        match (frames.next(), frames.next()) {
            (Some(Ok(frame)), None) => Some(frame),
            _ => {
                self.stats.dropped_unexpected += 1;
                None
            }
        }
    }

    fn on_retry(&mut self, now: Instant, packet: &Packet<'_>) {
        let Some(Frame::Retry(retry)) = self.single_frame(packet) else {
            return;
        };
        let State::InitialSent {
            cookie, retries, ..
        } = &mut self.state
        else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        // A responder sends a new cookie when ours has expired; a bounded number of them
        // keeps an attacker's RETRYs from stalling the handshake forever.
        if retry.cookie.is_empty()
            || retry.cookie.as_bytes() == cookie.as_slice()
            || *retries >= MAX_RETRIES
        {
            self.stats.dropped_unexpected += 1;
            return;
        }
        *retries += 1;
        *cookie = retry.cookie.as_bytes().to_vec();
        self.handshake_backoff = 0;
        self.queue_initial(now);
    }

    fn on_handshake(&mut self, now: Instant, packet: &Packet<'_>) {
        match self.single_frame(packet) {
            Some(Frame::HandshakeResponse(response)) => self.on_response(now, &response),
            Some(Frame::HandshakeFinish(finish)) => self.on_finish(now, &finish),
            _ => {}
        }
    }

    fn on_response(&mut self, now: Instant, response: &HandshakeResponse<'_>) {
        let State::InitialSent { ephemeral, .. } = &mut self.state else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        if response.responder.as_str() != self.peer_name {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let (Ok(group), Ok(our_name)) = (
            Name::new(&self.shared.group),
            Name::new(self.shared.signer.name()),
        ) else {
            return;
        };
        let Some(our_key) = ephemeral.as_ref() else {
            return;
        };
        let our_public = our_key.public();
        let transcript = transcript_hash(
            group,
            HandshakeSide {
                name: our_name,
                connection_id: self.local_cid,
                ephemeral: &our_public,
            },
            HandshakeSide {
                name: response.responder,
                connection_id: response.responder_cid,
                ephemeral: response.ephemeral,
            },
        );
        let verified = self.shared.peer_keys.verify(
            &self.peer_name,
            &signed_message(RESPONDER_LABEL, &transcript),
            response.signature.as_bytes(),
        );
        if let Err(e) = verified {
            // Forged or signed by the wrong key: ignore it, as if it had not arrived, and
            // let the genuine responder's answer (or the handshake timeout) decide.
            self.stats.auth_failures += 1;
            self.last_auth_error = Some(e.to_string());
            return;
        }
        let Some(ephemeral) = ephemeral.take() else {
            return;
        };
        let Ok(shared_secret) = ephemeral.diffie_hellman(response.ephemeral) else {
            self.terminate(CloseReason::AuthenticationFailed(
                "responder's ephemeral key is a low-order point".into(),
            ));
            return;
        };
        let secrets = derive_session_secrets(&shared_secret, &transcript);
        self.remote_cid = response.responder_cid;
        self.keylog = self.shared.config.keylog.then_some([
            (response.responder_cid, secrets.initiator_to_responder),
            (self.local_cid, secrets.responder_to_initiator),
        ]);
        self.keys = Some(Keys::new(
            secrets.initiator_to_responder,
            secrets.responder_to_initiator,
            now,
        ));
        let message = signed_message(INITIATOR_LABEL, &transcript);
        self.handshake_retry_at = None;
        self.state = State::AwaitingFinishSignature;
        if self.shared.config.defer_signatures {
            // Nothing goes out until the driver has signed; the handshake timeout still
            // runs.
            self.sign_request = Some(message);
            return;
        }
        let signature = self.shared.signer.sign(&mut self.rng, &message);
        // Cannot be NotRequested: the state was set just above. A signature too long for
        // the wire has already ended the session.
        let _ = self.complete_finish(now, &signature);
    }

    /// Builds HANDSHAKE_FINISH with our signature and queues it: the initiator is
    /// established (and re-sends FINISH until the responder's first DATA arrives).
    fn complete_finish(&mut self, now: Instant, signature: &[u8]) -> Result<(), SignatureError> {
        if !matches!(self.state, State::AwaitingFinishSignature) {
            return Err(SignatureError::NotRequested);
        }
        let mut finish = Vec::new();
        let encoded = Signature::new(signature).ok().and_then(|signature| {
            encode_cleartext_packet(
                &mut finish,
                PacketType::HANDSHAKE,
                self.remote_cid,
                0,
                &[Frame::HandshakeFinish(HandshakeFinish { signature })],
            )
            .ok()
        });
        if encoded.is_none() {
            self.terminate(CloseReason::AuthenticationFailed(
                "our signature does not fit the wire format".into(),
            ));
            return Err(SignatureError::TooLong {
                len: signature.len(),
            });
        }
        self.handshake_out = Some(finish.clone());
        self.state = State::Established {
            finish: Some(finish),
        };
        self.handshake_backoff = 0;
        self.arm_handshake_retry(now);
        self.last_received = now;
        self.events.push_back(Event::Connected {
            peer: self.peer_name.clone(),
        });
        Ok(())
    }

    fn on_finish(&mut self, now: Instant, finish: &HandshakeFinish<'_>) {
        let State::AwaitingFinish { transcript, .. } = &self.state else {
            // A repeated FINISH after we are established: our DATA will confirm it.
            self.stats.dropped_unexpected += 1;
            return;
        };
        let verified = self.shared.peer_keys.verify(
            &self.peer_name,
            &signed_message(INITIATOR_LABEL, transcript),
            finish.signature.as_bytes(),
        );
        match verified {
            Ok(()) => {}
            Err(AuthError::UnknownPeer) => {
                // The driver may be fetching this peer's key from the key manager now
                // (its PeerKeys saw the miss); the initiator re-sends FINISH until
                // confirmed, so a later copy can verify. The handshake timeout bounds
                // the wait, and nothing is accepted from the peer meanwhile.
                self.stats.auth_failures += 1;
                self.last_auth_error = Some(format!("{}: key not known (yet)", self.peer_name));
                return;
            }
            Err(e) => {
                self.stats.auth_failures += 1;
                self.terminate(CloseReason::AuthenticationFailed(format!(
                    "{}: {e}",
                    self.peer_name
                )));
                return;
            }
        }
        self.state = State::Established { finish: None };
        self.handshake_retry_at = None;
        self.last_received = now;
        self.events.push_back(Event::Connected {
            peer: self.peer_name.clone(),
        });
        // Confirm at once, so the initiator stops re-sending FINISH.
        self.probes_due = self.probes_due.max(1);
    }

    // ----- receiving DATA ------------------------------------------------------------

    fn on_data(&mut self, now: Instant, packet: &Packet<'_>) {
        let receiving = matches!(
            self.state,
            State::Established { .. } | State::Closing { .. }
        );
        let Some(keys) = self.keys.as_mut().filter(|_| receiving) else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        let pn = packet.header().packet_number();
        if self.received.contains(pn) || self.received.is_forgotten(pn) {
            self.stats.dropped_duplicate += 1;
            return;
        }
        let mut payload = packet.payload().to_vec();
        let Some(len) = keys.open(packet.header(), &mut payload) else {
            self.stats.dropped_decrypt += 1;
            return;
        };
        self.stats.packets_received += 1;
        self.last_received = now;
        if let State::Closing { .. } = self.state {
            // Anything from the peer while closing is answered with our CLOSE again.
            self.probes_due = 1;
            return;
        }
        if let State::Established { finish } = &mut self.state {
            // The responder only sends DATA after verifying FINISH.
            if finish.take().is_some() {
                self.handshake_retry_at = None;
            }
        }
        match self.process_frames(now, &payload[..len], packet.payload_offset()) {
            Ok(ack_eliciting) => self.record_received(now, pn, ack_eliciting),
            Err(FrameFault::Refused) => self.stats.refused_messages += 1,
            Err(FrameFault::Violation(reason)) => {
                self.report_closed(CloseReason::ProtocolViolation(reason));
                self.close(now, CloseCode::PROTOCOL_VIOLATION, reason);
            }
            Err(FrameFault::PeerClosed) => {}
        }
    }

    /// Acts on every frame of an authenticated payload. Returns whether the packet must
    /// be acknowledged.
    fn process_frames(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        offset: usize,
    ) -> Result<bool, FrameFault> {
        let mut ack_eliciting = false;
        let mut refused = false;
        for frame in Frames::new(PacketType::DATA, plaintext, offset) {
            let frame = frame.map_err(|_| FrameFault::Violation("malformed frame"))?;
            ack_eliciting |= elicits_ack(&frame);
            match frame {
                Frame::Ack(ack) => self.on_ack(now, &ack)?,
                Frame::Message(message) => refused |= self.recv.on_message(&message).is_err(),
                Frame::Close(close) => {
                    self.state = State::Draining {
                        until: now + 3 * self.loss.pto(),
                    };
                    self.report_closed(CloseReason::Peer {
                        code: close.code,
                        reason: close.reason.as_str().to_owned(),
                    });
                    return Err(FrameFault::PeerClosed);
                }
                _ => {}
            }
        }
        if refused {
            return Err(FrameFault::Refused);
        }
        Ok(ack_eliciting)
    }

    fn on_ack(&mut self, now: Instant, ack: &crate::frame::Ack<'_>) -> Result<(), FrameFault> {
        let outcome = self
            .loss
            .on_ack_received(now, ack)
            .map_err(|_| FrameFault::Violation("ACK of a packet never sent"))?;
        for (_, record) in outcome.acked {
            for fragment in record.fragments {
                if let Some(message) = self.send.on_acked(fragment) {
                    self.events.push_back(Event::Acked(message));
                }
            }
        }
        self.requeue_lost(outcome.lost);
        Ok(())
    }

    /// Puts the reliable fragments of lost packets back at the front of the send queue,
    /// oldest first (`lost` is sorted by packet number).
    fn requeue_lost(&mut self, lost: Vec<(u64, SentRecord)>) {
        let fragments: Vec<FragmentRef> = lost
            .into_iter()
            .flat_map(|(_, record)| record.fragments)
            .collect();
        self.stats.retransmitted_fragments += fragments.len() as u64;
        self.send.on_lost_all(&fragments);
    }

    fn record_received(&mut self, now: Instant, pn: u64, ack_eliciting: bool) {
        let in_order = self.received.max().is_none_or(|max| pn == max + 1);
        self.received.insert(pn);
        if self.received.max() == Some(pn) {
            self.largest_received_at = Some(now);
        }
        if !ack_eliciting {
            return;
        }
        self.unacked_eliciting += 1;
        // RFC 9000 §13.2.1: acknowledge every second packet, and out-of-order ones at once.
        if self.unacked_eliciting >= 2 || !in_order {
            self.ack_deadline = Some(now);
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.shared.config.max_ack_delay);
        }
    }

    fn on_loss_timeout(&mut self, now: Instant) {
        match self.loss.on_timeout(now) {
            TimeoutOutcome::NotDue => {}
            TimeoutOutcome::Lost { lost, .. } => self.requeue_lost(lost),
            TimeoutOutcome::Probe { count } => {
                self.probes_due = count;
                if self.send.requeue_oldest() {
                    self.stats.retransmitted_fragments += 1;
                }
            }
        }
    }

    // ----- sending DATA --------------------------------------------------------------

    /// Builds one DATA packet with whatever is due: an ACK, CLOSE, message fragments,
    /// or a PING for a probe.
    fn build_data_packet(&mut self, now: Instant) -> Option<Vec<u8>> {
        let sending = matches!(
            self.state,
            State::Established { .. } | State::Closing { .. }
        );
        if !sending || self.keys.is_none() {
            return None;
        }
        if let State::Closing { .. } = self.state {
            return self.build_close_packet();
        }
        let ack_due = self.ack_deadline.is_some_and(|at| now >= at);
        let probe = self.probes_due > 0;
        let may_send_data = self.send.has_pending()
            && (probe || self.loss.can_send(self.shared.config.datagram_size));
        if !ack_due && !probe && !may_send_data {
            return None;
        }
        let budget = self.shared.config.datagram_size - HEADER_LEN - AEAD_TAG_LEN;
        let mut plaintext = Vec::with_capacity(self.shared.config.datagram_size);
        self.write_ack(now, &mut plaintext);
        let mut record = SentRecord::default();
        if may_send_data {
            while let Some(fragment) = self
                .send
                .write_next(budget - plaintext.len(), &mut plaintext)
            {
                record.fragments.push(fragment);
            }
        }
        if probe && record.fragments.is_empty() {
            Frame::Ping.encode(&mut plaintext);
        }
        // Unreliable messages are never re-sent, so a packet of only those needs no
        // acknowledgement (SPEC.md §8): it is neither tracked for loss nor acked on its
        // own, which halves an idle group's packets (heartbeats and their answers).
        let ack_eliciting = probe
            || record
                .fragments
                .iter()
                .any(|f| f.message.class.is_reliable());
        if probe {
            self.probes_due -= 1;
            self.stats.probes_sent += 1;
        }
        if plaintext.is_empty() {
            return None;
        }
        self.maybe_update_keys(now);
        let pn = self.next_pn;
        let datagram = self.seal(pn, plaintext)?;
        self.next_pn += 1;
        if ack_eliciting {
            self.loss
                .on_packet_sent(now, pn, datagram.len(), true, record);
        } else {
            self.loss.on_unelicited_packet_sent(pn);
        }
        Some(datagram)
    }

    /// Writes an ACK of the highest received ranges, if there is anything to
    /// acknowledge, and clears the delayed-ACK state.
    fn write_ack(&mut self, now: Instant, plaintext: &mut Vec<u8>) {
        if self.unacked_eliciting == 0 && self.ack_deadline.is_none() {
            return;
        }
        let delay = self
            .largest_received_at
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or(Duration::ZERO);
        let mut storage: Vec<AckRange> = Vec::new();
        if let Some(ack) = self.received.to_ack(
            delay.as_micros().min(u128::from(u32::MAX)) as u32,
            &mut storage,
        ) {
            Frame::Ack(ack).encode(plaintext);
        }
        self.unacked_eliciting = 0;
        self.ack_deadline = None;
    }

    /// While closing, CLOSE goes out once on entering the state and again in answer to
    /// each packet from the peer (`probes_due` marks it due).
    fn build_close_packet(&mut self) -> Option<Vec<u8>> {
        if self.probes_due == 0 {
            return None;
        }
        self.probes_due = 0;
        let (code, reason) = self.close_frame.clone()?;
        let mut plaintext = Vec::new();
        let reason = Text::truncated(&reason);
        Frame::Close(Close { code, reason }).encode(&mut plaintext);
        let pn = self.next_pn;
        let datagram = self.seal(pn, plaintext)?;
        self.next_pn += 1;
        self.loss.on_unelicited_packet_sent(pn);
        Some(datagram)
    }

    /// Encrypts `plaintext` as DATA packet `pn` and returns the datagram.
    fn seal(&mut self, pn: u64, mut plaintext: Vec<u8>) -> Option<Vec<u8>> {
        let keys = self.keys.as_ref()?;
        let flags = if keys.tx_phase {
            PacketFlags::KEY_PHASE
        } else {
            PacketFlags::empty()
        };
        let payload_len = u16::try_from(plaintext.len() + AEAD_TAG_LEN).ok()?;
        let header = Header::new(PacketType::DATA, flags, self.remote_cid, pn, payload_len);
        keys.tx.seal(pn, header.as_wire_bytes(), &mut plaintext);
        let mut datagram = Vec::with_capacity(HEADER_LEN + plaintext.len());
        datagram.extend_from_slice(header.as_wire_bytes());
        datagram.extend_from_slice(&plaintext);
        Some(datagram)
    }

    /// Rekeys our sending direction after the configured packet count or time, once the
    /// peer has acknowledged a packet under the current key (so it can follow).
    fn maybe_update_keys(&mut self, now: Instant) {
        let config = &self.shared.config;
        let largest_acked = self.loss.largest_acked();
        let pto = self.loss.pto();
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let due = self.next_pn - keys.tx_phase_first_pn >= config.rekey_after_packets
            || now >= keys.tx_phase_started + config.rekey_after;
        let peer_followed = largest_acked.is_some_and(|acked| acked >= keys.tx_phase_first_pn);
        // RFC 9001 §6.5: wait three probe timeouts between updates, so the receiver has
        // dropped the generation before last (which has our current KEY_PHASE bit) by
        // the time we reuse that bit; otherwise a reordered packet fails to decrypt.
        let settled = now >= keys.tx_phase_started + 3 * pto;
        if due && peer_followed && settled {
            keys.update_tx(self.next_pn, now);
            self.stats.key_updates += 1;
        }
    }

    fn count_sent(&mut self, len: usize) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
    }

    // ----- closing -------------------------------------------------------------------

    fn report_closed(&mut self, reason: CloseReason) {
        if !self.closed_reported {
            self.closed_reported = true;
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// Ends the session at once, without sending anything.
    fn terminate(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.handshake_out = None;
        self.handshake_retry_at = None;
        self.report_closed(reason);
    }
}

/// Why a packet's frames were not all accepted.
enum FrameFault {
    /// A message fragment could not be buffered: do not acknowledge the packet.
    Refused,
    /// The peer broke the protocol: close the session.
    Violation(&'static str),
    /// The peer closed the session.
    PeerClosed,
}

/// Whether receiving `frame` obliges us to acknowledge its packet (RFC 9000 §13.2.1),
/// with one departure: a MESSAGE of the unreliable class does not (SPEC.md §8), since its
/// sender never re-sends it and tracks no loss for it.
fn elicits_ack(frame: &Frame<'_>) -> bool {
    match frame {
        Frame::Message(message) => message.class.is_reliable(),
        other => other.is_ack_eliciting(),
    }
}
