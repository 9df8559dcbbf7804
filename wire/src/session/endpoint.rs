//! The endpoint: one UDP socket's worth of sessions.
//!
//! It routes each packet of a datagram to its [`Connection`] by connection id, answers an
//! INITIAL from an unproven address with a stateless RETRY, creates a responder session
//! only for an INITIAL that echoes a valid cookie (so a spoofed source costs it no state
//! and no RSA work, and never gets more than a RETRY, smaller than the padded INITIAL),
//! and gathers its sessions' datagrams, timers and events.
//!
//! Admission before any RSA work (SPEC §2, §5.1): each INITIAL packet must itself be
//! padded to [`MIN_INITIAL_PACKET`] bytes, and an INITIAL ends its datagram (what follows
//! is dropped and counted), so one datagram makes at most one RETRY or one signature. A
//! cookie-verified INITIAL that would make us sign must then find room under
//! [`SessionConfig::max_half_open`] and a token in its source address's bucket
//! ([`super::ratelimit`]); otherwise it is dropped and counted, with no state and no RSA.
//!
//! Signing: by default the endpoint calls [`Signer::sign`] itself, on the caller's
//! thread. With [`SessionConfig::defer_signatures`] it hands out [`SignRequest`]s
//! instead ([`Endpoint::poll_sign_request`]); the driver signs wherever it likes and gives
//! the signature back with [`Endpoint::provide_signature`], the handshake waiting
//! meanwhile, so established sessions never wait for RSA.
//!
//! Call order, as for a connection: after [`Endpoint::handle_datagram`],
//! [`Endpoint::handle_timeout`] or a mutator, drain [`Endpoint::poll_transmit`], then
//! [`Endpoint::poll_event`] (and, with deferred signing, [`Endpoint::poll_sign_request`]),
//! then arm one timer at [`Endpoint::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::connection::{Connection, Event, Role, Shared, SignatureError, MIN_INITIAL_PACKET};
use super::cookie::CookieKey;
use super::crypto::{PeerKeys, Signer};
use super::ratelimit::{Admission, HandshakeLimiter};
use super::streams::{MessageId, SendError};
use super::SessionConfig;
use crate::codec::Token;
use crate::frame::{CloseCode, Frame, HandshakeInit, MessageClass, Retry};
use crate::packet::{encode_cleartext_packet, Datagram, Packet, PacketType, HEADER_LEN};

/// Names one connection of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// A handshake transcript to sign with our key (deferred signing,
/// [`SessionConfig::defer_signatures`]).
///
/// Sign `message` exactly as given (it is already label-prefixed, SPEC §9), e.g. with
/// the same [`Signer`] on another thread, and hand the signature to
/// [`Endpoint::provide_signature`] with `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    pub handle: ConnectionHandle,
    /// Responder: the signature goes into HANDSHAKE_RESPONSE. Initiator: into FINISH.
    pub role: Role,
    pub message: Vec<u8>,
}

/// What the endpoint dropped or did outside any connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that did not decode (by [`crate::DecodeError`]); the rest of the
    /// datagram was dropped with them.
    pub malformed: u64,
    /// Packets for a connection id we do not know.
    pub unknown_connection: u64,
    /// INITIAL packets shorter than [`MIN_INITIAL_PACKET`] (each INITIAL is checked, not
    /// its datagram).
    pub short_initial: u64,
    /// Packets dropped because they followed an INITIAL in its datagram (an INITIAL ends
    /// its datagram; an undecodable rest counts as one).
    pub after_initial: u64,
    /// INITIALs for another group.
    pub wrong_group: u64,
    /// INITIALs that did not hold exactly one HANDSHAKE_INIT.
    pub bad_initial: u64,
    /// RETRYs sent to unproven addresses.
    pub retries_sent: u64,
    /// INITIALs whose cookie did not verify (expired, forged, another address).
    pub bad_cookie: u64,
    /// INITIALs refused because `max_connections` sessions exist.
    pub refused_full: u64,
    /// Cookie-verified INITIALs dropped, before any RSA work, because
    /// [`SessionConfig::max_half_open`] responder handshakes were in progress and no
    /// source held two more of them than the INITIAL's own.
    pub refused_half_open: u64,
    /// Half-open handshakes dropped to make room for a source that held fewer (the
    /// busiest source's oldest: SPEC §5.1).
    pub displaced_half_open: u64,
    /// Cookie-verified INITIALs dropped, before any RSA work, because their source
    /// address had no token left ([`SessionConfig::handshake_burst`]).
    pub rate_limited: u64,
    /// Source addresses forgotten to keep the rate-limit table within
    /// [`SessionConfig::handshake_sources`].
    pub rate_table_evictions: u64,
    /// Signatures asked for with deferred signing ([`Endpoint::poll_sign_request`]).
    pub sign_requests: u64,
    /// Signatures given back ([`Endpoint::provide_signature`]) and used.
    pub signatures_provided: u64,
    /// REQUEST/RESPONSE packets, which belong to the proxy and key manager.
    pub not_session: u64,
    /// Sessions accepted (cookie valid and admitted; response signed, or its signature
    /// requested with deferred signing).
    pub accepted: u64,
}

/// All sessions of one local address. See the module documentation.
pub struct Endpoint {
    shared: Arc<Shared>,
    rng: ChaCha20Rng,
    cookies: CookieKey,
    epoch: Instant,
    next_handle: u64,
    connections: BTreeMap<ConnectionHandle, Connection>,
    by_cid: BTreeMap<u64, ConnectionHandle>,
    by_initial: BTreeMap<(SocketAddr, u64), ConnectionHandle>,
    stateless_out: VecDeque<Transmit>,
    limiter: HandshakeLimiter,
    /// The connection whose datagram went out last, for round-robin sending.
    last_sender: ConnectionHandle,
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint for `group`, signing as `signer`, verifying peers with `peer_keys`.
    /// All its randomness comes from `seed` (drawn from the OS by a driver, fixed in
    /// tests and the simulator); `now` is the start of its clock.
    pub fn new(
        config: SessionConfig,
        group: &str,
        signer: Arc<dyn Signer>,
        peer_keys: Arc<dyn PeerKeys>,
        seed: [u8; 32],
        now: Instant,
    ) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut cookie_secret = [0; 32];
        rng.fill_bytes(&mut cookie_secret);
        let cookies =
            CookieKey::with_lifetime(cookie_secret, config.cookie_lifetime.as_secs().max(1));
        let limiter = HandshakeLimiter::new(
            config.handshake_burst,
            config.handshake_refill,
            config.handshake_sources,
        );
        Endpoint {
            shared: Arc::new(Shared {
                config,
                group: group.to_owned(),
                signer,
                peer_keys,
            }),
            rng,
            cookies,
            epoch: now,
            next_handle: 0,
            connections: BTreeMap::new(),
            by_cid: BTreeMap::new(),
            by_initial: BTreeMap::new(),
            stateless_out: VecDeque::new(),
            limiter,
            last_sender: ConnectionHandle(u64::MAX),
            stats: EndpointStats::default(),
        }
    }

    // ----- getters and mutators --------------------------------------------------------

    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    pub fn connection(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.connections.get(&handle)
    }

    pub fn connection_mut(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        self.connections.get_mut(&handle)
    }

    pub fn connections(&self) -> impl Iterator<Item = (ConnectionHandle, &Connection)> {
        self.connections.iter().map(|(h, c)| (*h, c))
    }

    /// Responder handshakes in progress (see [`Connection::is_half_open`]).
    pub fn half_open(&self) -> usize {
        self.connections
            .values()
            .filter(|c| c.is_half_open())
            .count()
    }

    /// Handshake tokens `source` has left at `now` (a source not seen yet has
    /// [`SessionConfig::handshake_burst`]).
    pub fn handshake_tokens(&self, source: SocketAddr, now: Instant) -> u32 {
        self.limiter.tokens(source.ip(), now)
    }

    /// Source addresses the rate limiter remembers (at most
    /// [`SessionConfig::handshake_sources`]).
    pub fn rate_limited_sources(&self) -> usize {
        self.limiter.len()
    }

    /// The next signature to make, with deferred signing; `None` when none is due (and
    /// always without [`SessionConfig::defer_signatures`]). Each is handed out once.
    pub fn poll_sign_request(&mut self) -> Option<SignRequest> {
        let request = self
            .connections
            .iter_mut()
            .find_map(|(handle, connection)| {
                connection.take_sign_request().map(|message| SignRequest {
                    handle: *handle,
                    role: connection.role(),
                    message,
                })
            })?;
        self.stats.sign_requests += 1;
        Some(request)
    }

    /// Gives the signature asked for by a [`SignRequest`]: the connection sends
    /// HANDSHAKE_RESPONSE or HANDSHAKE_FINISH at the next [`Endpoint::poll_transmit`].
    /// [`SignatureError::UnknownConnection`] (the handshake timed out or was closed
    /// meanwhile) is routine; drop the signature.
    pub fn provide_signature(
        &mut self,
        now: Instant,
        handle: ConnectionHandle,
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let connection = self
            .connections
            .get_mut(&handle)
            .ok_or(SignatureError::UnknownConnection)?;
        connection.provide_signature(now, signature)?;
        self.stats.signatures_provided += 1;
        Ok(())
    }

    /// Starts a session with `peer_name` at `peer_addr`.
    pub fn connect(
        &mut self,
        now: Instant,
        peer_addr: SocketAddr,
        peer_name: &str,
    ) -> ConnectionHandle {
        let cid = self.fresh_cid();
        let rng = self.child_rng();
        let connection = Connection::connect(
            self.shared.clone(),
            now,
            cid,
            peer_addr,
            peer_name.to_owned(),
            rng,
        );
        self.insert(cid, None, connection)
    }

    /// Queues a message on a connection.
    pub fn send(
        &mut self,
        handle: ConnectionHandle,
        class: MessageClass,
        data: &[u8],
    ) -> Result<MessageId, SendError> {
        self.connections
            .get_mut(&handle)
            .ok_or(SendError::Closed)?
            .send(class, data)
    }

    /// Pings a connection (see [`Connection::ping`]).
    pub fn ping(&mut self, handle: ConnectionHandle) {
        if let Some(connection) = self.connections.get_mut(&handle) {
            connection.ping();
        }
    }

    /// Closes a connection gracefully.
    pub fn close(&mut self, now: Instant, handle: ConnectionHandle, code: CloseCode, reason: &str) {
        if let Some(connection) = self.connections.get_mut(&handle) {
            connection.close(now, code, reason);
        }
    }

    // ----- handle_* --------------------------------------------------------------------

    /// Takes one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let mut packets = Datagram::new(datagram);
        while let Some(packet) = packets.next() {
            let Ok(packet) = packet else {
                self.stats.malformed += 1;
                return;
            };
            match packet.packet_type() {
                PacketType::INITIAL => {
                    self.on_initial(now, from, &packet, datagram.len());
                    // An INITIAL ends its datagram (SPEC §2): packing many into one
                    // datagram buys no more than one RETRY or one signature.
                    self.stats.after_initial += packets.count() as u64;
                    return;
                }
                PacketType::REQUEST | PacketType::RESPONSE => self.stats.not_session += 1,
                _ => match self.by_cid.get(&packet.header().connection_id()) {
                    Some(handle) => {
                        if let Some(connection) = self.connections.get_mut(handle) {
                            connection.handle_packet(now, from, &packet, datagram.len());
                        }
                    }
                    None => self.stats.unknown_connection += 1,
                },
            }
        }
    }

    /// Advances every connection's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for connection in self.connections.values_mut() {
            if connection.poll_timeout().is_some_and(|at| now >= at) {
                connection.handle_timeout(now);
            }
        }
    }

    // ----- poll_* ----------------------------------------------------------------------

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(transmit) = self.stateless_out.pop_front() {
            return Some(transmit);
        }
        // Round robin: start after the connection that sent last, so one busy session
        // cannot starve the others.
        let first = self.next_connection_after(self.last_sender)?;
        let mut handle = first;
        loop {
            if let Some(connection) = self.connections.get_mut(&handle) {
                if let Some(contents) = connection.poll_transmit(now) {
                    self.last_sender = handle;
                    return Some(Transmit {
                        destination: connection.peer_addr(),
                        contents,
                    });
                }
            }
            handle = self.next_connection_after(handle)?;
            if handle == first {
                return None;
            }
        }
    }

    /// The connection after `handle` in handle order, wrapping around.
    fn next_connection_after(&self, handle: ConnectionHandle) -> Option<ConnectionHandle> {
        self.connections
            .range((Bound::Excluded(handle), Bound::Unbounded))
            .next()
            .or_else(|| self.connections.iter().next())
            .map(|(handle, _)| *handle)
    }

    /// The next event of any connection. A connection is forgotten once it is closed
    /// and all its events have been handed out.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        let next = self
            .connections
            .iter_mut()
            .find_map(|(handle, connection)| connection.poll_event().map(|e| (*handle, e)));
        if next.is_none() && self.connections.values().any(Connection::is_closed) {
            self.forget_finished();
        }
        next
    }

    /// When [`Endpoint::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.connections
            .values()
            .filter_map(Connection::poll_timeout)
            .min()
    }

    // ----- internals -------------------------------------------------------------------

    fn on_initial(&mut self, now: Instant, from: SocketAddr, packet: &Packet<'_>, len: usize) {
        if HEADER_LEN + packet.payload().len() < MIN_INITIAL_PACKET {
            self.stats.short_initial += 1;
            return;
        }
        let mut frames = packet
            .frames()
            .filter(|f| !matches!(f, Ok(Frame::Padding(_))));
        let (Some(Ok(Frame::HandshakeInit(init))), None) = (frames.next(), frames.next()) else {
            self.stats.bad_initial += 1;
            return;
        };
        if init.group.as_str() != self.shared.group {
            self.stats.wrong_group += 1;
            return;
        }
        if let Some(handle) = self.by_initial.get(&(from, init.initiator_cid)) {
            if let Some(connection) = self.connections.get_mut(handle) {
                connection.handle_packet(now, from, packet, len);
            }
            return;
        }
        let clock = now.saturating_duration_since(self.epoch).as_secs();
        if init.cookie.is_empty() {
            self.send_retry(from, init.initiator_cid, clock);
            return;
        }
        if self
            .cookies
            .verify(from, init.initiator_cid, init.cookie.as_bytes(), clock)
            .is_err()
        {
            // Expired (a long partition) or forged: a fresh cookie costs as little as
            // the first, and a genuine initiator can go on.
            self.stats.bad_cookie += 1;
            self.send_retry(from, init.initiator_cid, clock);
            return;
        }
        self.accept(now, from, &init);
    }

    /// Answers an unproven INITIAL with a cookie: no state kept, no signature made, and
    /// far fewer bytes sent than the padded INITIAL that asked.
    fn send_retry(&mut self, to: SocketAddr, initiator_cid: u64, clock: u64) {
        let cookie = self.cookies.mint(to, initiator_cid, clock);
        let Ok(token) = Token::new(&cookie) else {
            return;
        };
        let mut contents = Vec::new();
        let frame = Frame::Retry(Retry { cookie: token });
        if encode_cleartext_packet(&mut contents, PacketType::RETRY, initiator_cid, 0, &[frame])
            .is_ok()
        {
            self.stats.retries_sent += 1;
            self.stateless_out.push_back(Transmit {
                destination: to,
                contents,
            });
        }
    }

    /// Admits a cookie-verified INITIAL (SPEC §5.1) and creates its responder session.
    /// The checks that cost no token come first, so an INITIAL refused for room does not
    /// also use up its source's allowance.
    fn accept(&mut self, now: Instant, from: SocketAddr, init: &HandshakeInit<'_>) {
        if self.connections.len() >= self.shared.config.max_connections {
            self.stats.refused_full += 1;
            return;
        }
        let mut displace = None;
        if self.half_open() >= self.shared.config.max_half_open {
            displace = self.displaceable(from.ip());
            if displace.is_none() {
                self.stats.refused_half_open += 1;
                return;
            }
        }
        match self.limiter.try_acquire(from.ip(), now) {
            Admission::Limited => {
                self.stats.rate_limited += 1;
                return;
            }
            Admission::Admitted { evicted } => {
                self.stats.rate_table_evictions += u64::from(evicted);
            }
        }
        if let Some(connection) = displace.and_then(|h| self.connections.get_mut(&h)) {
            connection.displace();
            self.stats.displaced_half_open += 1;
        }
        let cid = self.fresh_cid();
        let rng = self.child_rng();
        match Connection::accept(self.shared.clone(), now, cid, from, init, rng) {
            Some(connection) => {
                self.stats.accepted += 1;
                self.insert(cid, Some((from, init.initiator_cid)), connection);
            }
            None => self.stats.bad_initial += 1,
        }
    }

    /// With every half-open slot taken, the half-open handshake that makes room for one
    /// from `source` (SPEC §5.1): the oldest of the source holding the most, if it holds
    /// at least two more than `source` does. A flood from a few addresses thus gives way
    /// to each new host, while sources that hold as many slots as one another keep them
    /// (no slot changes hands back and forth). Addresses count as the rate limiter
    /// counts them: by IP, IPv4-mapped as IPv4.
    fn displaceable(&self, source: IpAddr) -> Option<ConnectionHandle> {
        let mut by_source: BTreeMap<IpAddr, (usize, Instant, ConnectionHandle)> = BTreeMap::new();
        for (handle, connection) in &self.connections {
            if !connection.is_half_open() {
                continue;
            }
            let started = connection.handshake_started();
            let entry = by_source
                .entry(connection.peer_addr().ip().to_canonical())
                .or_insert((0, started, *handle));
            entry.0 += 1;
            if started < entry.1 {
                (entry.1, entry.2) = (started, *handle);
            }
        }
        let ours = by_source.get(&source.to_canonical()).map_or(0, |e| e.0);
        let (count, _, oldest) = by_source
            .into_values()
            .max_by_key(|(count, started, _)| (*count, std::cmp::Reverse(*started)))?;
        (count >= ours + 2).then_some(oldest)
    }

    fn insert(
        &mut self,
        cid: u64,
        initial: Option<(SocketAddr, u64)>,
        connection: Connection,
    ) -> ConnectionHandle {
        let handle = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(cid, handle);
        if let Some(key) = initial {
            self.by_initial.insert(key, handle);
        }
        self.connections.insert(handle, connection);
        handle
    }

    fn forget_finished(&mut self) {
        let before = self.connections.len();
        self.connections.retain(|_, c| !c.is_closed());
        if self.connections.len() != before {
            let live = &self.connections;
            self.by_cid.retain(|_, h| live.contains_key(h));
            self.by_initial.retain(|_, h| live.contains_key(h));
        }
    }

    /// A connection id not in use, never 0.
    fn fresh_cid(&mut self) -> u64 {
        loop {
            let cid = self.rng.next_u64();
            if cid != 0 && !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn child_rng(&mut self) -> ChaCha20Rng {
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        ChaCha20Rng::from_seed(seed)
    }
}
