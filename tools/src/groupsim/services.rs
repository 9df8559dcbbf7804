//! The key manager and the proxy beside the simulated group, as their own sans-IO state
//! machines driven with the very request and answer bytes their servers exchange.
//!
//! - Key manager: [`sockmsg_keymgr::registry::Registry`] behind
//!   [`sockmsg_keymgr::handler::handle_request`]. Every member registers its RSA test
//!   key (challenge, proof of possession, one signed Merkle batch) before the group forms.
//! - Proxy: [`sockmsg_proxy::Directory`] behind [`sockmsg_proxy::handler::parse`]. The
//!   founder claims term 1; each leader announces its record with the signed votes that
//!   elected it, and re-announces on membership changes and every refresh interval;
//!   joiners query it. Each node's requests come from the shipping
//!   [`sockmsg_node::rendezvous::Rendezvous`]. The proxy looks up the keys it needs from
//!   the key manager and checks each KEY_RECORD's batch signature, as the real one does.
//!
//! RSA signing costs 2–3 ms, so signatures are memoised by (signer, input) across the
//! whole test process ([`MemoSigner`]): votes and registrations repeat exactly from one
//! schedule to the next; leader records (which carry a time) mostly do not.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sockmsg_keymgr::handler::{handle_request, Action as KeymgrAction};
use sockmsg_keymgr::registry::{RegistrationMode, Registry};
use sockmsg_keymgr::verify::{verify_key_record, ManagerKey};
use sockmsg_node::VoteSigner;
use sockmsg_proxy::client::{query_request, RecordDraft};
use sockmsg_proxy::handler::{answer_query, decode_response, parse, RecordSummary, Request};
use sockmsg_proxy::{Accepted, Directory, DirectoryConfig, Evidence, Kind, Now, Refusal};
use sockmsg_wire::frame::{Frame, KeyLookup, KeyRegister, ProxyStatus};
use sockmsg_wire::session::crypto::{PeerKeys, RsaKeyring, RsaSigner, Signer};
use sockmsg_wire::{encode_cleartext_packet, Name, PacketType, PublicKey, Signature, Token};

/// The members' names: one RSA test key each under `testdata/keys`.
pub const NAMES: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];

/// The virtual wall clock at the start of every schedule (2026-01-01), so that nonces,
/// and so registrations and their signatures, repeat exactly across schedules.
pub const WALL_EPOCH_MS: u64 = 1_767_225_600_000;

/// The group every schedule runs.
pub const GROUP: &str = "lobby";

fn pem(name: &str) -> &'static str {
    match name {
        "alice" => include_str!("../../../testdata/keys/alice.pem"),
        "bob" => include_str!("../../../testdata/keys/bob.pem"),
        "carol" => include_str!("../../../testdata/keys/carol.pem"),
        "dave" => include_str!("../../../testdata/keys/dave.pem"),
        "erin" => include_str!("../../../testdata/keys/erin.pem"),
        "frank" => include_str!("../../../testdata/keys/frank.pem"),
        "grace" => include_str!("../../../testdata/keys/grace.pem"),
        "keymgr" => include_str!("../../../testdata/keys/keymgr.pem"),
        other => panic!("no test key for {other}"),
    }
}

/// An RSA signer whose signatures are remembered by input, process-wide. (RSA-PSS is
/// randomised, so a remembered signature differs from a fresh one, but verifies the
/// same.)
#[derive(Clone)]
pub struct MemoSigner {
    rsa: Arc<RsaSigner>,
}

type Memo = Mutex<HashMap<(String, Vec<u8>), Vec<u8>>>;

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

impl MemoSigner {
    /// The test key of `name`, parsed once per process.
    pub fn of(name: &str) -> MemoSigner {
        static KEYS: OnceLock<Mutex<HashMap<String, Arc<RsaSigner>>>> = OnceLock::new();
        let keys = KEYS.get_or_init(Default::default);
        let mut keys = keys.lock().unwrap_or_else(|e| e.into_inner());
        let rsa = keys
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(RsaSigner::from_pkcs8_pem(name, pem(name)).expect("test key parses"))
            })
            .clone();
        MemoSigner { rsa }
    }

    pub fn public_key_der(&self) -> &[u8] {
        self.rsa.public_key_der()
    }

    fn sign_memo(&self, message: &[u8]) -> Vec<u8> {
        let key = (self.rsa.name().to_owned(), message.to_vec());
        if let Some(sig) = memo().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return sig.clone();
        }
        let mut rng = ChaCha20Rng::seed_from_u64(message.len() as u64);
        let sig = self.rsa.sign(&mut rng, message);
        memo()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, sig.clone());
        sig
    }
}

impl Signer for MemoSigner {
    fn name(&self) -> &str {
        self.rsa.name()
    }
    fn sign(&self, _rng: &mut ChaCha20Rng, message: &[u8]) -> Vec<u8> {
        self.sign_memo(message)
    }
}

impl VoteSigner for MemoSigner {
    fn sign_vote(&self, input: &[u8]) -> Vec<u8> {
        self.sign_memo(input)
    }
}

/// The proxy's answer to a proposal, or why it was refused.
pub type Verdict = Result<Accepted, Refusal>;

/// A [`Verdict`] as the node's proxy client reads it off the wire.
pub fn verdict(verdict: Verdict) -> sockmsg_node::rendezvous::Verdict {
    match verdict {
        Ok(_) => sockmsg_node::rendezvous::Verdict::Accepted,
        Err(refusal) => sockmsg_node::rendezvous::Verdict::Refused {
            status: refusal.status,
            reason: refusal.reason,
            held: refusal.held.as_deref().and_then(RecordSummary::from_body),
        },
    }
}

/// The key manager and the proxy of one schedule.
pub struct Services {
    registry: Registry,
    manager: MemoSigner,
    manager_key: ManagerKey,
    directory: Directory,
    /// The proxy's key cache, filled from KEY_RECORDs it verified.
    proxy_keys: RsaKeyring,
    rng: ChaCha20Rng,
    next_request: u64,
    /// Verdicts by outcome, for the report.
    pub verdicts: BTreeMap<String, u64>,
    /// The proxy answers nobody until then (schedule time): it is down.
    proxy_down_until: Option<Duration>,
}

impl Default for Services {
    fn default() -> Self {
        Services::new()
    }
}

impl Services {
    pub fn new() -> Services {
        let manager = MemoSigner::of("keymgr");
        let manager_key = ManagerKey::from_der(manager.public_key_der()).expect("manager key");
        Services {
            registry: Registry::new([], [], RegistrationMode::Open, [7; 32], [9; 32]),
            manager,
            manager_key,
            directory: Directory::new(DirectoryConfig::default()),
            proxy_keys: RsaKeyring::new(),
            rng: ChaCha20Rng::seed_from_u64(0),
            next_request: 1,
            verdicts: BTreeMap::new(),
            proxy_down_until: None,
        }
    }

    /// The proxy restarts: every record it held is forgotten (they are soft state), and
    /// so are the keys it had looked up.
    pub fn restart_proxy(&mut self) {
        self.directory = Directory::new(DirectoryConfig::default());
        self.proxy_keys = RsaKeyring::new();
        *self.verdicts.entry("proxy restarted".into()).or_default() += 1;
    }

    /// The proxy is down until `until` (schedule time), then comes back with its state
    /// (a process that was stopped, or a link to it that was cut). Down for longer than
    /// the record's TTL, its records expire as they would.
    pub fn proxy_down(&mut self, until: Duration) {
        self.proxy_down_until = Some(until);
        *self.verdicts.entry("proxy down".into()).or_default() += 1;
    }

    /// Whether the proxy answers at `elapsed`.
    pub fn proxy_up(&self, elapsed: Duration) -> bool {
        self.proxy_down_until.is_none_or(|until| elapsed >= until)
    }

    /// The proxy is up again.
    pub fn proxy_back(&mut self) {
        self.proxy_down_until = None;
    }

    fn now(elapsed: Duration) -> Now {
        let ms = elapsed.as_millis() as u64;
        Now {
            wall_ms: WALL_EPOCH_MS + ms,
            mono_ms: ms,
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Registers every name's key with the key manager, as each node does at its first
    /// start: a challenge, then a KEY_REGISTER signed by the key itself; the manager
    /// commits them as one batch (one Merkle root, one signature).
    pub fn register(&mut self, names: &[&str]) -> Result<(), String> {
        let now_ms = WALL_EPOCH_MS;
        let mut operations = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let client: SocketAddr = format!("10.0.0.{}:7402", i + 1).parse().unwrap();
            let nonce = self.challenge(client, now_ms)?;
            let signer = MemoSigner::of(name);
            let mut register = KeyRegister {
                name: Name::new(name).unwrap(),
                public_key: PublicKey::new(signer.public_key_der()).unwrap(),
                nonce: &nonce,
                invite: Token::default(),
                signature: Signature::default(),
            };
            let input = sockmsg_keymgr::registry::register_signing_input(&register);
            let signature = signer.sign_memo(&input);
            register.signature = Signature::new(&signature).unwrap();
            let request = packet(self.request_id(), Frame::KeyRegister(register));
            match handle_request(&self.registry, client, tcp(), &request, now_ms) {
                KeymgrAction::Commit { operation, .. } => operations.push(operation),
                other => return Err(format!("registration of {name}: {other:?}")),
            }
        }
        let batch = self
            .registry
            .plan_batch(&operations, now_ms, &self.manager, &mut self.rng);
        // (The real manager writes `batch.writes` to redb here, before answering.)
        for result in self.registry.apply(batch) {
            result.map_err(|refusal| format!("registration refused: {refusal:?}"))?;
        }
        Ok(())
    }

    fn challenge(&mut self, client: SocketAddr, now_ms: u64) -> Result<[u8; 32], String> {
        let request = packet(self.request_id(), Frame::KeyChallengeRequest);
        let KeymgrAction::Reply(reply) =
            handle_request(&self.registry, client, tcp(), &request, now_ms)
        else {
            return Err("no challenge".into());
        };
        match decode_response(&reply) {
            Some((_, Frame::KeyChallenge(challenge))) => Ok(*challenge.nonce),
            other => Err(format!("challenge answer: {other:?}")),
        }
    }

    /// The proxy's key lookup: KEY_LOOKUP to the key manager, the KEY_RECORD's batch
    /// signature checked against the manager's key, the key put in the proxy's cache.
    fn lookup(&mut self, name: &str, now_ms: u64) {
        let Ok(name_field) = Name::new(name) else {
            return;
        };
        let request = packet(
            self.request_id(),
            Frame::KeyLookup(KeyLookup { name: name_field }),
        );
        let client: SocketAddr = "10.0.0.100:7401".parse().unwrap();
        let KeymgrAction::Reply(reply) =
            handle_request(&self.registry, client, tcp(), &request, now_ms)
        else {
            return;
        };
        if let Some((_, Frame::KeyRecord(record))) = decode_response(&reply) {
            let verified = verify_key_record(&record, name, &self.manager_key)
                .expect("the key manager's records verify");
            verified
                .apply_to(&mut self.proxy_keys)
                .expect("registered keys are usable");
        }
    }

    /// LEADER_QUERY: the record the proxy holds for the group.
    pub fn query(&mut self, elapsed: Duration) -> Option<RecordSummary> {
        let request = query_request(self.request_id(), GROUP, 1000).unwrap();
        let parsed = parse(&request, udp()).ok()?;
        let Request::Query(group) = parsed.request else {
            return None;
        };
        let sockmsg_proxy::handler::Action::Reply { packet, .. } = answer_query(
            &mut self.directory,
            parsed.request_id,
            group,
            parsed.reply_limit,
            Self::now(elapsed),
        ) else {
            return None;
        };
        match decode_response(&packet) {
            Some((_, Frame::LeaderInfo(record))) => Some(RecordSummary::from(&record)),
            _ => None,
        }
    }

    /// A LEADER_CLAIM (term 1) or LEADER_ANNOUNCE by `leader`, signed with its key.
    pub fn propose(
        &mut self,
        kind: Kind,
        draft: &RecordDraft,
        votes: &[(String, Vec<u8>)],
        elapsed: Duration,
    ) -> Verdict {
        let now = Self::now(elapsed);
        let signer = MemoSigner::of(&draft.leader);
        let signature = draft.sign(&signer, &mut self.rng).unwrap();
        let request = draft
            .request(self.request_id(), kind, &signature, votes, 0)
            .unwrap();
        let parsed = match parse(&request, tcp()) {
            Ok(parsed) => parsed,
            Err(action) => panic!("the proxy cannot parse a leader's request: {action:?}"),
        };
        let Request::Propose(proposal) = parsed.request else {
            unreachable!("a proposal parses as one")
        };
        let verdict = self.directory.plan(&proposal, now).and_then(|plan| {
            for name in plan.key_names(&proposal) {
                if !self.proxy_keys.contains(&name) {
                    self.lookup(&name, now.wall_ms);
                }
            }
            let evidence = Evidence::gather(&proposal, &plan, &self.proxy_keys as &dyn PeerKeys);
            self.directory.decide(&proposal, &evidence, now)
        });
        let outcome = match &verdict {
            Ok(accepted) => format!("{kind:?} accepted ({accepted:?})"),
            Err(refusal) => format!("{kind:?} refused: {}", status_name(refusal.status)),
        };
        *self.verdicts.entry(outcome).or_default() += 1;
        verdict
    }
}

fn status_name(status: ProxyStatus) -> String {
    status
        .name()
        .map_or_else(|| format!("status {}", status.0), str::to_owned)
}

fn tcp() -> sockmsg_keymgr::handler::Transport {
    sockmsg_keymgr::handler::Transport::Tcp
}

fn udp() -> sockmsg_keymgr::handler::Transport {
    sockmsg_keymgr::handler::Transport::Udp
}

/// A REQUEST packet holding one frame.
fn packet(request_id: u64, frame: Frame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_cleartext_packet(&mut bytes, PacketType::REQUEST, request_id, 0, &[frame]).unwrap();
    bytes
}
