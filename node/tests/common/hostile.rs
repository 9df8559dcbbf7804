//! A hostile client of a sockmsg group: a peer written from SPEC.md with the project's
//! own libraries, which registers a key like any node, opens authenticated sessions to
//! the members and sends them whatever group frames it likes.
//!
//! - Key: the checked-in `testdata/keys/<name>.pem` (conventionally `mallory`),
//!   registered with the group's key manager (open registration, SPEC §7.29) through
//!   `sockmsg_keymgr::client`, so the members' sessions authenticate it like a member.
//! - Sessions: the sans-IO `sockmsg_wire::session::Endpoint` on a real UDP socket, driven
//!   by [`Hostile::pump`] (bounded by a deadline; nothing sleeps). The members' keys come
//!   from the key manager too.
//! - Frames: [`GroupMessage`] and its encoding (`to_wire_messages`), exactly as a node
//!   sends them, so anything a node could be told, this client can tell it; what it
//!   receives is decoded the way a node's driver does (`Frames`, `ChatReassembly`).
//!
//! It is a test fixture, not a tool: it lives with the node's integration tests (it uses
//! only public APIs of `sockmsg-wire`, `sockmsg-keymgr` and `sockmsg-node`, and the
//! test keys), because attack code has no business in a library that ships, and because
//! the tests that need it are the ones that also run the real node processes. It can
//! move to `sockmsg-tools` if `sockmsg-bench` ever wants to load a group with hostile
//! traffic.
//!
//! It can also act as a member (answer its leader's HEARTBEAT and MEMBERSHIP with a
//! MEMBERSHIP_ACK, give its word to the members once admitted and whenever a member
//! asks, SPEC.md §12.5: [`Hostile::act_member`]) so that, once admitted, it stays
//! admitted while it lies.

#![allow(dead_code)] // a fixture: each test uses a part of it

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sockmsg_keymgr::client::{KeymgrClient, Trust};
use sockmsg_node::message::{GroupMessage, MemberInfo, VoteRequestMsg};
use sockmsg_node::proxy_client::ProxyClient;
use sockmsg_node::ChatReassembly;
use sockmsg_proxy::handler::RecordSummary;
use sockmsg_wire::frame::{Carrier, MessageClass};
use sockmsg_wire::session::crypto::AuthError;
use sockmsg_wire::session::{
    ConnectionHandle, Endpoint, Event, PeerKeys, RsaKeyring, RsaSigner, SessionConfig,
};
use sockmsg_wire::Frames;

/// The members' keys, as the key manager vouched for them; shared with the endpoint,
/// which verifies handshakes against it.
#[derive(Clone, Default)]
struct SharedKeys(Arc<Mutex<RsaKeyring>>);

impl PeerKeys for SharedKeys {
    fn verify(&self, peer: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        self.0.lock().unwrap().verify(peer, message, signature)
    }
}

/// Runs `task` on `runtime` for at most [`crate::common::DEADLINE`].
fn within<T>(
    runtime: &tokio::runtime::Runtime,
    task: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    runtime.block_on(async { tokio::time::timeout(crate::common::DEADLINE, task).await })
}

/// The latest leader claim the client heard (HEARTBEAT or MEMBERSHIP): what a member
/// knows of the group.
#[derive(Debug, Clone)]
pub struct View {
    pub term: u64,
    pub leader: String,
    pub membership_term: u64,
    pub version: u64,
    pub members: Vec<MemberInfo>,
}

/// A group frame the client received, and from whom (the session's authenticated peer).
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub from: String,
    pub msg: GroupMessage,
}

pub struct Hostile {
    pub name: String,
    pub group: String,
    /// What this client says about itself in a JOIN.
    pub me: MemberInfo,
    socket: UdpSocket,
    endpoint: Endpoint,
    keys: SharedKeys,
    keymgr: KeymgrClient,
    proxy: ProxyClient,
    runtime: tokio::runtime::Runtime,
    sessions: BTreeMap<String, ConnectionHandle>,
    peer_of: BTreeMap<ConnectionHandle, String>,
    reassembly: ChatReassembly,
    /// Every group frame received, in order.
    pub received: Vec<Received>,
    /// The latest (highest-term) leader claim received.
    pub view: Option<View>,
    /// Answer HEARTBEAT and MEMBERSHIP with MEMBERSHIP_ACK, and give its word (its own
    /// JOIN) to every member once admitted and to each that asks, as a member does.
    pub act_member: bool,
    /// It gave every peer its word since it was admitted.
    announced: bool,
    /// When set to `k`: on a VOTE_REQUEST for term `t` from a peer (a re-election under
    /// way), send VOTE_REQUEST for `t + k` to every other peer at once.
    pub race_elections: Option<u64>,
    /// Once a majority of the membership it heard last has granted it a real vote in a
    /// term, lead that term: HEARTBEATs to every member, every heartbeat interval.
    pub claim_when_elected: bool,
    /// Granted real votes received, per term.
    pub grants: BTreeMap<u64, std::collections::BTreeSet<String>>,
    /// The term this client leads (it claimed it after a majority granted it), and when
    /// it last sent a HEARTBEAT.
    pub leading: Option<(u64, Instant)>,
    /// Group frames sent, per kind.
    pub sent: BTreeMap<&'static str, u64>,
}

/// config.yml `timing.heartbeat_ms`.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

impl Hostile {
    /// Registers `name` (with its key from `testdata/keys`) at the key manager and binds a
    /// UDP socket on 127.0.0.1.
    pub fn start(
        name: &str,
        group: &str,
        keymgr: SocketAddr,
        keymgr_fingerprint: &str,
        proxy: SocketAddr,
    ) -> Hostile {
        let pem = std::fs::read_to_string(crate::common::testdata_key(name)).expect("test key");
        let signer = Arc::new(RsaSigner::from_pkcs8_pem(name, &pem).expect("RSA key"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keymgr =
            KeymgrClient::new(keymgr, Trust::Pinned(keymgr_fingerprint.to_owned())).unwrap();
        within(&runtime, keymgr.register(name, &signer, None))
            .expect("registered in time")
            .expect("registration (open)");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().unwrap();
        let keys = SharedKeys::default();
        let mut seed = [0u8; 32];
        seed[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        seed[31] = 0x66;
        let endpoint = Endpoint::new(
            SessionConfig::default(),
            group,
            signer,
            Arc::new(keys.clone()),
            seed,
            Instant::now(),
        );
        Hostile {
            name: name.to_owned(),
            group: group.to_owned(),
            me: MemberInfo {
                name: name.to_owned(),
                addr,
                rank: u64::MAX,
                incarnation: 0x6d61_6c6c_6f72_7900,
            },
            socket,
            endpoint,
            keys,
            keymgr,
            proxy: ProxyClient::new(proxy),
            runtime,
            sessions: BTreeMap::new(),
            peer_of: BTreeMap::new(),
            reassembly: ChatReassembly::default(),
            received: Vec::new(),
            view: None,
            act_member: false,
            announced: false,
            race_elections: None,
            claim_when_elected: false,
            grants: BTreeMap::new(),
            leading: None,
            sent: BTreeMap::new(),
        }
    }

    /// The proxy's record for the group: who leads, in which term, at which address, and
    /// the names of the members (what any host on the LAN can ask).
    pub fn query_proxy(&self) -> Option<RecordSummary> {
        within(&self.runtime, self.proxy.query(&self.group))
            .expect("proxy answered in time")
            .expect("proxy answer")
    }

    /// Opens a session to each `(name, address)` (fetching its key from the key manager
    /// first) and waits until all are established.
    pub fn connect_all(&mut self, peers: &[(String, SocketAddr)]) {
        for (name, addr) in peers {
            let record = within(&self.runtime, self.keymgr.lookup(name))
                .expect("key lookup in time")
                .expect("key record");
            record
                .apply_to(&mut self.keys.0.lock().unwrap())
                .expect("usable key");
            let handle = self.endpoint.connect(Instant::now(), *addr, name);
            self.sessions.insert(name.clone(), handle);
            self.peer_of.insert(handle, name.clone());
        }
        let names: Vec<String> = peers.iter().map(|(n, _)| n.clone()).collect();
        let connected = self.pump_until(crate::common::DEADLINE, |h| {
            names.iter().all(|n| h.is_connected(n))
        });
        assert!(connected, "{}: no session to all of {names:?}", self.name);
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        self.sessions
            .get(peer)
            .and_then(|h| self.endpoint.connection(*h))
            .is_some_and(|c| c.is_established())
    }

    /// Sends `msg` to `peer` in the class a node would use for it.
    pub fn send(&mut self, peer: &str, msg: &GroupMessage) {
        self.send_class(peer, msg.class(), msg);
    }

    pub fn send_class(&mut self, peer: &str, class: MessageClass, msg: &GroupMessage) {
        let handle = *self
            .sessions
            .get(peer)
            .unwrap_or_else(|| panic!("no session to {peer}"));
        for piece in msg.to_wire_messages().expect("encodable") {
            // A full send buffer (a flood) drops the rest: that is the attacker's loss.
            if self.endpoint.send(handle, class, &piece).is_err() {
                return;
            }
        }
        *self.sent.entry(msg.kind()).or_default() += 1;
    }

    /// Sends `msg` to each of `peers` in `class`. (The class is the sender's choice;
    /// the receiver acts on the frame alike. An attack uses the reliable class so that
    /// no frame of it is lost, nor superseded as an unsent unreliable message is.)
    pub fn send_all(&mut self, peers: &[String], class: MessageClass, msg: &GroupMessage) {
        for peer in peers {
            self.send_class(peer, class, msg);
        }
        self.flush();
    }

    /// Runs the sessions for `duration`: receives, answers, retransmits.
    pub fn pump(&mut self, duration: Duration) {
        self.pump_until(duration, |_| false);
    }

    /// Runs the sessions until `done` holds or `timeout` passes; whether `done` held.
    pub fn pump_until(&mut self, timeout: Duration, done: impl Fn(&Hostile) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            self.heartbeat_if_leading();
            self.flush();
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = self
                .endpoint
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            let wait = wake
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(20));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    self.endpoint
                        .handle_datagram(Instant::now(), from, &buf[..n]);
                    // Drain what else is queued, without waiting (bounded).
                    self.socket.set_nonblocking(true).unwrap();
                    for _ in 0..64 {
                        match self.socket.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                self.endpoint
                                    .handle_datagram(Instant::now(), from, &buf[..n])
                            }
                            Err(_) => break,
                        }
                    }
                    self.socket.set_nonblocking(false).unwrap();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
            self.endpoint.handle_timeout(Instant::now());
            self.drain_events();
        }
    }

    fn flush(&mut self) {
        let now = Instant::now();
        // Bounded: the endpoint's send buffers are.
        while let Some(transmit) = self.endpoint.poll_transmit(now) {
            let _ = self
                .socket
                .send_to(&transmit.contents, transmit.destination);
        }
    }

    fn drain_events(&mut self) {
        while let Some((handle, event)) = self.endpoint.poll_event() {
            match event {
                Event::Connected { peer } => {
                    // A session a member opened to us (after admission) counts too.
                    self.sessions.entry(peer.clone()).or_insert(handle);
                    self.peer_of.insert(handle, peer);
                }
                Event::Message { data, .. } => {
                    let Some(peer) = self.peer_of.get(&handle).cloned() else {
                        continue;
                    };
                    let mut messages = Vec::new();
                    for frame in Frames::new(Carrier::Message, &data, 0) {
                        let Ok(frame) = frame else { break };
                        if let Ok(Some(msg)) = self.reassembly.accept(&peer, &frame) {
                            messages.push(msg);
                        }
                    }
                    for msg in messages {
                        self.on_message(&peer, msg);
                    }
                }
                Event::Closed(_) => {
                    if let Some(peer) = self.peer_of.remove(&handle) {
                        if self.sessions.get(&peer) == Some(&handle) {
                            self.sessions.remove(&peer);
                        }
                    }
                }
                Event::Acked(_) | Event::Unreachable => {}
            }
        }
    }

    fn on_message(&mut self, from: &str, msg: GroupMessage) {
        let claim = match &msg {
            GroupMessage::Heartbeat {
                term,
                leader,
                membership_term,
                membership_version,
                members,
            } if leader == from => Some((
                *term,
                *membership_term,
                *membership_version,
                members.clone(),
                MessageClass::Unreliable,
            )),
            GroupMessage::Membership {
                term,
                membership_term,
                version,
                members,
            } => Some((
                *term,
                *membership_term,
                *version,
                members.clone(),
                MessageClass::Reliable,
            )),
            _ => None,
        };
        if let Some((term, membership_term, version, members, class)) = claim {
            if self.view.as_ref().is_none_or(|v| term >= v.term) {
                self.view = Some(View {
                    term,
                    leader: from.to_owned(),
                    membership_term,
                    version,
                    members,
                });
            }
            if self.act_member {
                let ack = GroupMessage::MembershipAck { term, version };
                self.send_class(from, class, &ack);
            }
        }
        if self.act_member {
            self.give_word(from, &msg);
        }
        if let GroupMessage::Vote(vote) = &msg {
            if vote.candidate == self.name && vote.granted && !vote.pre_vote {
                self.grants
                    .entry(vote.term)
                    .or_default()
                    .insert(vote.voter.clone());
                self.maybe_lead(vote.term);
            }
        }
        if let (Some(k), GroupMessage::VoteRequest(req)) = (self.race_elections, &msg) {
            let others: Vec<String> = self
                .sessions
                .keys()
                .filter(|n| n.as_str() != from)
                .cloned()
                .collect();
            let ours = self.vote_request(req.term.saturating_add(k));
            for peer in others {
                self.send(&peer, &ours);
            }
        }
        self.received.push(Received {
            at: Instant::now(),
            from: from.to_owned(),
            msg,
        });
    }

    /// Leads `term` if a majority of the last membership heard granted it its vote there.
    fn maybe_lead(&mut self, term: u64) {
        let Some(view) = &self.view else { return };
        let voters = self.grants.get(&term).map_or(0, |g| g.len()) + 1;
        let elected = voters > view.members.len() / 2;
        if self.claim_when_elected && elected && self.leading.is_none_or(|(t, _)| t < term) {
            self.leading = Some((term, Instant::now() - HEARTBEAT_INTERVAL));
            self.heartbeat_if_leading();
        }
    }

    fn heartbeat_if_leading(&mut self) {
        let (Some((term, last)), Some(view)) = (self.leading, self.view.clone()) else {
            return;
        };
        if last.elapsed() < HEARTBEAT_INTERVAL {
            return;
        }
        self.leading = Some((term, Instant::now()));
        let heartbeat = GroupMessage::Heartbeat {
            term,
            leader: self.name.clone(),
            membership_term: view.membership_term,
            membership_version: view.version,
            members: view.members.clone(),
        };
        let others: Vec<String> = view
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|n| *n != self.name && self.sessions.contains_key(n))
            .collect();
        for peer in others {
            self.send(&peer, &heartbeat);
        }
    }

    /// Whether the latest membership heard lists this client.
    /// A member's word (SPEC.md §12.5): to every peer once admitted, and to a peer
    /// whose JOIN asks for it.
    fn give_word(&mut self, from: &str, msg: &GroupMessage) {
        let word = GroupMessage::Join(self.me.clone());
        if matches!(msg, GroupMessage::Join(m) if m.name == from) {
            self.send(from, &word);
        }
        if self.is_member() && !self.announced {
            self.announced = true;
            let peers: Vec<String> = self.sessions.keys().cloned().collect();
            for peer in peers {
                self.send(&peer, &word);
            }
        }
    }

    pub fn is_member(&self) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| v.members.iter().any(|m| m.name == self.name))
    }

    /// A VOTE_REQUEST for itself in `term`, with the (membership_term, version) it
    /// heard last: its true stamp (the attacks need no lie there).
    pub fn vote_request(&self, term: u64) -> GroupMessage {
        GroupMessage::VoteRequest(self.candidacy(term))
    }

    pub fn pre_vote_request(&self, term: u64) -> GroupMessage {
        GroupMessage::PreVoteRequest(self.candidacy(term))
    }

    fn candidacy(&self, term: u64) -> VoteRequestMsg {
        let (membership_term, version) = self
            .view
            .as_ref()
            .map_or((0, 0), |v| (v.membership_term, v.version));
        VoteRequestMsg {
            term,
            candidate: self.name.clone(),
            membership_term,
            membership_version: version,
            rank: u64::MAX,
        }
    }
}
