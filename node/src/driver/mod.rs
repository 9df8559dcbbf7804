//! The tokio driver of one node: one UDP socket, the session [`Endpoint`], the [`Group`]
//! state machine, the key manager and proxy clients, and one timer.
//!
//! The driver owns no protocol rule. It moves bytes between the socket and the
//! endpoint, group messages between sessions and the group, and does what the group's
//! outputs say: send (opening a session, after fetching the peer's key, when none is
//! open), persist (durably, before anything after it), report events. Around that it
//! keeps the node's business with the services: register its key at start, ask the
//! proxy whom to join, claim a new group, and, while leading, announce each new term and
//! membership (with the signed votes) and refresh the record.
//!
//! ```text
//!  socket ──▶ Endpoint ──Message──▶ ChatReassembly ──▶ Group::step
//!  timer  ──▶ Endpoint::handle_timeout, Group::tick
//!  Group::poll_output ──Send──▶ session (connect: key lookup, then Endpoint::connect)
//!                     ──Persist──▶ StateFile::save (fdatasync)
//!                     ──Event──▶ NodeEvent to the user interface
//!  Endpoint::poll_transmit ──▶ socket
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sockmsg_keymgr::client::{ClientConfig, KeymgrClient, Trust};
use sockmsg_keymgr::verify::VerifiedRecord;
use sockmsg_proxy::client::RecordDraft;
use sockmsg_proxy::Kind;
use sockmsg_wire::frame::{Carrier, CloseCode, MessageClass};
use sockmsg_wire::session::crypto::RsaSigner;
use sockmsg_wire::session::{
    CloseReason, ConnectionHandle, Endpoint, Event, MessageId, SessionConfig, SignRequest,
};
use sockmsg_wire::Frames;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::datadir::NodeDir;
use crate::fragment::ChatReassembly;
use crate::group::{Group, GroupConfig, GroupEvent, Output, Role, VoteSigner};
use crate::keys::{KeyNews, PeerKeyCache};
use crate::message::{GroupMessage, MemberInfo, VoteMsg};
use crate::proxy_client::{sign_record, ProxySet};
use crate::rendezvous::{ProxyAnswer, ProxyRequest, Rendezvous, RendezvousConfig, RendezvousEvent};
use crate::statefile::StateFile;

mod membership;
mod sessions;

/// Messages held for one peer while its key is fetched or its session opens.
const MAX_WAITING: usize = 256;
/// How often every session is pinged: well inside the idle timeout (30 s by default).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Time a leaving node waits for its handover and its LEAVE to be acknowledged.
const EXIT_GRACE: Duration = Duration::from_millis(1500);

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub group: String,
    /// Port 0 = any; a taken nonzero port moves to the next free one.
    pub bind: SocketAddr,
    /// The address peers reach this node at (the bound one unless it is unspecified).
    pub advertise: Option<std::net::IpAddr>,
    /// The proxies, in the order they are asked (one or several, SPEC.md §12.8): a
    /// leader announces to every one, a joiner asks them all. Not empty; at most
    /// [`MAX_PROXIES`](crate::proxy_client::MAX_PROXIES).
    pub proxies: Vec<SocketAddr>,
    pub keymgr: SocketAddr,
    pub keymgr_trust: Trust,
    /// Enrollment token for a key manager in invite mode (`--invite`, `node.invite`).
    pub invite: Option<Vec<u8>>,
    pub group_config: GroupConfig,
    pub session: SessionConfig,
    /// SO_RCVBUF / SO_SNDBUF asked for (the kernel may cap it).
    pub socket_buffer: usize,
}

/// What the user interface asks of the node.
#[derive(Debug)]
pub enum Command {
    Chat(String),
    Direct {
        to: String,
        text: String,
    },
    Peers(oneshot::Sender<PeersReport>),
    Whois(String, oneshot::Sender<Result<String, String>>),
    /// Leave the group (handing over leadership first) and stop.
    Exit,
}

/// One member as `/peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLine {
    pub info: MemberInfo,
    pub leader: bool,
    pub me: bool,
    pub rtt: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersReport {
    pub term: u64,
    pub leader: Option<String>,
    pub members: Vec<PeerLine>,
    /// Group frames dropped by the authorization rules (SPEC.md §12), per rule, the
    /// non-zero counts only.
    pub refused: Vec<(&'static str, u64)>,
}

/// What the node tells the user interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The socket is bound and the key registered.
    Started {
        name: String,
        group: String,
        addr: SocketAddr,
        key_fingerprint: String,
    },
    Group(GroupEvent),
    /// A line we sent: to how many members (`to` for a direct line).
    Sent {
        seq: u64,
        to: Option<String>,
        recipients: usize,
    },
    /// A peer's key, as the key manager vouched for it.
    Key {
        name: String,
        news: KeyNews,
    },
    /// The session to `peer` got no acknowledgement for too long.
    Unreachable {
        peer: String,
    },
    Notice(String),
    /// The node has stopped (after leaving, or on error).
    Stopped,
}

/// A message held until its peer has a session.
struct Waiting {
    class: MessageClass,
    frame: GroupMessage,
}

/// Results of the tasks the driver spawns, back into its loop.
enum TaskResult {
    Key(String, Result<VerifiedRecord, String>),
    /// The proxy's answer to the rendezvous' request.
    Proxy(ProxyAnswer),
    VoteSigned(VoteMsg),
    /// A handshake transcript signed for the endpoint (see [`HandshakeSigningThread`]).
    HandshakeSigned(ConnectionHandle, Vec<u8>),
}

/// Signs votes with the node's RSA key.
struct RsaVoteSigner(Arc<RsaSigner>);

impl VoteSigner for RsaVoteSigner {
    fn sign_vote(&self, input: &[u8]) -> Vec<u8> {
        use sockmsg_wire::session::crypto::Signer;
        match sockmsg_keymgr::datadir::os_rng() {
            Ok(mut rng) => self.0.sign(&mut rng, input),
            Err(_) => Vec::new(),
        }
    }
}

/// The thread that signs this node's votes (see [`Output::SignVote`]), at the lowest
/// priority for its whole life: an RSA signature is milliseconds of CPU that no event
/// loop, ours or another node's on the same host, should wait behind. Its own thread
/// because Linux lets an unprivileged thread lower its priority but not raise it back:
/// a blocking-pool thread lowered for one signature would stay low for whatever it ran
/// next. Requests come in the order of their `at` (each is asked one heartbeat after
/// its grant), so waiting for each in turn delays none. Ends with the driver.
struct VoteSigningThread {
    jobs: std::sync::mpsc::Sender<(VoteMsg, Instant)>,
}

impl VoteSigningThread {
    fn start(signer: Arc<RsaSigner>, results: mpsc::UnboundedSender<TaskResult>) -> Result<Self> {
        let (jobs, requests) = std::sync::mpsc::channel::<(VoteMsg, Instant)>();
        std::thread::Builder::new()
            .name("vote-signer".into())
            .spawn(move || {
                lower_this_threads_priority(VOTE_SIGNING_NICE);
                let signer = RsaVoteSigner(signer);
                for (vote, at) in requests {
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if results
                        .send(TaskResult::VoteSigned(vote.signed(&signer)))
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .context("cannot start the vote-signing thread")?;
        Ok(VoteSigningThread { jobs })
    }
}

/// The thread that signs this node's handshake transcripts (the endpoint runs with
/// `SessionConfig::defer_signatures`): 2-7 ms of RSA per handshake, which on the event
/// loop held every established session's heartbeats and chat up for that long (and a
/// flood of admitted handshakes for as long as it lasted). At normal priority, unlike
/// votes: a handshake has a 2 s timeout and a peer waiting on it. Ends with the driver.
struct HandshakeSigningThread {
    jobs: std::sync::mpsc::Sender<SignRequest>,
}

impl HandshakeSigningThread {
    fn start(signer: Arc<RsaSigner>, results: mpsc::UnboundedSender<TaskResult>) -> Result<Self> {
        use sockmsg_wire::session::crypto::Signer;
        let mut rng = sockmsg_keymgr::datadir::os_rng()
            .context("no randomness for the handshake-signing thread")?;
        let (jobs, requests) = std::sync::mpsc::channel::<SignRequest>();
        std::thread::Builder::new()
            .name("handshake-signer".into())
            .spawn(move || {
                lower_this_threads_priority(HANDSHAKE_SIGNING_NICE);
                for request in requests {
                    let signature = signer.sign(&mut rng, &request.message);
                    if results
                        .send(TaskResult::HandshakeSigned(request.handle, signature))
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .context("cannot start the handshake-signing thread")?;
        Ok(HandshakeSigningThread { jobs })
    }
}

/// The vote-signing thread's niceness: the lowest. Not `SCHED_IDLE`: on a host kept
/// busy that would starve the signatures a new leader needs for the proxy; at nice 19 a
/// signature still gets a share.
const VOTE_SIGNING_NICE: i32 = 19;

/// The handshake-signing thread's niceness: below the event loop, so that a flood of
/// admitted handshakes (up to `max_half_open` per handshake timeout, 64 signatures a
/// second by default) takes CPU from nothing that established sessions need, yet above
/// the votes, since a peer waits on each handshake with a 2 s timeout.
const HANDSHAKE_SIGNING_NICE: i32 = 10;

/// Sets the calling thread's niceness (Linux keeps it per thread; an unprivileged
/// thread can lower its priority, never raise it back). Elsewhere, or if refused,
/// nothing.
fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Binds the node's UDP socket: buffers sized for bursts (a leader's heartbeats to 63
/// members, chat fragments), and the next free port if the asked one is taken.
pub fn bind_socket(bind: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let tries = if bind.port() == 0 { 1 } else { 50 };
    let mut last_err = None;
    for offset in 0..tries {
        let mut addr = bind;
        addr.set_port(bind.port().saturating_add(offset));
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .context("cannot create a UDP socket")?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        socket.set_nonblocking(true)?;
        match socket.bind(&addr.into()) {
            Ok(()) => return Ok(UdpSocket::from_std(socket.into())?),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e).with_context(|| format!("cannot bind UDP {addr}")),
        }
    }
    Err(last_err.map_or_else(
        || anyhow::anyhow!("cannot bind UDP {bind}"),
        |e| {
            anyhow::anyhow!(
                "cannot bind UDP {bind} or the next {} ports: {e}",
                tries - 1
            )
        },
    ))
}

/// The running node. Build with [`Driver::start`], then [`Driver::run`].
pub struct Driver {
    settings: NodeSettings,
    signer: Arc<RsaSigner>,
    dir: NodeDir,
    /// Where `Output::Persist` goes.
    state_file: StateFile,
    socket: UdpSocket,
    me: MemberInfo,
    endpoint: Endpoint,
    group: Group,
    /// The node's business with the proxies.
    rendezvous: Rendezvous,
    keys: PeerKeyCache,
    known_peers: BTreeMap<String, String>,
    keymgr: Arc<KeymgrClient>,
    proxy: ProxySet,

    sessions: HashMap<String, ConnectionHandle>,
    peer_of: HashMap<ConnectionHandle, String>,
    addrs: HashMap<String, SocketAddr>,
    /// Each member's incarnation as the membership lists it.
    incarnations: HashMap<String, u64>,
    waiting: HashMap<String, VecDeque<Waiting>>,
    fetching: HashSet<String>,
    receipts: HashMap<(ConnectionHandle, MessageId), (String, u64)>,
    reassembly: ChatReassembly,

    tasks_tx: mpsc::UnboundedSender<TaskResult>,
    /// Signs votes off every event loop.
    vote_signer: VoteSigningThread,
    /// Signs handshake transcripts off the event loop.
    handshake_signer: HandshakeSigningThread,
    tasks_rx: mpsc::UnboundedReceiver<TaskResult>,
    events: mpsc::UnboundedSender<NodeEvent>,

    exit_deadline: Option<Instant>,
    /// When the sessions are pinged next.
    keepalive_at: Instant,
    /// `SOCKMSG_KEYLOG`: where session secrets go (SPEC.md §5.4), if asked for.
    keylog: Option<std::fs::File>,
}

impl Driver {
    /// Binds the socket, registers the node's key with the key manager, and builds the
    /// group state machine from what the node persisted.
    pub async fn start(
        settings: NodeSettings,
        signer: Arc<RsaSigner>,
        dir: NodeDir,
        events: mpsc::UnboundedSender<NodeEvent>,
    ) -> Result<Driver> {
        let proxy = ProxySet::new(&settings.proxies).context("the proxy addresses")?;
        let socket = bind_socket(settings.bind, settings.socket_buffer)?;
        let local = socket.local_addr()?;
        let advertised = SocketAddr::new(
            settings.advertise.unwrap_or_else(|| local.ip()),
            local.port(),
        );

        let keymgr = KeymgrClient::with_config(
            settings.keymgr,
            settings.keymgr_trust.clone(),
            ClientConfig::default(),
        )
        .context("key manager client")?;
        let first_use = match &settings.keymgr_trust {
            Trust::TrustOnFirstUse { known_hosts } => !known_hosts.exists(),
            Trust::Pinned(_) => false,
        };
        let manager = keymgr
            .manager_key()
            .await
            .with_context(|| format!("cannot trust the key manager at {}", settings.keymgr))?;
        if first_use {
            let _ = events.send(NodeEvent::Notice(format!(
                "trusting the key manager at {} on first use: its key is {} (remembered; \
                 pin it with keymgr.fingerprint in a config file)",
                settings.keymgr,
                manager.fingerprint()
            )));
        }
        keymgr
            .register(&settings.name, &signer, settings.invite.as_deref())
            .await
            .with_context(|| {
                format!(
                    "cannot register the key of {} with the key manager at {}",
                    settings.name, settings.keymgr
                )
            })?;

        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        let me = MemberInfo {
            name: settings.name.clone(),
            addr: advertised,
            rank: rng.random(),
            incarnation: rng.random(),
        };
        let (state_file, hard) = dir.state_file(&settings.group)?;
        let newcomer = hard.term == 0 && hard.members.is_empty();
        let keys = PeerKeyCache::default();
        let now = Instant::now();
        let endpoint = Endpoint::new(
            settings.session.clone(),
            &settings.group,
            signer.clone(),
            Arc::new(keys.clone()),
            rng.random(),
            now,
        );
        let mut addrs: HashMap<String, SocketAddr> = hard
            .members
            .iter()
            .map(|m| (m.name.clone(), m.addr))
            .collect();
        addrs.remove(&settings.name);
        let rendezvous = Rendezvous::new(
            RendezvousConfig::default(),
            &settings.group,
            &me,
            newcomer,
            now,
        );
        let group = Group::new(
            settings.group_config.clone(),
            me.clone(),
            hard,
            ChaCha8Rng::from_seed(rng.random()),
            now,
        )?;
        let known_peers = dir.known_peers();
        let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
        let vote_signer = VoteSigningThread::start(signer.clone(), tasks_tx.clone())?;
        let handshake_signer = HandshakeSigningThread::start(signer.clone(), tasks_tx.clone())?;
        let fingerprint = sockmsg_keymgr::registry::fingerprint(signer.public_key_der());
        let _ = events.send(NodeEvent::Started {
            name: settings.name.clone(),
            group: settings.group.clone(),
            addr: advertised,
            key_fingerprint: fingerprint,
        });
        Ok(Driver {
            proxy,
            settings,
            signer,
            dir,
            state_file,
            socket,
            me,
            endpoint,
            group,
            rendezvous,
            keys,
            known_peers,
            keymgr: Arc::new(keymgr),
            sessions: HashMap::new(),
            peer_of: HashMap::new(),
            addrs,
            incarnations: HashMap::new(),
            waiting: HashMap::new(),
            fetching: HashSet::new(),
            receipts: HashMap::new(),
            reassembly: ChatReassembly::default(),
            tasks_tx,
            vote_signer,
            handshake_signer,
            tasks_rx,
            events,
            exit_deadline: None,
            keepalive_at: now + KEEPALIVE_INTERVAL,
            keylog: open_keylog(),
        })
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }

    /// Runs until `/exit`, `shutdown`, or the end of `commands`; leaves the group
    /// gracefully first (a leader hands over leadership).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let mut buf = vec![0u8; 65_536];
        let mut commands_open = true;
        loop {
            let now = Instant::now();
            let deadline = [
                self.endpoint.poll_timeout(),
                self.group.poll_timeout(),
                self.rendezvous.poll_timeout(&self.group),
                self.exit_deadline,
                Some(now + Duration::from_millis(250)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let now = Instant::now();
                    match received {
                        Ok((n, from)) => self.endpoint.handle_datagram(now, from, &buf[..n]),
                        Err(e) => tracing::debug!("recv: {e}"),
                    }
                    // Drain what else is queued, without waiting.
                    for _ in 0..64 {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.endpoint.handle_datagram(now, from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.on_command(command),
                    None => {
                        commands_open = false;
                        self.begin_exit();
                    }
                },
                Some(result) = self.tasks_rx.recv() => self.on_task(result),
                () = &mut shutdown, if self.exit_deadline.is_none() => self.begin_exit(),
            }
            let now = Instant::now();
            self.endpoint.handle_timeout(now);
            self.group.tick(now);
            self.pump(now)?;
            self.housekeeping(now);
            self.flush().await;
            if let Some(deadline) = self.exit_deadline {
                let left = self.group.role() == Role::Left;
                if (left && self.all_acked()) || now >= deadline {
                    break;
                }
            }
        }
        self.close_all().await;
        let _ = self.events.send(NodeEvent::Stopped);
        Ok(())
    }

    // ----- the three sources of work --------------------------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Chat(text) => match self.group.send_chat(&text) {
                Ok(seq) => {
                    let recipients = self.group.members().len().saturating_sub(1);
                    self.emit(NodeEvent::Sent {
                        seq,
                        to: None,
                        recipients,
                    });
                }
                Err(e) => self.emit(NodeEvent::Notice(format!("not sent: {e}"))),
            },
            Command::Direct { to, text } => match self.group.send_direct(&to, &text) {
                Ok(seq) => self.emit(NodeEvent::Sent {
                    seq,
                    to: Some(to),
                    recipients: 1,
                }),
                Err(e) => self.emit(NodeEvent::Notice(format!("not sent: {e}"))),
            },
            Command::Peers(reply) => {
                let _ = reply.send(self.peers_report());
            }
            Command::Whois(name, reply) => {
                let answer = if name == self.me.name {
                    Ok(sockmsg_keymgr::registry::fingerprint(
                        self.signer.public_key_der(),
                    ))
                } else {
                    self.keys
                        .fingerprint(&name)
                        .ok_or_else(|| format!("no key of {name} seen yet"))
                };
                if answer.is_err() {
                    self.fetch_key(&name);
                }
                let _ = reply.send(answer);
            }
            Command::Exit => {
                tracing::trace!("exit asked");
                self.begin_exit()
            }
        }
    }

    fn on_task(&mut self, result: TaskResult) {
        let now = Instant::now();
        match result {
            TaskResult::Key(name, result) => {
                self.fetching.remove(&name);
                match result {
                    Ok(record) => {
                        let news = self.keys.learn(&record, &mut self.known_peers);
                        if matches!(news, KeyNews::New { .. } | KeyNews::Changed { .. }) {
                            if let Err(e) = self.dir.save_known_peers(&self.known_peers) {
                                self.emit(NodeEvent::Notice(format!("{e:#}")));
                            }
                        }
                        if news != KeyNews::Same {
                            self.emit(NodeEvent::Key {
                                name: name.clone(),
                                news,
                            });
                        }
                        self.flush_waiting(now, &name);
                    }
                    Err(why) => {
                        self.emit(NodeEvent::Notice(format!("no key for {name}: {why}")));
                        self.fail_waiting(&name);
                    }
                }
            }
            TaskResult::Proxy(answer) => {
                if let ProxyAnswer::Record(Some(record)) = &answer {
                    if record.leader != self.me.name {
                        self.addrs
                            .entry(record.leader.clone())
                            .or_insert(record.leader_addr);
                    }
                }
                self.rendezvous.handle_answer(now, &mut self.group, answer);
            }
            TaskResult::HandshakeSigned(handle, signature) => {
                // The handshake may have timed out or closed meanwhile: routine.
                if let Err(e) = self.endpoint.provide_signature(now, handle, &signature) {
                    tracing::debug!("handshake signature not used: {e}");
                }
            }
            TaskResult::VoteSigned(vote) => {
                tracing::trace!(term = vote.term, candidate = %vote.candidate, "vote signed");
                self.group.vote_signed(vote);
            }
        }
    }

    /// Has the vote-signing thread sign a granted vote at `at` (see
    /// [`Output::SignVote`]); the result comes back as [`TaskResult::VoteSigned`].
    fn sign_vote(&self, vote: VoteMsg, at: Instant) {
        let _ = self.vote_signer.jobs.send((vote, at));
    }

    /// Session events into the group, group outputs into sessions, until both are quiet.
    fn pump(&mut self, now: Instant) -> Result<()> {
        loop {
            let mut busy = false;
            while let Some((handle, event)) = self.endpoint.poll_event() {
                busy = true;
                self.on_session_event(now, handle, event);
            }
            while let Some(request) = self.endpoint.poll_sign_request() {
                let _ = self.handshake_signer.jobs.send(request);
            }
            while let Some(output) = self.group.poll_output() {
                busy = true;
                match output {
                    Output::Persist(state) => {
                        tracing::trace!(term = state.term, "persisting the group state");
                        self.state_file
                            .save(&state)
                            .context("cannot persist the group state")?;
                        tracing::trace!(term = state.term, "group state persisted");
                    }
                    Output::Send { to, class, frame } => {
                        tracing::trace!(kind = frame.kind(), to = %to, "group frame out");
                        self.send(now, &to, class, frame)
                    }
                    Output::Event(event) => self.on_group_event(event),
                    Output::SignVote { vote, at } => self.sign_vote(vote, at),
                    Output::Locate { name, addr } => {
                        if name != self.me.name {
                            self.addrs.entry(name).or_insert(addr);
                        }
                    }
                }
            }
            for name in self.keys.take_wanted() {
                self.fetch_key(&name);
            }
            if !busy {
                return Ok(());
            }
        }
    }
}

/// The key log named by `SOCKMSG_KEYLOG` (see [`crate::keys::open_keylog`]: mode 0600,
/// no symbolic link, ours alone), or `None`.
pub fn open_keylog() -> Option<std::fs::File> {
    let path = std::env::var_os("SOCKMSG_KEYLOG").filter(|p| !p.is_empty())?;
    let path = std::path::Path::new(&path);
    match crate::keys::open_keylog(path) {
        Ok(file) => {
            tracing::warn!(
                "SOCKMSG_KEYLOG: writing session secrets to {}",
                path.display()
            );
            Some(file)
        }
        Err(e) => {
            tracing::warn!("SOCKMSG_KEYLOG: {e}; no key log");
            None
        }
    }
}

/// Checks that `name` is a valid member name (SPEC.md §6), with a message for people.
pub fn check_name(name: &str) -> Result<()> {
    if sockmsg_wire::Name::new(name).is_err() || name.is_empty() {
        bail!("{name:?} is not a valid name: 1-32 ASCII letters, digits, '-', '_' or '.'");
    }
    Ok(())
}
