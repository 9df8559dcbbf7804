//! Durability under SIGKILL (issue 5, "Done when"): the real `sockmsg-keymgr serve`
//! binary takes many concurrent registrations and is killed with SIGKILL in the middle
//! of the stream; afterwards the data file opens cleanly (redb checks the whole file on
//! open) and every registration that was acknowledged `OK` is on disk, bound to the key
//! it was registered with, with a batch signature that verifies under the manager key.
//! A restarted server serves those records over the network. Three kill cycles on the
//! same data directory, each killing at a different point.
//!
//! Each cycle: 16 clients (8 over UDP, 8 over TCP), each fetches one challenge per
//! registration (nonces are single use) and then sends its pre-signed registrations
//! (signing is done before the stream starts, so RSA signing is not what paces it) with
//! a window of requests outstanding. The server is
//! killed once a given number of acknowledgements has arrived, while requests are in
//! flight. Answers already on their way (in socket buffers) are still read and count as
//! acknowledged: the server sent them, so they too must be durable.
//!
//! Only 127.0.0.1. Every wait has a deadline, every loop a bound; nothing sleeps to
//! synchronise.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::registry::{self, MANAGER_NAME};
use sockmsg_keymgr::verify::{self, ManagerKey};
use sockmsg_wire::frame::{
    Frame, FrameType, KeyLookup, KeyRegister, KeyResultCode, KeyStatus, Padding,
};
use sockmsg_wire::session::crypto::{RsaSigner, Signer as _};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Name, PacketType, PublicKey, Signature, Token, HEADER_LEN,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

const MANAGER_PEM: &str = include_str!("../../testdata/keys/carol.pem");
/// Node keys (RSA-2048). `carol` is also the manager's key: a node may well reuse a key
/// for its name, the manager does not care.
const NODE_PEMS: [(&str, &str); 5] = [
    ("alice", include_str!("../../testdata/keys/alice.pem")),
    ("bob", include_str!("../../testdata/keys/bob.pem")),
    ("carol", include_str!("../../testdata/keys/carol.pem")),
    ("dave", include_str!("../../testdata/keys/dave.pem")),
    ("mallory", include_str!("../../testdata/keys/mallory.pem")),
];

/// Clients per cycle: the first half over UDP, the rest over TCP.
const CLIENTS: usize = 16;
/// Registrations each client sends per cycle.
const PER_CLIENT: usize = 40;
/// Requests a client keeps outstanding.
const WINDOW: usize = 8;
/// Kill after this many acknowledgements, one entry per cycle (of CLIENTS × PER_CLIENT).
const KILL_AFTER: [usize; 3] = [40, 250, 470];

/// Bound on one awaited event (an answer, a start, a kill).
const WAIT: Duration = Duration::from_secs(20);
/// Silence after which a client stops waiting for answers once the server is dead.
const DRAIN: Duration = Duration::from_millis(500);
/// Bound on a whole cycle's registration stream.
const STREAM_DEADLINE: Duration = Duration::from_secs(60);
/// Names looked up over the network after each restart at most.
const LOOKUP_SAMPLE: usize = 24;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sockmsg-keymgr-durability-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
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

// ----- the server process -----------------------------------------------------------------

/// A `sockmsg-keymgr serve` child process; killed (SIGKILL) and reaped on drop, so a
/// failing test leaves no server behind.
struct ServeProcess {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServeProcess {
    /// Starts `serve` on a free loopback port and waits until it answers a lookup of the
    /// manager's own record (signed by `manager`). Retries on another port if the one
    /// picked was taken meanwhile.
    async fn start(data_dir: &Path, log: PathBuf, manager: &ManagerKey) -> ServeProcess {
        let mut last_log = String::new();
        // 640 names per cycle from one address with five keys: far beyond the default
        // registration limits, which are not what this test is about.
        let config = log.with_file_name("limits.yml");
        std::fs::write(
            &config,
            "keymgr:\n  register_burst: 1000000\n  register_per_minute: 1000000\n  \
             max_names_per_key: 1000000\n",
        )
        .expect("write the config");
        for attempt in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log_file = std::fs::File::create(&log).expect("create the server log");
            let child = Command::new(env!("CARGO_BIN_EXE_sockmsg-keymgr"))
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(addr.to_string())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log_file))
                .spawn()
                .expect("spawn sockmsg-keymgr serve");
            let mut server = ServeProcess {
                child: Some(child),
                addr,
                log: log.clone(),
            };
            if server.wait_ready(manager).await {
                return server;
            }
            last_log = server.log_text();
            eprintln!("serve attempt {attempt} on {addr} failed:\n{last_log}");
            assert!(
                last_log.contains("cannot bind"),
                "serve exited for another reason than a taken port:\n{last_log}"
            );
        }
        panic!("serve could not start in 5 attempts; last log:\n{last_log}");
    }

    /// Polls a lookup of the manager's record until it is answered (`true`) or the
    /// process exits (`false`). Panics at the deadline.
    async fn wait_ready(&mut self, manager: &ManagerKey) -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(self.addr).await.unwrap();
        let deadline = Instant::now() + WAIT;
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let mut buf = vec![0u8; 65_536];
        let mut id = 0x00ab_0000_u64;
        while Instant::now() < deadline {
            ticks.tick().await;
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                eprintln!("serve exited early: {status}");
                self.child = None;
                return false;
            }
            id += 1;
            // Before the port is bound the send may fail (ICMP unreachable): just retry.
            if socket
                .send(&lookup_request(id, MANAGER_NAME, 700))
                .await
                .is_err()
            {
                continue;
            }
            let Ok(Ok(len)) = timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
            else {
                continue;
            };
            if let Some((answer_id, Answer::Record(body))) = parse_answer(&buf[..len]) {
                assert_eq!(answer_id, id);
                let record = verify::verify_record(&body, MANAGER_NAME, manager)
                    .expect("the manager's self-record verifies: it is our server");
                assert_eq!(record.public_key_der, manager.public_key_der());
                return true;
            }
        }
        panic!(
            "serve on {} did not answer within {WAIT:?}; log:\n{}",
            self.addr,
            self.log_text()
        );
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server is running")
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the server");
            let status = child.wait().expect("reap the server");
            assert!(!status.success(), "killed, not exited: {status}");
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free for both UDP and TCP a moment ago.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = StdUdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().unwrap().port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
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

fn lookup_request(id: u64, name: &str, min_len: usize) -> Vec<u8> {
    let name = Name::new(name).unwrap();
    request(id, Frame::KeyLookup(KeyLookup { name }), min_len)
}

fn register_request(
    id: u64,
    node: &RsaSigner,
    name: &str,
    nonce: &[u8; 32],
    rng: &mut ChaCha20Rng,
) -> Vec<u8> {
    let unsigned = KeyRegister {
        name: Name::new(name).unwrap(),
        public_key: PublicKey::new(node.public_key_der()).unwrap(),
        nonce,
        invite: Token::new(&[]).unwrap(),
        signature: Signature::default(),
    };
    let signature = node.sign(rng, &registry::register_signing_input(&unsigned));
    let signed = KeyRegister {
        signature: Signature::new(&signature).unwrap(),
        ..unsigned
    };
    request(id, Frame::KeyRegister(signed), 0)
}

/// What a RESPONSE said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Result {
        code: KeyResultCode,
        reason: String,
    },
    Challenge([u8; 32]),
    /// The KEY_RECORD frame body.
    Record(Vec<u8>),
}

/// The request id a RESPONSE echoes and what it says; `None` if it is not one.
fn parse_answer(bytes: &[u8]) -> Option<(u64, Answer)> {
    let packet = Datagram::new(bytes).next()?.ok()?;
    if packet.packet_type() != PacketType::RESPONSE {
        return None;
    }
    let id = packet.header().connection_id();
    let payload = packet.payload();
    if payload.first() == Some(&FrameType::KEY_RECORD.0) {
        return Some((id, Answer::Record(payload[1..].to_vec())));
    }
    let answer = match packet.frames().next()?.ok()? {
        Frame::KeyResult(result) => Answer::Result {
            code: result.code,
            reason: result.reason.as_str().to_owned(),
        },
        Frame::KeyChallenge(challenge) => Answer::Challenge(*challenge.nonce),
        _ => return None,
    };
    Some((id, answer))
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

// ----- clients ----------------------------------------------------------------------------

/// A client's connection to the server.
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    async fn connect(addr: SocketAddr, udp: bool) -> Conn {
        if udp {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(addr).await.unwrap();
            Conn::Udp(socket)
        } else {
            let stream = timeout(WAIT, TcpStream::connect(addr))
                .await
                .expect("TCP connect in time")
                .expect("TCP connect");
            stream.set_nodelay(true).unwrap();
            Conn::Tcp(stream)
        }
    }

    async fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Udp(socket) => socket.send(packet).await.map(drop),
            Conn::Tcp(stream) => stream.write_all(packet).await,
        }
    }

    /// The next answer, `Ok(None)` after `wait` without one, `Err` if the transport
    /// failed (TCP closed; an ICMP error over UDP).
    async fn recv(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        let received = match self {
            Conn::Udp(socket) => {
                let mut buf = vec![0u8; 2048];
                timeout(wait, socket.recv(&mut buf))
                    .await
                    .map(|r| r.map(|len| buf[..len].to_vec()))
            }
            Conn::Tcp(stream) => timeout(wait, read_packet(stream)).await,
        };
        match received {
            Err(_elapsed) => Ok(None),
            Ok(Ok(bytes)) => Ok(Some(bytes)),
            Ok(Err(e)) => Err(e),
        }
    }

    /// One challenge: the nonce one registration is signed over.
    async fn challenge(&mut self, id: u64) -> [u8; 32] {
        self.send(&request(id, Frame::KeyChallengeRequest, 0))
            .await
            .expect("send a challenge request");
        let wait = match self {
            Conn::Udp(_) => Duration::from_secs(2),
            Conn::Tcp(_) => WAIT,
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let bytes = self.recv(wait).await.expect("challenge answer");
            match bytes.as_deref().and_then(parse_answer) {
                Some((answer_id, Answer::Challenge(nonce))) if answer_id == id => return nonce,
                Some(other) => panic!("expected a challenge, got {other:?}"),
                // UDP loss: ask again.
                None => {
                    self.send(&request(id, Frame::KeyChallengeRequest, 0))
                        .await
                        .expect("send a challenge request");
                }
            }
        }
        panic!("no challenge within {WAIT:?}");
    }
}

/// One pre-signed registration.
#[derive(Clone)]
struct Prepared {
    id: u64,
    name: String,
    key: usize,
    packet: Vec<u8>,
}

/// Counters shared by the clients of one stream.
struct Progress {
    acks: watch::Sender<usize>,
    sent: AtomicUsize,
    answered: AtomicUsize,
    killed: AtomicBool,
}

/// What one client saw.
#[derive(Default)]
struct ClientOutcome {
    /// Indices (into its `Prepared`) acknowledged `OK`.
    acked: Vec<usize>,
    /// Requests sent (first sends, not retransmissions).
    sent: usize,
    /// Answers other than OK: none are expected.
    refusals: Vec<String>,
}

/// Sends `prepared` with up to [`WINDOW`] outstanding, until all are answered or the
/// server is killed (then drains what is already on its way).
async fn run_client(
    mut conn: Conn,
    prepared: Vec<Prepared>,
    progress: Arc<Progress>,
) -> ClientOutcome {
    let udp = matches!(conn, Conn::Udp(_));
    let by_id: HashMap<u64, usize> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id, i))
        .collect();
    let mut outcome = ClientOutcome::default();
    let mut answered = vec![false; prepared.len()];
    let mut outstanding: Vec<usize> = Vec::new();
    let mut next = 0;
    let deadline = Instant::now() + STREAM_DEADLINE;
    let mut retransmits = 0;
    loop {
        assert!(Instant::now() < deadline, "the stream did not end in time");
        let killed = progress.killed.load(Ordering::SeqCst);
        while !killed && next < prepared.len() && outstanding.len() < WINDOW {
            if conn.send(&prepared[next].packet).await.is_err() {
                break;
            }
            outstanding.push(next);
            outcome.sent += 1;
            progress.sent.fetch_add(1, Ordering::SeqCst);
            next += 1;
        }
        if outstanding.is_empty() && (killed || next == prepared.len()) {
            break;
        }
        // Once the server is dead, only answers already on their way can arrive.
        let wait = match (killed, udp) {
            (true, _) => DRAIN,
            (false, true) => Duration::from_secs(2),
            (false, false) => WAIT,
        };
        let bytes = match conn.recv(wait).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) if killed || progress.killed.load(Ordering::SeqCst) => {
                if killed {
                    break;
                }
                continue;
            }
            Ok(None) => {
                // Alive but silent: a UDP datagram was lost. The same request again gets
                // the answer the first got (SPEC.md §8): send the outstanding again.
                assert!(udp, "no TCP answer within {WAIT:?}");
                retransmits += 1;
                assert!(retransmits <= 20, "too many UDP losses");
                for &i in &outstanding {
                    let _ = conn.send(&prepared[i].packet).await;
                }
                continue;
            }
            Err(e) => {
                assert!(
                    progress.killed.load(Ordering::SeqCst),
                    "transport failed while the server was alive: {e}"
                );
                if udp {
                    // An ICMP error for a datagram sent after the kill; queued answers
                    // are still readable after it. Bounded by the deadline above.
                    continue;
                }
                break;
            }
        };
        let (id, answer) = parse_answer(&bytes).expect("a well-formed RESPONSE");
        let &index = by_id
            .get(&id)
            .expect("the answer echoes one of our request ids");
        if udp
            && matches!(
                answer,
                Answer::Result {
                    code: KeyResultCode::UNAVAILABLE,
                    ..
                }
            )
            && !answered[index]
        {
            // A retransmission that arrived while the first copy was being committed:
            // the first copy's answer is still to come (or the next retransmission's).
            continue;
        }
        if std::mem::replace(&mut answered[index], true) {
            // A duplicate answer to a retransmitted request.
            continue;
        }
        outstanding.retain(|&i| i != index);
        progress.answered.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Result {
                code: KeyResultCode::OK,
                ..
            } => {
                outcome.acked.push(index);
                progress.acks.send_modify(|n| *n += 1);
            }
            other => outcome
                .refusals
                .push(format!("{}: {other:?}", prepared[index].name)),
        }
    }
    outcome
}

// ----- checks -----------------------------------------------------------------------------

/// Opens the data directory in-process and checks every acknowledged registration.
/// Returns the number of records on disk (the manager's own included).
fn check_on_disk(
    dir: &Path,
    acked: &BTreeMap<String, usize>,
    keys: &[RsaSigner],
    manager: &ManagerKey,
) -> usize {
    let data = datadir::open(dir).expect("the data file opens cleanly after SIGKILL");
    assert_eq!(data.fingerprint(), manager.fingerprint());
    let records: BTreeMap<String, Vec<u8>> = data
        .store()
        .load_records()
        .expect("read every record")
        .into_iter()
        .collect();
    for (name, &key) in acked {
        let bytes = records
            .get(name)
            .unwrap_or_else(|| panic!("{name} was acknowledged but is not on disk"));
        let record = verify::verify_record(bytes, name, manager)
            .unwrap_or_else(|e| panic!("the stored record of {name} does not verify: {e}"));
        assert_eq!(
            record.public_key_der,
            keys[key].public_key_der(),
            "{name} is bound to another key than the one registered"
        );
        assert_eq!(
            (record.serial, record.status),
            (1, KeyStatus::ACTIVE),
            "{name}"
        );
    }
    // Nothing else is there but the manager's record and names we sent (whether or not
    // their answer arrived), each with the key it was sent with.
    for (name, bytes) in &records {
        let record = verify::verify_record(bytes, name, manager)
            .unwrap_or_else(|e| panic!("the stored record of {name} does not verify: {e}"));
        if name == MANAGER_NAME {
            assert_eq!(record.public_key_der, manager.public_key_der());
            continue;
        }
        let key = key_of_name(name).unwrap_or_else(|| panic!("unexpected record {name}"));
        assert_eq!(record.public_key_der, keys[key].public_key_der(), "{name}");
    }
    let listing = data.list().expect("list decodes every record");
    assert_eq!(listing.len(), records.len());
    records.len()
}

/// Looks up `names` over UDP (padded, as SPEC.md §4 asks) and checks each record.
async fn check_lookups(
    addr: SocketAddr,
    acked: &BTreeMap<String, usize>,
    keys: &[RsaSigner],
    manager: &ManagerKey,
) -> usize {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let step = (acked.len() / LOOKUP_SAMPLE).max(1);
    let mut buf = vec![0u8; 65_536];
    let mut checked = 0;
    for (n, (name, &key)) in acked.iter().step_by(step).take(LOOKUP_SAMPLE).enumerate() {
        let id = 0x10_0000 + n as u64;
        let packet = lookup_request(id, name, 700);
        let mut answer = None;
        for _try in 0..5 {
            socket.send(&packet).await.unwrap();
            if let Ok(Ok(len)) = timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                assert!(len <= 3 * packet.len(), "the 3x rule");
                answer = parse_answer(&buf[..len]);
                break;
            }
        }
        let (answer_id, answer) = answer.unwrap_or_else(|| panic!("no answer for {name}"));
        assert_eq!(answer_id, id);
        let Answer::Record(body) = answer else {
            panic!("{name}: expected its record, got {answer:?}");
        };
        let record = verify::verify_record(&body, name, manager).expect("verifies");
        assert_eq!(record.public_key_der, keys[key].public_key_der(), "{name}");
        assert_eq!(record.status, KeyStatus::ACTIVE);
        checked += 1;
    }
    checked
}

/// `c{cycle}-t{client}-n{i}` → the key index it is registered with.
fn key_of_name(name: &str) -> Option<usize> {
    let mut parts = name.split('-');
    let _cycle = parts.next()?.strip_prefix('c')?.parse::<usize>().ok()?;
    let client = parts.next()?.strip_prefix('t')?.parse::<usize>().ok()?;
    let i = parts.next()?.strip_prefix('n')?.parse::<usize>().ok()?;
    Some((client + i) % NODE_PEMS.len())
}

// ----- the test ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_sigkill() {
    let root = TempDir::new("kill");
    let dir = root.path().join("data");
    // The manager key is a fixture: no slow key generation.
    let fingerprint = datadir::init_with_key(&dir, MANAGER_PEM).expect("init");
    let manager_signer = RsaSigner::from_pkcs8_pem(MANAGER_NAME, MANAGER_PEM).unwrap();
    let manager = ManagerKey::from_der(manager_signer.public_key_der()).unwrap();
    assert_eq!(fingerprint, manager.fingerprint());
    let keys: Arc<Vec<RsaSigner>> = Arc::new(
        NODE_PEMS
            .iter()
            .map(|(name, pem)| RsaSigner::from_pkcs8_pem(*name, pem).unwrap())
            .collect(),
    );

    // Every name acknowledged so far, with its key index.
    let mut acked: BTreeMap<String, usize> = BTreeMap::new();
    for (cycle, &kill_after) in KILL_AFTER.iter().enumerate() {
        let log = root.path().join(format!("serve-{cycle}.log"));
        let mut server = ServeProcess::start(&dir, log, &manager).await;

        // What earlier cycles got acknowledged is served after the restart.
        let looked_up = check_lookups(server.addr, &acked, &keys, &manager).await;
        assert_eq!(looked_up, acked.len().min(LOOKUP_SAMPLE));

        // Each client connects and fetches one challenge per registration...
        let mut conns = Vec::new();
        for client in 0..CLIENTS {
            let mut conn = Conn::connect(server.addr, client < CLIENTS / 2).await;
            let mut nonces = Vec::with_capacity(PER_CLIENT);
            for i in 0..PER_CLIENT {
                let id = 0xc000_0000 + ((client as u64) << 16) + i as u64;
                nonces.push(conn.challenge(id).await);
            }
            conns.push((conn, nonces));
        }
        // ...and signs all its registrations before anything is sent.
        let mut signing = Vec::new();
        for (client, (_, nonces)) in conns.iter().enumerate() {
            let (keys, nonces) = (Arc::clone(&keys), nonces.clone());
            signing.push(tokio::task::spawn_blocking(move || {
                let mut rng = ChaCha20Rng::from_seed([(cycle * CLIENTS + client) as u8; 32]);
                (0..PER_CLIENT)
                    .map(|i| {
                        let name = format!("c{cycle}-t{client}-n{i}");
                        let key = key_of_name(&name).unwrap();
                        let id = ((cycle as u64 + 1) << 32) | ((client as u64) << 16) | i as u64;
                        let packet = register_request(id, &keys[key], &name, &nonces[i], &mut rng);
                        Prepared {
                            id,
                            name,
                            key,
                            packet,
                        }
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut prepared = Vec::new();
        for task in signing {
            prepared.push(task.await.expect("signing"));
        }

        // The stream, and the kill in its middle.
        let (acks, mut acks_seen) = watch::channel(0usize);
        let progress = Arc::new(Progress {
            acks,
            sent: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
        });
        let mut clients = Vec::new();
        for ((conn, _), prepared) in conns.into_iter().zip(prepared.iter().cloned()) {
            clients.push(tokio::spawn(run_client(
                conn,
                prepared,
                Arc::clone(&progress),
            )));
        }
        timeout(WAIT, acks_seen.wait_for(|&n| n >= kill_after))
            .await
            .expect("acknowledgements arrive in time")
            .expect("progress channel");
        let in_flight =
            progress.sent.load(Ordering::SeqCst) - progress.answered.load(Ordering::SeqCst);
        // Raised first, so that no client takes the reset for a failure of a live server.
        progress.killed.store(true, Ordering::SeqCst);
        server.kill();

        let mut acked_now = 0;
        let mut sent = 0;
        for (client, task) in clients.into_iter().enumerate() {
            let outcome = timeout(STREAM_DEADLINE, task)
                .await
                .expect("the client ends in time")
                .expect("client task");
            assert!(
                outcome.refusals.is_empty(),
                "refused: {:?}",
                outcome.refusals
            );
            sent += outcome.sent;
            for index in outcome.acked {
                let p = &prepared[client][index];
                assert!(acked.insert(p.name.clone(), p.key).is_none(), "{}", p.name);
                acked_now += 1;
            }
        }
        let total = CLIENTS * PER_CLIENT;
        eprintln!(
            "cycle {cycle}: killed after {kill_after} acks with {in_flight} request(s) in \
             flight; {sent} sent of {total}, {acked_now} acknowledged in all"
        );
        assert!(in_flight > 0, "the kill came while requests were in flight");
        assert!(acked_now >= kill_after);
        assert!(acked_now < total, "the kill interrupted the stream");

        let on_disk = check_on_disk(&dir, &acked, &keys, &manager);
        eprintln!(
            "cycle {cycle}: data file opened cleanly; {} acknowledged registration(s) all \
             on disk ({} records)",
            acked.len(),
            on_disk
        );
    }

    // A last restart: everything acknowledged in any cycle is served over the network.
    let log = root.path().join("serve-final.log");
    let mut server = ServeProcess::start(&dir, log, &manager).await;
    let looked_up = check_lookups(server.addr, &acked, &keys, &manager).await;
    assert_eq!(looked_up, LOOKUP_SAMPLE.min(acked.len()));
    server.kill();
    check_on_disk(&dir, &acked, &keys, &manager);
}
