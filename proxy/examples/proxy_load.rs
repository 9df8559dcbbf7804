//! Queries per second over UDP on loopback, and latency percentiles.
//!
//! Starts a key manager (fixture key, temporary directory) and a proxy in this process,
//! claims one group, then runs `CLIENTS` sockets, each keeping `WINDOW` padded
//! LEADER_QUERYs in flight (a burst, then its answers), for `QUERIES` queries in all.
//! Everything stays on 127.0.0.1 and every loop is bounded.
//!
//! ```text
//! cargo run --release -p sockmsg-proxy --example proxy_load [QUERIES] [CLIENTS] [WINDOW]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand_chacha::rand_core::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use sockmsg_keymgr::client::{KeymgrClient, Trust};
use sockmsg_keymgr::datadir;
use sockmsg_keymgr::registry::RegistrationMode;
use sockmsg_proxy::client::{query_request, RecordDraft};
use sockmsg_proxy::handler::decode_response;
use sockmsg_proxy::{Kind, ServeConfig, Server};
use sockmsg_wire::frame::{Frame, ProxyStatus};
use sockmsg_wire::session::crypto::RsaSigner;
use tokio::net::UdpSocket;

const MANAGER_PEM: &str = include_str!("../../testdata/keys/carol.pem");
const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
/// Padded so that the whole LEADER_INFO fits 3× the request (SPEC.md §4).
const QUERY_PAD: usize = 400;
const RECV_TIMEOUT: Duration = Duration::from_millis(500);

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let queries = arg(1, 200_000).clamp(1, 10_000_000);
    let clients = arg(2, 4).clamp(1, 64);
    let window = arg(3, 16).clamp(1, 256);
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;

    let dir = std::env::temp_dir().join(format!("sockmsg-proxy-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fingerprint = datadir::init_with_key(&dir, MANAGER_PEM)?;
    let keymgr = sockmsg_keymgr::server::Server::bind(sockmsg_keymgr::server::ServeConfig::new(
        &dir,
        loopback,
        RegistrationMode::Open,
    ))
    .await?;
    let keymgr_addr = keymgr.local_addr();
    let keymgr_task = tokio::spawn(keymgr.run(std::future::pending()));
    let alice = RsaSigner::from_pkcs8_pem("alice", ALICE_PEM)?;
    KeymgrClient::new(keymgr_addr, Trust::Pinned(fingerprint.clone()))?
        .register("alice", &alice, None)
        .await?;

    let proxy = Server::bind(ServeConfig::new(
        loopback,
        keymgr_addr,
        Trust::Pinned(fingerprint),
    ))
    .await?;
    let addr = proxy.local_addr();
    let stats = proxy.stats();
    let proxy_task = tokio::spawn(proxy.run(std::future::pending()));

    let members: Vec<String> = (0..8).map(|i| format!("member-{i}")).collect();
    let mut record = RecordDraft {
        group: "lobby".into(),
        term: 1,
        leader: "alice".into(),
        leader_addr: "127.0.0.1:7402".parse()?,
        membership_version: 1,
        members,
        issued_at_ms: datadir::now_ms(),
    };
    record.members.push("alice".into());
    let signature = record.sign(&alice, &mut ChaCha20Rng::from_seed([1; 32]))?;
    let claim = record.request(1, Kind::Claim, &signature, &[], 0)?;
    let socket = UdpSocket::bind(loopback).await?;
    socket.send_to(&claim, addr).await?;
    let mut buf = vec![0u8; 2048];
    let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf)).await??;
    match decode_response(&buf[..len]) {
        Some((_, Frame::ProxyResult(r))) if r.status == ProxyStatus::ACCEPTED => {}
        other => anyhow::bail!("claim not accepted: {other:?}"),
    }
    let sample = query_request(0, "lobby", QUERY_PAD)?;

    let per_client = queries.div_ceil(clients);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        tasks.push(tokio::spawn(async move {
            run_client(addr, client as u64, per_client, window).await
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut answered, mut lost) = (0u64, 0u64);
    for task in tasks {
        let (h, a, l) = task.await??;
        histogram.add(&h)?;
        answered += a;
        lost += l;
    }
    let elapsed = started.elapsed();
    let rate = answered as f64 / elapsed.as_secs_f64();
    println!(
        "queries: {answered} answered, {lost} lost, in {:.3} s ({clients} clients, window {window}, request {} B)",
        elapsed.as_secs_f64(),
        sample.len()
    );
    println!("throughput: {rate:.0} queries/s");
    println!(
        "latency (µs): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.90),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    println!("server: {:?}", stats.snapshot());
    proxy_task.abort();
    keymgr_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Sends `total` queries in bursts of `window`, reading each burst's answers; returns
/// the latency histogram (µs), the answered and the lost count.
async fn run_client(
    proxy: SocketAddr,
    client: u64,
    total: usize,
    window: usize,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(proxy).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let requests: Vec<Vec<u8>> = (0..window)
        .map(|slot| query_request((client << 32) | slot as u64, "lobby", QUERY_PAD))
        .collect::<Result<_, _>>()?;
    let mut sent_at = vec![Instant::now(); window];
    let mut buf = vec![0u8; 4096];
    let (mut answered, mut lost) = (0u64, 0u64);
    let mut done = 0usize;
    while done < total {
        let burst = window.min(total - done);
        for (slot, request) in requests.iter().enumerate().take(burst) {
            sent_at[slot] = Instant::now();
            socket.send(request).await?;
        }
        let mut pending = burst;
        while pending > 0 {
            match tokio::time::timeout(RECV_TIMEOUT, socket.recv(&mut buf)).await {
                Ok(Ok(len)) => {
                    let Some((id, Frame::LeaderInfo(_))) = decode_response(&buf[..len]) else {
                        continue;
                    };
                    let slot = (id & 0xffff_ffff) as usize;
                    if id >> 32 != client || slot >= burst {
                        continue;
                    }
                    let micros = sent_at[slot].elapsed().as_micros();
                    histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                    answered += 1;
                    pending -= 1;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    lost += pending as u64;
                    pending = 0;
                }
            }
        }
        done += burst;
    }
    Ok((histogram, answered, lost))
}
