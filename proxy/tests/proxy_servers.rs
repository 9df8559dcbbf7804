//! A real key manager and a real proxy on 127.0.0.1: first claim wins, re-election with
//! signed votes, each kind of refusal, restart and re-announcement, expiry, the
//! amplification bound, and garbage over UDP and TCP.
//!
//! The key manager's key is the fixture `carol`; node keys `alice`, `bob`, `dave` (the
//! members) and `mallory` (registered, never a member) are registered through the real
//! client, so every key the proxy checks comes from a signed key record. Nothing sleeps
//! to synchronise: every awaited event has a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use sockmsg_keymgr::client::{KeymgrClient, Trust};
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::registry::RegistrationMode;
use sockmsg_proxy::client::{query_request, RecordDraft};
use sockmsg_proxy::handler::{decode_response, RecordSummary, PAD_OR_TCP};
use sockmsg_proxy::{Kind, ServeConfig, Server, Stats};
use sockmsg_wire::frame::{Frame, ProxyStatus};
use sockmsg_wire::session::crypto::RsaSigner;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const MANAGER_PEM: &str = include_str!("../../testdata/keys/carol.pem");
const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
const DAVE_PEM: &str = include_str!("../../testdata/keys/dave.pem");
const MALLORY_PEM: &str = include_str!("../../testdata/keys/mallory.pem");

/// Upper bound on any single awaited event.
const WAIT: Duration = Duration::from_secs(10);
/// Queries are padded so a whole LEADER_INFO fits 3× the request.
const QUERY_PAD: usize = 600;
const MEMBERS: &[&str] = &["alice", "bob", "dave"];

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockmsg-proxy-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn now_ms() -> u64 {
    datadir::now_ms()
}

struct Nodes {
    alice: RsaSigner,
    bob: RsaSigner,
    dave: RsaSigner,
    mallory: RsaSigner,
}

fn nodes() -> Nodes {
    let signer = |name: &str, pem: &str| RsaSigner::from_pkcs8_pem(name, pem).expect("test key");
    Nodes {
        alice: signer("alice", ALICE_PEM),
        bob: signer("bob", BOB_PEM),
        dave: signer("dave", DAVE_PEM),
        mallory: signer("mallory", MALLORY_PEM),
    }
}

/// A key manager with the four node keys registered.
struct Keymgr {
    addr: SocketAddr,
    fingerprint: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: TempDir,
}

impl Keymgr {
    async fn start(nodes: &Nodes) -> Keymgr {
        let dir = TempDir::new("keymgr");
        let fingerprint = datadir::init_with_key(&dir.0, MANAGER_PEM).expect("init");
        let config =
            sockmsg_keymgr::server::ServeConfig::new(&dir.0, loopback(), RegistrationMode::Open);
        let server = sockmsg_keymgr::server::Server::bind(config)
            .await
            .expect("keymgr bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let client =
            KeymgrClient::new(addr, Trust::Pinned(fingerprint.clone())).expect("keymgr client");
        for node in [&nodes.alice, &nodes.bob, &nodes.dave, &nodes.mallory] {
            use sockmsg_wire::session::crypto::Signer as _;
            timeout(WAIT, client.register(node.name(), node, None))
                .await
                .expect("register in time")
                .expect("registered");
        }
        Keymgr {
            addr,
            fingerprint,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let _ = timeout(WAIT, &mut self.task).await;
    }
}

/// A proxy running in the background.
struct Proxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), sockmsg_proxy::ServerError>>,
}

impl Proxy {
    async fn start(keymgr: &Keymgr, listen: SocketAddr, ttl_ms: u64) -> Proxy {
        let mut config = ServeConfig::new(
            listen,
            keymgr.addr,
            Trust::Pinned(keymgr.fingerprint.clone()),
        );
        config.directory.record_ttl_ms = ttl_ms;
        config.tcp_read_timeout = Duration::from_millis(600);
        let server = Server::bind(config).await.expect("proxy bind");
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            stats,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        timeout(WAIT, &mut self.task)
            .await
            .expect("proxy stops in time")
            .expect("proxy task")
            .expect("proxy ran cleanly");
    }
}

// ----- requests ---------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn draft(term: u64, leader: &str, members: &[&str]) -> RecordDraft {
    RecordDraft {
        group: "lobby".into(),
        term,
        leader: leader.into(),
        leader_addr: "127.0.0.1:7402".parse().expect("addr"),
        membership_version: 3,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        issued_at_ms: now_ms(),
    }
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([42; 32])
}

/// A LEADER_CLAIM or LEADER_ANNOUNCE signed by `signer`, with votes signed by `voters`.
fn proposal(
    kind: Kind,
    record: &RecordDraft,
    signer: &RsaSigner,
    voters: &[&RsaSigner],
) -> Vec<u8> {
    use sockmsg_wire::session::crypto::Signer as _;
    let signature = record.sign(signer, &mut rng()).expect("sign");
    let votes: Vec<(String, Vec<u8>)> = voters
        .iter()
        .map(|voter| {
            let vote = record.sign_vote(*voter, &mut rng()).expect("vote");
            (voter.name().to_owned(), vote)
        })
        .collect();
    record
        .request(next_id(), kind, &signature, &votes, 0)
        .expect("request")
}

/// Sends `request` over UDP and waits for the answer echoing its id.
async fn udp_exchange(proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind(loopback()).await.expect("bind");
    socket.send_to(request, proxy).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    let len = timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    buf.truncate(len);
    assert_eq!(
        buf[8..16],
        request[8..16],
        "the answer echoes the request id"
    );
    assert!(buf.len() <= 3 * request.len(), "amplification bound");
    buf
}

async fn tcp_exchange(proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = timeout(WAIT, TcpStream::connect(proxy))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut header = [0u8; sockmsg_wire::HEADER_LEN];
    timeout(WAIT, stream.read_exact(&mut header))
        .await
        .expect("answer in time")
        .expect("read header");
    let len = usize::from(u16::from_be_bytes([header[6], header[7]]));
    let mut answer = header.to_vec();
    answer.resize(header.len() + len, 0);
    timeout(WAIT, stream.read_exact(&mut answer[header.len()..]))
        .await
        .expect("answer in time")
        .expect("read payload");
    answer
}

/// What a claim or announcement came back with.
fn result(answer: &[u8]) -> (ProxyStatus, String) {
    match decode_response(answer) {
        Some((_, Frame::ProxyResult(result))) => (result.status, result.reason.as_str().to_owned()),
        other => panic!("expected PROXY_RESULT, got {other:?}"),
    }
}

async fn submit(proxy: SocketAddr, request: &[u8]) -> ProxyStatus {
    result(&udp_exchange(proxy, request).await).0
}

/// The leader record the proxy holds for "lobby", if any.
async fn who_leads(proxy: SocketAddr) -> Option<RecordSummary> {
    let request = query_request(next_id(), "lobby", QUERY_PAD).expect("query");
    let answer = udp_exchange(proxy, &request).await;
    match decode_response(&answer) {
        Some((_, Frame::LeaderInfo(record))) => Some(RecordSummary::from(&record)),
        Some((_, Frame::NoLeader(_))) => None,
        other => panic!("expected LEADER_INFO or NO_LEADER, got {other:?}"),
    }
}

// ----- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_claim_wins_and_a_concurrent_second_is_refused() {
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), 5_000).await;
    assert_eq!(who_leads(proxy.addr).await, None);

    let by_alice = proposal(
        Kind::Claim,
        &draft(1, "alice", &["alice"]),
        &nodes.alice,
        &[],
    );
    let by_bob = proposal(Kind::Claim, &draft(1, "bob", &["bob"]), &nodes.bob, &[]);
    let (a, b) = tokio::join!(submit(proxy.addr, &by_alice), submit(proxy.addr, &by_bob));
    let mut statuses = [a, b];
    statuses.sort_by_key(|status| status.0);
    assert_eq!(
        statuses,
        [ProxyStatus::ACCEPTED, ProxyStatus::ALREADY_CLAIMED],
        "exactly one claim wins"
    );
    let winner = if a == ProxyStatus::ACCEPTED {
        "alice"
    } else {
        "bob"
    };
    let held = who_leads(proxy.addr).await.expect("a leader");
    assert_eq!((held.leader.as_str(), held.term), (winner, 1));

    let stats = proxy.stats.snapshot();
    assert_eq!(stats.accepted_first, 1);
    assert_eq!(stats.refused_already_claimed, 1);
    proxy.stop().await;
    keymgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_election_is_accepted_and_every_bad_record_is_refused() {
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), 5_000).await;
    let addr = proxy.addr;

    let term1 = draft(1, "alice", MEMBERS);
    let claim = proposal(Kind::Claim, &term1, &nodes.alice, &[]);
    assert_eq!(submit(addr, &claim).await, ProxyStatus::ACCEPTED);

    // Too few votes: bob's own of three members.
    let term2 = draft(2, "bob", MEMBERS);
    let short = proposal(Kind::Announce, &term2, &nodes.bob, &[&nodes.bob]);
    assert_eq!(submit(addr, &short).await, ProxyStatus::INSUFFICIENT_VOTES);
    // Votes from a non-member do not make up the difference, even if the new record
    // lists it.
    let packed = draft(2, "bob", &["alice", "bob", "dave", "mallory"]);
    let outsiders = proposal(
        Kind::Announce,
        &packed,
        &nodes.bob,
        &[&nodes.bob, &nodes.mallory],
    );
    assert_eq!(
        submit(addr, &outsiders).await,
        ProxyStatus::INSUFFICIENT_VOTES
    );
    // A forged leader signature: mallory signs a record naming bob.
    let forged = proposal(
        Kind::Announce,
        &term2,
        &nodes.mallory,
        &[&nodes.bob, &nodes.dave],
    );
    assert_eq!(submit(addr, &forged).await, ProxyStatus::BAD_SIGNATURE);
    assert_eq!(
        who_leads(addr).await.expect("held").term,
        1,
        "nothing changed"
    );

    // A majority of the held membership: accepted.
    let elected = proposal(
        Kind::Announce,
        &term2,
        &nodes.bob,
        &[&nodes.bob, &nodes.dave],
    );
    assert_eq!(submit(addr, &elected).await, ProxyStatus::ACCEPTED);
    let held = who_leads(addr).await.expect("held");
    assert_eq!((held.leader.as_str(), held.term), ("bob", 2));

    // Replays: the same announcement again, and an older record of the same term.
    assert_eq!(submit(addr, &elected).await, ProxyStatus::REPLAYED);
    let mut older = term2.clone();
    older.issued_at_ms -= 1_000;
    let older = proposal(
        Kind::Announce,
        &older,
        &nodes.bob,
        &[&nodes.bob, &nodes.dave],
    );
    assert_eq!(submit(addr, &older).await, ProxyStatus::REPLAYED);
    // A stale term: alice re-announcing term 1.
    let mut stale = term1.clone();
    stale.issued_at_ms = now_ms();
    let stale = proposal(Kind::Announce, &stale, &nodes.alice, &[]);
    let (status, reason) = result(&udp_exchange(addr, &stale).await);
    assert_eq!(
        (status, reason.as_str()),
        (ProxyStatus::STALE_TERM, "term 1 < 2")
    );
    // A refresh by the leader: accepted.
    let mut refresh = term2.clone();
    refresh.issued_at_ms += 1;
    let refresh = proposal(Kind::Announce, &refresh, &nodes.bob, &[]);
    assert_eq!(submit(addr, &refresh).await, ProxyStatus::ACCEPTED);

    let stats = proxy.stats.snapshot();
    assert_eq!(
        (
            stats.accepted_first,
            stats.accepted_election,
            stats.accepted_refresh
        ),
        (1, 1, 1)
    );
    assert_eq!(stats.refused_insufficient_votes, 2);
    assert_eq!(stats.refused_bad_signature, 1);
    assert_eq!(stats.refused_replayed, 2);
    assert_eq!(stats.refused_stale_term, 1);
    proxy.stop().await;
    keymgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_followed_by_re_announcement_restores_the_record() {
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), 5_000).await;
    let addr = proxy.addr;
    let claim = proposal(Kind::Claim, &draft(1, "alice", MEMBERS), &nodes.alice, &[]);
    assert_eq!(submit(addr, &claim).await, ProxyStatus::ACCEPTED);
    let term2 = draft(2, "bob", MEMBERS);
    let elected = proposal(
        Kind::Announce,
        &term2,
        &nodes.bob,
        &[&nodes.bob, &nodes.alice],
    );
    assert_eq!(submit(addr, &elected).await, ProxyStatus::ACCEPTED);

    // Restart on the same port: the soft state is gone.
    proxy.stop().await;
    let proxy = Proxy::start(&keymgr, addr, 5_000).await;
    assert_eq!(proxy.addr, addr);
    assert_eq!(who_leads(addr).await, None);

    // The leader's next periodic announcement (fresh issue time, the same votes).
    let mut again = term2.clone();
    again.issued_at_ms += 1;
    let again = proposal(
        Kind::Announce,
        &again,
        &nodes.bob,
        &[&nodes.bob, &nodes.alice],
    );
    assert_eq!(submit(addr, &again).await, ProxyStatus::ACCEPTED);
    let held = who_leads(addr).await.expect("restored");
    assert_eq!((held.leader.as_str(), held.term), ("bob", 2));
    assert_eq!(held.members, MEMBERS);
    // And the old leader cannot take it back with its term-1 claim.
    let mut old = draft(1, "alice", MEMBERS);
    old.issued_at_ms += 2;
    let old = proposal(Kind::Claim, &old, &nodes.alice, &[]);
    assert_eq!(submit(addr, &old).await, ProxyStatus::ALREADY_CLAIMED);
    proxy.stop().await;
    keymgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_not_re_announced_expires() {
    const TTL_MS: u64 = 300;
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), TTL_MS).await;
    let claim = proposal(Kind::Claim, &draft(1, "alice", MEMBERS), &nodes.alice, &[]);
    let accepted_at = Instant::now();
    assert_eq!(submit(proxy.addr, &claim).await, ProxyStatus::ACCEPTED);
    assert!(who_leads(proxy.addr).await.is_some());
    let deadline = accepted_at + WAIT;
    while who_leads(proxy.addr).await.is_some() {
        assert!(Instant::now() < deadline, "the record never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted_at.elapsed() >= Duration::from_millis(TTL_MS));
    // Forgotten: a new claim (by anyone) wins again.
    let claim = proposal(Kind::Claim, &draft(1, "dave", &["dave"]), &nodes.dave, &[]);
    assert_eq!(submit(proxy.addr, &claim).await, ProxyStatus::ACCEPTED);
    proxy.stop().await;
    keymgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_udp_queries_are_not_amplified_and_tcp_has_no_bound() {
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), 5_000).await;
    let claim = proposal(Kind::Claim, &draft(1, "alice", MEMBERS), &nodes.alice, &[]);
    assert_eq!(submit(proxy.addr, &claim).await, ProxyStatus::ACCEPTED);

    let short = query_request(next_id(), "lobby", 0).expect("query");
    let answer = udp_exchange(proxy.addr, &short).await;
    assert_eq!(
        result(&answer),
        (ProxyStatus::BAD_REQUEST, PAD_OR_TCP.to_owned())
    );
    let answer = tcp_exchange(proxy.addr, &short).await;
    assert!(matches!(
        decode_response(&answer),
        Some((_, Frame::LeaderInfo(_)))
    ));
    assert!(answer.len() > 3 * short.len());
    proxy.stop().await;
    keymgr.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_over_udp_and_tcp_do_not_stop_the_service() {
    let nodes = nodes();
    let keymgr = Keymgr::start(&nodes).await;
    let proxy = Proxy::start(&keymgr, loopback(), 5_000).await;
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let valid = query_request(1, "lobby", QUERY_PAD).expect("query");

    let socket = UdpSocket::bind(loopback()).await.expect("bind");
    for round in 0..300usize {
        let mut bytes = vec![0u8; round % 1300];
        rng.fill_bytes(&mut bytes);
        // Every third datagram starts like a real REQUEST header, to get past the magic.
        if round % 3 == 0 && bytes.len() > 8 {
            let n = bytes.len().min(valid.len());
            bytes[..8].copy_from_slice(&valid[..8]);
            bytes[..n].iter_mut().skip(8).for_each(|b| *b ^= 1);
        }
        socket.send_to(&bytes, proxy.addr).await.expect("send");
    }
    for round in 0..20usize {
        let Ok(Ok(mut stream)) = timeout(WAIT, TcpStream::connect(proxy.addr)).await else {
            panic!("connect")
        };
        let mut bytes = vec![0u8; 1 + round * 97];
        rng.fill_bytes(&mut bytes);
        if round % 2 == 0 && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&valid[..8]);
        }
        // The server may close before reading everything: that is fine.
        let _ = stream.write_all(&bytes).await;
        drop(stream);
    }

    // Still serving, over both transports.
    assert_eq!(who_leads(proxy.addr).await, None);
    let answer = tcp_exchange(proxy.addr, &valid).await;
    assert!(matches!(
        decode_response(&answer),
        Some((_, Frame::NoLeader(_)))
    ));
    let claim = proposal(Kind::Claim, &draft(1, "alice", MEMBERS), &nodes.alice, &[]);
    assert_eq!(submit(proxy.addr, &claim).await, ProxyStatus::ACCEPTED);
    let stats = proxy.stats.snapshot();
    assert!(stats.dropped > 0, "{stats:?}");
    // UDP may lose some of the burst in the kernel's receive buffer; what arrived was
    // counted and refused.
    assert!(stats.udp_datagrams > 0, "{stats:?}");
    proxy.stop().await;
    keymgr.stop().await;
}
