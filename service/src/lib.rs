//! `sockmsg-service`: the network machinery every sockmsg request/response service shares.
//!
//! The key manager and the proxy both answer REQUEST packets with RESPONSE packets, over
//! UDP and TCP on one port, under the same rules (SPEC.md §2, §4): bounded connections,
//! per-packet read timeouts, no UDP answer over three times its request, and the first
//! undecodable TCP packet closes its connection. Those rules are security properties, so
//! they live here once; each service supplies only a [`Handler`] that turns request bytes
//! into a [`Response`].
//!
//! ```text
//!  UDP workers ──┐                          ┌─ Reply ─────────────▶ fit_udp ─▶ send
//!                ├─ Handler::handle ────────┼─ Later (UDP: own task; TCP: awaited) ─┘
//!  TCP conns ────┘  (header checked first)  └─ Drop (counted; TCP: connection closed)
//! ```
//!
//! - [`bind_pair`] binds UDP and TCP on the same address;
//! - [`spawn`] starts the UDP workers and the TCP acceptor, which run until the stop
//!   signal (a [`watch`] channel turning `true`), so each service keeps control of its
//!   own shutdown order;
//! - [`ServiceStats`] are the counters this crate keeps; [`service_stats!`] builds a
//!   service's `Stats` around them, with that service's own counters beside them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sockmsg_wire::{DecodeError, FrameType, Header, Packet, PacketFlags, PacketType, HEADER_LEN};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, warn};

/// How a request arrived: UDP answers are bounded by the request's size (SPEC.md §4),
/// because a UDP source address can be spoofed and we must not be an amplifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The transport limits of a service.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// Time allowed to read one TCP packet, from its first byte to its last. Per packet,
    /// not per read: a client dribbling one byte a second must not hold a connection
    /// slot. Also bounds writing an answer, so a client that does not read is dropped too.
    pub tcp_read_timeout: Duration,
    /// Time a TCP connection may stay silent between packets: idle clients give their
    /// slot back.
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; more are closed at once rather than queued, so a
    /// flood of connections costs us file descriptors for an instant only.
    pub max_tcp_connections: usize,
    /// Tasks receiving UDP datagrams.
    pub udp_workers: usize,
}

/// An answer still to come: the RESPONSE packet, or why the request is dropped.
pub type Deferred = Pin<Box<dyn Future<Output = Result<Vec<u8>, &'static str>> + Send>>;

/// What a handler makes of one request.
pub enum Response {
    /// Send this RESPONSE packet now.
    Reply(Vec<u8>),
    /// The answer needs waiting (a group commit, a key look-up): over UDP the future runs
    /// in its own task so the worker keeps receiving; over TCP it is awaited, one packet
    /// at a time per connection. `Err(reason)` drops the request like [`Response::Drop`].
    Later(Deferred),
    /// Not a request we answer (not sockmsg, malformed, not a REQUEST): nothing is sent,
    /// so garbage cannot elicit traffic; over TCP the connection is closed.
    Drop { reason: &'static str },
}

/// A service's request logic, called by the UDP workers and the TCP connections.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from `peer`. Runs on the receiving task: do cheap work here and
    /// return [`Response::Later`] for anything that waits. (`&Arc<Self>` so that a later
    /// answer can keep the handler alive.)
    fn handle(self: &Arc<Self>, peer: SocketAddr, transport: Transport, request: &[u8])
        -> Response;

    /// The shared counters this crate updates.
    fn stats(&self) -> &ServiceStats;

    /// Called with each answer just before it is sent (after [`fit_udp`]), to count it by
    /// what it says. [`ServiceStats::replies`] is already counted.
    fn replied(&self, _reply: &[u8]) {}

    /// A short answer for `request_id` within `limit` bytes, to replace a UDP answer over
    /// three times its request; `None` sends nothing. See [`fit_udp`].
    fn shorten(&self, _request_id: u64, _reply: &[u8], _limit: usize) -> Option<Vec<u8>> {
        None
    }
}

macro_rules! counters {
    ($( $(#[$meta:meta])* $field:ident, )*) => {
        /// The counters every service keeps, updated as it runs (relaxed atomics: for
        /// logs and tests).
        #[derive(Debug, Default)]
        pub struct ServiceStats {
            $( $(#[$meta])* pub $field: AtomicU64, )*
        }

        /// A copy of [`ServiceStats`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ServiceStatsSnapshot {
            $( $(#[$meta])* pub $field: u64, )*
        }

        impl ServiceStats {
            pub fn snapshot(&self) -> ServiceStatsSnapshot {
                ServiceStatsSnapshot { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// UDP datagrams received.
    udp_datagrams,
    /// TCP packets received whole.
    tcp_packets,
    /// Responses sent (UDP or TCP).
    replies,
    /// Requests not answered: not sockmsg, malformed, not a REQUEST.
    dropped,
    /// UDP answers replaced by a short one (or not sent) to stay within 3× the request.
    amplification_guarded,
    /// TCP connections accepted.
    tcp_accepted,
    /// TCP connections closed at once: over the connection limit.
    tcp_rejected,
    /// TCP connections closed because a packet took too long to arrive.
    tcp_read_timeouts,
    /// TCP connections closed because they stayed idle too long.
    tcp_idle_timeouts,
    /// TCP connections closed on a packet that failed to decode.
    tcp_bad_packets,
}

/// Builds a service's `Stats` (and `StatsSnapshot`): the shared [`ServiceStats`] in field
/// `service`, then the service's own counters. Both deref to the shared part, so
/// `stats.snapshot().dropped` reads the same whichever crate keeps the counter.
#[macro_export]
macro_rules! service_stats {
    ($( $(#[$meta:meta])* $field:ident, )*) => {
        /// Counters, updated as the server runs (relaxed atomics: for logs and tests).
        #[derive(Debug, Default)]
        pub struct Stats {
            /// The counters every service keeps (transport, limits, drops).
            pub service: $crate::ServiceStats,
            $( $(#[$meta])* pub $field: ::std::sync::atomic::AtomicU64, )*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            pub service: $crate::ServiceStatsSnapshot,
            $( $(#[$meta])* pub $field: u64, )*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    service: self.service.snapshot(),
                    $( $field: self.$field.load(::std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        impl ::std::ops::Deref for Stats {
            type Target = $crate::ServiceStats;
            fn deref(&self) -> &$crate::ServiceStats {
                &self.service
            }
        }

        impl ::std::ops::Deref for StatsSnapshot {
            type Target = $crate::ServiceStatsSnapshot;
            fn deref(&self) -> &$crate::ServiceStatsSnapshot {
                &self.service
            }
        }
    };
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A socket that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {addr} ({proto}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub proto: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Binds a UDP socket and a TCP listener on the same address. With port 0 the system
/// picks the UDP port first and TCP may find it taken: retry a few times.
pub async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), BindError> {
    let attempts = if listen.port() == 0 { 32 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen).await.map_err(|source| BindError {
            addr: listen,
            proto: "UDP",
            source,
        })?;
        let addr = udp.local_addr().map_err(|source| BindError {
            addr: listen,
            proto: "UDP",
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if attempt >= attempts => {
                return Err(BindError {
                    addr,
                    proto: "TCP",
                    source,
                })
            }
            Err(_) => {}
        }
    }
}

/// Resolves once a stop was requested (at once if it already was).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// The payload length announced by a packet header, or `None` if the header fails to
/// decode or is not a REQUEST. Checked before the payload is read, so a bad header costs
/// us 16 bytes of reading, not a 64 KiB buffer.
pub fn request_payload_len(header: &[u8; HEADER_LEN]) -> Option<usize> {
    if header[3] != PacketType::REQUEST.0 {
        return None;
    }
    match Packet::parse(header, 0) {
        // The header is sound and its payload is still to come.
        Err(DecodeError::Truncated {
            field: "payload", ..
        }) => Some(usize::from(u16::from_be_bytes([header[6], header[7]]))),
        _ => None,
    }
}

/// Keeps a UDP answer within three times the request (SPEC.md §4). Handlers already
/// bound their answers; this last guard makes sure no future answer breaks the rule: an
/// oversized one is replaced by `shorten(request_id, reply, limit)`, or not sent.
pub fn fit_udp(
    request: &[u8],
    reply: Vec<u8>,
    stats: &ServiceStats,
    shorten: impl FnOnce(u64, &[u8], usize) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let limit = request.len().saturating_mul(3);
    if reply.len() <= limit {
        return Some(reply);
    }
    bump(&stats.amplification_guarded);
    debug!(
        reply = reply.len(),
        request = request.len(),
        "UDP answer over 3x the request: a short one (if any) sent instead"
    );
    let request_id = u64::from_be_bytes(request.get(8..16)?.try_into().ok()?);
    let short = shorten(request_id, &reply, limit)?;
    (short.len() <= limit).then_some(short)
}

/// Starts `limits.udp_workers` UDP workers and the TCP acceptor in `tasks`. They serve
/// `handler` until `stopping` turns true; then the acceptor gives open connections a
/// moment to finish the packet in hand. The tasks end only on stop: one ending earlier is
/// a failure the caller should report.
pub fn spawn<H: Handler>(
    tasks: &mut JoinSet<()>,
    udp: UdpSocket,
    tcp: TcpListener,
    handler: Arc<H>,
    limits: &ServiceLimits,
    stopping: &watch::Receiver<bool>,
) {
    let udp = Arc::new(udp);
    for _ in 0..limits.udp_workers.max(1) {
        tasks.spawn(udp_worker(
            Arc::clone(&handler),
            Arc::clone(&udp),
            stopping.clone(),
        ));
    }
    tasks.spawn(tcp_acceptor(handler, tcp, limits.clone(), stopping.clone()));
}

async fn udp_worker<H: Handler>(
    handler: Arc<H>,
    socket: Arc<UdpSocket>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = tokio::select! {
            biased;
            () = stopped(&mut stopping) => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                // E.g. ICMP port unreachable reported for an earlier reply: not ours to fix.
                Err(e) => {
                    debug!("UDP receive error: {e}");
                    continue;
                }
            },
        };
        bump(&handler.stats().udp_datagrams);
        let request = &buf[..len];
        match handler.handle(from, Transport::Udp, request) {
            Response::Reply(reply) => send_udp(&*handler, &socket, request, reply, from).await,
            Response::Later(later) => {
                let (handler, socket) = (Arc::clone(&handler), Arc::clone(&socket));
                let request = request.to_vec();
                tokio::spawn(async move {
                    match later.await {
                        Ok(reply) => send_udp(&*handler, &socket, &request, reply, from).await,
                        Err(reason) => udp_dropped(&*handler, from, request.len(), reason),
                    }
                });
            }
            Response::Drop { reason } => udp_dropped(&*handler, from, len, reason),
        }
    }
}

fn udp_dropped<H: Handler>(handler: &H, from: SocketAddr, len: usize, reason: &str) {
    bump(&handler.stats().dropped);
    debug!(%from, len, reason, "UDP datagram dropped");
}

async fn send_udp<H: Handler>(
    handler: &H,
    socket: &UdpSocket,
    request: &[u8],
    reply: Vec<u8>,
    to: SocketAddr,
) {
    let fitted = fit_udp(request, reply, handler.stats(), |id, reply, limit| {
        handler.shorten(id, reply, limit)
    });
    let Some(reply) = fitted else {
        return;
    };
    bump(&handler.stats().replies);
    handler.replied(&reply);
    if let Err(e) = socket.send_to(&reply, to).await {
        debug!(%to, "UDP send failed: {e}");
    }
}

async fn tcp_acceptor<H: Handler>(
    handler: Arc<H>,
    listener: TcpListener,
    limits: ServiceLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_tcp_connections.max(1)));
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stopping) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        bump(&handler.stats().tcp_accepted);
                        let (handler, limits) = (Arc::clone(&handler), Arc::clone(&limits));
                        let stopping = stopping.clone();
                        connections.spawn(async move {
                            let reason =
                                connection(&handler, &limits, stream, peer, stopping).await;
                            debug!(%peer, reason, "TCP connection closed");
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        bump(&handler.stats().tcp_rejected);
                        debug!(%peer, "TCP connection refused: connection limit reached");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!("TCP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Connections notice the stop between packets; give those mid-request a moment.
    let drained = timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Serves one TCP connection, one packet at a time; returns why it ended.
async fn connection<H: Handler>(
    handler: &Arc<H>,
    limits: &ServiceLimits,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stopping: watch::Receiver<bool>,
) -> &'static str {
    let stats = handler.stats();
    let _ = stream.set_nodelay(true);
    let mut packet = Vec::with_capacity(2048);
    loop {
        packet.clear();
        packet.resize(HEADER_LEN, 0);
        // Between packets: wait for the first byte, up to the idle timeout.
        let first = tokio::select! {
            biased;
            () = stopped(&mut stopping) => return "shutting down",
            read = timeout(limits.tcp_idle_timeout, stream.read(&mut packet[..1])) => read,
        };
        match first {
            Err(_) => {
                bump(&stats.tcp_idle_timeouts);
                return "idle timeout";
            }
            Ok(Ok(0)) => return "closed by the client",
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "read error",
        }
        // The rest of the packet must follow within the read timeout.
        let deadline = Instant::now() + limits.tcp_read_timeout;
        match timeout_at(deadline, stream.read_exact(&mut packet[1..HEADER_LEN])).await {
            Err(_) => {
                bump(&stats.tcp_read_timeouts);
                return "read timeout";
            }
            Ok(Err(_)) => return "closed mid-packet",
            Ok(Ok(_)) => {}
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&packet[..HEADER_LEN]);
        let Some(payload_len) = request_payload_len(&header) else {
            bump(&stats.tcp_bad_packets);
            bump(&stats.dropped);
            return "undecodable header";
        };
        packet.resize(HEADER_LEN + payload_len, 0);
        match timeout_at(deadline, stream.read_exact(&mut packet[HEADER_LEN..])).await {
            Err(_) => {
                bump(&stats.tcp_read_timeouts);
                return "read timeout";
            }
            Ok(Err(_)) => return "closed mid-packet",
            Ok(Ok(_)) => {}
        }
        bump(&stats.tcp_packets);
        let answer = match handler.handle(peer, Transport::Tcp, &packet) {
            Response::Reply(reply) => Ok(reply),
            Response::Later(later) => later.await,
            Response::Drop { reason } => Err(reason),
        };
        let reply = match answer {
            Ok(reply) => reply,
            Err(reason) => {
                bump(&stats.tcp_bad_packets);
                bump(&stats.dropped);
                debug!(%peer, reason, "TCP packet dropped: closing the connection");
                return "undecodable packet";
            }
        };
        bump(&stats.replies);
        handler.replied(&reply);
        // A client that does not read its answers is dropped like one that does not write.
        match timeout(limits.tcp_read_timeout, stream.write_all(&reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return "write error",
            Err(_) => return "write timeout",
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the graceful-shutdown signal of every sockmsg service
/// binary. If a signal cannot be watched, that source simply never fires.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// A RESPONSE packet holding one frame whose encoded body is `body` (already valid,
/// e.g. a record stored as served), echoing `request_id`: no decode and re-encode on the
/// lookup path.
pub fn body_response(request_id: u64, frame_type: FrameType, body: &[u8]) -> Vec<u8> {
    let payload_len = u16::try_from(1 + body.len()).unwrap_or(u16::MAX);
    let header = Header::new(
        PacketType::RESPONSE,
        PacketFlags::empty(),
        request_id,
        0,
        payload_len,
    );
    let mut packet = Vec::with_capacity(HEADER_LEN + 1 + body.len());
    packet.extend_from_slice(header.as_wire_bytes());
    packet.push(frame_type.0);
    packet.extend_from_slice(body);
    packet
}

/// Logs to stderr, filtered by `RUST_LOG`, or by `default_filter` when it is unset (the
/// same setup for every sockmsg binary).
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_wire::{Header, PacketFlags};

    fn request(payload_len: u16) -> Vec<u8> {
        let header = Header::new(PacketType::REQUEST, PacketFlags::empty(), 9, 0, payload_len);
        let mut bytes = header.as_wire_bytes().to_vec();
        bytes.resize(HEADER_LEN + usize::from(payload_len), 0);
        bytes
    }

    #[test]
    fn only_request_headers_announce_a_payload() {
        let bytes = request(42);
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        assert_eq!(request_payload_len(&header), Some(42));
        let mut response = header;
        response[3] = PacketType::RESPONSE.0;
        assert_eq!(request_payload_len(&response), None);
    }

    #[test]
    fn oversized_udp_answers_are_shortened_or_withheld() {
        let stats = ServiceStats::default();
        let request = request(2);
        let limit = 3 * request.len();
        let fits = vec![1; limit];
        assert_eq!(
            fit_udp(&request, fits.clone(), &stats, |_, _, _| None),
            Some(fits)
        );
        let big = vec![1; limit + 1];
        assert_eq!(fit_udp(&request, big.clone(), &stats, |_, _, _| None), None);
        let short = fit_udp(&request, big.clone(), &stats, |id, _, room| {
            assert_eq!((id, room), (9, limit));
            Some(vec![2; room])
        });
        assert_eq!(short, Some(vec![2; limit]));
        let too_long = fit_udp(&request, big, &stats, |_, _, room| Some(vec![2; room + 1]));
        assert_eq!(too_long, None);
        assert_eq!(stats.snapshot().amplification_guarded, 3);
    }
}
