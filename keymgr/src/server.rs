//! The key manager's network driver: UDP and TCP on one port, around the sans-IO
//! [`crate::handler`] and [`Registry`].
//!
//! ```text
//!  UDP workers ─┐                      ┌─ read ─ RwLock<Registry> ─ write ─┐
//!  TCP conns  ──┼─ handle_request ─────┤                                   │
//!               │   Reply / Drop       └─ Commit ─▶ mpsc ─▶ committer ─────┘
//!               │                                   plan_batch (sign once, blocking pool)
//!               ◀────────── reply after commit ──── Store::commit (fsync, blocking pool)
//!                                                   Registry::apply
//! ```
//!
//! - Lookups and challenges are answered from memory under a read lock.
//! - Registrations and rotations are checked (signatures verified) by the handler, then
//!   queued for the single committer. It takes everything queued (up to
//!   [`ServeConfig::max_batch`]): that is the group commit; it signs the batch once,
//!   commits it durably, applies it and only then replies. A full queue is answered at once
//!   with `UNAVAILABLE` (retry), so overload sheds instead of piling up.
//! - Over UDP no answer exceeds three times the request (SPEC.md §4); the handler sees to
//!   it, and [`fit_udp`] is a last guard.
//! - TCP: at most [`ServeConfig::max_tcp_connections`] connections (more are closed at
//!   once); one packet at a time, each to be read whole within
//!   [`ServeConfig::tcp_read_timeout`] of its first byte (a client trickling bytes is
//!   dropped), at most [`ServeConfig::tcp_idle_timeout`] between packets; the first packet
//!   that fails to decode closes the connection (SPEC.md §2).
//! - Shutdown stops intake, lets the committer finish what was queued (so every accepted
//!   registration is answered), then returns.
//!
//! The UDP workers and TCP connections (and the limits above) are [`sockmsg_service`]'s,
//! shared with the proxy; this module is the key manager's [`Handler`] and its committer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use rand_chacha::ChaCha20Rng;
use sockmsg_service::{
    bind_pair, bump, stopped, Handler, Response, ServiceLimits, ServiceStats, Transport,
};
use sockmsg_wire::frame::{Frame, KeyResultCode};
use sockmsg_wire::session::crypto::RsaSigner;
use sockmsg_wire::{Datagram, HEADER_LEN};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info};

use crate::admission::Limits;
use crate::datadir;
use crate::handler::{self, Action};
use crate::registry::{Operation, Refusal, RegistrationMode, Registry};
use crate::store::Store;

/// What [`Server::bind`] needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory made by `sockmsg-keymgr init`.
    pub data_dir: PathBuf,
    /// UDP and TCP address (same port). Port 0 picks a free port for both.
    pub listen: SocketAddr,
    /// Whether registering a free name needs an invite.
    pub registration: RegistrationMode,
    /// Time allowed to read one TCP packet, from its first byte to its last.
    pub tcp_read_timeout: Duration,
    /// Time a TCP connection may stay silent between packets.
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; more are closed at once.
    pub max_tcp_connections: usize,
    /// Operations in one group commit at most.
    pub max_batch: usize,
    /// Operations waiting for the committer at most; more are refused `UNAVAILABLE`.
    pub commit_queue: usize,
    /// Tasks receiving UDP datagrams.
    pub udp_workers: usize,
    /// Registration rate per source, names per key, and the sizes of the tables of used
    /// nonces and of sources (config.yml `keymgr.register_burst`, `register_per_minute`,
    /// `max_names_per_key`: [`Limits::from_config`]).
    pub limits: Limits,
}

impl ServeConfig {
    /// The defaults: 5 s per TCP packet, 30 s idle, 256 connections, batches of 1024,
    /// the default [`Limits`] (as config.yml).
    pub fn new(
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
        registration: RegistrationMode,
    ) -> Self {
        ServeConfig {
            data_dir: data_dir.into(),
            listen,
            registration,
            tcp_read_timeout: Duration::from_secs(5),
            tcp_idle_timeout: Duration::from_secs(30),
            max_tcp_connections: 256,
            max_batch: 1024,
            commit_queue: 8192,
            udp_workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 8),
            limits: Limits::default(),
        }
    }
}

/// Maps the config file's setting to the registry's.
pub fn registration_mode(registration: sockmsg_config::Registration) -> RegistrationMode {
    match registration {
        sockmsg_config::Registration::Open => RegistrationMode::Open,
        sockmsg_config::Registration::Invite => RegistrationMode::Invite,
    }
}

sockmsg_service::service_stats! {
    /// Responses that were a KEY_RESULT other than OK.
    refused,
    /// Operations refused `UNAVAILABLE` because the commit queue was full.
    busy,
    /// Operations acknowledged `OK` after their batch was committed.
    committed,
    /// Group commits written.
    batches,
    /// Group commits that failed (answered `UNAVAILABLE`).
    commit_failures,
}

/// A registration or rotation waiting for the committer.
struct Pending {
    operation: Operation,
    request_id: u64,
    /// The nonce it consumed: its answer is recorded there.
    nonce: [u8; 32],
    reply: oneshot::Sender<Vec<u8>>,
}

/// State every task shares.
struct Shared {
    registry: RwLock<Registry>,
    stats: Arc<Stats>,
    commits: mpsc::Sender<Pending>,
}

impl Shared {
    fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-changed (apply is
        // a pair of map extends), so a poisoned lock is still usable.
        self.registry.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides what to do with `request`.
    fn decide(&self, client: SocketAddr, transport: Transport, request: &[u8]) -> Action {
        let registry = self.registry();
        handler::handle_request(&registry, client, transport, request, datadir::now_ms())
    }

    /// Queues an operation for the committer; `Err` holds the refusal to send at once
    /// (and the nonce is given back: the request was not decided).
    fn submit(
        &self,
        operation: Operation,
        request_id: u64,
        nonce: [u8; 32],
    ) -> Result<oneshot::Receiver<Vec<u8>>, Vec<u8>> {
        let (reply, receiver) = oneshot::channel();
        let pending = Pending {
            operation,
            request_id,
            nonce,
            reply,
        };
        let sent = self.commits.try_send(pending);
        if sent.is_err() {
            self.registry().admission().release(&nonce);
        }
        match sent {
            Ok(()) => Ok(receiver),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.stats.busy);
                Err(unavailable(
                    request_id,
                    "the key manager is busy: retry shortly",
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(unavailable(request_id, "the key manager is shutting down"))
            }
        }
    }
}

/// The key manager as seen by the shared UDP/TCP machinery.
impl Handler for Shared {
    fn handle(
        self: &Arc<Self>,
        client: SocketAddr,
        transport: Transport,
        request: &[u8],
    ) -> Response {
        match self.decide(client, transport, request) {
            Action::Reply(reply) => Response::Reply(reply),
            // Submitted here, on the receiving task, so that queue order is arrival order;
            // only the wait for the batch is deferred.
            Action::Commit {
                operation,
                request_id,
                nonce,
            } => match self.submit(operation, request_id, nonce) {
                Ok(receiver) => Response::Later(Box::pin(async move {
                    Ok(commit_reply(receiver, request_id).await)
                })),
                Err(reply) => Response::Reply(reply),
            },
            Action::Drop { reason } => Response::Drop { reason },
        }
    }

    fn stats(&self) -> &ServiceStats {
        &self.stats.service
    }

    /// Counts a response about to be sent by its KEY_RESULT code.
    fn replied(&self, reply: &[u8]) {
        if result_code(reply).is_some_and(|code| code != KeyResultCode::OK) {
            bump(&self.stats.refused);
        }
    }

    fn shorten(&self, request_id: u64, reply: &[u8], limit: usize) -> Option<Vec<u8>> {
        Some(short_refusal(request_id, reply, limit))
    }
}

/// Keeps a UDP answer within three times the request (SPEC.md §4). The handler already
/// does; this guard makes sure no future answer breaks the rule: an oversized answer is
/// replaced by a KEY_RESULT with the same code (or `BAD_REQUEST`) and a reason cut to fit.
pub fn fit_udp(request: &[u8], reply: Vec<u8>, stats: &Stats) -> Option<Vec<u8>> {
    sockmsg_service::fit_udp(request, reply, &stats.service, |id, reply, limit| {
        Some(short_refusal(id, reply, limit))
    })
}

/// A KEY_RESULT for `request_id` with `reply`'s code (or `BAD_REQUEST`), its reason cut
/// to fit within `limit` bytes if at all possible.
fn short_refusal(request_id: u64, reply: &[u8], limit: usize) -> Vec<u8> {
    let code = result_code(reply).unwrap_or(KeyResultCode::BAD_REQUEST);
    let room = limit.saturating_sub(HEADER_LEN + 3);
    let reason = "pad the request or use TCP";
    handler::refusal_response(
        request_id,
        &Refusal {
            code,
            reason: reason[..reason.len().min(room)].to_owned(),
        },
    )
}

fn unavailable(request_id: u64, reason: &str) -> Vec<u8> {
    handler::refusal_response(
        request_id,
        &Refusal {
            code: KeyResultCode::UNAVAILABLE,
            reason: reason.to_owned(),
        },
    )
}

/// The code of a KEY_RESULT response, if `reply` is one.
fn result_code(reply: &[u8]) -> Option<KeyResultCode> {
    let packet = Datagram::new(reply).next()?.ok()?;
    match packet.frames().next()?.ok()? {
        Frame::KeyResult(result) => Some(result.code),
        _ => None,
    }
}

/// Awaits the committer's answer to a queued operation.
async fn commit_reply(receiver: oneshot::Receiver<Vec<u8>>, request_id: u64) -> Vec<u8> {
    receiver.await.unwrap_or_else(|_| {
        unavailable(
            request_id,
            "the key manager could not complete the request: retry",
        )
    })
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    committer: Committer,
    config: ServeConfig,
    fingerprint: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("fingerprint", &self.fingerprint)
            .field("local_addr", &self.local_addr)
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the data directory, loads the registry and binds UDP and TCP.
    pub async fn bind(config: ServeConfig) -> Result<Server> {
        let dir = config.data_dir.clone();
        let data = tokio::task::spawn_blocking(move || datadir::open(&dir))
            .await
            .map_err(|e| anyhow!("opening the data directory failed: {e}"))??;
        let fingerprint = data.fingerprint();
        let nonce_secret = datadir::random_bytes()?;
        let mut registry = datadir::load_registry(
            data.store(),
            config.registration,
            nonce_secret,
            *data.invite_secret(),
        )?;
        registry.set_limits(config.limits);
        let records = registry.records().count();
        let (manager, invite_secret, store) = data.into_parts();

        let (udp, tcp) = bind_pair(config.listen)
            .await
            .map_err(|e| anyhow!("{e} (is another key manager running on this port?)"))?;
        let local_addr = udp.local_addr().context("UDP socket address")?;

        let (commits, queue) = mpsc::channel(config.commit_queue.max(1));
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            registry: RwLock::new(registry),
            stats,
            commits,
        });
        let committer = Committer {
            shared: Arc::clone(&shared),
            queue,
            store: Some(Arc::new(store)),
            store_path: config.data_dir.join(datadir::STORE_FILE),
            manager,
            rng: datadir::os_rng()?,
            max_batch: config.max_batch.max(1),
            mode: config.registration,
            nonce_secret,
            invite_secret,
        };
        info!(
            %local_addr,
            data_dir = %config.data_dir.display(),
            registration = ?config.registration,
            limits = ?config.limits,
            records,
            %fingerprint,
            "key manager listening (UDP and TCP)"
        );
        Ok(Server {
            udp,
            tcp,
            local_addr,
            shared,
            committer,
            config,
            fingerprint,
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The manager key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until `shutdown` completes, then stops taking requests, finishes the
    /// registrations already accepted and returns. Fails only if a task of the server
    /// dies unexpectedly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (stop, stopping) = watch::channel(false);
        let mut intake = JoinSet::new();
        let limits = ServiceLimits {
            tcp_read_timeout: self.config.tcp_read_timeout,
            tcp_idle_timeout: self.config.tcp_idle_timeout,
            max_tcp_connections: self.config.max_tcp_connections,
            udp_workers: self.config.udp_workers,
        };
        sockmsg_service::spawn(
            &mut intake,
            self.udp,
            self.tcp,
            Arc::clone(&self.shared),
            &limits,
            &stopping,
        );
        let mut committer = tokio::spawn(self.committer.run(stopping.clone()));

        let mut committer_ended = false;
        let outcome = tokio::select! {
            () = shutdown => {
                info!("shutting down: finishing the registrations already accepted");
                Ok(())
            }
            ended = intake.join_next() => {
                Err(anyhow!("a server task stopped unexpectedly: {ended:?}"))
            }
            ended = &mut committer => {
                committer_ended = true;
                Err(anyhow!("the committer stopped unexpectedly: {ended:?}"))
            }
        };
        let _ = stop.send(true);
        while intake.join_next().await.is_some() {}
        if !committer_ended {
            if let Err(e) = committer.await {
                error!("the committer failed while shutting down: {e}");
            }
        }
        info!("key manager stopped");
        outcome
    }
}

/// The single writer: group commits.
struct Committer {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Pending>,
    /// `None` after a failed commit until the database is reopened.
    store: Option<Arc<Store>>,
    store_path: PathBuf,
    manager: Arc<RsaSigner>,
    rng: ChaCha20Rng,
    max_batch: usize,
    mode: RegistrationMode,
    nonce_secret: [u8; 32],
    invite_secret: [u8; 32],
}

impl Committer {
    async fn run(mut self, mut stopping: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        loop {
            let received = if closing {
                self.queue.recv_many(&mut batch, self.max_batch).await
            } else {
                tokio::select! {
                    biased;
                    () = stopped(&mut stopping) => {
                        // Take no more; what is queued is still committed and answered.
                        self.queue.close();
                        closing = true;
                        continue;
                    }
                    received = self.queue.recv_many(&mut batch, self.max_batch) => received,
                }
            };
            if received == 0 {
                return;
            }
            self.commit(&mut batch).await;
        }
    }

    /// Plans, commits, applies and answers `batch` (left empty).
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        let operations: Vec<Operation> = batch.iter().map(|p| p.operation.clone()).collect();
        let replies = match self.write(operations).await {
            Ok(results) => {
                let registry = self.shared.registry();
                let admission = registry.admission();
                results
                    .into_iter()
                    .zip(batch.iter())
                    .map(|(result, pending)| {
                        admission.answer(&pending.nonce, result.clone());
                        match result {
                            Ok(()) => {
                                bump(&self.shared.stats.committed);
                                handler::ok_response(pending.request_id)
                            }
                            Err(refusal) => handler::refusal_response(pending.request_id, &refusal),
                        }
                    })
                    .collect()
            }
            Err(e) => {
                bump(&self.shared.stats.commit_failures);
                error!("group commit of {} operation(s) failed: {e:#}", batch.len());
                self.recover().await;
                // Not decided: a retry of the same request is decided anew.
                {
                    let registry = self.shared.registry();
                    for pending in batch.iter() {
                        registry.admission().release(&pending.nonce);
                    }
                }
                batch
                    .iter()
                    .map(|p| {
                        unavailable(
                            p.request_id,
                            "the key database could not be written: retry later",
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        for (pending, reply) in batch.drain(..).zip(replies) {
            // The requester may have gone (connection closed): nothing to do then.
            let _ = pending.reply.send(reply);
        }
    }

    /// Signs `operations` as one batch, commits it durably and applies it. Returns one
    /// result per operation.
    async fn write(&mut self, operations: Vec<Operation>) -> Result<Vec<Result<(), Refusal>>> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| anyhow!("the key database is not open"))?;
        let count = operations.len();
        let shared = Arc::clone(&self.shared);
        let manager = Arc::clone(&self.manager);
        let mut rng = self.rng.clone();
        let now = datadir::now_ms();
        // RSA signing: milliseconds of CPU, off the async workers.
        let planned = tokio::task::spawn_blocking(move || {
            let planned = shared
                .registry()
                .plan_batch(&operations, now, &*manager, &mut rng);
            (planned, rng)
        })
        .await;
        // Never reuse randomness: take back the generator that advanced, or reseed.
        let (mut planned, rng) = match planned {
            Ok(planned) => planned,
            Err(e) => {
                match datadir::os_rng() {
                    Ok(rng) => self.rng = rng,
                    // A stream the lost copy never touched.
                    Err(_) => {
                        let stream = self.rng.get_stream().wrapping_add(1);
                        self.rng.set_stream(stream);
                    }
                }
                return Err(anyhow!("signing the batch failed: {e}"));
            }
        };
        self.rng = rng;
        if !planned.writes.is_empty() {
            // Durable before anything is applied or acknowledged.
            let writes = std::mem::take(&mut planned.writes);
            tokio::task::spawn_blocking(move || store.commit(&writes))
                .await
                .map_err(|e| anyhow!("the commit task failed: {e}"))??;
            bump(&self.shared.stats.batches);
        }
        let results = self
            .shared
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(planned);
        debug!(operations = count, "group commit done");
        Ok(results)
    }

    /// After a failed commit the database refuses writes and may or may not hold the
    /// batch: reopen it and reload the registry from what is really on disk.
    async fn recover(&mut self) {
        self.store = None;
        let path = self.store_path.clone();
        let (mode, nonce_secret, invite_secret) =
            (self.mode, self.nonce_secret, self.invite_secret);
        let reopened = tokio::task::spawn_blocking(move || -> Result<_> {
            let store = Store::open(&path)?;
            let registry = datadir::load_registry(&store, mode, nonce_secret, invite_secret)?;
            Ok((store, registry))
        })
        .await;
        match reopened {
            Ok(Ok((store, mut registry))) => {
                let mut current = self
                    .shared
                    .registry
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                // Used nonces and rate buckets survive the reload.
                registry.carry_over(&mut current);
                *current = registry;
                drop(current);
                self.store = Some(Arc::new(store));
                info!("key database reopened after a failed commit");
            }
            Ok(Err(e)) => error!(
                "cannot reopen the key database: {e:#}; registrations are refused until it can be"
            ),
            Err(e) => error!("cannot reopen the key database: {e}"),
        }
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    Server::bind(config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_service::request_payload_len;
    use sockmsg_wire::PacketType;

    fn packet(id: u64, payload_len: usize) -> Vec<u8> {
        let mut bytes = sockmsg_wire::Header::new(
            PacketType::REQUEST,
            sockmsg_wire::PacketFlags::empty(),
            id,
            0,
            payload_len as u16,
        )
        .as_wire_bytes()
        .to_vec();
        bytes.resize(HEADER_LEN + payload_len, 0);
        bytes
    }

    #[test]
    fn udp_answers_stay_within_three_times_the_request() {
        let stats = Stats::default();
        let request = packet(7, 1);
        // Small enough: unchanged.
        let small = handler::ok_response(7);
        assert_eq!(fit_udp(&request, small.clone(), &stats), Some(small));
        // Too large: a short refusal with the same code and request id.
        let big = handler::refusal_response(
            7,
            &Refusal {
                code: KeyResultCode::NOT_FOUND,
                reason: "x".repeat(200),
            },
        );
        let fitted = fit_udp(&request, big, &stats).expect("a short answer");
        assert!(fitted.len() <= 3 * request.len());
        assert_eq!(result_code(&fitted), Some(KeyResultCode::NOT_FOUND));
        assert_eq!(fitted[8..16], 7u64.to_be_bytes());
        assert_eq!(stats.snapshot().amplification_guarded, 1);
    }

    #[test]
    fn tcp_headers_are_checked_before_the_payload_is_read() {
        let good = packet(1, 300);
        let header: [u8; HEADER_LEN] = good[..HEADER_LEN].try_into().unwrap();
        assert_eq!(request_payload_len(&header), Some(300));
        let mut bad = header;
        bad[0] = b'X';
        assert_eq!(request_payload_len(&bad), None, "magic");
        let mut bad = header;
        bad[2] = 2;
        assert_eq!(request_payload_len(&bad), None, "version");
        let mut bad = header;
        bad[3] = PacketType::RESPONSE.0;
        assert_eq!(request_payload_len(&bad), None, "not a request");
        let mut bad = header;
        bad[5] = 1;
        assert_eq!(request_payload_len(&bad), None, "reserved byte");
        let mut bad = header;
        bad[6..8].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(request_payload_len(&bad), None, "empty payload");
    }
}
