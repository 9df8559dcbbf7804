//! What every scenario shares: the two-thread layout, the clock, the message format,
//! the parameters, and the results.
//!
//! # Layout
//!
//! Each scenario has two peers, A (the client: it connects, sends, measures) and B (the
//! server). By default ([`Layout::Threads`]) [`run_pair`] runs each on its own OS thread
//! with its own single-threaded tokio runtime, as two one-core processes would run, so a
//! transport's own tasks (its driver, its timers) share a core with the application that
//! uses them, and the two peers never compete for one. Either way both peers are in one
//! process, so one monotonic clock ([`now_ns`]) timestamps a message on A and reads it
//! on B.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Bytes of every benchmark message.
pub const MESSAGE_LEN: usize = 100;

/// How the two peers are laid out on threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Each peer on its own OS thread with its own current-thread runtime, as two
    /// single-threaded processes (or two machines) would run. Every message wakes the
    /// other peer's parked thread: the realistic cost, and the default.
    Threads,
    /// Both peers on one current-thread runtime: no cross-thread wake-up at all, so
    /// latencies show the transports' own work (and one core does everything).
    Shared,
    /// Both peers as tasks of one multi-thread runtime with two workers (what
    /// `#[tokio::main]` gives on this machine); tokio decides where each task runs.
    Multi,
}

impl Layout {
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "threads" => Some(Layout::Threads),
            "shared" => Some(Layout::Shared),
            "multi" => Some(Layout::Multi),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Layout::Threads => {
                "each peer on its own thread with a current-thread tokio runtime (--layout threads)"
            }
            Layout::Shared => "both peers on one current-thread tokio runtime (--layout shared)",
            Layout::Multi => {
                "both peers on one 2-worker multi-thread tokio runtime (--layout multi)"
            }
        }
    }
}

/// What the scenarios run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Messages measured in the one-way throughput test...
    pub messages: u64,
    /// ...after this many unmeasured ones (window growth, allocator warm-up).
    pub warmup_messages: u64,
    /// Round trips measured in the ping-pong test...
    pub round_trips: u64,
    /// ...after this many unmeasured ones.
    pub warmup_round_trips: u64,
    /// Handshakes measured...
    pub handshakes: u64,
    /// ...after this many unmeasured ones.
    pub warmup_handshakes: u64,
    /// Upper bound on each test's measured phase; whatever finished by then is reported.
    pub max_duration: Duration,
    pub layout: Layout,
    /// SO_RCVBUF for every socket of every transport; `None` keeps the system default.
    pub rcvbuf: Option<usize>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            messages: 200_000,
            warmup_messages: 20_000,
            round_trips: 20_000,
            warmup_round_trips: 1_000,
            handshakes: 200,
            warmup_handshakes: 5,
            max_duration: Duration::from_secs(10),
            layout: Layout::Threads,
            rcvbuf: None,
        }
    }
}

impl Params {
    /// The hard limit for a whole test, set-up and warm-up included: no loop runs past
    /// it, even if a transport stalls.
    pub fn hard_limit(&self) -> Duration {
        self.max_duration * 2 + Duration::from_secs(5)
    }
}

/// Runs peer `a` and peer `b` to completion, laid out as `layout` says, and returns
/// both results. The futures are created where they run, so sockets register with the
/// runtime that polls them.
pub fn run_pair<A, B, FA, FB, RA, RB>(layout: Layout, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> FA + Send + 'static,
    B: FnOnce() -> FB + Send + 'static,
    FA: Future<Output = RA> + Send + 'static,
    FB: Future<Output = RB> + Send + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    match layout {
        Layout::Threads => std::thread::scope(|scope| {
            let b = std::thread::Builder::new()
                .name("peer-b".into())
                .spawn_scoped(scope, move || current_thread().block_on(b()))
                .expect("spawn peer B");
            let a = std::thread::Builder::new()
                .name("peer-a".into())
                .spawn_scoped(scope, move || current_thread().block_on(a()))
                .expect("spawn peer A");
            (
                a.join().expect("peer A panicked"),
                b.join().expect("peer B panicked"),
            )
        }),
        Layout::Shared => current_thread().block_on(async {
            let b = tokio::spawn(async move { b().await });
            let a = tokio::spawn(async move { a().await });
            (
                a.await.expect("peer A panicked"),
                b.await.expect("peer B panicked"),
            )
        }),
        Layout::Multi => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async {
                let b = tokio::spawn(async move { b().await });
                let a = tokio::spawn(async move { a().await });
                (
                    a.await.expect("peer A panicked"),
                    b.await.expect("peer B panicked"),
                )
            }),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A non-blocking UDP socket bound to 127.0.0.1 on an ephemeral port, with its receive
/// buffer set to `rcvbuf` bytes if given (the kernel doubles it, up to rmem_max). Every
/// transport's sockets are made here, so they all get the same buffers.
pub fn loopback_socket(rcvbuf: Option<usize>) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// [`loopback_socket`] registered with the current tokio runtime.
pub fn tokio_loopback_socket(rcvbuf: Option<usize>) -> std::io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(loopback_socket(rcvbuf)?)
}

// ----- clock and message format ----------------------------------------------------------

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's benchmark epoch (monotonic, shared by all threads).
pub fn now_ns() -> u64 {
    ns_of(Instant::now())
}

/// `at` in nanoseconds since the benchmark epoch.
pub fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

/// A message: its send time (ns since epoch) in bytes 0..8, its sequence number in 8..16,
/// filler after. Stamped just before it is handed to the transport.
pub fn message(seq: u64) -> Vec<u8> {
    let mut m = vec![0xA5; MESSAGE_LEN];
    stamp(&mut m, seq);
    m
}

/// Overwrites `m`'s send time with now and its sequence number with `seq`.
pub fn stamp(m: &mut [u8], seq: u64) {
    m[8..16].copy_from_slice(&seq.to_le_bytes());
    m[0..8].copy_from_slice(&now_ns().to_le_bytes());
}

/// A message's (send time, sequence number); `None` if it is too short to hold them.
pub fn read_stamp(m: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(m.get(0..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(m.get(8..16)?.try_into().ok()?);
    Some((sent, seq))
}

// ----- results ---------------------------------------------------------------------------

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// Records `ns`, clamped into the histogram's range (a sample can only be out of range
/// if the clock misbehaves).
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Receiver-side tally of the one-way test, shared by the transports.
#[derive(Debug)]
pub struct OneWayTally {
    warmup: u64,
    /// Measured messages received.
    pub received: u64,
    /// Earliest send stamp among measured messages received.
    first_sent_ns: Option<u64>,
    last_received_ns: u64,
    pub latency: Histogram<u64>,
}

impl OneWayTally {
    pub fn new(warmup: u64) -> Self {
        OneWayTally {
            warmup,
            received: 0,
            first_sent_ns: None,
            last_received_ns: 0,
            latency: histogram(),
        }
    }

    /// Takes one received message; returns its sequence number.
    pub fn on_message(&mut self, m: &[u8]) -> Option<u64> {
        let (sent, seq) = read_stamp(m)?;
        if seq < self.warmup {
            return Some(seq);
        }
        let now = now_ns();
        self.received += 1;
        self.first_sent_ns = Some(self.first_sent_ns.map_or(sent, |f| f.min(sent)));
        self.last_received_ns = now;
        record(&mut self.latency, now.saturating_sub(sent));
        Some(seq)
    }

    /// From the first measured message's send to the last one's arrival.
    pub fn elapsed(&self) -> Duration {
        let first = self.first_sent_ns.unwrap_or(self.last_received_ns);
        Duration::from_nanos(self.last_received_ns.saturating_sub(first))
    }

    pub fn into_result(self, sent: u64, note: String) -> Throughput {
        Throughput {
            sent,
            elapsed: self.elapsed(),
            received: self.received,
            latency: self.latency,
            note,
        }
    }
}

/// One-way throughput: measured messages only.
#[derive(Debug)]
pub struct Throughput {
    /// Measured messages the sender handed to the transport.
    pub sent: u64,
    /// Measured messages that arrived.
    pub received: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub note: String,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.received as f64 / secs
        } else {
            0.0
        }
    }
}

/// A latency test (ping-pong round trips, handshakes).
#[derive(Debug)]
pub struct Latency {
    pub latency: Histogram<u64>,
    /// Attempts that failed or timed out (not in the histogram).
    pub failures: u64,
    pub note: String,
}

impl Latency {
    pub fn new() -> Self {
        Latency {
            latency: histogram(),
            failures: 0,
            note: String::new(),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// What one transport achieved, over every repetition of each test: `None` for a test
/// not run, `Err` for one that failed (in any repetition).
#[derive(Debug)]
pub struct TransportResults {
    pub name: &'static str,
    pub throughput: Option<Result<Vec<Throughput>, String>>,
    pub ping_pong: Option<Result<Vec<Latency>, String>>,
    pub handshake: Option<Result<Vec<Latency>, String>>,
}

/// Runs `test` `runs` times (at least once); stops at the first failure.
pub fn repeat<T>(
    runs: usize,
    mut test: impl FnMut() -> Result<T, String>,
) -> Result<Vec<T>, String> {
    (0..runs.max(1)).map(|_| test()).collect()
}
