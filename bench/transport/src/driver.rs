//! A thin tokio driver for a sans-IO sockmsg [`Endpoint`]: one UDP socket, one task.
//!
//! The [`Endpoint`] does no I/O and reads no clock; this module gives it both. One
//! [`Driver`] task owns the socket and the endpoint outright (no lock: nothing else
//! touches them), and talks to the application through two bounded channels:
//!
//! ```text
//!            SessionHandle ──Command (connect / send / close)──▶ ┌────────┐ ──▶ UdpSocket
//! application                                                    │ Driver │
//!            Events ◀──batches of (ConnectionHandle, Event)───── └────────┘ ◀── UdpSocket
//! ```
//!
//! The loop keeps the endpoint's call order (see `sockmsg_wire::session::endpoint`):
//! feed it input (`handle_datagram`, `handle_timeout` or a command), then drain
//! `poll_transmit` onto the socket, then drain `poll_event` into the event channel, then
//! wait for the next input or for `poll_timeout`.
//!
//! # Backpressure, end to end
//!
//! Nothing in the driver grows without bound:
//!
//! - **Sending.** When the endpoint refuses a message because its send buffer or its
//!   window of unacknowledged messages is full, the driver keeps that command and stops
//!   reading the command channel until the refusal clears (an ACK frees room). The bounded
//!   channel then makes [`SessionHandle::send`] wait: the application is slowed to what
//!   the peer acknowledges.
//! - **Receiving.** The driver takes an event from the endpoint only when the event
//!   channel has room for it. An application that does not keep up leaves messages in
//!   the session's bounded receive buffer; once it is full, the session refuses new
//!   fragments and leaves them unacknowledged, so the *peer* holds and retransmits them.
//!
//! # Batching
//!
//! A wake-up for a readable socket takes up to [`DriverConfig::recv_batch`] datagrams
//! before sending anything, and one for commands takes up to
//! [`DriverConfig::command_batch`]. So under load the endpoint sees many datagrams
//! between two `poll_transmit` drains and answers them with one ACK (its ACK frequency
//! falls with load, as in quinn's driver), and one drain packs many queued messages
//! into each datagram.
//!
//! Events cross to the application in batches (one channel operation per wake-up, not
//! per event): at hundreds of thousands of messages a second, a channel's per-item
//! synchronisation would otherwise cost as much as the session's own work. The clock
//! is read once per batch of datagrams and once per drain of `poll_transmit`, not per
//! packet.
//!
//! # Limits of this driver
//!
//! - A refused `send` blocks every later command, for every connection, until it is
//!   accepted (head-of-line blocking across connections). A node talking to many peers
//!   would want one backlog per connection.
//! - No GSO/GRO or `sendmmsg`: one system call per datagram.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use sockmsg_wire::frame::{CloseCode, MessageClass};
use sockmsg_wire::limits::MAX_MESSAGE_LEN;
use sockmsg_wire::session::{ConnectionHandle, Endpoint, Event, SendError};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram read from the socket. Larger than any datagram a sockmsg peer sends,
/// so an oversized one arrives whole and is judged (and counted) by the endpoint rather
/// than silently truncated by the kernel.
const RECV_BUFFER_LEN: usize = 65_536;

/// The driver's own knobs (the session's are in `SessionConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Commands the application may queue before [`SessionHandle::send`] waits.
    pub command_capacity: usize,
    /// Batches of events queued for the application before the driver stops taking
    /// them from the endpoint (see the module docs on backpressure)...
    pub event_capacity: usize,
    /// ...each of at most this many events.
    pub event_batch: usize,
    /// Most datagrams read in one go before the endpoint's output is sent.
    pub recv_batch: usize,
    /// Most commands applied in one go before the endpoint's output is sent.
    pub command_batch: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            command_capacity: 256,
            event_capacity: 16,
            event_batch: 256,
            recv_batch: 64,
            command_batch: 64,
        }
    }
}

/// What the application asks of the driver.
#[derive(Debug)]
enum Command {
    Connect {
        peer_addr: SocketAddr,
        peer_name: String,
        reply: oneshot::Sender<ConnectionHandle>,
    },
    Send {
        handle: ConnectionHandle,
        class: MessageClass,
        data: Vec<u8>,
    },
    Close {
        handle: ConnectionHandle,
        code: CloseCode,
        reason: String,
    },
}

/// Why a [`SessionHandle`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// The message is empty or longer than `MAX_MESSAGE_LEN`; nothing was queued.
    BadLength(usize),
    /// The driver task has ended.
    DriverGone,
}

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandleError::BadLength(len) => {
                write!(f, "message of {len} bytes is empty or too long")
            }
            HandleError::DriverGone => f.write_str("the session driver has stopped"),
        }
    }
}

impl std::error::Error for HandleError {}

/// The application's side of a [`Driver`]: cheap to clone; the driver runs until every
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
}

impl SessionHandle {
    /// Starts a session with `peer_name` at `peer_addr`. Returns as soon as the INITIAL
    /// is queued; [`Event::Connected`] for the returned handle reports the handshake's
    /// success.
    pub async fn connect(
        &self,
        peer_addr: SocketAddr,
        peer_name: &str,
    ) -> Result<ConnectionHandle, HandleError> {
        let (reply, handle) = oneshot::channel();
        self.command(Command::Connect {
            peer_addr,
            peer_name: peer_name.to_owned(),
            reply,
        })
        .await?;
        handle.await.map_err(|_| HandleError::DriverGone)
    }

    /// Queues a message, waiting while the driver's command queue is full (which it is
    /// while the session's send buffer is). A message for a connection that has closed
    /// is dropped: the application learns of the close from [`Event::Closed`].
    pub async fn send(
        &self,
        handle: ConnectionHandle,
        class: MessageClass,
        data: Vec<u8>,
    ) -> Result<(), HandleError> {
        // Checked here so that the driver never holds a message the endpoint can only
        // refuse.
        if data.is_empty() || data.len() > MAX_MESSAGE_LEN {
            return Err(HandleError::BadLength(data.len()));
        }
        self.command(Command::Send {
            handle,
            class,
            data,
        })
        .await
    }

    /// Closes a session gracefully (CLOSE is sent, then the session drains).
    pub async fn close(
        &self,
        handle: ConnectionHandle,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), HandleError> {
        self.command(Command::Close {
            handle,
            code,
            reason: reason.to_owned(),
        })
        .await
    }

    async fn command(&self, command: Command) -> Result<(), HandleError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| HandleError::DriverGone)
    }
}

/// The events of every session of the driver's endpoint, in the order it produced them.
///
/// They arrive in batches; [`Events::recv`] hands them out one at a time.
#[derive(Debug)]
pub struct Events {
    batches: mpsc::Receiver<Vec<(ConnectionHandle, Event)>>,
    current: std::vec::IntoIter<(ConnectionHandle, Event)>,
}

impl Events {
    /// The next event; `None` once the driver has stopped and every event was taken.
    ///
    /// Cancel-safe (usable in `select!` and under `timeout`): an event is only removed
    /// when it is returned.
    pub async fn recv(&mut self) -> Option<(ConnectionHandle, Event)> {
        loop {
            if let Some(event) = self.current.next() {
                return Some(event);
            }
            self.current = self.batches.recv().await?.into_iter();
        }
    }
}

/// Runs one [`Endpoint`] on one [`UdpSocket`]. Create it with [`Driver::new`] and run
/// [`Driver::run`] as a task.
pub struct Driver {
    socket: UdpSocket,
    endpoint: Endpoint,
    config: DriverConfig,
    commands: mpsc::Receiver<Command>,
    /// Commands taken from the channel and not yet applied: the head was refused for
    /// lack of buffer space (see the module docs). While it is not empty, the channel
    /// is not read.
    backlog: VecDeque<Command>,
    events: mpsc::Sender<Vec<(ConnectionHandle, Event)>>,
    /// Events taken from the endpoint for which the channel had no room.
    unsent_events: Option<Vec<(ConnectionHandle, Event)>>,
    stats: DriverStats,
}

/// What the driver itself did, for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    /// Datagrams the endpoint produced that the socket would not take (dropped, as the
    /// network might have; the session's loss recovery covers them).
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Times a command waited for the session's send buffer to make room.
    pub send_stalls: u64,
    /// Loop iterations (wake-ups).
    pub wakeups: u64,
}

impl Driver {
    /// A driver for `endpoint` on `socket`, with the handle and event stream the
    /// application uses.
    pub fn new(
        socket: UdpSocket,
        endpoint: Endpoint,
        config: DriverConfig,
    ) -> (Driver, SessionHandle, Events) {
        let (command_tx, command_rx) = mpsc::channel(config.command_capacity.max(1));
        let (event_tx, event_rx) = mpsc::channel(config.event_capacity.max(1));
        let driver = Driver {
            socket,
            endpoint,
            config,
            commands: command_rx,
            backlog: VecDeque::new(),
            events: event_tx,
            unsent_events: None,
            stats: DriverStats::default(),
        };
        (
            driver,
            SessionHandle {
                commands: command_tx,
            },
            Events {
                batches: event_rx,
                current: Vec::new().into_iter(),
            },
        )
    }

    /// Runs until every [`SessionHandle`] is dropped and every command they queued has
    /// been applied (waiting for buffer room as usual), then returns the endpoint (for
    /// its statistics) and the driver's own counters.
    ///
    /// Sessions are not closed on return: an application that wants its peers told
    /// closes them (with [`SessionHandle::close`]) before dropping its handles; the
    /// driver sends whatever that queued before it returns.
    pub async fn run(mut self) -> io::Result<(Endpoint, DriverStats)> {
        let mut datagram = vec![0u8; RECV_BUFFER_LEN];
        // At least 1: `recv_many` with a limit of 0 returns 0, which means "closed".
        let command_batch = self.config.command_batch.max(1);
        let mut batch: Vec<Command> = Vec::with_capacity(command_batch);
        let mut commands_open = true;
        // `select!` keeps every branch's output alive across the branch bodies; a permit
        // borrowed from `self.events` would forbid them to use `self`.
        let events = self.events.clone();
        // One timer, re-armed in place, rather than a new `Sleep` per wake-up.
        let timer = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(timer);
        loop {
            self.stats.wakeups += 1;
            self.retry_backlog();
            self.flush_transmits().await;
            self.forward_events();
            if !commands_open && self.backlog.is_empty() {
                return Ok((self.endpoint, self.stats));
            }
            let deadline = self.endpoint.poll_timeout();
            if let Some(at) = deadline {
                if timer.deadline() != at.into() {
                    timer.as_mut().reset(at.into());
                }
            }
            // Unbiased: under load every source is ready at once, and a fixed order
            // would let the first starve the others (e.g. a sender never reading ACKs).
            tokio::select! {
                readable = self.socket.readable() => {
                    readable?;
                    self.receive(&mut datagram);
                }
                received = self.commands.recv_many(&mut batch, command_batch),
                    if commands_open && self.backlog.is_empty() =>
                {
                    if received == 0 {
                        commands_open = false;
                    }
                    self.backlog.extend(batch.drain(..));
                    // Applied by `retry_backlog` at the top of the loop.
                }
                () = &mut timer, if deadline.is_some() => {
                    self.endpoint.handle_timeout(Instant::now());
                }
                permit = events.reserve(), if self.unsent_events.is_some() => {
                    let batch = self.unsent_events.take();
                    if let (Ok(permit), Some(batch)) = (permit, batch) {
                        permit.send(batch);
                    }
                    // Err: nobody listens any more, and the events are dropped.
                }
            }
        }
    }

    /// Reads up to `recv_batch` datagrams that are already waiting, without blocking.
    /// They were all waiting when the batch began, so they share one arrival time.
    fn receive(&mut self, datagram: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..self.config.recv_batch.max(1) {
            match self.socket.try_recv_from(datagram) {
                Ok((len, from)) => {
                    self.stats.datagrams_received += 1;
                    self.endpoint.handle_datagram(now, from, &datagram[..len]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // E.g. ICMP errors surfaced by the kernel: the session's timers
                    // deal with an unreachable peer. Stop this batch so a persistent
                    // error cannot spin the loop.
                    self.stats.recv_errors += 1;
                    return;
                }
            }
        }
    }

    /// Applies queued commands in order until one is refused for lack of room.
    fn retry_backlog(&mut self) {
        let now = Instant::now();
        while let Some(command) = self.backlog.pop_front() {
            if let Some(refused) = self.apply(now, command) {
                self.backlog.push_front(refused);
                return;
            }
        }
    }

    /// Applies one command; gives it back if the session has no room for it yet.
    fn apply(&mut self, now: Instant, command: Command) -> Option<Command> {
        match command {
            Command::Connect {
                peer_addr,
                peer_name,
                reply,
            } => {
                let handle = self.endpoint.connect(now, peer_addr, &peer_name);
                // The caller may have given up waiting; the session exists regardless.
                let _ = reply.send(handle);
            }
            Command::Send {
                handle,
                class,
                data,
            } => match self.endpoint.send(handle, class, &data) {
                Ok(_) => {}
                Err(SendError::BufferFull { .. } | SendError::WindowFull { .. }) => {
                    self.stats.send_stalls += 1;
                    return Some(Command::Send {
                        handle,
                        class,
                        data,
                    });
                }
                // Closed: reported as Event::Closed. BadLength: checked by the handle.
                Err(SendError::Closed | SendError::BadLength { .. }) => {}
            },
            Command::Close {
                handle,
                code,
                reason,
            } => self.endpoint.close(now, handle, code, &reason),
        }
        None
    }

    /// Sends every datagram the endpoint has ready (its congestion window bounds them).
    ///
    /// One clock reading serves the whole drain: the packets are recorded as sent a
    /// little early (by the time the system calls before them took), which only makes
    /// RTT samples and loss timers slightly conservative.
    async fn flush_transmits(&mut self) {
        let now = Instant::now();
        while let Some(transmit) = self.endpoint.poll_transmit(now) {
            match self
                .socket
                .send_to(&transmit.contents, transmit.destination)
                .await
            {
                Ok(_) => self.stats.datagrams_sent += 1,
                Err(_) => self.stats.send_errors += 1,
            }
        }
    }

    /// Hands events to the application, in batches, while the channel has room.
    fn forward_events(&mut self) {
        let limit = self.config.event_batch.max(1);
        while self.unsent_events.is_none() {
            let mut batch = Vec::new();
            while batch.len() < limit {
                match self.endpoint.poll_event() {
                    Some(event) => batch.push(event),
                    None => break,
                }
            }
            if batch.is_empty() {
                return;
            }
            // A short batch means the endpoint has no more events.
            let more = batch.len() == limit;
            match self.events.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => self.unsent_events = Some(batch),
                // Nobody listens: keep draining, so that closed sessions are forgotten.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            if !more {
                return;
            }
        }
    }
}
