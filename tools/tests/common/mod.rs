//! The session endpoint as a simulator node, shared by the session suites: it records
//! every event, every datagram received and sent, and the last counters of each
//! connection, so tests can assert on all of it after the run.
#![allow(dead_code)] // each test crate uses a different part of it

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sockmsg_tools::sim::Node;
use sockmsg_wire::frame::{HandshakeInit, MessageClass, Padding, Retry};
use sockmsg_wire::session::crypto::insecure::{TestKeys, TestSigner};
use sockmsg_wire::session::crypto::{PeerKeys, Signer};
use sockmsg_wire::session::{
    CloseReason, ConnectionHandle, ConnectionStats, Endpoint, EndpointStats, Event, MessageId,
    SessionConfig,
};
use sockmsg_wire::{encode_cleartext_packet, Datagram, Frame, Name, PacketType, Token, HEADER_LEN};

/// The group every test endpoint belongs to.
pub const GROUP: &str = "lobby";

/// An endpoint with everything it reported, received and sent, and the last counters of
/// each of its connections (an endpoint forgets a closed connection once its events are
/// drained, so they are snapshotted before every drain).
pub struct Peer {
    pub endpoint: Endpoint,
    pub events: Vec<(ConnectionHandle, Event)>,
    pub received: Vec<(SocketAddr, Vec<u8>)>,
    pub sent: Vec<(SocketAddr, Vec<u8>)>,
    /// When each of `sent` went out.
    pub sent_at: Vec<Instant>,
    pub last_stats: BTreeMap<ConnectionHandle, ConnectionStats>,
    /// While set, the application does not take events (and so not messages) out.
    pub hold_events: bool,
}

pub fn endpoint_seed(name: &str, seed: u64) -> [u8; 32] {
    let mut rng_seed = [0; 32];
    rng_seed[..8].copy_from_slice(&seed.to_be_bytes());
    rng_seed[8] = name.len() as u8;
    rng_seed[9..9 + name.len()].copy_from_slice(name.as_bytes());
    rng_seed
}

impl Peer {
    pub fn with(
        seed_name: &str,
        seed: u64,
        now: Instant,
        config: SessionConfig,
        signer: Arc<dyn Signer>,
        keys: Arc<dyn PeerKeys>,
    ) -> Self {
        Peer {
            endpoint: Endpoint::new(
                config,
                GROUP,
                signer,
                keys,
                endpoint_seed(seed_name, seed),
                now,
            ),
            events: Vec::new(),
            received: Vec::new(),
            sent: Vec::new(),
            sent_at: Vec::new(),
            last_stats: BTreeMap::new(),
            hold_events: false,
        }
    }

    /// Signs as `name` with the test signer; trusts alice, bob and carol.
    pub fn test(name: &str, seed: u64, now: Instant, config: SessionConfig) -> Self {
        Self::with(
            name,
            seed,
            now,
            config,
            Arc::new(TestSigner::new(name)),
            Arc::new(TestKeys::with_names(["alice", "bob", "carol"])),
        )
    }

    pub fn after_input(&mut self) {
        for (handle, connection) in self.endpoint.connections() {
            self.last_stats.insert(handle, connection.stats());
        }
        if self.hold_events {
            return;
        }
        while let Some(event) = self.endpoint.poll_event() {
            self.events.push(event);
        }
    }

    /// The live counters of a connection, or the last ones seen if it is gone.
    pub fn stats(&self, handle: ConnectionHandle) -> ConnectionStats {
        match self.endpoint.connection(handle) {
            Some(connection) => connection.stats(),
            None => self.last_stats[&handle],
        }
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Message { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn messages_of(&self, class: MessageClass) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Message { class: c, data } if *c == class => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn count_message(&self, data: &[u8]) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.as_slice() == data)
            .count()
    }

    /// The handle of the connection that reported `Connected { peer }`.
    pub fn connected_to(&self, peer: &str) -> Option<ConnectionHandle> {
        self.events.iter().find_map(|(handle, event)| match event {
            Event::Connected { peer: p } if p == peer => Some(*handle),
            _ => None,
        })
    }

    pub fn connected_count(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Connected { .. }))
            .count()
    }

    pub fn closes(&self) -> Vec<(ConnectionHandle, CloseReason)> {
        self.events
            .iter()
            .filter_map(|(handle, event)| match event {
                Event::Closed(reason) => Some((*handle, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The messages the peer acknowledged, in the order the events came.
    pub fn acked(&self) -> Vec<MessageId> {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Acked(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    pub fn acked_count(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Acked(_)))
            .count()
    }

    /// Every drop counter of the endpoint and of all its connections (live or gone).
    pub fn drop_total(&self) -> u64 {
        let mut stats = self.last_stats.clone();
        for (handle, connection) in self.endpoint.connections() {
            stats.insert(handle, connection.stats());
        }
        endpoint_drops(&self.endpoint.stats()) + stats.values().map(connection_drops).sum::<u64>()
    }
}

impl Node for Peer {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.received.push((from, datagram.to_vec()));
        self.endpoint.handle_datagram(now, from, datagram);

        self.after_input();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.after_input();
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        let transmit = self.endpoint.poll_transmit(now)?;
        self.sent
            .push((transmit.destination, transmit.contents.clone()));
        self.sent_at.push(now);
        Some((transmit.destination, transmit.contents))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout()
    }
}

pub fn endpoint_drops(s: &EndpointStats) -> u64 {
    s.malformed
        + s.unknown_connection
        + s.short_initial
        + s.wrong_group
        + s.bad_initial
        + s.bad_cookie
        + s.refused_full
        + s.not_session
}

pub fn connection_drops(s: &ConnectionStats) -> u64 {
    s.dropped_decrypt
        + s.dropped_duplicate
        + s.dropped_wrong_address
        + s.dropped_unexpected
        + s.refused_messages
        + s.auth_failures
}

/// SPEC.md §4: every INITIAL packet is padded to at least this many bytes.
pub const MIN_INITIAL: usize = 1200;

pub fn alice_addr() -> SocketAddr {
    sockmsg_tools::sim::loopback(1, 7402)
}

pub fn bob_addr() -> SocketAddr {
    sockmsg_tools::sim::loopback(2, 7402)
}

pub fn carol_addr() -> SocketAddr {
    sockmsg_tools::sim::loopback(3, 7402)
}

/// A signer that counts its signatures, to prove that a path does no RSA work.
pub struct CountingSigner {
    inner: Box<dyn Signer>,
    signatures: std::sync::atomic::AtomicU64,
}

impl CountingSigner {
    pub fn new(inner: impl Signer + 'static) -> Arc<Self> {
        Arc::new(CountingSigner {
            inner: Box::new(inner),
            signatures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn count(&self) -> u64 {
        self.signatures.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Signer for CountingSigner {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn sign(&self, rng: &mut rand_chacha::ChaCha20Rng, message: &[u8]) -> Vec<u8> {
        self.signatures
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.sign(rng, message)
    }
}

// ----- datagram helpers -------------------------------------------------------------------

pub fn packet_type(datagram: &[u8]) -> PacketType {
    PacketType(datagram[3])
}

/// The cookie of a RETRY datagram.
pub fn retry_cookie(datagram: &[u8]) -> Vec<u8> {
    let packet = Datagram::new(datagram)
        .next()
        .expect("a packet")
        .expect("a well-formed packet");
    assert_eq!(packet.packet_type(), PacketType::RETRY);
    packet
        .frames()
        .find_map(|frame| match frame {
            Ok(Frame::Retry(Retry { cookie })) => Some(cookie.as_bytes().to_vec()),
            _ => None,
        })
        .expect("a RETRY frame")
}

/// An INITIAL as an initiator builds it, padded to exactly `total_len` bytes (or left
/// unpadded if it is already that long).
pub fn build_initial(
    initiator: &str,
    initiator_cid: u64,
    ephemeral: &[u8; 32],
    cookie: &[u8],
    total_len: usize,
) -> Vec<u8> {
    let init = Frame::HandshakeInit(HandshakeInit {
        group: Name::new(GROUP).expect("group name"),
        initiator: Name::new(initiator).expect("name"),
        initiator_cid,
        ephemeral,
        cookie: Token::new(cookie).expect("cookie fits a token"),
    });
    let mut frames = vec![init];
    let unpadded = HEADER_LEN + sockmsg_wire::Encode::encoded_len(&frames[0]);
    if total_len > unpadded {
        frames.push(Frame::Padding(
            Padding::new(total_len - unpadded).expect("padding"),
        ));
    }
    let mut datagram = Vec::new();
    encode_cleartext_packet(
        &mut datagram,
        PacketType::INITIAL,
        initiator_cid,
        0,
        &frames,
    )
    .expect("an INITIAL");
    assert_eq!(datagram.len(), total_len.max(unpadded));
    datagram
}
