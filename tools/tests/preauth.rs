//! Handshake admission before any identity is proven (SPEC §2, §5.1): an INITIAL ends its
//! datagram and must itself be padded, handshakes that would make the responder sign are
//! rate-limited per source address and capped globally, and signatures can be deferred
//! to the driver so RSA never runs on the event loop.
//!
//! Everything runs in virtual time (the session layer is sans-IO): time moves only when
//! the simulator or a test passes a later `Instant`; nothing sleeps. Signatures are
//! counted with a counting signer wrapped around the test signer or real RSA keys
//! (`testdata/keys`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sockmsg_tools::sim::{loopback, Network, Node};
use sockmsg_wire::frame::MessageClass;
use sockmsg_wire::session::crypto::insecure::{TestKeys, TestSigner};
use sockmsg_wire::session::{
    CloseReason, ConnectionHandle, EndpointStats, Event, PeerKeys, Role, RsaKeyring, RsaSigner,
    SessionConfig, SignRequest, SignatureError, Signer,
};
use sockmsg_wire::PacketType;

mod common;
use common::{
    alice_addr, bob_addr, build_initial, carol_addr, packet_type, retry_cookie, CountingSigner,
    Peer, MIN_INITIAL,
};

const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
const CAROL_PEM: &str = include_str!("../../testdata/keys/carol.pem");
const ALICE_PUB: &str = include_str!("../../testdata/keys/alice.pub.pem");
const BOB_PUB: &str = include_str!("../../testdata/keys/bob.pub.pem");
const CAROL_PUB: &str = include_str!("../../testdata/keys/carol.pub.pem");

/// The ephemeral key in mallory's hand-built INITIALs (never used to derive anything).
const MALLORY_EPHEMERAL: [u8; 32] = [9; 32];

/// The largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The attacker: an address that can receive (so it holds genuine cookies).
fn mallory_addr() -> SocketAddr {
    loopback(66, 4000)
}

// ----- a node whose driver signs later ----------------------------------------------------

/// The common [`Peer`] plus what a driver with a signing thread does: it takes the
/// endpoint's sign requests and, `delay` later, gives the signature back (`delay: None`:
/// holds them in `held` for the test to answer). Without deferred signing it is just
/// the peer.
struct Host {
    peer: Peer,
    signer: Arc<dyn Signer>,
    rng: ChaCha20Rng,
    delay: Option<Duration>,
    queue: Vec<(Instant, SignRequest)>,
    held: Vec<SignRequest>,
    requests: Vec<SignRequest>,
    results: Vec<Result<(), SignatureError>>,
}

impl Host {
    fn new(
        name: &str,
        seed: u64,
        now: Instant,
        config: SessionConfig,
        signer: Arc<dyn Signer>,
        keys: Arc<dyn PeerKeys>,
    ) -> Self {
        Host {
            peer: Peer::with(name, seed, now, config, signer.clone(), keys),
            signer,
            rng: ChaCha20Rng::seed_from_u64(seed),
            delay: Some(Duration::ZERO),
            queue: Vec::new(),
            held: Vec::new(),
            requests: Vec::new(),
            results: Vec::new(),
        }
    }

    fn collect(&mut self, now: Instant) {
        while let Some(request) = self.peer.endpoint.poll_sign_request() {
            self.requests.push(request.clone());
            match self.delay {
                Some(delay) => self.queue.push((now + delay, request)),
                None => self.held.push(request),
            }
        }
    }

    /// Signs `request` and gives the signature back at `now`.
    fn answer(&mut self, now: Instant, request: &SignRequest) -> Result<(), SignatureError> {
        let signature = self.signer.sign(&mut self.rng, &request.message);
        let result = self
            .peer
            .endpoint
            .provide_signature(now, request.handle, &signature);
        self.results.push(result.clone());
        self.peer.after_input();
        self.collect(now);
        result
    }
}

impl Node for Host {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.peer.handle_datagram(now, from, datagram);
        self.collect(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.queue = later;
        for (_, request) in due {
            // A handshake that timed out meanwhile is gone: that is routine.
            let _ = self.answer(now, &request);
        }
        self.peer.handle_timeout(now);
        self.collect(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        self.peer.poll_transmit(now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let signing = self.queue.iter().map(|(at, _)| *at).min();
        [self.peer.poll_timeout(), signing]
            .into_iter()
            .flatten()
            .min()
    }
}

// ----- datagram helpers -------------------------------------------------------------------

/// Hands `bytes` to the node at `to` as if it had just arrived from `from`, at `now`.
fn deliver_at(
    net: &mut Network<Host>,
    now: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: &[u8],
) {
    net.node_mut(to).handle_datagram(now, from, bytes);
}

fn deliver(net: &mut Network<Host>, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
    let now = net.now();
    deliver_at(net, now, from, to, bytes);
}

/// Everything the node at `at` wants to send right now, taken off the network.
fn take_transmits(net: &mut Network<Host>, at: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
    let now = net.now();
    let node = net.node_mut(at);
    std::iter::from_fn(|| node.poll_transmit(now)).collect()
}

/// A valid cookie for (`from`, `cid`) from the node at `to`, asked for the honest way.
fn fetch_cookie(net: &mut Network<Host>, from: SocketAddr, to: SocketAddr, cid: u64) -> Vec<u8> {
    deliver(
        net,
        from,
        to,
        &build_initial("mallory", cid, &MALLORY_EPHEMERAL, &[], MIN_INITIAL),
    );
    let out = take_transmits(net, to);
    assert_eq!(out.len(), 1, "one RETRY per padded INITIAL");
    retry_cookie(&out[0].1)
}

fn bob_stats(net: &Network<Host>) -> EndpointStats {
    net.node(bob_addr()).peer.endpoint.stats()
}

// ----- networks -----------------------------------------------------------------------------

fn names() -> TestKeys {
    TestKeys::with_names(["alice", "bob", "carol"])
}

/// Bob (counting his signatures) and alice, with test signers.
fn test_net(seed: u64, config: SessionConfig) -> (Network<Host>, Arc<CountingSigner>) {
    let mut net = Network::new(seed);
    let now = net.now();
    let bob_signer = CountingSigner::new(TestSigner::new("bob"));
    for (name, addr, signer) in [
        (
            "alice",
            alice_addr(),
            Arc::new(TestSigner::new("alice")) as Arc<dyn Signer>,
        ),
        ("bob", bob_addr(), bob_signer.clone() as Arc<dyn Signer>),
        (
            "carol",
            carol_addr(),
            Arc::new(TestSigner::new("carol")) as Arc<dyn Signer>,
        ),
    ] {
        let host = Host::new(name, seed, now, config.clone(), signer, Arc::new(names()));
        net.add_node(addr, host).expect("a node");
    }
    (net, bob_signer)
}

fn rsa_keyring() -> Arc<RsaKeyring> {
    let mut keys = RsaKeyring::new();
    for (name, pem) in [("alice", ALICE_PUB), ("bob", BOB_PUB), ("carol", CAROL_PUB)] {
        keys.insert_pem(name, pem).expect("a public key");
    }
    Arc::new(keys)
}

fn rsa_signer(name: &str, pem: &str) -> RsaSigner {
    RsaSigner::from_pkcs8_pem(name, pem).expect("a test key")
}

/// Alice, bob (counting) and carol with their real RSA keys.
fn rsa_net(seed: u64, config: SessionConfig) -> (Network<Host>, Arc<CountingSigner>) {
    let mut net = Network::new(seed);
    let now = net.now();
    let keys = rsa_keyring();
    let bob_signer = CountingSigner::new(rsa_signer("bob", BOB_PEM));
    for (name, addr, signer) in [
        (
            "alice",
            alice_addr(),
            Arc::new(rsa_signer("alice", ALICE_PEM)) as Arc<dyn Signer>,
        ),
        ("bob", bob_addr(), bob_signer.clone() as Arc<dyn Signer>),
        (
            "carol",
            carol_addr(),
            Arc::new(rsa_signer("carol", CAROL_PEM)) as Arc<dyn Signer>,
        ),
    ] {
        let host = Host::new(name, seed, now, config.clone(), signer, keys.clone());
        net.add_node(addr, host).expect("a node");
    }
    (net, bob_signer)
}

/// `from` connects to bob; runs until both report `Connected`. Returns both handles.
fn establish(
    net: &mut Network<Host>,
    from: SocketAddr,
    name: &str,
    max: Duration,
) -> (ConnectionHandle, ConnectionHandle) {
    let now = net.now();
    let a = net
        .node_mut(from)
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    net.run_while(
        |net| {
            net.node(from).peer.connected_to("bob").is_none()
                || net.node(bob_addr()).peer.connected_to(name).is_none()
        },
        max,
    )
    .unwrap_or_else(|e| panic!("{name} and bob connect: {e}"));
    let b = net
        .node(bob_addr())
        .peer
        .connected_to(name)
        .expect("bob connected");
    (a, b)
}

/// One ordered message each way between the node at `from` and bob, delivered once.
fn exchange(
    net: &mut Network<Host>,
    from: SocketAddr,
    a: ConnectionHandle,
    b: ConnectionHandle,
    tag: &str,
) {
    let there = format!("to bob {tag}").into_bytes();
    let back = format!("from bob {tag}").into_bytes();
    net.node_mut(from)
        .peer
        .endpoint
        .send(a, MessageClass::Ordered, &there)
        .expect("can send");
    net.node_mut(bob_addr())
        .peer
        .endpoint
        .send(b, MessageClass::Ordered, &back)
        .expect("bob can send");
    net.run_while(
        |net| {
            net.node(bob_addr()).peer.count_message(&there) == 0
                || net.node(from).peer.count_message(&back) == 0
        },
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{tag}: no delivery: {e}"));
    assert_eq!(net.node(bob_addr()).peer.count_message(&there), 1, "{tag}");
    assert_eq!(net.node(from).peer.count_message(&back), 1, "{tag}");
}

// ----- 1. an INITIAL ends its datagram and is padded itself -------------------------------

#[test]
fn fifty_packed_small_initials_get_no_retry_and_are_counted() {
    let (mut net, bob_signer) = test_net(1, SessionConfig::default());
    let mut datagram = Vec::new();
    for i in 0..50u64 {
        datagram.extend(build_initial(
            "mallory",
            0x1000 + i,
            &MALLORY_EPHEMERAL,
            &[],
            0,
        ));
    }
    // The datagram is far above 1,200 bytes; no INITIAL in it is.
    assert!(datagram.len() >= MIN_INITIAL, "{}", datagram.len());
    assert!(datagram.len() < 50 * MIN_INITIAL);
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &datagram);
    let out = take_transmits(&mut net, bob_addr());
    let after = bob_stats(&net);
    assert!(out.is_empty(), "a short INITIAL gets nothing: {out:?}");
    assert_eq!(after.retries_sent, before.retries_sent);
    assert_eq!(after.short_initial, before.short_initial + 1);
    assert_eq!(after.after_initial, before.after_initial + 49);
    assert_eq!(bob_signer.count(), 0);
    assert_eq!(net.node(bob_addr()).peer.endpoint.connections().count(), 0);
}

#[test]
fn a_padded_initial_with_small_ones_packed_behind_gets_exactly_one_retry() {
    let (mut net, _) = test_net(2, SessionConfig::default());
    let mut datagram = build_initial("mallory", 0x2000, &MALLORY_EPHEMERAL, &[], MIN_INITIAL);
    for i in 1..50u64 {
        datagram.extend(build_initial(
            "mallory",
            0x2000 + i,
            &MALLORY_EPHEMERAL,
            &[],
            0,
        ));
    }
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &datagram);
    let out = take_transmits(&mut net, bob_addr());
    let after = bob_stats(&net);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(packet_type(&out[0].1), PacketType::RETRY);
    assert_eq!(after.retries_sent, before.retries_sent + 1);
    assert_eq!(after.after_initial, before.after_initial + 49);
    assert_eq!(after.short_initial, before.short_initial);
}

#[test]
fn a_largest_datagram_of_fully_padded_initials_gets_exactly_one_retry() {
    let (mut net, _) = test_net(3, SessionConfig::default());
    let count = MAX_UDP_PAYLOAD / MIN_INITIAL;
    let mut datagram = Vec::new();
    for i in 0..count as u64 {
        datagram.extend(build_initial(
            "mallory",
            0x3000 + i,
            &MALLORY_EPHEMERAL,
            &[],
            MIN_INITIAL,
        ));
    }
    assert!(datagram.len() <= MAX_UDP_PAYLOAD);
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &datagram);
    let out = take_transmits(&mut net, bob_addr());
    let after = bob_stats(&net);
    assert_eq!(out.len(), 1);
    assert_eq!(after.retries_sent, before.retries_sent + 1);
    assert_eq!(after.after_initial, before.after_initial + count as u64 - 1);

    // Whatever follows an INITIAL is dropped, even an undecodable tail (counted once).
    let mut tail = build_initial("mallory", 0x3fff, &MALLORY_EPHEMERAL, &[], MIN_INITIAL);
    tail.extend([0x53, 0x4d, 0x01]);
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &tail);
    let after = bob_stats(&net);
    assert_eq!(take_transmits(&mut net, bob_addr()).len(), 1);
    assert_eq!(after.after_initial, before.after_initial + 1);
    assert_eq!(after.malformed, before.malformed, "dropped unread");
}

#[test]
fn packed_cookie_bearing_initials_cost_at_most_one_signature() {
    let (mut net, bob_signer) = test_net(4, SessionConfig::default());
    // Fifty genuine cookies, each asked for the honest way (one padded INITIAL each).
    let cids: Vec<u64> = (0..50).map(|i| 0x4000 + i).collect();
    let cookies: Vec<Vec<u8>> = cids
        .iter()
        .map(|&cid| fetch_cookie(&mut net, mallory_addr(), bob_addr(), cid))
        .collect();
    assert_eq!(bob_signer.count(), 0, "cookies cost no signature");

    // All fifty sent back in one datagram, fully padded (60,000 bytes)...
    let mut packed = Vec::new();
    for (cid, cookie) in cids.iter().zip(&cookies) {
        packed.extend(build_initial(
            "mallory",
            *cid,
            &MALLORY_EPHEMERAL,
            cookie,
            MIN_INITIAL,
        ));
    }
    assert!(packed.len() <= MAX_UDP_PAYLOAD);
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &packed);
    let out = take_transmits(&mut net, bob_addr());
    let after = bob_stats(&net);
    assert_eq!(
        bob_signer.count(),
        1,
        "one signature for the whole datagram"
    );
    assert_eq!(after.accepted, before.accepted + 1);
    assert_eq!(after.after_initial, before.after_initial + 49);
    assert_eq!(out.len(), 1);
    assert_eq!(packet_type(&out[0].1), PacketType::HANDSHAKE);

    // ...or unpadded, the rest of the cookies: no signature at all.
    let mut small = Vec::new();
    for (cid, cookie) in cids.iter().zip(&cookies).skip(1) {
        small.extend(build_initial(
            "mallory",
            *cid,
            &MALLORY_EPHEMERAL,
            cookie,
            0,
        ));
    }
    let before = bob_stats(&net);
    deliver(&mut net, mallory_addr(), bob_addr(), &small);
    let after = bob_stats(&net);
    assert!(take_transmits(&mut net, bob_addr()).is_empty());
    assert_eq!(bob_signer.count(), 1, "no signature for short INITIALs");
    assert_eq!(after.short_initial, before.short_initial + 1);
    assert_eq!(after.after_initial, before.after_initial + 48);
    assert_eq!(net.node(bob_addr()).peer.endpoint.half_open(), 1);
}

// ----- 2. per-address rate limit and the half-open cap ------------------------------------

/// Sends, at `now`, one padded INITIAL echoing a genuine cookie from `from` with a fresh
/// connection id; returns whether bob admitted it (and signed).
fn cookie_initial(
    net: &mut Network<Host>,
    now: Instant,
    from: SocketAddr,
    cid: u64,
    cookie: &[u8],
) -> bool {
    let before = bob_stats(net);
    deliver_at(
        net,
        now,
        from,
        bob_addr(),
        &build_initial("mallory", cid, &MALLORY_EPHEMERAL, cookie, MIN_INITIAL),
    );
    let node = net.node_mut(bob_addr());
    let out: Vec<_> = std::iter::from_fn(|| node.poll_transmit(now)).collect();
    let after = bob_stats(net);
    let admitted = after.accepted > before.accepted;
    if admitted {
        assert_eq!(out.len(), 1);
        assert_eq!(packet_type(&out[0].1), PacketType::HANDSHAKE);
    } else {
        assert!(out.is_empty(), "nothing answers a refused INITIAL: {out:?}");
    }
    admitted
}

#[test]
fn the_per_address_limit_kicks_in_after_the_burst_and_recovers_after_refill() {
    let config = SessionConfig {
        handshake_burst: 4,
        handshake_refill: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        cookie_lifetime: Duration::from_secs(60),
        ..SessionConfig::default()
    };
    let (mut net, bob_signer) = test_net(5, config);
    let cids: Vec<u64> = (0..40).map(|i| 0x5000 + i).collect();
    let cookies: Vec<Vec<u8>> = cids
        .iter()
        .map(|&cid| fetch_cookie(&mut net, mallory_addr(), bob_addr(), cid))
        .collect();
    let mut next = cids.iter().zip(&cookies);
    // Sends the next cookie's INITIAL from `from` once the clock has reached `when`.
    let mut send = |net: &mut Network<Host>, when: Instant, from: SocketAddr| {
        net.run_until(when).expect("runs");
        let (cid, cookie) = next.next().expect("enough cookies");
        cookie_initial(net, net.now(), from, *cid, cookie)
    };
    let t0 = net.now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let tokens = |net: &Network<Host>| {
        net.node(bob_addr())
            .peer
            .endpoint
            .handshake_tokens(mallory_addr(), net.now())
    };

    // The burst: four admitted (four signatures), then nothing.
    let admitted: Vec<bool> = (0..8).map(|_| send(&mut net, t0, mallory_addr())).collect();
    assert_eq!(
        admitted,
        [true, true, true, true, false, false, false, false]
    );
    assert_eq!(bob_signer.count(), 4);
    assert_eq!(bob_stats(&net).rate_limited, 4);
    assert_eq!(net.node(bob_addr()).peer.endpoint.half_open(), 4);
    assert_eq!(tokens(&net), 0);

    // Another port of the same host (with a cookie of its own) is the same source.
    let other_port = loopback(66, 4001);
    let cookie = fetch_cookie(&mut net, other_port, bob_addr(), 0x5ffe);
    assert!(!cookie_initial(&mut net, t0, other_port, 0x5ffe, &cookie));

    // Not a token before a whole refill period has passed...
    assert!(!send(&mut net, at(0.999), mallory_addr()));
    // ...then one per period.
    assert!(send(&mut net, at(1.0), mallory_addr()));
    assert!(!send(&mut net, at(1.5), mallory_addr()));
    assert!(send(&mut net, at(2.0), mallory_addr()));
    assert!(!send(&mut net, at(2.0), mallory_addr()));
    // A long pause refills to the burst and no further.
    net.run_until(at(30.0)).expect("runs");
    assert_eq!(tokens(&net), 4);
    let admitted: Vec<bool> = (0..6)
        .map(|_| send(&mut net, at(30.0), mallory_addr()))
        .collect();
    assert_eq!(admitted, [true, true, true, true, false, false]);
    assert_eq!(bob_signer.count(), 10, "4 + 1 + 1 + 4 signatures, no more");
    assert_eq!(bob_stats(&net).rate_limited, 4 + 1 + 1 + 1 + 1 + 2);
    assert_eq!(bob_stats(&net).accepted, 10);

    // Meanwhile another address has its own, full bucket.
    let other = loopback(67, 4000);
    let cookie = fetch_cookie(&mut net, other, bob_addr(), 0x5fff);
    let now = net.now();
    assert!(cookie_initial(&mut net, now, other, 0x5fff, &cookie));
}

#[test]
fn the_half_open_cap_refuses_before_signing_and_frees_with_timeouts() {
    let config = SessionConfig {
        max_half_open: 3,
        ..SessionConfig::default()
    };
    let (mut net, bob_signer) = test_net(6, config);
    let sources: Vec<SocketAddr> = (100..106).map(|host| loopback(host, 4000)).collect();
    let cookies: Vec<Vec<u8>> = sources
        .iter()
        .map(|&from| fetch_cookie(&mut net, from, bob_addr(), 0x6000))
        .collect();
    let now = net.now();
    let admitted: Vec<bool> = sources
        .iter()
        .zip(&cookies)
        .map(|(&from, cookie)| cookie_initial(&mut net, now, from, 0x6000, cookie))
        .collect();
    assert_eq!(admitted, [true, true, true, false, false, false]);
    assert_eq!(bob_signer.count(), 3);
    assert_eq!(bob_stats(&net).refused_half_open, 3);
    assert_eq!(
        bob_stats(&net).rate_limited,
        0,
        "refused before any token was taken"
    );
    // The half-open sessions time out (2 s): room again, and an honest peer connects.
    net.run_for(Duration::from_secs(3)).expect("runs");
    assert_eq!(net.node(bob_addr()).peer.endpoint.half_open(), 0);
    let (a, b) = establish(&mut net, alice_addr(), "alice", Duration::from_secs(2));
    exchange(&mut net, alice_addr(), a, b, "after the cap");
}

#[test]
fn a_full_half_open_table_gives_way_to_new_sources_not_to_equal_ones() {
    // SPEC §5.1 step 5: mallory's address holds every half-open slot. Each new host
    // displaces her oldest handshake until no source holds two more than another; then
    // the cap refuses as before, and an honest host still connects once one frees.
    let config = SessionConfig {
        max_half_open: 3,
        ..SessionConfig::default()
    };
    let (mut net, bob_signer) = test_net(7, config);
    let flood: Vec<(u64, Vec<u8>)> = (0..4)
        .map(|i| {
            let cid = 0x7000 + i;
            (cid, fetch_cookie(&mut net, mallory_addr(), bob_addr(), cid))
        })
        .collect();
    let hosts: Vec<SocketAddr> = (110..113).map(|host| loopback(host, 4000)).collect();
    let host_cookies: Vec<Vec<u8>> = hosts
        .iter()
        .map(|&from| fetch_cookie(&mut net, from, bob_addr(), 0x7100))
        .collect();
    let now = net.now();
    let admitted: Vec<bool> = flood
        .iter()
        .map(|(cid, cookie)| cookie_initial(&mut net, now, mallory_addr(), *cid, cookie))
        .collect();
    assert_eq!(
        admitted,
        [true, true, true, false],
        "the cap, for one source too"
    );
    let half_open_from = |net: &Network<Host>, ip: IpAddr| {
        net.node(bob_addr())
            .peer
            .endpoint
            .connections()
            .filter(|(_, c)| c.is_half_open() && c.peer_addr().ip() == ip)
            .count()
    };

    // mallory 3, newcomer 0: her oldest gives way; mallory 2, newcomer 0: again.
    assert!(cookie_initial(
        &mut net,
        now,
        hosts[0],
        0x7100,
        &host_cookies[0]
    ));
    assert!(cookie_initial(
        &mut net,
        now,
        hosts[1],
        0x7100,
        &host_cookies[1]
    ));
    assert_eq!(bob_stats(&net).displaced_half_open, 2);
    assert_eq!(half_open_from(&net, mallory_addr().ip()), 1);
    assert_eq!(net.node(bob_addr()).peer.endpoint.half_open(), 3);
    // Every source holds one: nobody is displaced for the third newcomer.
    assert!(!cookie_initial(
        &mut net,
        now,
        hosts[2],
        0x7100,
        &host_cookies[2]
    ));
    assert_eq!(bob_stats(&net).refused_half_open, 2);
    assert_eq!(bob_stats(&net).displaced_half_open, 2);
    assert_eq!(
        bob_signer.count(),
        5,
        "3 for mallory, 1 for each newcomer admitted"
    );
    assert_eq!(half_open_from(&net, hosts[0].ip()), 1);
    assert_eq!(half_open_from(&net, hosts[1].ip()), 1);
}

#[test]
fn an_honest_handshake_completes_during_a_flood_from_one_address() {
    // Real RSA, default limits: mallory, who can receive at her address and so holds
    // genuine cookies, sends a cookie-bearing INITIAL every 2 ms for 1.5 s while alice
    // connects and chats, and carol connects half-way.
    let (mut net, bob_signer) = rsa_net(7, SessionConfig::default());
    let config = SessionConfig::default();
    let flood = 750;
    let cids: Vec<u64> = (0..flood).map(|i| 0x7000 + i).collect();
    let cookies: Vec<Vec<u8>> = cids
        .iter()
        .map(|&cid| fetch_cookie(&mut net, mallory_addr(), bob_addr(), cid))
        .collect();
    let t0 = net.now();
    let now = net.now();
    let a = net
        .node_mut(alice_addr())
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    let mut carol = None;
    for (i, (cid, cookie)) in cids.iter().zip(&cookies).enumerate() {
        let initial = build_initial("mallory", *cid, &MALLORY_EPHEMERAL, cookie, MIN_INITIAL);
        net.inject(mallory_addr(), bob_addr(), initial);
        net.run_for(Duration::from_millis(2)).expect("runs");
        if i == flood as usize / 2 {
            let now = net.now();
            carol = Some(
                net.node_mut(carol_addr())
                    .peer
                    .endpoint
                    .connect(now, bob_addr(), "bob"),
            );
        }
    }
    let elapsed = net.now() - t0;
    let bob = &net.node(bob_addr()).peer;
    let alice_at_bob = bob
        .connected_to("alice")
        .expect("alice connected during the flood");
    assert!(
        bob.connected_to("carol").is_some(),
        "carol connected during the flood"
    );
    assert_eq!(
        net.node(alice_addr()).peer.connected_to("bob"),
        Some(a),
        "alice saw bob"
    );
    assert_eq!(
        net.node(carol_addr()).peer.connected_to("bob"),
        carol,
        "carol saw bob"
    );
    // Mallory's signatures: her burst plus one per refill period, nothing like one per
    // INITIAL; alice and carol cost one each.
    let allowed = u64::from(config.handshake_burst)
        + (elapsed.as_nanos() / config.handshake_refill.as_nanos()) as u64
        + 1;
    let mallory_signatures = bob_signer.count() - 2;
    assert!(
        mallory_signatures <= allowed,
        "{mallory_signatures} signatures for mallory in {elapsed:?} (allowed {allowed})"
    );
    let stats = bob.endpoint.stats();
    assert!(stats.rate_limited >= flood - allowed, "{stats:?}");
    assert_eq!(stats.accepted, bob_signer.count());
    exchange(&mut net, alice_addr(), a, alice_at_bob, "after the flood");
}

// ----- 3. deferred signing -----------------------------------------------------------------

fn deferred() -> SessionConfig {
    SessionConfig {
        defer_signatures: true,
        ..SessionConfig::default()
    }
}

#[test]
fn deferred_signatures_complete_a_real_rsa_handshake_signed_on_another_thread() {
    let (mut net, bob_signer) = rsa_net(8, deferred());
    for addr in [alice_addr(), bob_addr()] {
        net.node_mut(addr).delay = None;
    }
    let now = net.now();
    let a = net
        .node_mut(alice_addr())
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    net.node_mut(alice_addr())
        .peer
        .endpoint
        .send(a, MessageClass::Ordered, b"queued before the handshake")
        .expect("queued");

    // Cookie round, then bob asks for his signature and sends nothing meanwhile.
    net.run_while(
        |net| net.node(bob_addr()).held.is_empty(),
        Duration::from_secs(1),
    )
    .expect("bob asks for a signature");
    let request = net.node_mut(bob_addr()).held.remove(0);
    assert_eq!(request.role, Role::Responder);
    assert!(request
        .message
        .starts_with(b"sockmsg/1 handshake responder\0"));
    assert_eq!(request.message.len(), 30 + 32, "label and transcript hash");
    assert_eq!(bob_signer.count(), 0, "the endpoint did not sign");
    let handle = request.handle;
    assert!(net
        .node(bob_addr())
        .peer
        .endpoint
        .connection(handle)
        .expect("half-open")
        .is_awaiting_signature());
    assert_eq!(net.node(bob_addr()).peer.endpoint.half_open(), 1);
    let sent_before = net.node(bob_addr()).peer.sent.len();
    net.run_for(Duration::from_millis(300)).expect("runs");
    assert!(
        net.node(bob_addr())
            .peer
            .sent
            .iter()
            .skip(sent_before)
            .all(|(_, d)| packet_type(d) == PacketType::RETRY),
        "no HANDSHAKE before the signature"
    );
    // Alice's retransmitted INITIALs made no new request.
    assert!(net.node(bob_addr()).held.is_empty());
    assert_eq!(net.node(bob_addr()).peer.endpoint.stats().sign_requests, 1);

    // The driver signs on another thread with the same signer and gives it back.
    let signer = net.node(bob_addr()).signer.clone();
    let message = request.message.clone();
    let signature =
        std::thread::spawn(move || signer.sign(&mut ChaCha20Rng::seed_from_u64(81), &message))
            .join()
            .expect("the signing thread");
    assert_eq!(signature.len(), 256, "RSA-2048");
    let now = net.now();
    net.node_mut(bob_addr())
        .peer
        .endpoint
        .provide_signature(now, handle, &signature)
        .expect("taken");
    assert_eq!(
        net.node_mut(bob_addr())
            .peer
            .endpoint
            .provide_signature(now, handle, &signature),
        Err(SignatureError::NotRequested),
        "only once"
    );

    // Alice verifies bob and asks for her own signature (FINISH).
    net.run_while(
        |net| net.node(alice_addr()).held.is_empty(),
        Duration::from_secs(1),
    )
    .expect("alice asks for a signature");
    assert!(
        net.node(alice_addr()).peer.connected_to("bob").is_none(),
        "not before FINISH"
    );
    let request = net.node_mut(alice_addr()).held.remove(0);
    assert_eq!(request.role, Role::Initiator);
    assert!(request
        .message
        .starts_with(b"sockmsg/1 handshake initiator\0"));
    let now = net.now();
    net.node_mut(alice_addr())
        .answer(now, &request)
        .expect("taken");
    net.run_while(
        |net| net.node(bob_addr()).peer.connected_to("alice").is_none(),
        Duration::from_secs(1),
    )
    .expect("bob verifies alice's FINISH");
    net.run_while(
        |net| {
            net.node(bob_addr())
                .peer
                .count_message(b"queued before the handshake")
                == 0
        },
        Duration::from_secs(1),
    )
    .expect("the queued message arrives");
    assert_eq!(
        bob_signer.count(),
        1,
        "bob's only signature was the driver's"
    );
    let b = net.node(bob_addr()).peer.connected_to("alice").expect("b");
    exchange(&mut net, alice_addr(), a, b, "deferred");
}

#[test]
fn established_sessions_carry_on_while_a_handshake_waits_for_its_signature() {
    let (mut net, _) = test_net(9, deferred());
    // Alice and bob connect, their drivers signing at once.
    let (a, b) = establish(&mut net, alice_addr(), "alice", Duration::from_secs(2));
    // Bob's driver stops answering; carol's handshake waits for his signature...
    net.node_mut(bob_addr()).delay = None;
    let now = net.now();
    net.node_mut(carol_addr())
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    net.run_while(
        |net| net.node(bob_addr()).held.is_empty(),
        Duration::from_secs(1),
    )
    .expect("bob asks");
    // ...while alice and bob chat undisturbed.
    for round in 0..5 {
        exchange(
            &mut net,
            alice_addr(),
            a,
            b,
            &format!("while waiting {round}"),
        );
    }
    assert!(net.node(bob_addr()).peer.connected_to("carol").is_none());
    // The signature comes; carol connects.
    let request = net.node_mut(bob_addr()).held.remove(0);
    let now = net.now();
    net.node_mut(bob_addr())
        .answer(now, &request)
        .expect("taken");
    net.run_while(
        |net| net.node(bob_addr()).peer.connected_to("carol").is_none(),
        Duration::from_secs(1),
    )
    .expect("carol connects");
}

#[test]
fn a_signature_that_comes_too_late_or_too_long_is_refused_by_type() {
    let (mut net, _) = test_net(10, deferred());
    net.node_mut(bob_addr()).delay = None;
    let now = net.now();
    net.node_mut(alice_addr())
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    net.run_while(
        |net| net.node(bob_addr()).held.is_empty(),
        Duration::from_secs(1),
    )
    .expect("bob asks");
    let late = net.node_mut(bob_addr()).held.remove(0);
    // The handshake times out while the signature is pending.
    net.run_for(Duration::from_secs(3)).expect("runs");
    assert!(net
        .node(bob_addr())
        .peer
        .closes()
        .iter()
        .any(|(h, reason)| *h == late.handle && *reason == CloseReason::HandshakeTimeout));
    let now = net.now();
    assert_eq!(
        net.node_mut(bob_addr()).answer(now, &late),
        Err(SignatureError::UnknownConnection)
    );

    // A signature that cannot be encoded ends the handshake.
    let now = net.now();
    let h = net
        .node_mut(carol_addr())
        .peer
        .endpoint
        .connect(now, bob_addr(), "bob");
    net.run_while(
        |net| net.node(bob_addr()).held.is_empty(),
        Duration::from_secs(1),
    )
    .expect("bob asks again");
    let request = net.node_mut(bob_addr()).held.remove(0);
    let now = net.now();
    assert_eq!(
        net.node_mut(bob_addr())
            .peer
            .endpoint
            .provide_signature(now, request.handle, &[0; 2000]),
        Err(SignatureError::TooLong { len: 2000 })
    );
    net.node_mut(bob_addr()).peer.after_input();
    assert!(net
        .node(bob_addr())
        .peer
        .closes()
        .iter()
        .any(|(handle, reason)| *handle == request.handle
            && matches!(reason, CloseReason::AuthenticationFailed(_))));
    assert!(take_transmits(&mut net, bob_addr())
        .iter()
        .all(|(_, d)| packet_type(d) != PacketType::HANDSHAKE));
    let _ = h;
    // A handle that never asked.
    assert_eq!(
        net.node_mut(bob_addr()).peer.endpoint.provide_signature(
            now,
            ConnectionHandle(999_999),
            &[1; 8]
        ),
        Err(SignatureError::UnknownConnection)
    );
}

#[test]
fn deferred_signing_is_admitted_like_synchronous_signing() {
    // Packed cookie INITIALs make one request at most, and the per-address limit bounds
    // the requests (and so the signing thread's queue) as it bounds signatures.
    let config = SessionConfig {
        handshake_burst: 2,
        handshake_refill: Duration::from_secs(10),
        ..deferred()
    };
    let (mut net, bob_signer) = test_net(11, config);
    net.node_mut(bob_addr()).delay = None;
    let cids: Vec<u64> = (0..20).map(|i| 0xb000 + i).collect();
    let cookies: Vec<Vec<u8>> = cids
        .iter()
        .map(|&cid| fetch_cookie(&mut net, mallory_addr(), bob_addr(), cid))
        .collect();
    let mut packed = Vec::new();
    for (cid, cookie) in cids.iter().zip(&cookies).take(10) {
        packed.extend(build_initial(
            "mallory",
            *cid,
            &MALLORY_EPHEMERAL,
            cookie,
            MIN_INITIAL,
        ));
    }
    deliver(&mut net, mallory_addr(), bob_addr(), &packed);
    assert_eq!(net.node(bob_addr()).held.len(), 1);
    for (cid, cookie) in cids.iter().zip(&cookies).skip(10) {
        deliver(
            &mut net,
            mallory_addr(),
            bob_addr(),
            &build_initial("mallory", *cid, &MALLORY_EPHEMERAL, cookie, MIN_INITIAL),
        );
    }
    assert_eq!(net.node(bob_addr()).held.len(), 2, "the burst of two");
    let stats = bob_stats(&net);
    assert_eq!(stats.sign_requests, 2);
    assert_eq!(stats.rate_limited, 9);
    assert_eq!(bob_signer.count(), 0, "the endpoint never signs itself");
    assert!(take_transmits(&mut net, bob_addr())
        .iter()
        .all(|(_, d)| packet_type(d) == PacketType::RETRY));
    assert!(net
        .node(bob_addr())
        .peer
        .events
        .iter()
        .all(|(_, e)| !matches!(e, Event::Connected { .. })));
}
