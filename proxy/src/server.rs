//! The proxy's network driver: UDP and TCP on one port, around the sans-IO
//! [`crate::handler`] and [`Directory`].
//!
//! - Queries are answered at once from memory, under the directory's mutex (a map look-up
//!   and a copy).
//! - Claims and announcements go through [`Directory::plan`] (cheap checks, under the
//!   lock), then key look-ups at the key manager (cached by [`KeymgrClient`]) and RSA
//!   verification (no lock), then [`Directory::decide`] (under the lock). Over UDP each
//!   runs in its own task, at most [`ServeConfig::max_pending_proposals`] at a time, so a
//!   slow key manager never stalls queries; over the limit the answer is `UNAVAILABLE`.
//!   If the key manager cannot be reached the answer is `UNAVAILABLE` too (retry), never
//!   a refusal that would blame the leader.
//! - TCP: at most [`ServeConfig::max_tcp_connections`] connections (more are closed at
//!   once); one packet at a time, each read whole within [`ServeConfig::tcp_read_timeout`]
//!   of its first byte, at most [`ServeConfig::tcp_idle_timeout`] between packets; the
//!   first packet that fails to decode closes the connection (SPEC.md §10).
//! - A sweeper forgets expired groups every half TTL (queries also expire them lazily).
//!
//! The UDP workers and TCP connections (and the TCP limits above) are
//! [`sockmsg_service`]'s, shared with the key manager; this module is the proxy's
//! [`Handler`] and its sweeper.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sockmsg_keymgr::client::{ClientConfig, ClientError, KeymgrClient, Trust};
use sockmsg_service::{
    bind_pair, bump, stopped, BindError, Handler, Response, ServiceLimits, ServiceStats, Transport,
};
use sockmsg_wire::frame::ProxyStatus;
use sockmsg_wire::session::crypto::RsaKeyring;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::directory::{Accepted, Directory, DirectoryConfig, Evidence, Now};
use crate::handler::{self, Action, Outcome, Parsed, Request};

/// What [`Server::bind`] needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// UDP and TCP address (same port). Port 0 picks a free port for both.
    pub listen: SocketAddr,
    /// The key manager, and how to trust it.
    pub keymgr: SocketAddr,
    pub trust: Trust,
    pub keymgr_client: ClientConfig,
    pub directory: DirectoryConfig,
    /// Time allowed to read one TCP packet, from its first byte to its last.
    pub tcp_read_timeout: Duration,
    /// Time a TCP connection may stay silent between packets.
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; more are closed at once.
    pub max_tcp_connections: usize,
    /// UDP claims and announcements being checked at once at most; more get
    /// `UNAVAILABLE`.
    pub max_pending_proposals: usize,
    /// Tasks receiving UDP datagrams.
    pub udp_workers: usize,
}

impl ServeConfig {
    /// The defaults: TTL 5 s, 5 s per TCP packet, 30 s idle, 256 connections, 256
    /// proposals in flight.
    pub fn new(listen: SocketAddr, keymgr: SocketAddr, trust: Trust) -> Self {
        ServeConfig {
            listen,
            keymgr,
            trust,
            keymgr_client: ClientConfig::default(),
            directory: DirectoryConfig::default(),
            tcp_read_timeout: Duration::from_secs(5),
            tcp_idle_timeout: Duration::from_secs(30),
            max_tcp_connections: 256,
            max_pending_proposals: 256,
            udp_workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 8),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("key manager client: {0}")]
    Client(#[from] ClientError),
    #[error("a server task stopped unexpectedly: {0}")]
    Task(String),
}

impl From<BindError> for ServerError {
    fn from(e: BindError) -> Self {
        ServerError::Bind {
            addr: e.addr,
            proto: e.proto,
            source: e.source,
        }
    }
}

sockmsg_service::service_stats! {
    /// LEADER_INFO answers.
    leader_answers,
    /// NO_LEADER answers.
    no_leader_answers,
    /// Term-1 records accepted (claims, or announcements of a forgotten group).
    accepted_first,
    /// Re-announcements accepted.
    accepted_refresh,
    /// New terms accepted with a majority's votes.
    accepted_election,
    /// Records of another group of the same name that outranked the held one.
    accepted_merge,
    /// Refusals, one counter per PROXY_RESULT status.
    refused_stale_term,
    refused_bad_signature,
    refused_insufficient_votes,
    refused_already_claimed,
    refused_replayed,
    refused_unknown_key,
    refused_bad_request,
    refused_unavailable,
    /// Key look-ups that failed for want of the key manager (answered UNAVAILABLE).
    keymgr_failures,
    /// Groups forgotten by the sweeper after their TTL.
    expired,
}

impl Stats {
    /// Counts an answer by what it says ([`ServiceStats::replies`] is counted as it is
    /// sent).
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Leader => &self.leader_answers,
            Outcome::NoLeader => &self.no_leader_answers,
            Outcome::Accepted(Accepted::First) => &self.accepted_first,
            Outcome::Accepted(Accepted::Refresh) => &self.accepted_refresh,
            Outcome::Accepted(Accepted::Election) => &self.accepted_election,
            Outcome::Accepted(Accepted::Merge) => &self.accepted_merge,
            Outcome::Refused(status) => match status {
                ProxyStatus::STALE_TERM => &self.refused_stale_term,
                ProxyStatus::BAD_SIGNATURE => &self.refused_bad_signature,
                ProxyStatus::INSUFFICIENT_VOTES => &self.refused_insufficient_votes,
                ProxyStatus::ALREADY_CLAIMED => &self.refused_already_claimed,
                ProxyStatus::REPLAYED => &self.refused_replayed,
                ProxyStatus::UNKNOWN_KEY => &self.refused_unknown_key,
                ProxyStatus::UNAVAILABLE => &self.refused_unavailable,
                _ => &self.refused_bad_request,
            },
        };
        bump(counter);
    }
}

/// State every task shares.
struct Shared {
    directory: Mutex<Directory>,
    keys: Arc<KeymgrClient>,
    stats: Arc<Stats>,
    /// Origin of the monotonic clock handed to the directory.
    epoch: Instant,
    proposals: Arc<Semaphore>,
}

impl Shared {
    fn directory(&self) -> MutexGuard<'_, Directory> {
        // Directory methods leave the map consistent at every step (single inserts and
        // removals), so a poisoned lock is still usable.
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: wall_ms(),
            mono_ms: u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Answers what needs no key look-up; `None` for a claim or an announcement.
    fn answer_now(&self, parsed: &Parsed<'_>) -> Option<Action> {
        match parsed.request {
            Request::Query(group) => Some(handler::answer_query(
                &mut self.directory(),
                parsed.request_id,
                group,
                parsed.reply_limit,
                self.now(),
            )),
            Request::Propose(_) => None,
        }
    }

    /// Decides a claim or an announcement: plan, look the keys up, verify, decide.
    async fn propose(&self, parsed: &Parsed<'_>) -> Action {
        let Request::Propose(proposal) = parsed.request else {
            return Action::Drop {
                reason: "not a proposal",
            };
        };
        let (id, limit) = (parsed.request_id, parsed.reply_limit);
        let plan = match self.directory().plan(&proposal, self.now()) {
            Ok(plan) => plan,
            Err(refusal) => return handler::verdict_action(id, &Err(refusal), limit),
        };
        let keyring = match resolve(&self.keys, plan.key_names(&proposal)).await {
            Ok(keyring) => keyring,
            Err(e) => {
                bump(&self.stats.keymgr_failures);
                warn!("key look-up failed: {e}");
                return handler::refusal_action(
                    id,
                    ProxyStatus::UNAVAILABLE,
                    "key manager unavailable",
                    limit,
                );
            }
        };
        // RSA verification: about 0.1 ms per signature, at most 65 of them.
        let evidence = Evidence::gather(&proposal, &plan, &keyring);
        let verdict = self.directory().decide(&proposal, &evidence, self.now());
        match &verdict {
            Ok(accepted) => debug!(
                group = proposal.record.group.as_str(),
                term = proposal.record.term,
                leader = proposal.record.leader.as_str(),
                ?accepted,
                "record accepted"
            ),
            Err(refusal) => debug!(
                group = proposal.record.group.as_str(),
                term = proposal.record.term,
                leader = proposal.record.leader.as_str(),
                %refusal,
                "record refused"
            ),
        }
        handler::verdict_action(id, &verdict, limit)
    }

    /// The whole of one request.
    async fn process(&self, request: &[u8], transport: Transport) -> Action {
        let parsed = match handler::parse(request, transport) {
            Ok(parsed) => parsed,
            Err(action) => return action,
        };
        match self.answer_now(&parsed) {
            Some(action) => action,
            None => self.propose(&parsed).await,
        }
    }
}

/// The proxy as seen by the shared UDP/TCP machinery.
impl Handler for Shared {
    /// Queries are answered on the receiving task; claims and announcements wait for key
    /// look-ups, so they are deferred: over UDP at most
    /// [`ServeConfig::max_pending_proposals`] at once (more get `UNAVAILABLE`), over TCP
    /// one per connection anyway.
    fn handle(
        self: &Arc<Self>,
        _peer: SocketAddr,
        transport: Transport,
        request: &[u8],
    ) -> Response {
        let parsed = match handler::parse(request, transport) {
            Ok(parsed) => parsed,
            Err(action) => return self.respond(action),
        };
        if let Some(action) = self.answer_now(&parsed) {
            return self.respond(action);
        }
        let permit = match transport {
            Transport::Tcp => None,
            Transport::Udp => match Arc::clone(&self.proposals).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return self.respond(handler::refusal_action(
                        parsed.request_id,
                        ProxyStatus::UNAVAILABLE,
                        "busy: retry",
                        parsed.reply_limit,
                    ))
                }
            },
        };
        let (shared, request) = (Arc::clone(self), request.to_vec());
        Response::Later(Box::pin(async move {
            let action = shared.process(&request, transport).await;
            drop(permit);
            match shared.respond(action) {
                Response::Reply(reply) => Ok(reply),
                Response::Drop { reason } => Err(reason),
                Response::Later(_) => Err("deferred twice"),
            }
        }))
    }

    fn stats(&self) -> &ServiceStats {
        &self.stats.service
    }
}

impl Shared {
    /// Counts an answer by its outcome and hands it to the machinery.
    fn respond(&self, action: Action) -> Response {
        match action {
            Action::Reply { packet, outcome } => {
                self.stats.count(outcome);
                Response::Reply(packet)
            }
            Action::Drop { reason } => Response::Drop { reason },
        }
    }
}

/// Looks `names` up at the key manager (concurrently; the client caches records) and
/// builds the keyring the directory verifies with: active keys trusted, revoked ones
/// marked, unregistered ones absent. `Err` if the key manager could not answer for one
/// of them: a verdict then would be a guess.
async fn resolve(keys: &Arc<KeymgrClient>, names: Vec<String>) -> Result<RsaKeyring, ClientError> {
    let mut lookups = JoinSet::new();
    for name in names {
        let keys = Arc::clone(keys);
        lookups.spawn(async move {
            let result = keys.lookup(&name).await;
            (name, result)
        });
    }
    let mut keyring = RsaKeyring::new();
    while let Some(joined) = lookups.join_next().await {
        let Ok((name, result)) = joined else {
            continue;
        };
        match result {
            Ok(record) if record.is_active() => {
                if let Err(e) = keyring.insert_der(name.as_str(), &record.public_key_der) {
                    debug!(%name, "unusable key record: {e}");
                }
            }
            Ok(_) => keyring.revoke(name),
            Err(ClientError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(keyring)
}

/// Milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    config: ServeConfig,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("keymgr", &self.config.keymgr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds UDP and TCP on `config.listen`. The key manager is contacted on the first
    /// claim or announcement, not here, so the proxy starts (and answers queries) even
    /// while the key manager is down.
    pub async fn bind(config: ServeConfig) -> Result<Server, ServerError> {
        let keys = KeymgrClient::with_config(
            config.keymgr,
            config.trust.clone(),
            config.keymgr_client.clone(),
        )?;
        let (udp, tcp) = bind_pair(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            proto: "UDP",
            source,
        })?;
        let shared = Arc::new(Shared {
            directory: Mutex::new(Directory::new(config.directory)),
            keys: Arc::new(keys),
            stats: Arc::new(Stats::default()),
            epoch: Instant::now(),
            proposals: Arc::new(Semaphore::new(config.max_pending_proposals.max(1))),
        });
        info!(
            %local_addr,
            keymgr = %config.keymgr,
            record_ttl_ms = config.directory.record_ttl_ms,
            "proxy listening (UDP and TCP)"
        );
        Ok(Server {
            udp,
            tcp,
            local_addr,
            shared,
            config,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until `shutdown` completes. Fails only if a task of the server dies
    /// unexpectedly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let limits = ServiceLimits {
            tcp_read_timeout: self.config.tcp_read_timeout,
            tcp_idle_timeout: self.config.tcp_idle_timeout,
            max_tcp_connections: self.config.max_tcp_connections,
            udp_workers: self.config.udp_workers,
        };
        sockmsg_service::spawn(
            &mut tasks,
            self.udp,
            self.tcp,
            Arc::clone(&self.shared),
            &limits,
            &stopping,
        );
        let sweep_every = Duration::from_millis((self.config.directory.record_ttl_ms / 2).max(50));
        tasks.spawn(sweeper(
            Arc::clone(&self.shared),
            sweep_every,
            stopping.clone(),
        ));
        let outcome = tokio::select! {
            () = shutdown => {
                info!("shutting down");
                Ok(())
            }
            ended = tasks.join_next() => {
                Err(ServerError::Task(format!("{ended:?}")))
            }
        };
        let _ = stop.send(true);
        if timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tasks.abort_all();
        }
        outcome
    }
}

async fn sweeper(shared: Arc<Shared>, every: Duration, mut stopping: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stopping) => return,
            _ = ticks.tick() => {
                let now = shared.now();
                let gone = shared.directory().sweep(now);
                if gone > 0 {
                    shared.stats.expired.fetch_add(gone as u64, Ordering::Relaxed);
                    debug!(groups = gone, "expired groups forgotten");
                }
            }
        }
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use sockmsg_service::request_payload_len;
    use sockmsg_wire::{PacketType, HEADER_LEN};

    #[test]
    fn tcp_headers_are_checked_before_the_payload_is_read() {
        let header = sockmsg_wire::Header::new(
            PacketType::REQUEST,
            sockmsg_wire::PacketFlags::empty(),
            1,
            0,
            300,
        );
        let mut good = [0u8; HEADER_LEN];
        good.copy_from_slice(header.as_wire_bytes());
        assert_eq!(request_payload_len(&good), Some(300));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(request_payload_len(&bad), None, "magic");
        let mut bad = good;
        bad[3] = PacketType::RESPONSE.0;
        assert_eq!(request_payload_len(&bad), None, "not a request");
    }
}
