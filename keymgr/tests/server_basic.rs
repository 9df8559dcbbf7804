//! A real key manager on 127.0.0.1: registration and lookup over UDP and TCP, the
//! amplification rule, invites across a restart, garbage, and a client trickling bytes.
//!
//! The manager key is the test fixture `carol` (no slow key generation); node keys are
//! `alice`, `bob` and `dave`. Nothing sleeps to synchronise: every awaited event has a
//! timeout instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use sockmsg_keymgr::admission::Limits;
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::merkle;
use sockmsg_keymgr::registry::{self, RegistrationMode, MANAGER_NAME};
use sockmsg_keymgr::server::{ServeConfig, Server, Stats};
use sockmsg_wire::frame::{Frame, KeyLookup, KeyRegister, KeyResultCode, KeyStatus, Padding};
use sockmsg_wire::session::crypto::{PeerKeys as _, RsaKeyring, RsaSigner, Signer as _};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Name, PacketType, PublicKey, Signature, Token, HEADER_LEN,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const MANAGER_PEM: &str = include_str!("../../testdata/keys/carol.pem");
const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
const DAVE_PEM: &str = include_str!("../../testdata/keys/dave.pem");

/// Upper bound on any single awaited event.
const WAIT: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockmsg-keymgr-server-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server running in the background.
struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(config: ServeConfig) -> Running {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Running {
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
            .expect("server stops in time")
            .expect("server task")
            .expect("server ran cleanly");
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(dir: &Path, mode: RegistrationMode) -> ServeConfig {
    let mut config = ServeConfig::new(dir, loopback(), mode);
    config.tcp_read_timeout = Duration::from_millis(600);
    config.tcp_idle_timeout = Duration::from_secs(5);
    config
}

fn init_dir(tag: &str) -> (TempDir, String) {
    let dir = TempDir::new(tag);
    let fingerprint = datadir::init_with_key(dir.path(), MANAGER_PEM).expect("init");
    (dir, fingerprint)
}

fn signer(name: &str, pem: &str) -> RsaSigner {
    RsaSigner::from_pkcs8_pem(name, pem).expect("test key")
}

fn manager_signer() -> RsaSigner {
    signer(MANAGER_NAME, MANAGER_PEM)
}

// ----- packets ----------------------------------------------------------------------------

/// A REQUEST packet holding `frame`, padded with PADDING to at least `min_len` bytes.
fn request(id: u64, frame: Frame<'_>, min_len: usize) -> Vec<u8> {
    let mut bare = Vec::new();
    encode_cleartext_packet(&mut bare, PacketType::REQUEST, id, 0, &[frame]).unwrap();
    if bare.len() >= min_len {
        return bare;
    }
    let padding = Padding::new(min_len - bare.len()).unwrap();
    let mut packet = Vec::new();
    encode_cleartext_packet(
        &mut packet,
        PacketType::REQUEST,
        id,
        0,
        &[frame, Frame::Padding(padding)],
    )
    .unwrap();
    packet
}

fn challenge_request(id: u64) -> Vec<u8> {
    request(id, Frame::KeyChallengeRequest, 0)
}

fn lookup_request(id: u64, name: &str, min_len: usize) -> Vec<u8> {
    let name = Name::new(name).unwrap();
    request(id, Frame::KeyLookup(KeyLookup { name }), min_len)
}

fn register_request(
    id: u64,
    node: &RsaSigner,
    name: &str,
    nonce: &[u8; 32],
    invite: &[u8],
) -> Vec<u8> {
    let name = Name::new(name).unwrap();
    let public_key = PublicKey::new(node.public_key_der()).unwrap();
    let invite = Token::new(invite).unwrap();
    let unsigned = KeyRegister {
        name,
        public_key,
        nonce,
        invite,
        signature: Signature::new(&[]).unwrap(),
    };
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let signature = node.sign(&mut rng, &registry::register_signing_input(&unsigned));
    let signed = KeyRegister {
        signature: Signature::new(&signature).unwrap(),
        ..unsigned
    };
    request(id, Frame::KeyRegister(signed), 0)
}

/// What a RESPONSE said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Result { code: KeyResultCode, reason: String },
    Challenge([u8; 32]),
    Record(Record),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    name: String,
    public_key: Vec<u8>,
    serial: u64,
    status: KeyStatus,
    /// The batch signature verified against the manager key.
    verified: bool,
}

fn parse_answer(id: u64, bytes: &[u8]) -> Answer {
    let packet = Datagram::new(bytes)
        .next()
        .expect("a packet")
        .expect("a well-formed packet");
    assert_eq!(packet.packet_type(), PacketType::RESPONSE);
    assert_eq!(
        packet.header().connection_id(),
        id,
        "the response echoes the request id"
    );
    assert_eq!(
        packet.payload().len() + HEADER_LEN,
        bytes.len(),
        "one packet"
    );
    let frame = packet
        .frames()
        .map(|f| f.expect("well-formed frame"))
        .find(|f| !matches!(f, Frame::Padding(_)))
        .expect("a frame");
    match frame {
        Frame::KeyResult(result) => Answer::Result {
            code: result.code,
            reason: result.reason.as_str().to_owned(),
        },
        Frame::KeyChallenge(challenge) => Answer::Challenge(*challenge.nonce),
        Frame::KeyRecord(record) => {
            let fields = registry::record_fields(
                record.name.as_str(),
                record.public_key.as_bytes(),
                record.serial,
                record.issued_at_ms,
                record.status,
            )
            .unwrap();
            let leaf = merkle::leaf_hash(&fields);
            let root = merkle::root_from_proof(
                &leaf,
                u64::from(record.batch.index),
                u64::from(record.batch.size),
                record.batch.path.iter().copied(),
            );
            let verified = root.is_some_and(|root| {
                let mut keyring = RsaKeyring::new();
                keyring
                    .insert_der(MANAGER_NAME, manager_signer().public_key_der())
                    .unwrap();
                keyring
                    .verify(
                        MANAGER_NAME,
                        &merkle::batch_signing_input(record.batch.size, &root),
                        record.signature.as_bytes(),
                    )
                    .is_ok()
            });
            Answer::Record(Record {
                name: record.name.as_str().to_owned(),
                public_key: record.public_key.as_bytes().to_vec(),
                serial: record.serial,
                status: record.status,
                verified,
            })
        }
        other => panic!("unexpected frame {other:?}"),
    }
}

fn expect_ok(answer: Answer) {
    match answer {
        Answer::Result { code, reason } => {
            assert_eq!(code, KeyResultCode::OK, "refused: {reason}")
        }
        other => panic!("expected KEY_RESULT OK, got {other:?}"),
    }
}

fn expect_code(answer: Answer, expected: KeyResultCode) -> String {
    match answer {
        Answer::Result { code, reason } => {
            assert_eq!(code, expected, "reason: {reason}");
            reason
        }
        other => panic!("expected KEY_RESULT {expected:?}, got {other:?}"),
    }
}

fn expect_record(answer: Answer) -> Record {
    match answer {
        Answer::Record(record) => record,
        other => panic!("expected KEY_RECORD, got {other:?}"),
    }
}

fn expect_challenge(answer: Answer) -> [u8; 32] {
    match answer {
        Answer::Challenge(nonce) => nonce,
        other => panic!("expected KEY_CHALLENGE, got {other:?}"),
    }
}

// ----- clients ----------------------------------------------------------------------------

struct UdpClient {
    socket: UdpSocket,
    next_id: u64,
}

impl UdpClient {
    async fn connect(server: SocketAddr) -> UdpClient {
        let socket = UdpSocket::bind(loopback()).await.unwrap();
        socket.connect(server).await.unwrap();
        UdpClient {
            socket,
            next_id: 0x5500,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends `packet` and returns the raw answer, checking the 3× rule on the way.
    async fn call_raw(&mut self, packet: &[u8]) -> Vec<u8> {
        self.socket.send(packet).await.unwrap();
        let mut buf = vec![0u8; 65_536];
        let len = timeout(WAIT, self.socket.recv(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            len <= 3 * packet.len(),
            "UDP answer of {len} bytes to a {}-byte request",
            packet.len()
        );
        buf.truncate(len);
        buf
    }

    async fn call(&mut self, id: u64, packet: &[u8]) -> Answer {
        let bytes = self.call_raw(packet).await;
        parse_answer(id, &bytes)
    }

    async fn challenge(&mut self) -> [u8; 32] {
        let id = self.id();
        expect_challenge(self.call(id, &challenge_request(id)).await)
    }

    async fn register(&mut self, node: &RsaSigner, name: &str, invite: &[u8]) -> Answer {
        let nonce = self.challenge().await;
        let id = self.id();
        self.call(id, &register_request(id, node, name, &nonce, invite))
            .await
    }

    async fn lookup(&mut self, name: &str) -> Answer {
        let id = self.id();
        // SPEC.md §4: a KEY_LOOKUP is padded to at least 400 bytes.
        self.call(id, &lookup_request(id, name, 400)).await
    }
}

struct TcpClient {
    stream: TcpStream,
    next_id: u64,
}

impl TcpClient {
    async fn connect(server: SocketAddr) -> TcpClient {
        let stream = timeout(WAIT, TcpStream::connect(server))
            .await
            .expect("connect in time")
            .unwrap();
        TcpClient {
            stream,
            next_id: 0x7700,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn call(&mut self, id: u64, packet: &[u8]) -> Answer {
        self.stream.write_all(packet).await.unwrap();
        let answer = timeout(WAIT, read_packet(&mut self.stream))
            .await
            .expect("an answer in time")
            .expect("an answer");
        parse_answer(id, &answer)
    }

    async fn challenge(&mut self) -> [u8; 32] {
        let id = self.id();
        expect_challenge(self.call(id, &challenge_request(id)).await)
    }

    async fn register(&mut self, node: &RsaSigner, name: &str, invite: &[u8]) -> Answer {
        let nonce = self.challenge().await;
        let id = self.id();
        self.call(id, &register_request(id, node, name, &nonce, invite))
            .await
    }

    async fn lookup(&mut self, name: &str) -> Answer {
        let id = self.id();
        // Over TCP there is no amplification limit: no padding.
        self.call(id, &lookup_request(id, name, 0)).await
    }
}

/// Reads one packet (header, then `payload_len` bytes) from a stream.
async fn read_packet(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut packet = vec![0u8; HEADER_LEN];
    stream.read_exact(&mut packet).await?;
    let len = usize::from(u16::from_be_bytes([packet[6], packet[7]]));
    packet.resize(HEADER_LEN + len, 0);
    stream.read_exact(&mut packet[HEADER_LEN..]).await?;
    Ok(packet)
}

/// Waits until the server closes `stream`: a read returns end of file or an error.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

// ----- tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_lookup_over_udp() {
    let (dir, fingerprint) = init_dir("udp");
    assert_eq!(
        fingerprint,
        registry::fingerprint(manager_signer().public_key_der())
    );
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let mut client = UdpClient::connect(server.addr).await;
    let alice = signer("alice", ALICE_PEM);

    // The manager's own record, self-signed, so a client can check the pinned fingerprint.
    let manager = expect_record(client.lookup(MANAGER_NAME).await);
    assert_eq!(registry::fingerprint(&manager.public_key), fingerprint);
    assert_eq!(manager.status, KeyStatus::ACTIVE);
    assert!(manager.verified);

    expect_code(client.lookup("alice").await, KeyResultCode::NOT_FOUND);
    expect_ok(client.register(&alice, "alice", &[]).await);

    let record = expect_record(client.lookup("alice").await);
    assert_eq!(record.name, "alice");
    assert_eq!(record.public_key, alice.public_key_der());
    assert_eq!(record.serial, 1);
    assert_eq!(record.status, KeyStatus::ACTIVE);
    assert!(
        record.verified,
        "the record's batch signature verifies with the manager key"
    );

    // Registering again with the same key is idempotent (a client retry).
    expect_ok(client.register(&alice, "alice", &[]).await);
    // Someone else's key for a bound name is refused.
    let mallory = signer("alice", DAVE_PEM);
    expect_code(
        client.register(&mallory, "alice", &[]).await,
        KeyResultCode::NAME_TAKEN,
    );

    // An unpadded lookup for a large record gets a short refusal, never the record.
    let id = client.id();
    let short = lookup_request(id, "alice", 0);
    let reason = expect_code(client.call(id, &short).await, KeyResultCode::BAD_REQUEST);
    assert!(!reason.is_empty());

    let stats = server.stats.snapshot();
    // Both registrations were acknowledged OK (the second changed nothing); one batch.
    assert_eq!((stats.committed, stats.batches), (2, 1), "{stats:?}");
    assert!(stats.refused >= 3, "{stats:?}");
    assert_eq!(stats.amplification_guarded, 0, "{stats:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_lookup_over_tcp() {
    let (dir, _) = init_dir("tcp");
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let mut client = TcpClient::connect(server.addr).await;
    let bob = signer("bob", BOB_PEM);

    expect_ok(client.register(&bob, "bob", &[]).await);
    let record = expect_record(client.lookup("bob").await);
    assert_eq!(record.name, "bob");
    assert_eq!(record.public_key, bob.public_key_der());
    assert_eq!(record.status, KeyStatus::ACTIVE);
    assert!(record.verified);

    // The same record over UDP.
    let mut udp = UdpClient::connect(server.addr).await;
    assert_eq!(expect_record(udp.lookup("bob").await), record);

    // A forged registration (signed by another key than the one registered).
    let nonce = client.challenge().await;
    let id = client.id();
    let mut packet = register_request(id, &bob, "eve", &nonce, &[]);
    let last = packet.len() - 1;
    packet[last] ^= 0x01;
    expect_code(client.call(id, &packet).await, KeyResultCode::BAD_SIGNATURE);

    // The connection survives refusals; garbage closes it (framing is lost).
    expect_record(client.lookup("bob").await);
    client.stream.write_all(&[0xde; 40]).await.unwrap();
    assert!(timeout(WAIT, closed_by_server(&mut client.stream))
        .await
        .expect("closed in time"));
    assert_eq!(server.stats.snapshot().tcp_bad_packets, 1);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tcp_client_is_dropped_while_others_are_served() {
    let (dir, _) = init_dir("slow");
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;

    // One byte every 200 ms of a valid, padded lookup: 100 bytes would take 20 s.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let packet = lookup_request(1, MANAGER_NAME, 100);
    let (mut reader, mut writer) = slow.split();
    let trickle = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        let mut sent = 0;
        for byte in &packet {
            ticks.tick().await;
            if writer.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    };
    let closed = async {
        let mut buf = [0u8; 64];
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("the slow client got an answer"),
        }
    };
    let served = async {
        // Meanwhile another client is served, over TCP and UDP.
        let mut fast = TcpClient::connect(server.addr).await;
        expect_record(fast.lookup(MANAGER_NAME).await);
        let mut udp = UdpClient::connect(server.addr).await;
        expect_record(udp.lookup(MANAGER_NAME).await);
    };
    let disconnect = async {
        tokio::pin!(trickle);
        tokio::select! {
            () = closed => {}
            sent = &mut trickle => panic!("the whole packet ({sent} bytes) went through"),
        }
    };
    timeout(WAIT, async { tokio::join!(disconnect, served) })
        .await
        .expect("the slow client was dropped and the other served in time");
    assert_eq!(server.stats.snapshot().tcp_read_timeouts, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_udp_is_dropped_silently() {
    let (dir, _) = init_dir("garbage");
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let raw = UdpSocket::bind(loopback()).await.unwrap();
    raw.connect(server.addr).await.unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for len in [0usize, 1, 23, 24, 25, 100, 1200] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        raw.send(&bytes).await.unwrap();
    }
    // A RESPONSE packet sent to the server is not a request either.
    raw.send(&sockmsg_keymgr::handler::ok_response(9))
        .await
        .unwrap();
    // The server still answers a real request on the same socket, and it is the first
    // thing that socket receives: garbage got no answer.
    let id = 42;
    raw.send(&lookup_request(id, MANAGER_NAME, 400))
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let len = timeout(WAIT, raw.recv(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    expect_record(parse_answer(id, &buf[..len]));
    let stats = server.stats.snapshot();
    // The empty datagram may or may not be delivered as one; the rest are dropped.
    assert!(stats.dropped >= 7, "{stats:?}");
    assert_eq!(stats.replies, 1, "{stats:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_single_use_across_a_restart() {
    let (dir, _) = init_dir("invite");
    let token = datadir::mint_invite(dir.path()).expect("mint");
    let other = datadir::mint_invite(dir.path()).expect("mint");
    assert_ne!(token, other);
    let alice = signer("alice", ALICE_PEM);
    let bob = signer("bob", BOB_PEM);
    let dave = signer("dave", DAVE_PEM);

    let server = Running::start(config(dir.path(), RegistrationMode::Invite)).await;
    let mut client = UdpClient::connect(server.addr).await;
    expect_code(
        client.register(&alice, "alice", &[]).await,
        KeyResultCode::INVITE_REQUIRED,
    );
    let mut forged = token;
    forged[31] ^= 1;
    expect_code(
        client.register(&alice, "alice", &forged).await,
        KeyResultCode::INVITE_REQUIRED,
    );
    expect_ok(client.register(&alice, "alice", &token).await);
    expect_code(
        client.register(&bob, "bob", &token).await,
        KeyResultCode::INVITE_REQUIRED,
    );
    server.stop().await;

    // After a restart the used token is still used; the other one still works once.
    let server = Running::start(config(dir.path(), RegistrationMode::Invite)).await;
    let mut client = TcpClient::connect(server.addr).await;
    expect_code(
        client.register(&bob, "bob", &token).await,
        KeyResultCode::INVITE_REQUIRED,
    );
    expect_ok(client.register(&bob, "bob", &other).await);
    expect_code(
        client.register(&dave, "dave", &other).await,
        KeyResultCode::INVITE_REQUIRED,
    );
    expect_record(client.lookup("alice").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_are_group_committed() {
    let (dir, _) = init_dir("group");
    const N: usize = 40;
    // Forty names for one key from one address: more than the default limits allow.
    let mut config = config(dir.path(), RegistrationMode::Open);
    config.limits = Limits::unlimited();
    let server = Running::start(config).await;
    let alice = Arc::new(signer("alice", ALICE_PEM));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (addr, alice) = (server.addr, Arc::clone(&alice));
        tasks.push(tokio::spawn(async move {
            let mut client = UdpClient::connect(addr).await;
            let nonce = client.challenge().await;
            let id = client.id();
            let packet = register_request(id, &alice, &format!("node{i}"), &nonce, &[]);
            (client, id, packet)
        }));
    }
    let mut prepared = Vec::new();
    for task in tasks {
        prepared.push(task.await.unwrap());
    }
    let calls = prepared.into_iter().map(|(mut client, id, packet)| {
        tokio::spawn(async move { client.call(id, &packet).await })
    });
    for call in calls.collect::<Vec<_>>() {
        expect_ok(call.await.unwrap());
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.committed, N as u64);
    eprintln!("{N} registrations in {} batch(es)", stats.batches);
    assert!(stats.batches >= 1 && stats.batches <= N as u64);
    server.stop().await;

    // Everything acknowledged is on disk.
    let data = datadir::open(dir.path()).expect("reopen");
    let names: Vec<String> = data.list().unwrap().into_iter().map(|l| l.name).collect();
    for i in 0..N {
        assert!(names.contains(&format!("node{i}")), "node{i} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_revocation_is_served_as_revoked() {
    let (dir, _) = init_dir("revoke");
    let alice = signer("alice", ALICE_PEM);
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let mut client = UdpClient::connect(server.addr).await;
    expect_ok(client.register(&alice, "alice", &[]).await);

    // The database is locked while the server runs, and the error says so.
    let error = datadir::open(dir.path()).unwrap_err().to_string();
    assert!(error.contains("already running"), "{error}");
    server.stop().await;

    let data = datadir::open(dir.path()).expect("open");
    assert_eq!(data.revoke("alice").expect("revoke"), 2);
    assert!(data.revoke("alice").is_err(), "already revoked");
    assert!(data.revoke("nobody").is_err());
    assert!(data.revoke(MANAGER_NAME).is_err());
    let listing = data.list().unwrap();
    let entry = listing.iter().find(|l| l.name == "alice").unwrap();
    assert_eq!((entry.serial, entry.status), (2, KeyStatus::REVOKED));
    drop(data);

    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let mut client = UdpClient::connect(server.addr).await;
    let record = expect_record(client.lookup("alice").await);
    assert_eq!((record.serial, record.status), (2, KeyStatus::REVOKED));
    assert!(record.verified);
    expect_code(
        client.register(&alice, "alice", &[]).await,
        KeyResultCode::REVOKED,
    );
    server.stop().await;
}

#[test]
fn init_refuses_an_existing_key_and_open_explains_a_missing_dir() {
    let (dir, _) = init_dir("init");
    let error = datadir::init_with_key(dir.path(), MANAGER_PEM).unwrap_err();
    assert!(
        format!("{error:#}").contains("manager.pem already exists"),
        "{error:#}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for file in [datadir::MANAGER_KEY_FILE, datadir::INVITE_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    let missing = TempDir::new("missing");
    let error = format!("{:#}", datadir::open(missing.path()).unwrap_err());
    assert!(error.contains("sockmsg-keymgr init --data-dir"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let (dir, _) = init_dir("limit");
    let mut config = config(dir.path(), RegistrationMode::Open);
    config.max_tcp_connections = 1;
    let server = Running::start(config).await;

    let mut first = TcpClient::connect(server.addr).await;
    expect_record(first.lookup(MANAGER_NAME).await);
    // The first connection holds the only slot: the second is closed without an answer.
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    let _ = second.write_all(&lookup_request(5, MANAGER_NAME, 0)).await;
    assert!(timeout(WAIT, closed_by_server(&mut second))
        .await
        .expect("closed in time"));
    assert_eq!(server.stats.snapshot().tcp_rejected, 1);
    // The first is still served; once it leaves, a new connection gets its slot.
    expect_record(first.lookup(MANAGER_NAME).await);
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        // The slot is freed when the server notices the close: retry until it has.
        let mut client = TcpClient::connect(server.addr).await;
        let id = client.id();
        let _ = client
            .stream
            .write_all(&lookup_request(id, MANAGER_NAME, 0))
            .await;
        if let Ok(Ok(answer)) = timeout(WAIT, read_packet(&mut client.stream)).await {
            expect_record(parse_answer(id, &answer));
            third = Some(client);
            break;
        }
    }
    assert!(third.is_some(), "a slot was freed");
    server.stop().await;
}

/// The node-side client against the real server: lookups verify against the pinned
/// fingerprint, a rotation moves the name, and the captured original registration,
/// replayed afterwards, cannot move it back: it gets the answer it got then (SPEC.md §8:
/// a repeated request with the same nonce gets the same answer) and changes nothing, and
/// its nonce cannot be used for anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rotation_and_a_replayed_registration() {
    use sockmsg_keymgr::client::{KeymgrClient, Trust};

    let (dir, fingerprint) = init_dir("rotate");
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let alice = signer("alice", ALICE_PEM);
    let dave = signer("alice", DAVE_PEM);

    // A registration captured on the wire, to be replayed later.
    let mut udp = UdpClient::connect(server.addr).await;
    let nonce = udp.challenge().await;
    let id = udp.id();
    let captured = register_request(id, &alice, "alice", &nonce, &[]);
    expect_ok(udp.call(id, &captured).await);

    let client = KeymgrClient::new(server.addr, Trust::Pinned(fingerprint)).expect("client");
    let record = timeout(WAIT, client.lookup("alice"))
        .await
        .expect("in time")
        .expect("verified record");
    assert_eq!(record.public_key_der, alice.public_key_der());

    timeout(WAIT, client.rotate("alice", &alice, &dave))
        .await
        .expect("in time")
        .expect("rotation accepted");
    let record = timeout(WAIT, client.lookup("alice"))
        .await
        .expect("in time")
        .expect("verified record");
    assert_eq!(record.public_key_der, dave.public_key_der());
    assert_eq!(record.serial, 2);

    // The replay gets its original answer, and the name stays with the new key.
    let answer = udp.call(id, &captured).await;
    expect_ok(answer);
    let record = expect_record(udp.lookup("alice").await);
    assert_eq!(record.public_key, dave.public_key_der());
    assert_eq!(record.serial, 2);
    // The captured nonce, in another (validly signed) request: refused.
    let id = udp.id();
    let reused = register_request(id, &alice, "alice2", &nonce, &[]);
    let reason = expect_code(udp.call(id, &reused).await, KeyResultCode::BAD_NONCE);
    assert!(reason.contains("used"), "{reason}");
    expect_code(udp.lookup("alice2").await, KeyResultCode::NOT_FOUND);
    assert_eq!(
        server.stats.snapshot().committed,
        2,
        "the replay committed nothing"
    );

    server.stop().await;
}

/// A truncated packet, and a header announcing more bytes than ever come, each cost the
/// sender its connection and nobody else anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_overlong_tcp_frames_are_dropped() {
    let (dir, _) = init_dir("frames");
    let server = Running::start(config(dir.path(), RegistrationMode::Open)).await;
    let bob = signer("bob", BOB_PEM);
    let mut good = TcpClient::connect(server.addr).await;
    expect_ok(good.register(&bob, "bob", &[]).await);

    // Half a lookup, then the client goes quiet: dropped after the read timeout.
    let mut truncated = TcpClient::connect(server.addr).await;
    let packet = lookup_request(1, "bob", 0);
    truncated
        .stream
        .write_all(&packet[..packet.len() / 2])
        .await
        .unwrap();
    // A header that announces 65,535 bytes of payload and sends 10.
    let mut overlong = TcpClient::connect(server.addr).await;
    let mut header = packet[..HEADER_LEN].to_vec();
    header[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
    overlong.stream.write_all(&header).await.unwrap();
    overlong.stream.write_all(&[0; 10]).await.unwrap();

    // Meanwhile the well-behaved client is served.
    expect_record(good.lookup("bob").await);
    for stream in [&mut truncated.stream, &mut overlong.stream] {
        assert!(timeout(WAIT, closed_by_server(stream))
            .await
            .expect("closed in time"));
    }
    expect_record(good.lookup("bob").await);
    server.stop().await;
}

/// The limits of config.yml on a real server: a source's burst of new names, then
/// `UNAVAILABLE` with the time to wait (and confirming a name it holds stays free); one
/// key bound to at most `max_names_per_key` names (`BAD_KEY`); both readable through the
/// node-side client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_rate_limited_per_source_and_per_key() {
    use sockmsg_keymgr::client::{ClientError, KeymgrClient, Trust};

    let (dir, fingerprint) = init_dir("limits");
    let mut config = config(dir.path(), RegistrationMode::Open);
    let yaml = sockmsg_config::Config::from_yaml_str(
        "keymgr: {register_burst: 3, register_per_minute: 1, max_names_per_key: 2}",
    )
    .expect("config");
    config.limits = Limits::from_config(&yaml.keymgr);
    let server = Running::start(config).await;
    let client = KeymgrClient::new(server.addr, Trust::Pinned(fingerprint)).expect("client");
    let alice = signer("alice", ALICE_PEM);
    let bob = signer("bob", BOB_PEM);

    for name in ["a1", "a2"] {
        timeout(WAIT, client.register(name, &alice, None))
            .await
            .expect("in time")
            .expect("registered");
    }
    // A third name for alice's key.
    match timeout(WAIT, client.register("a3", &alice, None))
        .await
        .expect("in time")
    {
        Err(ClientError::Refused { code, reason }) => {
            assert_eq!(code, KeyResultCode::BAD_KEY);
            assert!(reason.contains("max_names_per_key"), "{reason}");
        }
        other => panic!("expected BAD_KEY, got {other:?}"),
    }
    // The third token of the burst went to that refused request: the bucket is empty.
    match timeout(WAIT, client.register("b1", &bob, None))
        .await
        .expect("in time")
    {
        Err(error @ ClientError::Refused { .. }) => {
            let ClientError::Refused { code, reason } = &error else {
                unreachable!()
            };
            assert_eq!(*code, KeyResultCode::UNAVAILABLE);
            assert!(
                reason.contains("too many registrations from 127.0.0.1: retry in"),
                "{reason}"
            );
            assert!(error.to_string().contains("retry in"), "{error}");
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    // Restarting nodes re-register the names they hold: never limited.
    for _ in 0..3 {
        timeout(WAIT, client.register("a1", &alice, None))
            .await
            .expect("in time")
            .expect("a confirmation is free");
    }
    expect_code(
        UdpClient::connect(server.addr).await.lookup("b1").await,
        KeyResultCode::NOT_FOUND,
    );
    server.stop().await;
}
