//! sockmsg sessions: the sans-IO [`Endpoint`] run by the thin tokio [`Driver`], with
//! the default `SessionConfig` and real RSA-2048 identities from `testdata/keys`.
//!
//! Messages use the Ordered class (reliable and in order, like a QUIC stream) in both
//! the one-way and the ping-pong test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sockmsg_wire::frame::{CloseCode, MessageClass};
use sockmsg_wire::session::crypto::insecure::{TestKeys, TestSigner};
use sockmsg_wire::session::{
    ConnectionHandle, ConnectionStats, Endpoint, Event, PeerKeys, RsaKeyring, RsaSigner,
    SessionConfig, Signer,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::driver::{Driver, DriverConfig, DriverStats, Events, SessionHandle};
use crate::harness::{self, run_pair, Latency, OneWayTally, Params, Throughput, MESSAGE_LEN};

const GROUP: &str = "bench";
const CLASS: MessageClass = MessageClass::Ordered;

/// The identities of the two peers: A is `alice`, B is `bob`, each trusting the other.
#[derive(Clone)]
pub struct Identities {
    a_signer: Arc<dyn Signer>,
    a_keys: Arc<dyn PeerKeys>,
    b_signer: Arc<dyn Signer>,
    b_keys: Arc<dyn PeerKeys>,
    /// What the report calls them.
    pub label: &'static str,
}

impl Identities {
    /// The RSA-2048 test keys of `testdata/keys`.
    pub fn rsa() -> Result<Self, String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/keys");
        let read = |file: &str| {
            std::fs::read_to_string(format!("{dir}/{file}")).map_err(|e| format!("{file}: {e}"))
        };
        let signer = |name: &str| {
            RsaSigner::from_pkcs8_pem(name, &read(&format!("{name}.pem"))?)
                .map_err(|e| e.to_string())
        };
        let trusting = |name: &str| {
            let mut ring = RsaKeyring::new();
            ring.insert_pem(name, &read(&format!("{name}.pub.pem"))?)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ring)
        };
        Ok(Identities {
            a_signer: Arc::new(signer("alice")?),
            a_keys: Arc::new(trusting("bob")?),
            b_signer: Arc::new(signer("bob")?),
            b_keys: Arc::new(trusting("alice")?),
            label: "sockmsg (RSA-2048)",
        })
    }

    /// The library's insecure hash "signatures": the same handshake without RSA's cost,
    /// to show how much of it is RSA.
    pub fn insecure() -> Self {
        Identities {
            a_signer: Arc::new(TestSigner::new("alice")),
            a_keys: Arc::new(TestKeys::with_names(["bob"])),
            b_signer: Arc::new(TestSigner::new("bob")),
            b_keys: Arc::new(TestKeys::with_names(["alice"])),
            label: "sockmsg (insecure test signer)",
        }
    }
}

/// One peer's running driver.
struct Peer {
    handle: SessionHandle,
    events: Events,
    driver: JoinHandle<std::io::Result<(Endpoint, DriverStats)>>,
    addr: SocketAddr,
}

impl Peer {
    /// Binds a loopback socket and spawns a driver for a fresh endpoint on it.
    async fn start(
        p: &Params,
        signer: Arc<dyn Signer>,
        keys: Arc<dyn PeerKeys>,
        seed: u8,
    ) -> Result<Peer, String> {
        let socket = harness::tokio_loopback_socket(p.rcvbuf).map_err(|e| e.to_string())?;
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        let endpoint = Endpoint::new(
            SessionConfig::default(),
            GROUP,
            signer,
            keys,
            [seed; 32],
            std::time::Instant::now(),
        );
        let (driver, handle, events) = Driver::new(socket, endpoint, DriverConfig::default());
        Ok(Peer {
            handle,
            events,
            driver: tokio::spawn(driver.run()),
            addr,
        })
    }

    /// Waits for the next event that `pick` decides on (`Some(Ok)` to return it,
    /// `Some(Err)` to fail), discarding the others (e.g. `Acked`).
    async fn next<T>(
        &mut self,
        wait: Duration,
        mut pick: impl FnMut(ConnectionHandle, Event) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let until = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some((handle, event))) => {
                    if let Some(decided) = pick(handle, event) {
                        return decided;
                    }
                }
                Ok(None) => return Err("driver stopped".into()),
                Err(_) => return Err("timed out waiting for an event".into()),
            }
        }
    }

    /// Connects to `peer` and waits for the handshake.
    async fn connect(&mut self, peer: SocketAddr, name: &str) -> Result<ConnectionHandle, String> {
        let handle = self
            .handle
            .connect(peer, name)
            .await
            .map_err(|e| e.to_string())?;
        self.next(Duration::from_secs(5), |h, e| match e {
            Event::Connected { .. } if h == handle => Some(Ok(h)),
            Event::Closed(reason) if h == handle => Some(Err(format!("{reason:?}"))),
            _ => None,
        })
        .await
    }

    /// Drops the handle and events and waits for the driver to return its state.
    async fn stop(self) -> Option<(Endpoint, DriverStats)> {
        let Peer { handle, driver, .. } = self;
        stop_driver(handle, driver).await
    }
}

/// Drops `handle` (which stops the driver) and waits for the driver's final state.
async fn stop_driver(
    handle: SessionHandle,
    driver: JoinHandle<std::io::Result<(Endpoint, DriverStats)>>,
) -> Option<(Endpoint, DriverStats)> {
    drop(handle);
    match timeout(Duration::from_secs(2), driver).await {
        Ok(Ok(Ok(state))) => Some(state),
        _ => None,
    }
}

/// A line on what the sender's session did, for the report's notes.
fn describe(stats: Option<(Endpoint, DriverStats)>) -> String {
    let Some((endpoint, driver)) = stats else {
        return String::new();
    };
    let mut s = ConnectionStats::default();
    let mut cwnd = 0;
    for (_, c) in endpoint.connections() {
        let cs = c.stats();
        s.packets_sent += cs.packets_sent;
        s.packets_received += cs.packets_received;
        s.retransmitted_fragments += cs.retransmitted_fragments;
        s.probes_sent += cs.probes_sent;
        cwnd = cwnd.max(c.congestion_window());
    }
    format!(
        "sender: {} pkts sent, {} received, {} fragments resent, {} probes, cwnd {} B, \
         {} send stalls, {} wake-ups",
        s.packets_sent,
        s.packets_received,
        s.retransmitted_fragments,
        s.probes_sent,
        cwnd,
        driver.send_stalls,
        driver.wakeups
    )
}

/// A sends `warmup + messages` Ordered messages; B times each on arrival.
pub fn throughput(p: Params, ids: &Identities) -> Result<Throughput, String> {
    let (ids_a, ids_b) = (ids.clone(), ids.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let mut peer = Peer::start(&p, ids_a.a_signer, ids_a.a_keys, 1).await?;
            let b_addr = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let conn = peer.connect(b_addr, "bob").await?;
            // The sender's events are only Acked ones now: a task of their own drains
            // them (the driver would otherwise stop at a full event channel).
            let Peer {
                handle,
                mut events,
                driver,
                ..
            } = peer;
            let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
            let total = p.warmup_messages + p.messages;
            let limit = Instant::now() + p.max_duration;
            let mut sent: u64 = 0;
            for seq in 0..total {
                if seq % 1024 == 0 && Instant::now() >= limit {
                    break;
                }
                let m = harness::message(seq);
                handle
                    .send(conn, CLASS, m)
                    .await
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
            let _ = timeout(p.hard_limit(), done_rx).await;
            let _ = handle.close(conn, CloseCode::NORMAL, "done").await;
            drain.abort();
            let note = describe(stop_driver(handle, driver).await);
            Ok::<_, String>((sent, note))
        },
        move || async move {
            let mut peer = Peer::start(&p, ids_b.b_signer, ids_b.b_keys, 2).await?;
            let _ = addr_tx.send(peer.addr);
            let mut tally = OneWayTally::new(p.warmup_messages);
            let hard_limit = Instant::now() + p.hard_limit();
            while tally.received < p.messages {
                match tokio::time::timeout_at(hard_limit, peer.events.recv()).await {
                    Ok(Some((_, Event::Message { data, .. }))) => {
                        tally.on_message(&data);
                    }
                    Ok(Some((_, Event::Closed(_)))) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            let _ = done_tx.send(());
            peer.stop().await;
            Ok::<_, String>(tally)
        },
    );
    let (sent, note) = a?;
    Ok(b?.into_result(sent.saturating_sub(p.warmup_messages), note))
}

/// A sends an Ordered message, B sends it back, A times the round trip; one at a time.
pub fn ping_pong(p: Params, ids: &Identities) -> Result<Latency, String> {
    let (ids_a, ids_b) = (ids.clone(), ids.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let mut peer = Peer::start(&p, ids_a.a_signer, ids_a.a_keys, 1).await?;
            let b_addr = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let conn = peer.connect(b_addr, "bob").await?;
            let mut result = Latency::new();
            let limit = Instant::now() + p.max_duration;
            let mut outcome = Ok(());
            for seq in 0..p.warmup_round_trips + p.round_trips {
                if Instant::now() >= limit {
                    result.note = format!("stopped at the time limit after {seq}");
                    break;
                }
                let m = harness::message(seq);
                let sent_at = std::time::Instant::now();
                if let Err(e) = peer.handle.send(conn, CLASS, m).await {
                    outcome = Err(e.to_string());
                    break;
                }
                let echo = peer
                    .next(Duration::from_secs(2), |_, e| match e {
                        Event::Message { data, .. } => Some(Ok(data)),
                        Event::Closed(reason) => Some(Err(format!("{reason:?}"))),
                        _ => None,
                    })
                    .await;
                match echo {
                    Ok(data) if data.len() == MESSAGE_LEN => {
                        if seq >= p.warmup_round_trips {
                            harness::record(
                                &mut result.latency,
                                sent_at.elapsed().as_nanos() as u64,
                            );
                        }
                    }
                    Ok(_) => result.failures += 1,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            let _ = peer.handle.close(conn, CloseCode::NORMAL, "done").await;
            let stats = peer.stop().await;
            outcome?;
            if result.note.is_empty() {
                result.note = describe(stats);
            }
            Ok::<_, String>(result)
        },
        move || async move {
            let mut peer = Peer::start(&p, ids_b.b_signer, ids_b.b_keys, 2).await?;
            let _ = addr_tx.send(peer.addr);
            let hard_limit = Instant::now() + p.hard_limit();
            loop {
                match tokio::time::timeout_at(hard_limit, peer.events.recv()).await {
                    Ok(Some((conn, Event::Message { class, data }))) => {
                        if peer.handle.send(conn, class, data).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some((_, Event::Closed(_)))) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            peer.stop().await;
            Ok::<(), String>(())
        },
    );
    b?;
    a
}

/// A connects `warmup + handshakes` times, one after another; each counts from
/// `connect` until both ends have reported `Connected` (B's FINISH verified).
pub fn handshake(p: Params, ids: &Identities) -> Result<Latency, String> {
    let (ids_a, ids_b) = (ids.clone(), ids.clone());
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel::<std::time::Instant>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let mut peer = Peer::start(&p, ids_a.a_signer, ids_a.a_keys, 1).await?;
            let b_addr = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let mut result = Latency::new();
            let limit = Instant::now() + p.max_duration;
            for i in 0..p.warmup_handshakes + p.handshakes {
                if Instant::now() >= limit {
                    result.note = format!("stopped at the time limit after {i}");
                    break;
                }
                let start = std::time::Instant::now();
                let conn = match peer.connect(b_addr, "bob").await {
                    Ok(conn) => conn,
                    Err(_) => {
                        result.failures += 1;
                        continue;
                    }
                };
                let a_done = std::time::Instant::now();
                let b_done = timeout(Duration::from_secs(2), connected_rx.recv()).await;
                match b_done {
                    Ok(Some(b_done)) if i >= p.warmup_handshakes => {
                        let done = a_done.max(b_done);
                        harness::record(&mut result.latency, (done - start).as_nanos() as u64);
                    }
                    Ok(Some(_)) => {}
                    _ => result.failures += 1,
                }
                let _ = peer.handle.close(conn, CloseCode::NORMAL, "done").await;
            }
            let _ = stop_tx.send(());
            peer.stop().await;
            Ok::<_, String>(result)
        },
        move || async move {
            let mut peer = Peer::start(&p, ids_b.b_signer, ids_b.b_keys, 2).await?;
            let _ = addr_tx.send(peer.addr);
            let hard_limit = tokio::time::sleep_until(Instant::now() + p.hard_limit());
            tokio::pin!(hard_limit);
            let mut stop = stop_rx;
            loop {
                tokio::select! {
                    event = peer.events.recv() => match event {
                        Some((_, Event::Connected { .. })) => {
                            let _ = connected_tx.send(std::time::Instant::now());
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = &mut stop => break,
                    () = &mut hard_limit => break,
                }
            }
            peer.stop().await;
            Ok::<(), String>(())
        },
    );
    b?;
    a
}

/// The session layer alone: two endpoints in one thread, datagrams handed from one to
/// the other in memory (no socket, no channel, no runtime), A sending `warmup +
/// messages` Ordered messages as fast as its send buffer takes them. Shows what the
/// session code costs per message, both ends together, and profiles cleanly.
pub fn in_memory(p: Params, ids: &Identities) -> Result<Throughput, String> {
    use std::time::Instant as StdInstant;
    let a_addr = SocketAddr::from(([127, 0, 0, 1], 1));
    let b_addr = SocketAddr::from(([127, 0, 0, 1], 2));
    let now = StdInstant::now();
    let config = SessionConfig::default;
    let mut a = Endpoint::new(
        config(),
        GROUP,
        ids.a_signer.clone(),
        ids.a_keys.clone(),
        [1; 32],
        now,
    );
    let mut b = Endpoint::new(
        config(),
        GROUP,
        ids.b_signer.clone(),
        ids.b_keys.clone(),
        [2; 32],
        now,
    );
    // Hands every datagram `from` has ready to `to`; returns how many.
    fn pump(from: &mut Endpoint, from_addr: SocketAddr, to: &mut Endpoint) -> usize {
        let now = StdInstant::now();
        let mut n = 0;
        while let Some(t) = from.poll_transmit(now) {
            to.handle_datagram(now, from_addr, &t.contents);
            n += 1;
        }
        n
    }
    let conn = a.connect(now, b_addr, "bob");
    let hard_limit = now + p.hard_limit();
    // Handshake: INITIAL, RETRY, INITIAL, RESPONSE, FINISH.
    while !(a.connection(conn).is_some_and(|c| c.is_established())
        && b.connections().any(|(_, c)| c.is_established()))
    {
        if StdInstant::now() >= hard_limit {
            return Err("in-memory handshake did not complete".into());
        }
        pump(&mut a, a_addr, &mut b);
        pump(&mut b, b_addr, &mut a);
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
    }
    let total = p.warmup_messages + p.messages;
    let limit = StdInstant::now() + p.max_duration;
    let mut tally = OneWayTally::new(p.warmup_messages);
    let mut m = harness::message(0);
    let mut seq = 0;
    while tally.received + p.warmup_messages < total {
        let now = StdInstant::now();
        if now >= limit {
            break;
        }
        // Fill A's send buffer (it refuses once full or its window of ids is).
        while seq < total {
            harness::stamp(&mut m, seq);
            if a.send(conn, CLASS, &m).is_err() {
                break;
            }
            seq += 1;
        }
        let moved = pump(&mut a, a_addr, &mut b);
        while let Some((_, event)) = b.poll_event() {
            if let Event::Message { data, .. } = event {
                tally.on_message(&data);
            }
        }
        let acks = pump(&mut b, b_addr, &mut a);
        while a.poll_event().is_some() {}
        if moved == 0 && acks == 0 {
            // Nothing to send or acknowledge now: let delayed-ACK and loss timers run.
            let now = StdInstant::now();
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
    }
    let sent = seq.saturating_sub(p.warmup_messages);
    let mut stats = ConnectionStats::default();
    if let Some(c) = a.connection(conn) {
        stats = c.stats();
    }
    let note = format!(
        "no I/O: {} pkts sent, {} received by the sender, cwnd {} B",
        stats.packets_sent,
        stats.packets_received,
        a.connection(conn).map_or(0, |c| c.congestion_window())
    );
    Ok(tally.into_result(sent, note))
}
