//! The key manager's client, as nodes use it: verified lookups with a cache, and
//! registration and rotation with proof of possession.
//!
//! Trust starts from the manager's key fingerprint, pinned in config.yml
//! ([`Trust::Pinned`]) or trusted on first use and remembered in a known-hosts file, as
//! ssh does ([`Trust::TrustOnFirstUse`]). The manager's own key is fetched as the
//! self-signed record `_keymgr` over TCP and checked against that fingerprint; every
//! other record is then checked against the manager's key ([`crate::verify`]), whichever
//! way it arrived.
//!
//! Lookups go over UDP first, the request padded to [`UDP_REQUEST_SIZE`] bytes so that the
//! manager may answer with the whole record without exceeding three times the request
//! (SPEC.md §4); after [`ClientConfig::udp_tries`] unanswered tries, an I/O error, or a
//! `BAD_REQUEST` answer ("pad the request or use TCP"), the lookup goes over TCP.
//! Registrations and rotations always use TCP (a challenge, then the signed request, on
//! one connection).
//!
//! Every request carries a random request id (the packet's connection id); an answer
//! that does not echo it is ignored over UDP (it is someone else's, or forged) and is a
//! protocol error over TCP.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sockmsg_wire::frame::{
    Frame, KeyLookup, KeyRecord, KeyRegister, KeyResultCode, KeyRotate, Padding,
};
use sockmsg_wire::session::crypto::{RsaSigner, Signer};
use sockmsg_wire::{
    encode_cleartext_packet, Datagram, Name, PacketType, PublicKey, Signature, Token, HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::registry::{register_signing_input, rotate_signing_input, MANAGER_NAME};
use crate::verify::{
    normalize_fingerprint, verify_key_record, ManagerKey, VerifiedRecord, VerifyError,
};

/// Bytes a UDP lookup is padded to. A KEY_RECORD with a 4096-bit key, a 4096-bit
/// manager signature and a proof for a batch of a thousand records is about 1,500 bytes;
/// three times 700 leaves room for all of that, while 700 bytes fit any datagram size.
pub const UDP_REQUEST_SIZE: usize = 700;

/// How long a looked-up record is reused without asking again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// How long to wait for each UDP answer.
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_millis(300);

/// UDP tries before falling back to TCP.
pub const DEFAULT_UDP_TRIES: u32 = 3;

/// Bound on a whole TCP exchange (connect, request, answer).
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Cached records kept at most; past it, expired ones are dropped, then all.
const MAX_CACHE_ENTRIES: usize = 4096;

/// Largest packet an answer can be: the header and a `u16` payload.
const MAX_PACKET_LEN: usize = HEADER_LEN + u16::MAX as usize;

/// How the client decides that the key manager is the right one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The manager's key fingerprint (SHA-256 of its DER, hex), as `sockmsg-keymgr init`
    /// printed it; from config.yml.
    Pinned(String),
    /// Trust the key seen first and remember it in `known_hosts` (lines
    /// `<addr> <fingerprint>`); refuse a different key later.
    TrustOnFirstUse { known_hosts: PathBuf },
}

/// Tuning; [`ClientConfig::default`] is what nodes use.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a looked-up record is served from the cache. Zero disables the cache.
    pub cache_ttl: Duration,
    pub udp_timeout: Duration,
    /// UDP tries before TCP; zero means TCP only.
    pub udp_tries: u32,
    pub tcp_timeout: Duration,
    /// Bytes a UDP lookup is padded to (never below its natural size).
    pub udp_request_size: usize,
    /// Seed of the request-id and signing RNG; `None` draws one from the OS.
    pub seed: Option<[u8; 32]>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            cache_ttl: DEFAULT_CACHE_TTL,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            udp_tries: DEFAULT_UDP_TRIES,
            tcp_timeout: DEFAULT_TCP_TIMEOUT,
            udp_request_size: UDP_REQUEST_SIZE,
            seed: None,
        }
    }
}

/// Why a key manager request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cause is in the message (not chained as a `source`, so that `{:#}` in a
    /// binary does not print it twice).
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("the key manager at {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The manager answered KEY_RESULT with this code (anything but OK and NOT_FOUND).
    #[error("the key manager refused: {code:?}: {reason}")]
    Refused { code: KeyResultCode, reason: String },
    #[error("the key manager's answer does not verify: {0}")]
    Verify(#[from] VerifyError),
    #[error(
        "THE KEY MANAGER'S KEY HAS CHANGED. The key manager at {addr} now presents key \
         fingerprint {found}, but line {line} of {file} says {expected}. Someone may be \
         impersonating the key manager. If the key was replaced on purpose, delete line \
         {line} of {file} and try again (or pin the new fingerprint).",
        file = .file.display()
    )]
    FingerprintChanged {
        addr: SocketAddr,
        expected: String,
        found: String,
        file: PathBuf,
        line: usize,
    },
    #[error("the key manager has no record for {name:?}")]
    NotFound { name: String },
    #[error("protocol error from the key manager at {addr}: {detail}")]
    Protocol { addr: SocketAddr, detail: String },
    /// The request cannot be built (an invalid name, an invite token too long).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub udp_datagrams_sent: AtomicU64,
    pub tcp_requests: AtomicU64,
    pub cache_hits: AtomicU64,
    /// UDP answers ignored: malformed, not a response, or not echoing the request id.
    pub ignored_datagrams: AtomicU64,
}

/// A client of one key manager. Methods take `&self`; share it behind an `Arc`.
pub struct KeymgrClient {
    server: SocketAddr,
    trust: Trust,
    config: ClientConfig,
    rng: Mutex<ChaCha20Rng>,
    /// Held across the fetch, so concurrent first lookups fetch (and record) it once.
    manager: tokio::sync::Mutex<Option<ManagerKey>>,
    cache: Mutex<HashMap<String, (VerifiedRecord, Instant)>>,
    stats: ClientStats,
}

impl fmt::Debug for KeymgrClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeymgrClient")
            .field("server", &self.server)
            .field("trust", &self.trust)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A decoded answer.
enum Reply<'a> {
    Record(KeyRecord<'a>),
    Challenge([u8; 32]),
    Result { code: KeyResultCode, reason: String },
}

impl KeymgrClient {
    /// A client of the manager at `server` (UDP and TCP on the same port), with the
    /// default [`ClientConfig`]. Fails only if the OS cannot provide entropy.
    pub fn new(server: SocketAddr, trust: Trust) -> Result<Self, ClientError> {
        Self::with_config(server, trust, ClientConfig::default())
    }

    pub fn with_config(
        server: SocketAddr,
        trust: Trust,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let seed = match config.seed {
            Some(seed) => seed,
            None => os_seed()?,
        };
        Ok(KeymgrClient {
            server,
            trust,
            config,
            rng: Mutex::new(ChaCha20Rng::from_seed(seed)),
            manager: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            stats: ClientStats::default(),
        })
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The manager's key: fetched over TCP on first use, checked (self-signed, and the
    /// fingerprint pinned or remembered), then kept.
    pub async fn manager_key(&self) -> Result<ManagerKey, ClientError> {
        let mut known = self.manager.lock().await;
        if let Some(key) = known.as_ref() {
            return Ok(key.clone());
        }
        let id = self.request_id();
        let request = lookup_request(id, MANAGER_NAME, 0)?;
        let answer = self.tcp_request(&request).await?;
        let reply = self.parse_tcp(&answer, id)?;
        let key = match reply {
            Reply::Record(record) => match &self.trust {
                Trust::Pinned(fingerprint) => {
                    ManagerKey::from_self_key_record(&record, Some(fingerprint))?
                }
                Trust::TrustOnFirstUse { known_hosts } => {
                    let key = ManagerKey::from_self_key_record(&record, None)?;
                    self.check_known_host(known_hosts, &key)?;
                    key
                }
            },
            other => return Err(self.unexpected(other, MANAGER_NAME)),
        };
        tracing::debug!(server = %self.server, fingerprint = key.fingerprint(), "key manager key verified");
        *known = Some(key.clone());
        Ok(key)
    }

    /// `name`'s key record, verified against the manager's key; from the cache if it
    /// was fetched less than the TTL ago. A `REVOKED` record is returned like any other:
    /// check [`VerifiedRecord::is_active`].
    pub async fn lookup(&self, name: &str) -> Result<VerifiedRecord, ClientError> {
        checked_name(name)?;
        if let Some(record) = self.cached(name) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(record);
        }
        let manager = self.manager_key().await?;
        let record = match self.lookup_udp(name, &manager).await {
            Some(result) => result?,
            None => self.lookup_tcp(name, &manager).await?,
        };
        self.remember(record.clone());
        Ok(record)
    }

    /// Forgets the cached record of `name` (say, after a session's signature failed).
    pub fn invalidate(&self, name: &str) {
        self.cache_lock().remove(name);
    }

    /// Binds `name` to `signer`'s key, proving possession of it; `invite` where the
    /// manager requires one. `Ok` once the manager has committed it (or the name was
    /// already bound to this very key).
    pub async fn register(
        &self,
        name: &str,
        signer: &RsaSigner,
        invite: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let name_field = checked_name(name)?;
        let public_key = PublicKey::new(signer.public_key_der())
            .map_err(|e| ClientError::InvalidRequest(format!("public key: {e}")))?;
        let invite = Token::new(invite.unwrap_or_default())
            .map_err(|e| ClientError::InvalidRequest(format!("invite token: {e}")))?;
        let mut stream = self.connect().await?;
        let nonce = self.challenge(&mut stream).await?;
        let mut register = KeyRegister {
            name: name_field,
            public_key,
            nonce: &nonce,
            invite,
            signature: Signature::default(),
        };
        let signature = self.sign(signer, &register_signing_input(&register));
        register.signature = signed(&signature)?;
        let id = self.request_id();
        let request = packet(id, &[Frame::KeyRegister(register)])?;
        let result = self.exchange_on(&mut stream, &request).await;
        self.invalidate(name);
        self.expect_ok(&result?, id, name)
    }

    /// Moves `name` from `old`'s key (the one bound now) to `new`'s.
    pub async fn rotate(
        &self,
        name: &str,
        old: &RsaSigner,
        new: &RsaSigner,
    ) -> Result<(), ClientError> {
        let name_field = checked_name(name)?;
        let new_public_key = PublicKey::new(new.public_key_der())
            .map_err(|e| ClientError::InvalidRequest(format!("public key: {e}")))?;
        let mut stream = self.connect().await?;
        let nonce = self.challenge(&mut stream).await?;
        let mut rotate = KeyRotate {
            name: name_field,
            new_public_key,
            nonce: &nonce,
            old_signature: Signature::default(),
            new_signature: Signature::default(),
        };
        let input = rotate_signing_input(&rotate);
        let (old_signature, new_signature) = (self.sign(old, &input), self.sign(new, &input));
        rotate.old_signature = signed(&old_signature)?;
        rotate.new_signature = signed(&new_signature)?;
        let id = self.request_id();
        let request = packet(id, &[Frame::KeyRotate(rotate)])?;
        let result = self.exchange_on(&mut stream, &request).await;
        self.invalidate(name);
        self.expect_ok(&result?, id, name)
    }

    // ----- lookups --------------------------------------------------------------------

    /// A lookup over UDP: `None` to go on with TCP (no answer, an I/O error, or the
    /// manager asking for TCP), `Some` with the outcome otherwise.
    async fn lookup_udp(
        &self,
        name: &str,
        manager: &ManagerKey,
    ) -> Option<Result<VerifiedRecord, ClientError>> {
        if self.config.udp_tries == 0 {
            return None;
        }
        let id = self.request_id();
        let request = match lookup_request(id, name, self.config.udp_request_size) {
            Ok(request) => request,
            Err(e) => return Some(Err(e)),
        };
        // A loopback manager is reached from loopback; else let routing pick the source.
        let local: SocketAddr = match (self.server.is_ipv4(), self.server.ip().is_loopback()) {
            (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
            (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = match UdpSocket::bind(local).await {
            Ok(socket) => socket,
            Err(e) => {
                tracing::debug!(error = %e, "cannot bind a UDP socket; using TCP");
                return None;
            }
        };
        // Connected: the kernel drops datagrams from any other source.
        if let Err(e) = socket.connect(self.server).await {
            tracing::debug!(error = %e, "cannot connect the UDP socket; using TCP");
            return None;
        }
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        for attempt in 1..=self.config.udp_tries {
            self.stats
                .udp_datagrams_sent
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = socket.send(&request).await {
                tracing::debug!(error = %e, "UDP send failed; using TCP");
                return None;
            }
            let deadline = tokio::time::Instant::now() + self.config.udp_timeout;
            loop {
                let len = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_elapsed) => break,
                    Ok(Err(e)) => {
                        // E.g. ECONNREFUSED from an ICMP port unreachable.
                        tracing::debug!(error = %e, "UDP receive failed; using TCP");
                        return None;
                    }
                    Ok(Ok(len)) => len,
                };
                let reply = match parse_reply(&buf[..len], id) {
                    Ok(reply) => reply,
                    Err(why) => {
                        self.stats.ignored_datagrams.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(why, "ignoring a UDP datagram");
                        continue;
                    }
                };
                return match reply {
                    Reply::Record(record) => {
                        Some(verify_key_record(&record, name, manager).map_err(Into::into))
                    }
                    Reply::Result {
                        code: KeyResultCode::BAD_REQUEST,
                        reason,
                    } => {
                        tracing::debug!(reason, "the key manager asks for TCP");
                        None
                    }
                    other => Some(Err(self.unexpected(other, name))),
                };
            }
            tracing::debug!(attempt, name, "no UDP answer");
        }
        None
    }

    async fn lookup_tcp(
        &self,
        name: &str,
        manager: &ManagerKey,
    ) -> Result<VerifiedRecord, ClientError> {
        let id = self.request_id();
        let request = lookup_request(id, name, 0)?;
        let answer = self.tcp_request(&request).await?;
        match self.parse_tcp(&answer, id)? {
            Reply::Record(record) => Ok(verify_key_record(&record, name, manager)?),
            other => Err(self.unexpected(other, name)),
        }
    }

    /// The error for an answer that is not the expected one.
    fn unexpected(&self, reply: Reply<'_>, name: &str) -> ClientError {
        match reply {
            Reply::Result {
                code: KeyResultCode::NOT_FOUND,
                ..
            } => ClientError::NotFound {
                name: name.to_owned(),
            },
            Reply::Result { code, reason } => ClientError::Refused { code, reason },
            Reply::Record(_) => self.protocol("a key record where none was asked for"),
            Reply::Challenge(_) => self.protocol("a challenge where none was asked for"),
        }
    }

    fn expect_ok(&self, answer: &[u8], id: u64, name: &str) -> Result<(), ClientError> {
        match self.parse_tcp(answer, id)? {
            Reply::Result {
                code: KeyResultCode::OK,
                ..
            } => Ok(()),
            other => Err(self.unexpected(other, name)),
        }
    }

    // ----- TCP ------------------------------------------------------------------------

    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let stream = tokio::time::timeout(self.config.tcp_timeout, TcpStream::connect(self.server))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|error| ClientError::Io {
                context: format!("connecting to the key manager at {}", self.server),
                error,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends one request on a new connection and reads its answer.
    async fn tcp_request(&self, request: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut stream = self.connect().await?;
        self.exchange_on(&mut stream, request).await
    }

    /// Writes one request packet and reads one answer packet, within the TCP timeout.
    /// The answer's request id is checked by the parser.
    async fn exchange_on(
        &self,
        stream: &mut TcpStream,
        request: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.stats.tcp_requests.fetch_add(1, Ordering::Relaxed);
        let io = |error| ClientError::Io {
            context: format!("talking to the key manager at {} over TCP", self.server),
            error,
        };
        let exchange = async {
            stream.write_all(request).await.map_err(io)?;
            let mut packet = vec![0u8; HEADER_LEN];
            stream.read_exact(&mut packet).await.map_err(io)?;
            // payload_len is a u16 (bytes 6..8): at most 64 KiB more are read.
            let payload_len = usize::from(u16::from_be_bytes([packet[6], packet[7]]));
            packet.resize(HEADER_LEN + payload_len, 0);
            stream
                .read_exact(&mut packet[HEADER_LEN..])
                .await
                .map_err(io)?;
            Ok(packet)
        };
        tokio::time::timeout(self.config.tcp_timeout, exchange)
            .await
            .map_err(|_| self.timeout())?
    }

    /// Asks for a challenge nonce on `stream`.
    async fn challenge(&self, stream: &mut TcpStream) -> Result<[u8; 32], ClientError> {
        let id = self.request_id();
        let request = packet(id, &[Frame::KeyChallengeRequest])?;
        let answer = self.exchange_on(stream, &request).await?;
        match self.parse_tcp(&answer, id)? {
            Reply::Challenge(nonce) => Ok(nonce),
            other => Err(self.unexpected(other, "")),
        }
    }

    /// Over TCP a bad or foreign answer means framing or the peer is broken.
    fn parse_tcp<'a>(&self, answer: &'a [u8], id: u64) -> Result<Reply<'a>, ClientError> {
        parse_reply(answer, id).map_err(|why| self.protocol(why))
    }

    fn protocol(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            addr: self.server,
            detail: detail.into(),
        }
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            addr: self.server,
            after: self.config.tcp_timeout,
        }
    }

    // ----- trust on first use ---------------------------------------------------------

    fn check_known_host(&self, file: &Path, key: &ManagerKey) -> Result<(), ClientError> {
        let io = |error| ClientError::Io {
            context: format!("known-hosts file {}", file.display()),
            error,
        };
        match known_host(file, self.server).map_err(io)? {
            Some((line, expected)) => {
                if key.matches_fingerprint(&expected) {
                    Ok(())
                } else {
                    Err(ClientError::FingerprintChanged {
                        addr: self.server,
                        expected,
                        found: key.fingerprint().to_owned(),
                        file: file.to_owned(),
                        line,
                    })
                }
            }
            None => {
                remember_host(file, self.server, key.fingerprint()).map_err(io)?;
                tracing::warn!(
                    server = %self.server,
                    fingerprint = key.fingerprint(),
                    file = %file.display(),
                    "trusting the key manager's key on first use"
                );
                Ok(())
            }
        }
    }

    // ----- small helpers --------------------------------------------------------------

    fn request_id(&self) -> u64 {
        self.rng_lock().next_u64()
    }

    fn sign(&self, signer: &RsaSigner, message: &[u8]) -> Vec<u8> {
        signer.sign(&mut self.rng_lock(), message)
    }

    fn rng_lock(&self) -> std::sync::MutexGuard<'_, ChaCha20Rng> {
        // A panic while holding it cannot leave an RNG half-updated in a harmful way.
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (VerifiedRecord, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, name: &str) -> Option<VerifiedRecord> {
        let cache = self.cache_lock();
        let (record, fetched_at) = cache.get(name)?;
        (fetched_at.elapsed() < self.config.cache_ttl).then(|| record.clone())
    }

    fn remember(&self, record: VerifiedRecord) {
        if self.config.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache_lock();
        if cache.len() >= MAX_CACHE_ENTRIES {
            let ttl = self.config.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(record.name.clone(), (record, Instant::now()));
    }
}

/// A REQUEST packet carrying a KEY_LOOKUP for `name`, padded to `pad_to` bytes.
fn lookup_request(id: u64, name: &str, pad_to: usize) -> Result<Vec<u8>, ClientError> {
    let name = checked_name(name)?;
    let lookup = Frame::KeyLookup(KeyLookup { name });
    let natural = HEADER_LEN + sockmsg_wire::Encode::encoded_len(&lookup);
    if pad_to > natural {
        let padding = Padding::new(pad_to - natural)
            .map_err(|e| ClientError::InvalidRequest(format!("padding: {e}")))?;
        packet(id, &[lookup, Frame::Padding(padding)])
    } else {
        packet(id, &[lookup])
    }
}

fn checked_name(name: &str) -> Result<Name<'_>, ClientError> {
    Name::new(name).map_err(|e| ClientError::InvalidRequest(format!("name {name:?}: {e}")))
}

fn packet(id: u64, frames: &[Frame<'_>]) -> Result<Vec<u8>, ClientError> {
    let mut bytes = Vec::new();
    encode_cleartext_packet(&mut bytes, PacketType::REQUEST, id, 0, frames)
        .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
    Ok(bytes)
}

fn signed(signature: &[u8]) -> Result<Signature<'_>, ClientError> {
    Signature::new(signature).map_err(|e| ClientError::InvalidRequest(format!("signature: {e}")))
}

/// Decodes the answer to request `id`: one RESPONSE packet holding one response frame
/// (and any padding). `Err` says why it is not that.
fn parse_reply(bytes: &[u8], id: u64) -> Result<Reply<'_>, &'static str> {
    let packet = match Datagram::new(bytes).next() {
        Some(Ok(packet)) => packet,
        _ => return Err("malformed packet"),
    };
    if packet.packet_type() != PacketType::RESPONSE {
        return Err("not a RESPONSE packet");
    }
    if packet.header().connection_id() != id {
        return Err("the answer does not echo the request id");
    }
    let mut frames = packet
        .frames()
        .filter(|frame| !matches!(frame, Ok(Frame::Padding(_))));
    let frame = match (frames.next(), frames.next()) {
        (Some(Ok(frame)), None) => frame,
        (Some(Err(_)), _) | (_, Some(Err(_))) => return Err("malformed frame"),
        _ => return Err("a response holds exactly one frame"),
    };
    match frame {
        Frame::KeyRecord(record) => Ok(Reply::Record(record)),
        Frame::KeyChallenge(challenge) => Ok(Reply::Challenge(*challenge.nonce)),
        Frame::KeyResult(result) => Ok(Reply::Result {
            code: result.code,
            reason: result.reason.as_str().to_owned(),
        }),
        _ => Err("not a key manager response"),
    }
}

/// A seed for the client's RNG from the OS.
fn os_seed() -> Result<[u8; 32], ClientError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ClientError::Io {
        context: "reading OS entropy".into(),
        error: io::Error::other(e.to_string()),
    })?;
    Ok(seed)
}

/// Records in a known-hosts file (as [`Trust::TrustOnFirstUse`] keeps it) that the key
/// manager at `addr` has key `fingerprint`, as a node that starts a manager itself knows
/// first-hand. `Ok(true)` if it was recorded now, `Ok(false)` if it already was;
/// [`ClientError::FingerprintChanged`] if the file says another key for `addr`.
pub fn remember_known_host(
    file: &Path,
    addr: SocketAddr,
    fingerprint: &str,
) -> Result<bool, ClientError> {
    let io = |error| ClientError::Io {
        context: format!("known-hosts file {}", file.display()),
        error,
    };
    let fingerprint = normalize_fingerprint(fingerprint);
    match known_host(file, addr).map_err(io)? {
        Some((_, known)) if known == fingerprint => Ok(false),
        Some((line, expected)) => Err(ClientError::FingerprintChanged {
            addr,
            expected,
            found: fingerprint,
            file: file.to_owned(),
            line,
        }),
        None => {
            remember_host(file, addr, &fingerprint).map_err(io)?;
            Ok(true)
        }
    }
}

/// The remembered fingerprint of `addr` in a known-hosts file, with its line number
/// (from 1). A missing file knows nothing.
fn known_host(file: &Path, addr: SocketAddr) -> io::Result<Option<(usize, String)>> {
    let reader = match std::fs::File::open(file) {
        Ok(file) => io::BufReader::new(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(host), Some(fingerprint)) = (fields.next(), fields.next()) else {
            continue;
        };
        let same = match host.parse::<SocketAddr>() {
            Ok(host) => host == addr,
            Err(_) => host == addr.to_string(),
        };
        if same {
            return Ok(Some((index + 1, normalize_fingerprint(fingerprint))));
        }
    }
    Ok(None)
}

/// Appends `<addr> <fingerprint>` to a known-hosts file, creating it (mode 0600) and its
/// directories.
fn remember_host(file: &Path, addr: SocketAddr, fingerprint: &str) -> io::Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options.open(file)?;
    // One write, so concurrent writers (O_APPEND) do not interleave within a line.
    out.write_all(format!("{addr} {fingerprint}\n").as_bytes())?;
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use crate::handler::{self, Action, Transport};
    use crate::registry::{fingerprint, Refusal, Registry};
    use crate::verify::tests::{
        key_der, populated_registry, signer, ALICE_PEM, BOB_PEM, CAROL_PEM, DAVE_PEM, MALLORY_PEM,
    };

    /// The request id (connection id) of a packet.
    fn u64_at(packet: &[u8]) -> u64 {
        packet
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// How the fake server answers UDP lookups.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum UdpMode {
        /// As the real handler says.
        Handler,
        /// KEY_RESULT BAD_REQUEST ("use TCP"), whatever the request.
        BadRequest,
        /// First a NOT_FOUND with another request id, then the real answer.
        WrongIdFirst,
        /// Never answer.
        Silent,
    }

    struct State {
        registry: Registry,
        manager: RsaSigner,
        udp_mode: UdpMode,
        rng: ChaCha20Rng,
    }

    /// A key manager on 127.0.0.1 built from the real handler and registry, UDP and TCP
    /// on one port; every request it receives is sent to `requests`.
    struct FakeServer {
        addr: SocketAddr,
        state: Arc<Mutex<State>>,
        requests: mpsc::UnboundedReceiver<(Transport, Vec<u8>)>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// The handler's answer, committing a registration at once.
    fn answer(
        state: &Mutex<State>,
        from: SocketAddr,
        transport: Transport,
        request: &[u8],
    ) -> Option<Vec<u8>> {
        let mut state = state.lock().unwrap();
        match handler::handle_request(&state.registry, from, transport, request, now_ms()) {
            Action::Reply(reply) => Some(reply),
            Action::Drop { .. } => None,
            Action::Commit {
                operation,
                request_id,
                nonce,
            } => {
                let state = &mut *state;
                let batch = state.registry.plan_batch(
                    &[operation],
                    now_ms(),
                    &state.manager,
                    &mut state.rng,
                );
                let result = state.registry.apply(batch).remove(0);
                state.registry.admission().answer(&nonce, result.clone());
                Some(match result {
                    Ok(()) => handler::ok_response(request_id),
                    Err(refusal) => handler::refusal_response(request_id, &refusal),
                })
            }
        }
    }

    impl FakeServer {
        async fn start(manager: RsaSigner) -> FakeServer {
            let (listener, udp) = bind_pair().await;
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(Mutex::new(State {
                registry: populated_registry(&manager),
                manager,
                udp_mode: UdpMode::Handler,
                rng: ChaCha20Rng::seed_from_u64(99),
            }));
            let (tx, requests) = mpsc::unbounded_channel();
            let udp_task = tokio::spawn(serve_udp(udp, state.clone(), tx.clone()));
            let tcp_task = tokio::spawn(serve_tcp(listener, state.clone(), tx));
            FakeServer {
                addr,
                state,
                requests,
                tasks: vec![udp_task, tcp_task],
            }
        }

        fn set_udp_mode(&self, mode: UdpMode) {
            self.state.lock().unwrap().udp_mode = mode;
        }

        /// Replaces the manager (and its records): as if the key were replaced.
        fn replace_manager(&self, manager: RsaSigner) {
            let mut state = self.state.lock().unwrap();
            state.registry = populated_registry(&manager);
            state.manager = manager;
        }

        /// The next request received; the caller knows one was sent.
        async fn next_request(&mut self) -> (Transport, Vec<u8>) {
            self.requests.recv().await.expect("server running")
        }

        /// Every request received so far (the caller has its answers, so they were).
        fn drain(&mut self) -> Vec<(Transport, Vec<u8>)> {
            std::iter::from_fn(|| self.requests.try_recv().ok()).collect()
        }
    }

    /// A TCP listener and a UDP socket on the same loopback port.
    async fn bind_pair() -> (TcpListener, UdpSocket) {
        for _ in 0..50 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            if let Ok(udp) = UdpSocket::bind(addr).await {
                return (listener, udp);
            }
        }
        panic!("no loopback port free for both UDP and TCP");
    }

    async fn serve_udp(
        socket: UdpSocket,
        state: Arc<Mutex<State>>,
        requests: mpsc::UnboundedSender<(Transport, Vec<u8>)>,
    ) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let request = buf[..len].to_vec();
            let _ = requests.send((Transport::Udp, request.clone()));
            let mode = state.lock().unwrap().udp_mode;
            let id = u64_at(&request);
            let replies = match mode {
                UdpMode::Silent => vec![],
                UdpMode::BadRequest => vec![handler::refusal_response(
                    id,
                    &Refusal {
                        code: KeyResultCode::BAD_REQUEST,
                        reason: "pad the request or use TCP".into(),
                    },
                )],
                UdpMode::Handler => answer(&state, from, Transport::Udp, &request)
                    .into_iter()
                    .collect(),
                UdpMode::WrongIdFirst => {
                    let forged = handler::refusal_response(
                        id ^ 1,
                        &Refusal {
                            code: KeyResultCode::NOT_FOUND,
                            reason: "forged".into(),
                        },
                    );
                    let mut replies = vec![forged, b"not even sockmsg".to_vec()];
                    replies.extend(answer(&state, from, Transport::Udp, &request));
                    replies
                }
            };
            for reply in replies {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    }

    async fn serve_tcp(
        listener: TcpListener,
        state: Arc<Mutex<State>>,
        requests: mpsc::UnboundedSender<(Transport, Vec<u8>)>,
    ) {
        loop {
            let Ok((mut stream, from)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                loop {
                    let mut request = vec![0u8; HEADER_LEN];
                    if stream.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes([request[6], request[7]]));
                    request.resize(HEADER_LEN + len, 0);
                    if stream.read_exact(&mut request[HEADER_LEN..]).await.is_err() {
                        return;
                    }
                    let _ = requests.send((Transport::Tcp, request.clone()));
                    let Some(reply) = answer(&state, from, Transport::Tcp, &request) else {
                        return;
                    };
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    fn carol() -> RsaSigner {
        signer("carol", CAROL_PEM)
    }

    fn dave() -> RsaSigner {
        signer("dave", DAVE_PEM)
    }

    fn pinned(manager: &RsaSigner) -> Trust {
        Trust::Pinned(fingerprint(manager.public_key_der()))
    }

    fn config() -> ClientConfig {
        ClientConfig {
            seed: Some([42; 32]),
            ..ClientConfig::default()
        }
    }

    fn client(server: &FakeServer, trust: Trust, config: ClientConfig) -> KeymgrClient {
        KeymgrClient::with_config(server.addr, trust, config).unwrap()
    }

    fn count(stat: &AtomicU64) -> u64 {
        stat.load(Ordering::Relaxed)
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "sockmsg-keymgr-{tag}-{}-{:016x}",
                std::process::id(),
                os_seed()
                    .map(|s| u64::from_be_bytes(s[..8].try_into().unwrap()))
                    .unwrap()
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn lookup_goes_over_padded_udp_and_verifies() {
        let mut server = FakeServer::start(carol()).await;
        let client = client(&server, pinned(&carol()), config());
        let alice = client.lookup("alice").await.unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.public_key_der, key_der(ALICE_PEM));
        assert!(alice.is_active());

        // The manager's key over TCP, then the lookup over UDP, padded.
        let requests = server.drain();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[0].0, Transport::Tcp);
        assert_eq!(requests[1].0, Transport::Udp);
        assert!(
            requests[1].1.len() >= UDP_REQUEST_SIZE,
            "{}",
            requests[1].1.len()
        );
        assert_eq!(count(&client.stats().udp_datagrams_sent), 1);
        assert_eq!(count(&client.stats().tcp_requests), 1);

        // The manager key is remembered: the next name costs one datagram.
        let bob = client.lookup("bob").await.unwrap();
        assert_eq!(bob.public_key_der, key_der(BOB_PEM));
        assert_eq!(count(&client.stats().tcp_requests), 1);
        assert_eq!(count(&client.stats().udp_datagrams_sent), 2);
    }

    #[tokio::test]
    async fn a_bad_request_answer_over_udp_falls_back_to_tcp() {
        let server = FakeServer::start(carol()).await;
        server.set_udp_mode(UdpMode::BadRequest);
        let client = client(&server, pinned(&carol()), config());
        let bob = client.lookup("bob").await.unwrap();
        assert_eq!(bob.public_key_der, key_der(BOB_PEM));
        assert_eq!(count(&client.stats().udp_datagrams_sent), 1);
        assert_eq!(count(&client.stats().tcp_requests), 2);
    }

    #[tokio::test]
    async fn an_unpadded_udp_lookup_is_refused_by_the_real_handler_and_goes_over_tcp() {
        let mut server = FakeServer::start(carol()).await;
        let config = ClientConfig {
            udp_request_size: 0,
            ..config()
        };
        let client = client(&server, pinned(&carol()), config);
        let alice = client.lookup("alice").await.unwrap();
        assert_eq!(alice.public_key_der, key_der(ALICE_PEM));
        let transports: Vec<Transport> = server.drain().into_iter().map(|(t, _)| t).collect();
        assert_eq!(transports, [Transport::Tcp, Transport::Udp, Transport::Tcp]);
    }

    #[tokio::test]
    async fn unanswered_udp_is_tried_three_times_then_tcp() {
        let mut server = FakeServer::start(carol()).await;
        server.set_udp_mode(UdpMode::Silent);
        let config = ClientConfig {
            udp_timeout: Duration::from_millis(30),
            ..config()
        };
        let client = client(&server, pinned(&carol()), config);
        client.lookup("alice").await.unwrap();
        assert_eq!(count(&client.stats().udp_datagrams_sent), 3);
        assert_eq!(count(&client.stats().tcp_requests), 2);
        // The server saw the three tries, all with the same request id.
        let mut udp = Vec::new();
        while udp.len() < 3 {
            let (transport, request) = server.next_request().await;
            if transport == Transport::Udp {
                udp.push(u64_at(&request));
            }
        }
        assert!(udp.iter().all(|id| *id == udp[0]));
    }

    #[tokio::test]
    async fn the_cache_answers_until_invalidated_or_expired() {
        let server = FakeServer::start(carol()).await;
        let client = client(&server, pinned(&carol()), config());
        let first = client.lookup("alice").await.unwrap();
        let second = client.lookup("alice").await.unwrap();
        assert_eq!(first, second);
        assert_eq!(count(&client.stats().udp_datagrams_sent), 1);
        assert_eq!(count(&client.stats().cache_hits), 1);

        client.invalidate("alice");
        client.lookup("alice").await.unwrap();
        assert_eq!(count(&client.stats().udp_datagrams_sent), 2);

        let uncached = KeymgrClient::with_config(
            server.addr,
            pinned(&carol()),
            ClientConfig {
                cache_ttl: Duration::ZERO,
                ..config()
            },
        )
        .unwrap();
        uncached.lookup("alice").await.unwrap();
        uncached.lookup("alice").await.unwrap();
        assert_eq!(count(&uncached.stats().udp_datagrams_sent), 2);
        assert_eq!(count(&uncached.stats().cache_hits), 0);
    }

    #[tokio::test]
    async fn an_answer_with_another_request_id_is_ignored() {
        let server = FakeServer::start(carol()).await;
        server.set_udp_mode(UdpMode::WrongIdFirst);
        let client = client(&server, pinned(&carol()), config());
        let alice = client.lookup("alice").await.unwrap();
        assert_eq!(alice.public_key_der, key_der(ALICE_PEM));
        assert_eq!(count(&client.stats().udp_datagrams_sent), 1);
        assert_eq!(count(&client.stats().ignored_datagrams), 2);
    }

    #[tokio::test]
    async fn an_unknown_name_is_not_found() {
        let server = FakeServer::start(carol()).await;
        let client = client(&server, pinned(&carol()), config());
        let err = client.lookup("zed").await.unwrap_err();
        assert!(
            matches!(&err, ClientError::NotFound { name } if name == "zed"),
            "{err}"
        );
        assert_eq!(count(&client.stats().udp_datagrams_sent), 1);
        assert!(matches!(
            client.lookup("not a name").await,
            Err(ClientError::InvalidRequest(_))
        ));
    }

    #[tokio::test]
    async fn a_pinned_fingerprint_mismatch_fails() {
        let server = FakeServer::start(carol()).await;
        let client = client(&server, pinned(&dave()), config());
        let err = client.lookup("alice").await.unwrap_err();
        match &err {
            ClientError::Verify(VerifyError::FingerprintMismatch { expected, found }) => {
                assert_eq!(*expected, fingerprint(dave().public_key_der()));
                assert_eq!(*found, fingerprint(carol().public_key_der()));
            }
            other => panic!("expected a fingerprint mismatch, got {other}"),
        }
        assert_eq!(count(&client.stats().udp_datagrams_sent), 0);
    }

    #[tokio::test]
    async fn tofu_remembers_the_first_key_and_detects_a_change() {
        let server = FakeServer::start(carol()).await;
        let dir = TempDir::new("tofu");
        let known_hosts = dir.0.join("nested/dir/known_hosts");
        let tofu = Trust::TrustOnFirstUse {
            known_hosts: known_hosts.clone(),
        };
        let carol_fp = fingerprint(carol().public_key_der());
        let dave_fp = fingerprint(dave().public_key_der());

        // First contact: recorded, 0600.
        let first = client(&server, tofu.clone(), config());
        assert_eq!(first.manager_key().await.unwrap().fingerprint(), carol_fp);
        let text = std::fs::read_to_string(&known_hosts).unwrap();
        assert_eq!(text, format!("{} {carol_fp}\n", server.addr));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&known_hosts)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Same key again: accepted, nothing added.
        let second = client(&server, tofu.clone(), config());
        second.lookup("alice").await.unwrap();
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);

        // The manager now has another key: a loud error naming the line to delete.
        server.replace_manager(dave());
        let third = client(&server, tofu.clone(), config());
        let err = third.lookup("alice").await.unwrap_err();
        match &err {
            ClientError::FingerprintChanged {
                addr,
                expected,
                found,
                file,
                line,
            } => {
                assert_eq!(*addr, server.addr);
                assert_eq!(*expected, carol_fp);
                assert_eq!(*found, dave_fp);
                assert_eq!(*file, known_hosts);
                assert_eq!(*line, 1);
            }
            other => panic!("expected FingerprintChanged, got {other}"),
        }
        let message = err.to_string();
        assert!(message.contains("delete line 1"), "{message}");
        assert!(
            message.contains(&known_hosts.display().to_string()),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);

        // After the user deletes the line, the new key is trusted.
        std::fs::write(&known_hosts, "# sockmsg key managers\n").unwrap();
        let fourth = client(&server, tofu, config());
        assert_eq!(fourth.manager_key().await.unwrap().fingerprint(), dave_fp);
        let text = std::fs::read_to_string(&known_hosts).unwrap();
        assert!(
            text.ends_with(&format!("{} {dave_fp}\n", server.addr)),
            "{text}"
        );
    }

    #[tokio::test]
    async fn register_and_rotate_over_tcp() {
        let server = FakeServer::start(carol()).await;
        let client = client(&server, pinned(&carol()), config());
        let mallory = signer("mallory", MALLORY_PEM);
        let dave = dave();

        client.register("erin", &mallory, None).await.unwrap();
        let erin = client.lookup("erin").await.unwrap();
        assert_eq!(erin.public_key_der, mallory.public_key_der());
        assert_eq!(erin.serial, 1);
        // Registering again with the same key is confirmed.
        client.register("erin", &mallory, None).await.unwrap();

        // A bound name cannot be taken by another key.
        match client.register("alice", &mallory, None).await.unwrap_err() {
            ClientError::Refused { code, reason } => {
                assert_eq!(code, KeyResultCode::NAME_TAKEN);
                assert!(!reason.is_empty());
            }
            other => panic!("expected NAME_TAKEN, got {other}"),
        }

        // Rotation needs the old key; afterwards the cache shows the new one.
        match client.rotate("erin", &dave, &dave).await.unwrap_err() {
            ClientError::Refused { code, .. } => assert_eq!(code, KeyResultCode::BAD_SIGNATURE),
            other => panic!("expected BAD_SIGNATURE, got {other}"),
        }
        client.rotate("erin", &mallory, &dave).await.unwrap();
        let erin = client.lookup("erin").await.unwrap();
        assert_eq!(erin.public_key_der, dave.public_key_der());
        assert_eq!(erin.serial, 2);

        assert!(matches!(
            client.rotate("nobody", &mallory, &dave).await,
            Err(ClientError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_an_io_error() {
        // A port nothing listens on: bind, note it, close.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let client = KeymgrClient::with_config(addr, Trust::Pinned("00".into()), config()).unwrap();
        assert!(matches!(
            client.lookup("alice").await,
            Err(ClientError::Io { .. })
        ));
    }

    #[tokio::test]
    async fn a_recorded_manager_is_trusted_and_another_key_refused() {
        let server = FakeServer::start(carol()).await;
        let dir = TempDir::new("remember");
        let known_hosts = dir.0.join("known_keymgr");
        let carol_fp = fingerprint(carol().public_key_der());
        assert!(remember_known_host(&known_hosts, server.addr, &carol_fp).unwrap());
        assert!(!remember_known_host(&known_hosts, server.addr, &carol_fp).unwrap());
        // Recorded, so the first contact is no longer a first use: dave is refused.
        server.replace_manager(dave());
        let tofu = Trust::TrustOnFirstUse {
            known_hosts: known_hosts.clone(),
        };
        let err = client(&server, tofu, config())
            .lookup("alice")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::FingerprintChanged { expected, .. } if *expected == carol_fp),
            "{err}"
        );
        let dave_fp = fingerprint(dave().public_key_der());
        assert!(matches!(
            remember_known_host(&known_hosts, server.addr, &dave_fp),
            Err(ClientError::FingerprintChanged { line: 1, .. })
        ));
    }

    #[test]
    fn known_hosts_parsing() {
        let dir = TempDir::new("known-hosts");
        let file = dir.0.join("known_hosts");
        let a: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        let b: SocketAddr = "[::1]:7401".parse().unwrap();
        assert_eq!(known_host(&file, a).unwrap(), None);
        std::fs::write(
            &file,
            "# comment\n\n127.0.0.2:7401 aa\n127.0.0.1:7401   AB:CD\n[::1]:7401 ef\nbroken\n",
        )
        .unwrap();
        assert_eq!(known_host(&file, a).unwrap(), Some((4, "abcd".into())));
        assert_eq!(known_host(&file, b).unwrap(), Some((5, "ef".into())));
        remember_host(&file, "10.0.0.1:1".parse().unwrap(), "12").unwrap();
        assert_eq!(
            known_host(&file, "10.0.0.1:1".parse().unwrap()).unwrap(),
            Some((7, "12".into()))
        );
    }

    #[test]
    fn a_lookup_request_is_padded_exactly() {
        let request = lookup_request(7, "alice", UDP_REQUEST_SIZE).unwrap();
        assert_eq!(request.len(), UDP_REQUEST_SIZE);
        let unpadded = lookup_request(7, "alice", 0).unwrap();
        assert_eq!(unpadded.len(), HEADER_LEN + 1 + 1 + 5);
        // The padded one decodes as one lookup and padding.
        let packet = Datagram::new(&request).next().unwrap().unwrap();
        assert_eq!(packet.header().connection_id(), 7);
        let frames: Vec<_> = packet.frames().map(Result::unwrap).collect();
        assert!(matches!(frames[0], Frame::KeyLookup(l) if l.name.as_str() == "alice"));
        assert!(matches!(frames[1], Frame::Padding(_)));
        assert_eq!(frames.len(), 2);
    }
}
