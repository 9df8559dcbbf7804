//! Load benchmark of the key manager on loopback (issue 5): UDP lookups/s and durable
//! registrations/s, with latency percentiles, printed as a markdown table.
//!
//! ```text
//! cargo run --release -p sockmsg-keymgr --example keymgr_load -- --help
//! cargo run --release -p sockmsg-keymgr --example keymgr_load
//! cargo run --release -p sockmsg-keymgr --example keymgr_load -- --server 127.0.0.1:7401
//! ```
//!
//! By default a server is started in this process (its own tokio runtime and threads,
//! on 127.0.0.1, port chosen by the system) over a temporary data directory initialised
//! with the test manager key `carol`; `--server ADDR` targets a running key manager
//! instead (registration must be open and its limits raised, e.g. `keymgr:
//! {register_burst: 1000000, register_per_minute: 1000000, max_names_per_key: 1000000}`
//! in its `--config` file, since every name comes from one host and five keys; names are
//! made unique per run). The in-process server runs with `Limits::unlimited()`.
//!
//! 1. Setup: registers `--names` names (so lookups find records), fetches each record
//!    over TCP and verifies it against the manager key, and pads lookups to at least a
//!    third of the largest answer (SPEC.md §4: a UDP answer never exceeds 3× the request).
//! 2. Lookups: `--lookup-tasks` tasks, each on its own UDP socket, keep `--window`
//!    padded KEY_LOOKUP requests outstanding (answers matched by request id) for
//!    `--duration-secs` or `--max-lookups` lookups, whichever ends first.
//! 3. Registrations: `--registrations` KEY_REGISTERs with the RSA-2048 test keys, signed
//!    before the clock starts over nonces fetched up front (one challenge per
//!    registration, since nonces are single use; the manager binds a nonce to the
//!    client's IP address, not its port, so any sender on this host may use any of them),
//!    then sent at once by `--tcp-connections` TCP
//!    connections (one request outstanding each: the server reads a connection's next
//!    request after answering the previous) and `--udp-tasks` UDP tasks (`--udp-window`
//!    outstanding each). The manager acknowledges only after the batch is committed with
//!    fsync, so acknowledged/s is durable registrations/s.
//!
//! Latencies are measured from the send of a request to the receipt of its answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use sockmsg_keymgr::admission::Limits;
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::registry::{self, RegistrationMode, MANAGER_NAME};
use sockmsg_keymgr::server::{ServeConfig, Server, Stats, StatsSnapshot};
use sockmsg_keymgr::verify::{self, ManagerKey};
use sockmsg_wire::frame::{Frame, FrameType, KeyLookup, KeyRegister, KeyResultCode, Padding};
use sockmsg_wire::session::crypto::{RsaSigner, Signer as _};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Name, PacketType, PublicKey, Signature, Token, HEADER_LEN,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

const MANAGER_PEM: &str = include_str!("../../testdata/keys/carol.pem");
/// RSA-2048 node keys, used in turn.
const NODE_PEMS: [(&str, &str); 5] = [
    ("alice", include_str!("../../testdata/keys/alice.pem")),
    ("bob", include_str!("../../testdata/keys/bob.pem")),
    ("carol", include_str!("../../testdata/keys/carol.pem")),
    ("dave", include_str!("../../testdata/keys/dave.pem")),
    ("mallory", include_str!("../../testdata/keys/mallory.pem")),
];

/// Bound on one TCP exchange.
const TCP_TIMEOUT: Duration = Duration::from_secs(30);
/// A UDP registration unanswered this long is sent again (it is idempotent).
const UDP_RETRY: Duration = Duration::from_secs(2);
/// Sends of one UDP registration at most.
const UDP_TRIES: u32 = 3;
/// A UDP lookup unanswered this long counts as lost.
const LOOKUP_LOST: Duration = Duration::from_secs(1);
/// Margin kept below the manager's 60 s nonce lifetime.
const NONCE_BUDGET: Duration = Duration::from_secs(50);

/// Load benchmark of sockmsg-keymgr: UDP lookups/s and durable registrations/s on
/// loopback, with latency percentiles (markdown table on stdout).
#[derive(Debug, Parser)]
#[command(name = "keymgr_load")]
struct Args {
    /// A running key manager to load (open registration) instead of one started in-process.
    #[arg(long, value_name = "ADDR")]
    server: Option<SocketAddr>,
    /// With --server: the manager key fingerprint to expect (default: accept and print it).
    #[arg(long, value_name = "HEX")]
    fingerprint: Option<String>,
    /// In-process server: worker threads of its runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// In-process server: tasks receiving UDP datagrams (ServeConfig::udp_workers).
    #[arg(long, default_value_t = 2)]
    server_udp_workers: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Names registered for the lookups to find.
    #[arg(long, default_value_t = 64)]
    names: usize,
    /// Concurrent lookup tasks, each on its own UDP socket.
    #[arg(long, default_value_t = 8)]
    lookup_tasks: usize,
    /// Lookups each task keeps outstanding (at most 256).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// How long the lookup phase runs.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Lookups sent at most (over all tasks).
    #[arg(long, default_value_t = 10_000_000)]
    max_lookups: u64,
    /// Bytes a lookup is padded to (default: a third of the largest answer, rounded up).
    #[arg(long, value_name = "BYTES")]
    pad: Option<usize>,
    /// Registrations in the registration phase.
    #[arg(long, default_value_t = 10_000)]
    registrations: usize,
    /// TCP connections sending registrations (one outstanding each).
    #[arg(long, default_value_t = 16)]
    tcp_connections: usize,
    /// UDP tasks sending registrations.
    #[arg(long, default_value_t = 4)]
    udp_tasks: usize,
    /// Registrations each UDP task keeps outstanding.
    #[arg(long, default_value_t = 32)]
    udp_window: usize,
    /// Skip the lookup phase.
    #[arg(long)]
    no_lookups: bool,
    /// Skip the registration phase.
    #[arg(long)]
    no_registrations: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.window == 0 || args.window > 256 {
        bail!("--window must be 1..=256");
    }
    if args.names == 0 {
        bail!("--names must be at least 1");
    }
    if args.tcp_connections + args.udp_tasks == 0 && !args.no_registrations {
        bail!("registrations need at least one TCP connection or UDP task");
    }
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("load")
        .enable_all()
        .build()?;

    let Some(addr) = args.server else {
        // In-process server, on its own runtime and threads.
        let dir = std::env::temp_dir().join(format!(
            "sockmsg-keymgr-load-{}-{}",
            std::process::id(),
            hex(&datadir::random_bytes()?[..4])
        ));
        let result = (|| {
            let fingerprint = datadir::init_with_key(&dir, MANAGER_PEM)?;
            let server_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.server_threads.max(1))
                .thread_name("keymgr")
                .enable_all()
                .build()?;
            let mut config = ServeConfig::new(
                &dir,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                RegistrationMode::Open,
            );
            config.udp_workers = args.server_udp_workers.max(1);
            config.limits = Limits::unlimited();
            let server = server_rt.block_on(Server::bind(config))?;
            let addr = server.local_addr();
            let stats = server.stats();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let running = server_rt.spawn(server.run(async move {
                let _ = stopped.await;
            }));
            let outcome = client_rt.block_on(bench(
                &args,
                addr,
                Some(fingerprint),
                Some(&stats),
                "in-process",
            ));
            let _ = stop.send(());
            server_rt
                .block_on(running)
                .map_err(|e| anyhow!("server task: {e}"))??;
            outcome
        })();
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    };
    let fingerprint = args.fingerprint.clone();
    client_rt.block_on(bench(&args, addr, fingerprint, None, "external"))
}

async fn bench(
    args: &Args,
    addr: SocketAddr,
    fingerprint: Option<String>,
    stats: Option<&Arc<Stats>>,
    kind: &str,
) -> Result<()> {
    let load_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let manager = fetch_manager_key(addr, fingerprint.as_deref()).await?;
    eprintln!(
        "key manager {addr} ({kind}), key fingerprint {}",
        manager.fingerprint()
    );
    let keys: Arc<Vec<RsaSigner>> = Arc::new(
        NODE_PEMS
            .iter()
            .map(|(name, pem)| RsaSigner::from_pkcs8_pem(*name, pem))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("test key: {e}"))?,
    );
    let run = hex(&datadir::random_bytes()?[..4]);
    let mut rows = Vec::new();

    // ----- setup: names to look up ---------------------------------------------------
    let names: Vec<String> = (0..args.names).map(|i| format!("ld-{run}-{i}")).collect();
    let setup = register_phase(addr, &names, &keys, 4, 0, 1, 1 << 40).await?;
    if setup.ok() != names.len() as u64 {
        bail!(
            "setup: {} of {} names registered; refusals: {:?}",
            setup.ok(),
            names.len(),
            setup.refusals
        );
    }
    let mut max_answer = 0;
    let mut stream = tcp_connect(addr).await?;
    for (i, name) in names.iter().enumerate() {
        let id = (2 << 40) | i as u64;
        let answer = tcp_call(&mut stream, &lookup_request(id, name, 0)).await?;
        let body = record_body(&answer, id).ok_or_else(|| anyhow!("no record for {name}"))?;
        let record = verify::verify_record(body, name, &manager)?;
        if record.public_key_der != keys[i % keys.len()].public_key_der() {
            bail!("{name} is bound to another key");
        }
        max_answer = max_answer.max(answer.len());
    }
    drop(stream);
    let natural = lookup_request(0, &names[0], 0).len();
    let pad = args.pad.unwrap_or(max_answer.div_ceil(3)).max(natural);
    if pad * 3 < max_answer {
        eprintln!("warning: {pad}-byte lookups are under a third of the {max_answer}-byte answers: expect refusals");
    }

    // ----- lookups -------------------------------------------------------------------
    if !args.no_lookups {
        let before = stats.map(|s| s.snapshot());
        let outcome = lookup_phase(args, addr, &names, pad).await?;
        let after = stats.map(|s| s.snapshot());
        eprintln!(
            "lookups: {} answered with a record, {} other answers, {} lost{}",
            outcome.ok,
            outcome.errors,
            outcome.lost,
            server_note(before, after)
        );
        rows.push(Row {
            what: "lookups over UDP".into(),
            setup: format!(
                "{} tasks × window {}, {pad}-byte requests, ≤{max_answer}-byte answers, {} names",
                args.lookup_tasks, args.window, args.names
            ),
            count: outcome.ok,
            elapsed: outcome.elapsed,
            histogram: outcome.histogram,
        });
    }

    // ----- registrations -------------------------------------------------------------
    if !args.no_registrations && args.registrations > 0 {
        let names: Vec<String> = (0..args.registrations)
            .map(|i| format!("rg-{run}-{i}"))
            .collect();
        let before = stats.map(|s| s.snapshot());
        let outcome = register_phase(
            addr,
            &names,
            &keys,
            args.tcp_connections,
            args.udp_tasks,
            args.udp_window,
            3 << 40,
        )
        .await?;
        let after = stats.map(|s| s.snapshot());
        eprintln!(
            "registrations: {} acknowledged OK ({} over TCP, {} over UDP), {} refused, {} lost; \
             signing {} took {:.1} s before the clock started{}",
            outcome.ok(),
            outcome.tcp.count,
            outcome.udp.count,
            outcome.refusals.len(),
            outcome.lost,
            names.len(),
            outcome.signing.as_secs_f64(),
            server_note(before, after)
        );
        if let Some(refusal) = outcome.refusals.first() {
            eprintln!("first refusal: {refusal}");
        }
        // Spot-check: a few of them are served, signed by the manager, with their key.
        let mut stream = tcp_connect(addr).await?;
        let step = (names.len() / 16).max(1);
        for (i, name) in names.iter().enumerate().step_by(step) {
            let id = (4 << 40) | i as u64;
            let answer = tcp_call(&mut stream, &lookup_request(id, name, 0)).await?;
            let body = record_body(&answer, id)
                .ok_or_else(|| anyhow!("{name} was acknowledged but is not served"))?;
            let record = verify::verify_record(body, name, &manager)?;
            if record.public_key_der != keys[i % keys.len()].public_key_der() {
                bail!("{name} is bound to another key");
            }
        }
        let setup = format!(
            "RSA-2048 node keys; {} TCP conns × 1 + {} UDP tasks × window {}",
            args.tcp_connections, args.udp_tasks, args.udp_window
        );
        let mut all = outcome.tcp.histogram.clone();
        all.add(&outcome.udp.histogram)?;
        rows.push(Row {
            what: "registrations, durable (all)".into(),
            setup,
            count: outcome.ok(),
            elapsed: outcome.elapsed,
            histogram: all,
        });
        for (what, part) in [
            ("  of which TCP", &outcome.tcp),
            ("  of which UDP", &outcome.udp),
        ] {
            if part.count > 0 {
                rows.push(Row {
                    what: what.into(),
                    setup: String::new(),
                    count: part.count,
                    elapsed: outcome.elapsed,
                    histogram: part.histogram.clone(),
                });
            }
        }
    }

    print_table(&rows, kind, load_at_start.trim());
    Ok(())
}

/// Batches and mean batch size between two snapshots of the in-process server.
fn server_note(before: Option<StatsSnapshot>, after: Option<StatsSnapshot>) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return String::new();
    };
    let batches = after.batches - before.batches;
    let committed = after.committed - before.committed;
    let mut note = format!(
        "; server: {} UDP datagrams, {} replies, {} refused, {} dropped, {} guarded",
        after.udp_datagrams - before.udp_datagrams,
        after.replies - before.replies,
        after.refused - before.refused,
        after.dropped - before.dropped,
        after.amplification_guarded - before.amplification_guarded,
    );
    if committed > 0 {
        note += &format!(
            ", {committed} committed in {batches} group commits (mean {:.1}), {} busy",
            committed as f64 / batches.max(1) as f64,
            after.busy - before.busy
        );
    }
    note
}

// ----- output -----------------------------------------------------------------------------

struct Row {
    what: String,
    setup: String,
    count: u64,
    elapsed: Duration,
    /// Microseconds.
    histogram: Histogram<u64>,
}

fn print_table(rows: &[Row], kind: &str, load: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("keymgr_load: {kind} server, {cores} cores ({cpu}), load average at start {load}");
    println!();
    println!("| benchmark | setup | count | time | rate | p50 | p99 | p99.9 | max |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let h = &row.histogram;
        let secs = row.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {} | {:.2} s | {}/s | {} | {} | {} | {} |",
            row.what,
            row.setup,
            thousands(row.count),
            secs,
            thousands((row.count as f64 / secs.max(1e-9)).round() as u64),
            micros(h.value_at_quantile(0.50)),
            micros(h.value_at_quantile(0.99)),
            micros(h.value_at_quantile(0.999)),
            micros(h.max()),
        );
    }
}

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.max(1));
}

// ----- packets ----------------------------------------------------------------------------

/// A REQUEST packet holding `frame`, padded with PADDING to at least `min_len` bytes.
fn request(id: u64, frame: Frame<'_>, min_len: usize) -> Vec<u8> {
    let mut bare = Vec::new();
    encode_cleartext_packet(&mut bare, PacketType::REQUEST, id, 0, &[frame])
        .expect("a valid request");
    if bare.len() >= min_len {
        return bare;
    }
    let padding = Padding::new(min_len - bare.len()).expect("valid padding");
    let mut packet = Vec::new();
    encode_cleartext_packet(
        &mut packet,
        PacketType::REQUEST,
        id,
        0,
        &[frame, Frame::Padding(padding)],
    )
    .expect("a valid request");
    packet
}

fn lookup_request(id: u64, name: &str, min_len: usize) -> Vec<u8> {
    let name = Name::new(name).expect("a valid name");
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
        name: Name::new(name).expect("a valid name"),
        public_key: PublicKey::new(node.public_key_der()).expect("a valid key"),
        nonce,
        invite: Token::default(),
        signature: Signature::default(),
    };
    let signature = node.sign(rng, &registry::register_signing_input(&unsigned));
    let signed = KeyRegister {
        signature: Signature::new(&signature).expect("a valid signature"),
        ..unsigned
    };
    request(id, Frame::KeyRegister(signed), 0)
}

/// The request id a RESPONSE echoes (the header's connection id), without decoding more.
fn response_id(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER_LEN || bytes[3] != PacketType::RESPONSE.0 {
        return None;
    }
    Some(u64::from_be_bytes(bytes[8..16].try_into().ok()?))
}

/// Overwrites the request id of a REQUEST packet (not covered by any signature).
fn set_id(packet: &mut [u8], id: u64) {
    packet[8..16].copy_from_slice(&id.to_be_bytes());
}

/// The KEY_RECORD body of an answer to `id`, if it is one.
fn record_body(bytes: &[u8], id: u64) -> Option<&[u8]> {
    let packet = Datagram::new(bytes).next()?.ok()?;
    if packet.packet_type() != PacketType::RESPONSE || packet.header().connection_id() != id {
        return None;
    }
    let payload = packet.payload();
    (payload.first() == Some(&FrameType::KEY_RECORD.0)).then(|| &payload[1..])
}

/// What a RESPONSE to a registration or a challenge said.
enum Answer {
    Result(KeyResultCode, String),
    Challenge([u8; 32]),
}

fn parse_answer(bytes: &[u8]) -> Option<(u64, Answer)> {
    let packet = Datagram::new(bytes).next()?.ok()?;
    if packet.packet_type() != PacketType::RESPONSE {
        return None;
    }
    let id = packet.header().connection_id();
    match packet.frames().next()?.ok()? {
        Frame::KeyResult(result) => Some((
            id,
            Answer::Result(result.code, result.reason.as_str().to_owned()),
        )),
        Frame::KeyChallenge(challenge) => Some((id, Answer::Challenge(*challenge.nonce))),
        _ => None,
    }
}

// ----- transports -------------------------------------------------------------------------

async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(TCP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
        .with_context(|| format!("TCP connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one packet and reads one packet back.
async fn tcp_call(stream: &mut TcpStream, packet: &[u8]) -> Result<Vec<u8>> {
    tokio::time::timeout(TCP_TIMEOUT, async {
        stream.write_all(packet).await?;
        let mut answer = vec![0u8; HEADER_LEN];
        stream.read_exact(&mut answer).await?;
        let len = usize::from(u16::from_be_bytes([answer[6], answer[7]]));
        answer.resize(HEADER_LEN + len, 0);
        stream.read_exact(&mut answer[HEADER_LEN..]).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await
    .map_err(|_| anyhow!("no TCP answer within {TCP_TIMEOUT:?}"))?
    .context("TCP exchange")
}

/// The manager's key, from its self-signed record (checked against `fingerprint`).
async fn fetch_manager_key(addr: SocketAddr, fingerprint: Option<&str>) -> Result<ManagerKey> {
    let mut stream = tcp_connect(addr).await?;
    let id = 1;
    let answer = tcp_call(&mut stream, &lookup_request(id, MANAGER_NAME, 0)).await?;
    let body = record_body(&answer, id)
        .ok_or_else(|| anyhow!("{addr} did not answer with the manager's record"))?;
    Ok(ManagerKey::from_self_record(body, fingerprint)?)
}

/// A fresh nonce over a TCP connection.
async fn challenge_tcp(stream: &mut TcpStream, id: u64) -> Result<[u8; 32]> {
    let answer = tcp_call(stream, &request(id, Frame::KeyChallengeRequest, 0)).await?;
    match parse_answer(&answer) {
        Some((answer_id, Answer::Challenge(nonce))) if answer_id == id => Ok(nonce),
        _ => bail!("expected a KEY_CHALLENGE"),
    }
}

/// A fresh nonce over a connected UDP socket (three tries).
async fn challenge_udp(socket: &UdpSocket, id: u64) -> Result<[u8; 32]> {
    let packet = request(id, Frame::KeyChallengeRequest, 0);
    let mut buf = vec![0u8; 2048];
    for _ in 0..3 {
        socket.send(&packet).await?;
        if let Ok(received) = tokio::time::timeout(UDP_RETRY, socket.recv(&mut buf)).await {
            match parse_answer(&buf[..received?]) {
                Some((answer_id, Answer::Challenge(nonce))) if answer_id == id => return Ok(nonce),
                _ => bail!("expected a KEY_CHALLENGE"),
            }
        }
    }
    bail!("no KEY_CHALLENGE over UDP")
}

async fn udp_connect(addr: SocketAddr) -> Result<UdpSocket> {
    // A loopback server is reached from loopback; else let routing pick the source.
    let local = match (addr.is_ipv4(), addr.ip().is_loopback()) {
        (true, true) => "127.0.0.1:0",
        (true, false) => "0.0.0.0:0",
        (false, true) => "[::1]:0",
        (false, false) => "[::]:0",
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

// ----- lookups ----------------------------------------------------------------------------

struct LookupOutcome {
    ok: u64,
    errors: u64,
    lost: u64,
    elapsed: Duration,
    histogram: Histogram<u64>,
}

async fn lookup_phase(
    args: &Args,
    addr: SocketAddr,
    names: &[String],
    pad: usize,
) -> Result<LookupOutcome> {
    let templates: Arc<Vec<Vec<u8>>> =
        Arc::new(names.iter().map(|n| lookup_request(0, n, pad)).collect());
    let tasks = args.lookup_tasks.max(1);
    let quota = (args.max_lookups / tasks as u64).max(1);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(args.duration_secs.max(0.1));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let socket = udp_connect(addr).await?;
        let templates = Arc::clone(&templates);
        let window = args.window;
        handles.push(tokio::spawn(lookup_task(
            socket, templates, task, window, quota, stop_at,
        )));
    }
    let mut outcome = LookupOutcome {
        ok: 0,
        errors: 0,
        lost: 0,
        elapsed: Duration::ZERO,
        histogram: histogram(),
    };
    let mut last = start;
    for handle in handles {
        let task = handle.await??;
        outcome.ok += task.ok;
        outcome.errors += task.errors;
        outcome.lost += task.lost;
        outcome.histogram.add(&task.histogram)?;
        last = last.max(task.last_answer);
    }
    outcome.elapsed = last - start;
    Ok(outcome)
}

struct LookupTask {
    ok: u64,
    errors: u64,
    lost: u64,
    last_answer: Instant,
    histogram: Histogram<u64>,
}

/// Keeps `window` lookups outstanding on one socket until `stop_at` or `quota` sent.
/// A request id is `task << 48 | sequence << 8 | slot`: the slot finds the send time.
async fn lookup_task(
    socket: UdpSocket,
    templates: Arc<Vec<Vec<u8>>>,
    task: usize,
    window: usize,
    quota: u64,
    stop_at: Instant,
) -> Result<LookupTask> {
    let mut packets: Vec<Vec<u8>> = templates.iter().cloned().collect();
    let mut slots: Vec<Option<(u64, Instant)>> = vec![None; window];
    let mut free: Vec<usize> = (0..window).rev().collect();
    let mut outcome = LookupTask {
        ok: 0,
        errors: 0,
        lost: 0,
        last_answer: Instant::now(),
        histogram: histogram(),
    };
    let mut sequence: u64 = 0;
    let mut buf = vec![0u8; 65_536];
    let task_bits = (task as u64 & 0xffff) << 48;
    loop {
        let now = Instant::now();
        while now < stop_at && sequence < quota {
            let Some(slot) = free.pop() else { break };
            let id = task_bits | ((sequence & 0xff_ffff_ffff) << 8) | slot as u64;
            let packet = &mut packets[(sequence as usize + task) % templates.len()];
            set_id(packet, id);
            sequence += 1;
            match socket.send(packet).await {
                Ok(_) => slots[slot] = Some((id, Instant::now())),
                Err(_) => {
                    outcome.errors += 1;
                    free.push(slot);
                }
            }
        }
        if free.len() == window {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                let answer = &buf[..len];
                let Some(id) = response_id(answer) else {
                    outcome.errors += 1;
                    continue;
                };
                let slot = (id & 0xff) as usize;
                match slots.get(slot).copied().flatten() {
                    Some((sent_id, sent_at)) if sent_id == id => {
                        let at = Instant::now();
                        record(&mut outcome.histogram, at - sent_at);
                        outcome.last_answer = at;
                        slots[slot] = None;
                        free.push(slot);
                        if answer.get(HEADER_LEN) == Some(&FrameType::KEY_RECORD.0) {
                            outcome.ok += 1;
                        } else {
                            outcome.errors += 1;
                        }
                    }
                    // A late answer to a request already counted as lost.
                    _ => {}
                }
            }
            // ICMP errors and the like.
            Ok(Err(_)) => outcome.errors += 1,
            Err(_) => {}
        }
        // Expire what has been outstanding too long.
        let now = Instant::now();
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry.is_some_and(|(_, sent_at)| now - sent_at > LOOKUP_LOST) {
                *entry = None;
                free.push(slot);
                outcome.lost += 1;
            }
        }
    }
    Ok(outcome)
}

// ----- registrations ----------------------------------------------------------------------

#[derive(Clone)]
struct Part {
    count: u64,
    histogram: Histogram<u64>,
}

impl Part {
    fn new() -> Part {
        Part {
            count: 0,
            histogram: histogram(),
        }
    }
}

struct RegisterOutcome {
    tcp: Part,
    udp: Part,
    refusals: Vec<String>,
    lost: u64,
    /// From the first send to the last acknowledgement.
    elapsed: Duration,
    signing: Duration,
}

impl RegisterOutcome {
    fn ok(&self) -> u64 {
        self.tcp.count + self.udp.count
    }
}

/// Registers `names` (key `i % keys.len()`) through `tcp` connections and `udp` tasks,
/// all signed before the clock starts. Request ids are `id_base + i`.
async fn register_phase(
    addr: SocketAddr,
    names: &[String],
    keys: &Arc<Vec<RsaSigner>>,
    tcp: usize,
    udp: usize,
    udp_window: usize,
    id_base: u64,
) -> Result<RegisterOutcome> {
    // Connections, and one nonce per registration (nonces are single use), fetched up
    // front over them in turn.
    let mut streams = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..tcp {
        streams.push(tcp_connect(addr).await?);
    }
    for _ in 0..udp {
        sockets.push(udp_connect(addr).await?);
    }
    let mut nonces = Vec::with_capacity(names.len());
    let nonce_time = Instant::now();
    for i in 0..names.len() {
        let id = id_base - 1 - i as u64;
        let nonce = if !streams.is_empty() {
            let count = streams.len();
            challenge_tcp(&mut streams[i % count], id).await?
        } else if !sockets.is_empty() {
            challenge_udp(&sockets[i % sockets.len()], id).await?
        } else {
            bail!("no TCP connection and no UDP task to register with");
        };
        nonces.push(nonce);
    }

    // Sign everything, on every core, before the clock starts.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let signing_start = Instant::now();
    let packets: Vec<Vec<u8>> = {
        let keys = Arc::clone(keys);
        let names = names.to_vec();
        let nonces = nonces.clone();
        tokio::task::spawn_blocking(move || sign_all(&names, &keys, &nonces, id_base, threads))
            .await?
    };
    let signing = signing_start.elapsed();
    if nonce_time.elapsed() > NONCE_BUDGET {
        bail!("signing took {signing:?}: the nonces would expire mid-run; lower --registrations");
    }

    let packets = Arc::new(packets);
    let cursor = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tcp_handles = Vec::new();
    for stream in streams {
        tcp_handles.push(tokio::spawn(tcp_registrar(
            stream,
            Arc::clone(&packets),
            Arc::clone(&cursor),
        )));
    }
    let mut udp_handles = Vec::new();
    for socket in sockets {
        udp_handles.push(tokio::spawn(udp_registrar(
            socket,
            Arc::clone(&packets),
            Arc::clone(&cursor),
            udp_window.max(1),
            id_base,
        )));
    }
    let mut outcome = RegisterOutcome {
        tcp: Part::new(),
        udp: Part::new(),
        refusals: Vec::new(),
        lost: 0,
        elapsed: Duration::ZERO,
        signing,
    };
    let mut last = start;
    for (handles, part) in [(tcp_handles, false), (udp_handles, true)] {
        for handle in handles {
            let result = handle.await??;
            let target = if part {
                &mut outcome.udp
            } else {
                &mut outcome.tcp
            };
            target.count += result.ok;
            target.histogram.add(&result.histogram)?;
            outcome.refusals.extend(result.refusals);
            outcome.lost += result.lost;
            last = last.max(result.last_answer);
        }
    }
    outcome.elapsed = last - start;
    Ok(outcome)
}

fn sign_all(
    names: &[String],
    keys: &[RsaSigner],
    nonces: &[[u8; 32]],
    id_base: u64,
    threads: usize,
) -> Vec<Vec<u8>> {
    let mut packets = vec![Vec::new(); names.len()];
    let chunk = names.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (c, out) in packets.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                let seed = datadir::random_bytes().unwrap_or([c as u8; 32]);
                let mut rng = ChaCha20Rng::from_seed(seed);
                for (j, packet) in out.iter_mut().enumerate() {
                    let i = c * chunk + j;
                    *packet = register_request(
                        id_base + i as u64,
                        &keys[i % keys.len()],
                        &names[i],
                        &nonces[i],
                        &mut rng,
                    );
                }
            });
        }
    });
    packets
}

struct Registrar {
    ok: u64,
    refusals: Vec<String>,
    lost: u64,
    last_answer: Instant,
    histogram: Histogram<u64>,
}

impl Registrar {
    fn new() -> Registrar {
        Registrar {
            ok: 0,
            refusals: Vec::new(),
            lost: 0,
            last_answer: Instant::now(),
            histogram: histogram(),
        }
    }

    fn answered(&mut self, sent_at: Instant, answer: &[u8], expected_id: u64) {
        let at = Instant::now();
        record(&mut self.histogram, at - sent_at);
        self.last_answer = at;
        match parse_answer(answer) {
            Some((id, Answer::Result(KeyResultCode::OK, _))) if id == expected_id => self.ok += 1,
            Some((_, Answer::Result(code, reason))) => {
                self.refusals.push(format!("{code:?}: {reason}"));
            }
            _ => self.refusals.push("not a KEY_RESULT".into()),
        }
    }
}

/// One request outstanding: the server reads a connection's next request only after it
/// answered the previous one.
async fn tcp_registrar(
    mut stream: TcpStream,
    packets: Arc<Vec<Vec<u8>>>,
    cursor: Arc<AtomicUsize>,
) -> Result<Registrar> {
    let mut outcome = Registrar::new();
    loop {
        let i = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(packet) = packets.get(i) else { break };
        let sent_at = Instant::now();
        let answer = tcp_call(&mut stream, packet).await?;
        outcome.answered(sent_at, &answer, request_id(packet));
    }
    Ok(outcome)
}

fn request_id(packet: &[u8]) -> u64 {
    u64::from_be_bytes(packet[8..16].try_into().expect("a header"))
}

/// Up to `window` outstanding; an unanswered request is sent again after [`UDP_RETRY`]
/// (registration is idempotent), [`UDP_TRIES`] times at most.
async fn udp_registrar(
    socket: UdpSocket,
    packets: Arc<Vec<Vec<u8>>>,
    cursor: Arc<AtomicUsize>,
    window: usize,
    id_base: u64,
) -> Result<Registrar> {
    let mut outcome = Registrar::new();
    // id → (first send, last send, sends)
    let mut outstanding: HashMap<u64, (Instant, Instant, u32)> = HashMap::new();
    let mut exhausted = false;
    let mut buf = vec![0u8; 65_536];
    loop {
        while !exhausted && outstanding.len() < window {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            let Some(packet) = packets.get(i) else {
                exhausted = true;
                break;
            };
            let now = Instant::now();
            socket.send(packet).await?;
            outstanding.insert(id_base + i as u64, (now, now, 1));
        }
        if outstanding.is_empty() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                if let Some(id) = response_id(&buf[..len]) {
                    if let Some((first, _, _)) = outstanding.remove(&id) {
                        outcome.answered(first, &buf[..len], id);
                    }
                }
            }
            Ok(Err(e)) => eprintln!("UDP receive error: {e}"),
            Err(_) => {}
        }
        let now = Instant::now();
        let stale: Vec<u64> = outstanding
            .iter()
            .filter(|(_, (_, last, _))| now - *last > UDP_RETRY)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let entry = outstanding.get_mut(&id).expect("present");
            if entry.2 >= UDP_TRIES {
                outstanding.remove(&id);
                outcome.lost += 1;
                continue;
            }
            entry.1 = now;
            entry.2 += 1;
            let packet = &packets[usize::try_from(id - id_base).expect("an index")];
            socket.send(packet).await?;
        }
    }
    Ok(outcome)
}
