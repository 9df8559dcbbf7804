//! Plain tokio UDP: the floor. No reliability, no encryption, one system call per
//! message each way, so the one-way test counts what arrives (the receiver's socket
//! buffer drops the overflow) and reports the loss.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

use crate::harness::{self, run_pair, Latency, OneWayTally, Params, Throughput, MESSAGE_LEN};

/// A receiver that has seen nothing for this long after the sender finished stops.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

fn bind(p: &Params) -> std::io::Result<UdpSocket> {
    harness::tokio_loopback_socket(p.rcvbuf)
}

/// A blasts `warmup + messages` datagrams; B counts and times what arrives.
pub fn throughput(p: Params) -> Result<Throughput, String> {
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (done_tx, done_rx) = oneshot::channel::<u64>();
    let (sent, tally) = run_pair(
        p.layout,
        move || async move {
            let socket = bind(&p).map_err(|e| e.to_string())?;
            let peer = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let total = p.warmup_messages + p.messages;
            let limit = Instant::now() + p.max_duration;
            let mut m = harness::message(0);
            let mut sent = 0;
            for seq in 0..total {
                if seq % 1024 == 0 && Instant::now() >= limit {
                    break;
                }
                harness::stamp(&mut m, seq);
                // Loopback sendto only fails on resource exhaustion; such a datagram is
                // simply lost, as it would be on a network.
                let _ = socket.send_to(&m, peer).await;
                sent += 1;
            }
            let _ = done_tx.send(sent);
            Ok::<u64, String>(sent.saturating_sub(p.warmup_messages))
        },
        move || async move {
            let socket = bind(&p).map_err(|e| e.to_string())?;
            let _ = addr_tx.send(socket.local_addr().map_err(|e| e.to_string())?);
            let mut tally = OneWayTally::new(p.warmup_messages);
            let mut buf = [0u8; 2048];
            let hard_limit = tokio::time::sleep_until(Instant::now() + p.hard_limit());
            tokio::pin!(hard_limit);
            let mut done = done_rx;
            // While the sender runs: no per-datagram timer, only the hard limit.
            while tally.received < p.messages {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        if let Ok((len, _)) = r {
                            tally.on_message(&buf[..len]);
                        }
                    }
                    _ = &mut done => break,
                    () = &mut hard_limit => return Ok(tally),
                }
            }
            // The sender is done: take what is still queued, until the socket is quiet.
            while tally.received < p.messages {
                match timeout(DRAIN_IDLE, socket.recv_from(&mut buf)).await {
                    Ok(Ok((len, _))) => {
                        tally.on_message(&buf[..len]);
                    }
                    Ok(Err(_)) => {}
                    Err(_) => break,
                }
            }
            Ok::<_, String>(tally)
        },
    );
    let (sent, tally) = (sent?, tally?);
    let lost = sent.saturating_sub(tally.received);
    let note = format!(
        "unreliable; {lost} of {sent} lost ({:.1}%)",
        100.0 * lost as f64 / sent.max(1) as f64
    );
    Ok(tally.into_result(sent, note))
}

/// A sends one datagram, B echoes it, A times the round trip; one at a time.
pub fn ping_pong(p: Params) -> Result<Latency, String> {
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (a, b) = run_pair(
        p.layout,
        move || async move {
            let socket = bind(&p).map_err(|e| e.to_string())?;
            let peer = addr_rx.await.map_err(|_| "peer B gone".to_string())?;
            let mut result = Latency::new();
            let mut m = harness::message(0);
            let mut buf = [0u8; 2048];
            let limit = Instant::now() + p.max_duration;
            // One timer for the whole loop: a per-round-trip timeout would add a timer
            // wheel insertion and removal to the floor being measured.
            let hard_limit = tokio::time::sleep_until(Instant::now() + p.hard_limit());
            tokio::pin!(hard_limit);
            for seq in 0..p.warmup_round_trips + p.round_trips {
                if Instant::now() >= limit {
                    result.note = format!("stopped at the time limit after {seq}");
                    break;
                }
                harness::stamp(&mut m, seq);
                let sent_at = std::time::Instant::now();
                let _ = socket.send_to(&m, peer).await;
                // Loopback does not lose a lone datagram; if it ever did, the hard limit
                // ends the test instead of a hang.
                tokio::select! {
                    r = socket.recv_from(&mut buf) => match r {
                        Ok((len, _)) if len == MESSAGE_LEN => {
                            if seq >= p.warmup_round_trips {
                                harness::record(
                                    &mut result.latency,
                                    sent_at.elapsed().as_nanos() as u64,
                                );
                            }
                        }
                        _ => result.failures += 1,
                    },
                    () = &mut hard_limit => {
                        result.failures += 1;
                        result.note = format!("no answer to round trip {seq}");
                        break;
                    }
                }
            }
            let _ = stop_tx.send(());
            Ok::<_, String>(result)
        },
        move || async move {
            let socket = bind(&p).map_err(|e| e.to_string())?;
            let _ = addr_tx.send(socket.local_addr().map_err(|e| e.to_string())?);
            let mut buf = [0u8; 2048];
            let mut stop = stop_rx;
            let hard_limit = tokio::time::sleep_until(Instant::now() + p.hard_limit());
            tokio::pin!(hard_limit);
            loop {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        if let Ok((len, from)) = r {
                            let _ = socket.send_to(&buf[..len], from).await;
                        }
                    }
                    _ = &mut stop => break,
                    () = &mut hard_limit => break,
                }
            }
            Ok::<(), String>(())
        },
    );
    b?;
    a
}
