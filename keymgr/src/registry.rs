//! The key manager's state machine: which name is bound to which key, and the rules by
//! which a binding is made, moved or revoked. Sans-IO: no sockets, no files, no clock
//! (time comes in as `now_ms`), randomness only through the caller's seeded RNG.
//!
//! Requests take two steps, so that durability is explicit (as raft-rs's `Ready`):
//!
//! 1. [`Registry::check_register`] and [`Registry::check_rotate`] validate a request
//!    against what is stored *now* and return an [`Operation`] (nothing changes yet), or
//!    a refusal to send at once.
//! 2. The server gathers the operations that arrive together and calls
//!    [`Registry::plan_batch`]: it re-checks each against the batch so far, builds the new
//!    records as leaves of one Merkle tree and signs its root once. The server commits
//!    [`PlannedBatch::writes`] to disk, then calls [`Registry::apply`] and only then sends
//!    the replies. Nothing is acknowledged before it is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};
use sockmsg_wire::frame::{
    BatchProof, KeyRecord, KeyRegister, KeyResultCode, KeyRotate, KeyStatus,
};
use sockmsg_wire::session::crypto::{PeerKeys, RsaKeyring, Signer};
use sockmsg_wire::{Decode, Encode, List, Name, PublicKey, Reader, Signature};

use crate::admission::{Admission, Limits};
use crate::merkle::{self, Digest};
use crate::store::Write;

/// The reserved name under which the manager publishes its own key (self-signed), so a
/// client holding only the pinned fingerprint can fetch and check it.
pub const MANAGER_NAME: &str = "_keymgr";

/// Labels of the signatures a client makes (SPEC.md §9).
pub const REGISTER_LABEL: &[u8] = b"sockmsg/1 key-register\0";
pub const ROTATE_LABEL: &[u8] = b"sockmsg/1 key-rotate\0";

/// How long a challenge nonce stays valid. It is also single use: see
/// [`crate::admission`].
pub const NONCE_LIFETIME_MS: u64 = 60_000;

/// Bytes of an invite token: a 16-byte id and a 16-byte MAC over it.
pub const INVITE_LEN: usize = 32;

/// Whether anyone may register a free name, or only holders of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    Open,
    Invite,
}

/// A refusal: the code and a message for the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: KeyResultCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: KeyResultCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// A change a request asks for, checked but not yet applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Bind `name` to `public_key` (or confirm the binding if it already holds).
    Register {
        name: String,
        public_key: Vec<u8>,
        invite: Option<Vec<u8>>,
    },
    /// Move `name` from `old_key` to `new_key`.
    Rotate {
        name: String,
        old_key: Vec<u8>,
        new_key: Vec<u8>,
    },
    /// The operator revokes `name`'s key.
    Revoke { name: String },
    /// The manager publishes its own key under [`MANAGER_NAME`].
    PublishManagerKey { public_key: Vec<u8> },
}

impl Operation {
    pub fn name(&self) -> &str {
        match self {
            Operation::Register { name, .. }
            | Operation::Rotate { name, .. }
            | Operation::Revoke { name } => name,
            Operation::PublishManagerKey { .. } => MANAGER_NAME,
        }
    }
}

/// A stored record: its encoded KEY_RECORD body, and the fields the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub bytes: Vec<u8>,
    pub public_key: Vec<u8>,
    pub serial: u64,
    pub status: KeyStatus,
}

impl StoredRecord {
    /// Decodes a stored KEY_RECORD body (from disk or from a batch).
    pub fn decode(bytes: Vec<u8>) -> Option<StoredRecord> {
        let record = KeyRecord::decode(&mut Reader::new(&bytes, 0), "KeyRecord").ok()?;
        let public_key = record.public_key.as_bytes().to_vec();
        let (serial, status) = (record.serial, record.status);
        Some(StoredRecord {
            bytes,
            public_key,
            serial,
            status,
        })
    }
}

/// The outcome of one operation of a batch.
pub type OpResult = Result<(), Refusal>;

/// A batch ready to commit: what to write, and each operation's result.
#[derive(Debug)]
pub struct PlannedBatch {
    pub writes: Vec<Write>,
    pub results: Vec<OpResult>,
    records: Vec<(String, StoredRecord)>,
    invites: Vec<Vec<u8>>,
}

/// Names bound to keys, and the secrets behind nonces and invites.
pub struct Registry {
    records: BTreeMap<String, StoredRecord>,
    /// How many records each key (by [`key_digest`]) is bound in, the manager's own
    /// excepted: bounded by the records.
    names_per_key: HashMap<[u8; 32], u32>,
    used_invites: BTreeSet<Vec<u8>>,
    mode: RegistrationMode,
    nonce_secret: [u8; 32],
    /// Makes every nonce unique, even two issued to one address in one millisecond.
    nonce_counter: AtomicU64,
    invite_secret: [u8; 32],
    /// Used nonces and rate limits: what requests did, rather than what is stored.
    admission: Admission,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("records", &self.records.len())
            .field("mode", &self.mode)
            .field("limits", self.admission.limits())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry holding `records` (as loaded from disk) and `used_invites`, with the
    /// default [`Limits`] (see [`Registry::set_limits`]).
    pub fn new(
        records: impl IntoIterator<Item = StoredRecord>,
        used_invites: impl IntoIterator<Item = Vec<u8>>,
        mode: RegistrationMode,
        nonce_secret: [u8; 32],
        invite_secret: [u8; 32],
    ) -> Self {
        let records: BTreeMap<String, StoredRecord> = records
            .into_iter()
            .filter_map(|record| Some((record_name(&record.bytes)?, record)))
            .collect();
        let mut names_per_key: HashMap<[u8; 32], u32> = HashMap::new();
        for (name, record) in &records {
            if name != MANAGER_NAME {
                *names_per_key
                    .entry(key_digest(&record.public_key))
                    .or_default() += 1;
            }
        }
        Registry {
            records,
            names_per_key,
            used_invites: used_invites.into_iter().collect(),
            mode,
            nonce_secret,
            nonce_counter: AtomicU64::new(0),
            invite_secret,
            admission: Admission::default(),
        }
    }

    /// Replaces the admission limits (forgetting used nonces and buckets: call it before
    /// serving).
    pub fn set_limits(&mut self, limits: Limits) {
        self.admission = Admission::new(limits);
    }

    /// Takes over `old`'s used nonces, rate buckets and nonce counter: a registry
    /// reloaded from disk (after a failed commit) must not make used nonces usable again.
    pub fn carry_over(&mut self, old: &mut Registry) {
        std::mem::swap(&mut self.admission, &mut old.admission);
        let counter = old.nonce_counter.load(Ordering::Relaxed);
        self.nonce_counter.store(counter, Ordering::Relaxed);
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// How many names `public_key` is bound to now.
    pub fn names_of_key(&self, public_key: &[u8]) -> u32 {
        self.names_per_key
            .get(&key_digest(public_key))
            .copied()
            .unwrap_or(0)
    }

    pub fn record(&self, name: &str) -> Option<&StoredRecord> {
        self.records.get(name)
    }

    pub fn records(&self) -> impl Iterator<Item = (&str, &StoredRecord)> {
        self.records
            .iter()
            .map(|(name, record)| (name.as_str(), record))
    }

    // ----- nonces and invites ----------------------------------------------------------

    /// A nonce for `client`, valid for [`NONCE_LIFETIME_MS`]: the issue time, a counter
    /// (so that no two nonces are alike) and a 128-bit MAC over both and the client's
    /// address. Issuing stores nothing per client; a nonce is remembered only once used
    /// ([`crate::admission`]).
    pub fn nonce(&self, client: SocketAddr, now_ms: u64) -> [u8; 32] {
        let counter = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0; 32];
        nonce[..8].copy_from_slice(&now_ms.to_be_bytes());
        nonce[8..16].copy_from_slice(&counter.to_be_bytes());
        let mac = self.nonce_mac(client, &nonce[..16]);
        nonce[16..].copy_from_slice(&mac[..16]);
        nonce
    }

    fn nonce_mac(&self, client: SocketAddr, issued_and_counter: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.nonce_secret)
            .expect("HMAC takes keys of any length");
        mac.update(b"sockmsg/1 keymgr-nonce\0");
        mac.update(client.ip().to_string().as_bytes());
        mac.update(&[0]);
        mac.update(issued_and_counter);
        mac.finalize().into_bytes().into()
    }

    /// When a nonce stops being valid (whether or not it is genuine).
    pub fn nonce_expiry(nonce: &[u8; 32]) -> u64 {
        let mut issued = [0; 8];
        issued.copy_from_slice(&nonce[..8]);
        u64::from_be_bytes(issued).saturating_add(NONCE_LIFETIME_MS)
    }

    /// Whether `nonce` was issued by this registry to `client`'s address and is still
    /// fresh. (Whether it was used already is [`crate::admission`]'s business.)
    pub fn check_nonce(&self, client: SocketAddr, nonce: &[u8; 32], now_ms: u64) -> OpResult {
        let issued = Self::nonce_expiry(nonce).saturating_sub(NONCE_LIFETIME_MS);
        let fresh = issued <= now_ms && now_ms - issued <= NONCE_LIFETIME_MS;
        let genuine = self.nonce_mac(client, &nonce[..16])[..16] == nonce[16..];
        if fresh && genuine {
            Ok(())
        } else {
            Err(Refusal::new(
                KeyResultCode::BAD_NONCE,
                "nonce unknown or expired: ask for a new challenge",
            ))
        }
    }

    /// Mints an invite token (the operator's `invite` command).
    pub fn mint_invite(invite_secret: &[u8; 32], id: [u8; 16]) -> [u8; INVITE_LEN] {
        let mut token = [0; INVITE_LEN];
        token[..16].copy_from_slice(&id);
        token[16..].copy_from_slice(&invite_mac(invite_secret, &id)[..16]);
        token
    }

    fn check_invite(&self, token: &[u8]) -> OpResult {
        let valid = token.len() == INVITE_LEN
            && invite_mac(&self.invite_secret, &token[..16])[..16] == token[16..];
        if !valid {
            return Err(Refusal::new(
                KeyResultCode::INVITE_REQUIRED,
                "registration needs a valid invite token",
            ));
        }
        if self.used_invites.contains(&token[..16]) {
            return Err(Refusal::new(
                KeyResultCode::INVITE_REQUIRED,
                "this invite token was already used",
            ));
        }
        Ok(())
    }

    // ----- step 1: check ---------------------------------------------------------------

    /// Checks a registration: nonce (not whether it was used: see
    /// [`crate::handler`]), proof of possession, then the rules.
    pub fn check_register(
        &self,
        client: SocketAddr,
        request: &KeyRegister<'_>,
        now_ms: u64,
    ) -> Result<Operation, Refusal> {
        self.check_nonce(client, request.nonce, now_ms)?;
        self.prove_register(request)?;
        self.rules_register(request)
    }

    /// A registration's proof of possession: the reserved name, and the signature by the
    /// key being registered.
    pub fn prove_register(&self, request: &KeyRegister<'_>) -> OpResult {
        let name = request.name.as_str();
        if name == MANAGER_NAME {
            return Err(Refusal::new(KeyResultCode::NAME_TAKEN, "reserved name"));
        }
        let signed = register_signing_input(request);
        verify_with_key(
            name,
            request.public_key.as_bytes(),
            &signed,
            request.signature,
        )
    }

    /// The rules a proven registration must pass now (name free or already this key's,
    /// invite, names per key).
    pub fn rules_register(&self, request: &KeyRegister<'_>) -> Result<Operation, Refusal> {
        let invite = (!request.invite.is_empty()).then(|| request.invite.as_bytes().to_vec());
        let operation = Operation::Register {
            name: request.name.as_str().to_owned(),
            public_key: request.public_key.as_bytes().to_vec(),
            invite,
        };
        self.admissible(&operation, &Planned::default())?;
        Ok(operation)
    }

    /// Whether a registration of `name` to `public_key` would write a record (bind a
    /// free name), rather than confirm the binding that holds: what costs a token.
    pub fn register_changes(&self, name: &str, public_key: &[u8]) -> bool {
        self.records
            .get(name)
            .is_none_or(|record| record.public_key != public_key)
    }

    /// Checks a rotation: nonce, both signatures (old key, new key), then the rules.
    pub fn check_rotate(
        &self,
        client: SocketAddr,
        request: &KeyRotate<'_>,
        now_ms: u64,
    ) -> Result<Operation, Refusal> {
        self.check_nonce(client, request.nonce, now_ms)?;
        let operation = self.prove_rotate(request)?;
        self.admissible(&operation, &Planned::default())?;
        Ok(operation)
    }

    /// A rotation's proofs: the signature by the key bound now, and by the new key.
    /// Returns the operation, whose rules are still to be checked
    /// ([`Registry::rules_rotate`]).
    pub fn prove_rotate(&self, request: &KeyRotate<'_>) -> Result<Operation, Refusal> {
        let name = request.name.as_str();
        let current = self
            .records
            .get(name)
            .ok_or_else(|| Refusal::new(KeyResultCode::NOT_FOUND, "no such name"))?;
        let signed = rotate_signing_input(request);
        verify_with_key(name, &current.public_key, &signed, request.old_signature)?;
        verify_with_key(
            name,
            request.new_public_key.as_bytes(),
            &signed,
            request.new_signature,
        )?;
        Ok(Operation::Rotate {
            name: name.to_owned(),
            old_key: current.public_key.clone(),
            new_key: request.new_public_key.as_bytes().to_vec(),
        })
    }

    /// The rules a proven rotation must pass now (not revoked, names per key).
    pub fn rules_rotate(&self, operation: &Operation) -> OpResult {
        self.admissible(operation, &Planned::default())
    }

    /// Whether `operation` may apply on top of the stored state and of `planned`
    /// (records and invites taken by earlier operations of the same batch).
    fn admissible(&self, operation: &Operation, planned: &Planned) -> OpResult {
        let name = operation.name();
        let current = planned.records.get(name).or_else(|| self.records.get(name));
        let pending_invites = &planned.invites;
        let key_full = |key: &[u8]| -> OpResult {
            let held = i64::from(self.names_of_key(key))
                + planned
                    .key_delta
                    .get(&key_digest(key))
                    .copied()
                    .unwrap_or(0);
            let limit = self.admission.limits().max_names_per_key;
            if held >= i64::from(limit) {
                return Err(Refusal::new(
                    KeyResultCode::BAD_KEY,
                    format!(
                        "this key is already bound to {held} name(s), the most one key may \
                         have here (keymgr.max_names_per_key); use another key"
                    ),
                ));
            }
            Ok(())
        };
        match operation {
            Operation::Register {
                public_key, invite, ..
            } => match current {
                Some(record) if record.public_key == *public_key => {
                    if record.status == KeyStatus::REVOKED {
                        Err(Refusal::new(KeyResultCode::REVOKED, "this key was revoked"))
                    } else {
                        Ok(())
                    }
                }
                Some(_) => Err(Refusal::new(
                    KeyResultCode::NAME_TAKEN,
                    "the name is bound to another key; rotate with the old key or ask the operator",
                )),
                None if self.mode == RegistrationMode::Invite => {
                    let token = invite.as_deref().unwrap_or_default();
                    self.check_invite(token)?;
                    if token.len() >= 16 && pending_invites.contains(&token[..16]) {
                        return Err(Refusal::new(
                            KeyResultCode::INVITE_REQUIRED,
                            "this invite token was already used",
                        ));
                    }
                    key_full(public_key)
                }
                None => key_full(public_key),
            },
            Operation::Rotate {
                old_key, new_key, ..
            } => match current {
                Some(record) if record.status == KeyStatus::REVOKED => Err(Refusal::new(
                    KeyResultCode::REVOKED,
                    "this name's key was revoked",
                )),
                Some(record) if record.public_key == *old_key => {
                    if new_key == old_key {
                        Ok(())
                    } else {
                        key_full(new_key)
                    }
                }
                Some(_) => Err(Refusal::new(
                    KeyResultCode::BAD_SIGNATURE,
                    "the name moved to another key meanwhile",
                )),
                None => Err(Refusal::new(KeyResultCode::NOT_FOUND, "no such name")),
            },
            Operation::Revoke { .. } => match current {
                Some(_) => Ok(()),
                None => Err(Refusal::new(KeyResultCode::NOT_FOUND, "no such name")),
            },
            Operation::PublishManagerKey { .. } => Ok(()),
        }
    }

    // ----- step 2: plan, commit (by the caller), apply ---------------------------------

    /// Re-checks `operations` in order against the state and each other, builds the new
    /// records and signs them as one Merkle batch. Changes nothing: see
    /// [`Registry::apply`].
    pub fn plan_batch(
        &self,
        operations: &[Operation],
        now_ms: u64,
        manager: &dyn Signer,
        rng: &mut ChaCha20Rng,
    ) -> PlannedBatch {
        let mut planned = Planned::default();
        let mut results = Vec::with_capacity(operations.len());
        let mut fields: Vec<(String, Vec<u8>, u64, KeyStatus)> = Vec::new();
        for operation in operations {
            let result = self.admissible(operation, &planned);
            if result.is_ok() {
                if let Some(change) = self.change_for(operation, &planned.records) {
                    if let Operation::Register {
                        invite: Some(token),
                        ..
                    } = operation
                    {
                        if self.mode == RegistrationMode::Invite && token.len() >= 16 {
                            planned.invites.insert(token[..16].to_vec());
                        }
                    }
                    let (name, key, serial, status) = change;
                    if name != MANAGER_NAME {
                        let before = planned
                            .records
                            .get(&name)
                            .or_else(|| self.records.get(&name))
                            .map(|record| key_digest(&record.public_key));
                        let after = key_digest(&key);
                        if before != Some(after) {
                            if let Some(before) = before {
                                *planned.key_delta.entry(before).or_default() -= 1;
                            }
                            *planned.key_delta.entry(after).or_default() += 1;
                        }
                    }
                    // Placeholder, replaced with the signed record below; it lets later
                    // operations of the batch see this one.
                    planned.records.insert(
                        name.clone(),
                        StoredRecord {
                            bytes: Vec::new(),
                            public_key: key.clone(),
                            serial,
                            status,
                        },
                    );
                    fields.retain(|(n, ..)| *n != name);
                    fields.push((name, key, serial, status));
                }
            }
            results.push(result);
        }
        let records = sign_batch(&fields, now_ms, manager, rng);
        let mut writes: Vec<Write> = records
            .iter()
            .map(|(name, record)| Write::Record {
                name: name.clone(),
                bytes: record.bytes.clone(),
            })
            .collect();
        writes.extend(planned.invites.iter().map(|id| Write::InviteUsed {
            id: id.clone(),
            at_ms: now_ms,
        }));
        PlannedBatch {
            writes,
            results,
            records,
            invites: planned.invites.into_iter().collect(),
        }
    }

    /// The record an admissible operation produces, or `None` if it changes nothing
    /// (registering a name to the key it already has).
    fn change_for(
        &self,
        operation: &Operation,
        pending: &BTreeMap<String, StoredRecord>,
    ) -> Option<(String, Vec<u8>, u64, KeyStatus)> {
        let name = operation.name().to_owned();
        let current = pending.get(&name).or_else(|| self.records.get(&name));
        let next_serial = current.map_or(1, |record| record.serial + 1);
        match operation {
            Operation::Register { public_key, .. } => match current {
                Some(_) => None,
                None => Some((name, public_key.clone(), next_serial, KeyStatus::ACTIVE)),
            },
            Operation::Rotate { new_key, .. } => {
                Some((name, new_key.clone(), next_serial, KeyStatus::ACTIVE))
            }
            Operation::Revoke { .. } => {
                let key = current?.public_key.clone();
                Some((name, key, next_serial, KeyStatus::REVOKED))
            }
            Operation::PublishManagerKey { public_key } => match current {
                Some(record) if record.public_key == *public_key => None,
                _ => Some((name, public_key.clone(), next_serial, KeyStatus::ACTIVE)),
            },
        }
    }

    /// Makes a committed batch visible. Call only after its writes are durable.
    pub fn apply(&mut self, batch: PlannedBatch) -> Vec<OpResult> {
        for (name, record) in batch.records {
            if name != MANAGER_NAME {
                if let Some(old) = self.records.get(&name) {
                    let old = key_digest(&old.public_key);
                    if let Some(count) = self.names_per_key.get_mut(&old) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.names_per_key.remove(&old);
                        }
                    }
                }
                *self
                    .names_per_key
                    .entry(key_digest(&record.public_key))
                    .or_default() += 1;
            }
            self.records.insert(name, record);
        }
        self.used_invites.extend(batch.invites);
        batch.results
    }
}

/// What the operations planned so far in a batch change (or nothing, for a check).
#[derive(Debug, Default)]
struct Planned {
    records: BTreeMap<String, StoredRecord>,
    invites: BTreeSet<Vec<u8>>,
    /// Change in each key's name count.
    key_delta: HashMap<[u8; 32], i64>,
}

/// What the names-per-key count is keyed by: SHA-256 of the key's DER.
fn key_digest(public_key: &[u8]) -> [u8; 32] {
    Sha256::digest(public_key).into()
}

/// Signs `fields` (name, key, serial, status) as one batch: leaves, root, one signature,
/// and an inclusion proof per record.
fn sign_batch(
    fields: &[(String, Vec<u8>, u64, KeyStatus)],
    now_ms: u64,
    manager: &dyn Signer,
    rng: &mut ChaCha20Rng,
) -> Vec<(String, StoredRecord)> {
    let encoded: Vec<Vec<u8>> = fields
        .iter()
        .filter_map(|(name, key, serial, status)| {
            record_fields(name, key, *serial, now_ms, *status)
        })
        .collect();
    if encoded.len() != fields.len() {
        return Vec::new();
    }
    let leaves: Vec<Digest> = encoded.iter().map(|f| merkle::leaf_hash(f)).collect();
    let Some(root) = merkle::root(&leaves) else {
        return Vec::new();
    };
    let size = leaves.len() as u32;
    let signature = manager.sign(rng, &merkle::batch_signing_input(size, &root));
    let proofs = merkle::inclusion_proofs(&leaves);
    fields
        .iter()
        .zip(encoded)
        .zip(proofs)
        .enumerate()
        .filter_map(|(index, (((name, key, serial, status), head), path))| {
            let path_refs: Vec<&[u8; 32]> = path.iter().collect();
            let batch = BatchProof {
                size,
                index: index as u32,
                path: List::new(&path_refs).ok()?,
            };
            let mut bytes = head;
            batch.encode(&mut bytes);
            Signature::new(&signature).ok()?.encode(&mut bytes);
            Some((
                name.clone(),
                StoredRecord {
                    bytes,
                    public_key: key.clone(),
                    serial: *serial,
                    status: *status,
                },
            ))
        })
        .collect()
}

/// The wire encoding of a record's fields before its batch proof (the Merkle leaf).
pub fn record_fields(
    name: &str,
    public_key: &[u8],
    serial: u64,
    issued_at_ms: u64,
    status: KeyStatus,
) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    Name::new(name).ok()?.encode(&mut bytes);
    PublicKey::new(public_key).ok()?.encode(&mut bytes);
    serial.encode(&mut bytes);
    issued_at_ms.encode(&mut bytes);
    status.encode(&mut bytes);
    Some(bytes)
}

/// The name at the start of an encoded record.
fn record_name(bytes: &[u8]) -> Option<String> {
    let name = Name::decode(&mut Reader::new(bytes, 0), "KeyRecord.name").ok()?;
    Some(name.as_str().to_owned())
}

/// What a registration's signature covers: label, then name, key, nonce, invite.
pub fn register_signing_input(request: &KeyRegister<'_>) -> Vec<u8> {
    let mut input = REGISTER_LABEL.to_vec();
    request.name.encode(&mut input);
    request.public_key.encode(&mut input);
    request.nonce.encode(&mut input);
    request.invite.encode(&mut input);
    input
}

/// What both of a rotation's signatures cover: label, then name, new key, nonce.
pub fn rotate_signing_input(request: &KeyRotate<'_>) -> Vec<u8> {
    let mut input = ROTATE_LABEL.to_vec();
    request.name.encode(&mut input);
    request.new_public_key.encode(&mut input);
    request.nonce.encode(&mut input);
    input
}

/// Verifies `signature` over `message` with the RSA key `public_key` (DER).
fn verify_with_key(
    name: &str,
    public_key: &[u8],
    message: &[u8],
    signature: Signature<'_>,
) -> OpResult {
    let mut keyring = RsaKeyring::new();
    keyring
        .insert_der(name, public_key)
        .map_err(|e| Refusal::new(KeyResultCode::BAD_KEY, format!("unusable public key: {e}")))?;
    keyring
        .verify(name, message, signature.as_bytes())
        .map_err(|_| Refusal::new(KeyResultCode::BAD_SIGNATURE, "signature does not verify"))
}

fn invite_mac(secret: &[u8; 32], id: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"sockmsg/1 invite\0");
    mac.update(id);
    mac.finalize().into_bytes().into()
}

/// The fingerprint of a public key: SHA-256 of its DER, in hex.
pub fn fingerprint(public_key_der: &[u8]) -> String {
    Sha256::digest(public_key_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use sockmsg_wire::session::crypto::RsaSigner;
    use sockmsg_wire::Token;

    const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
    const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
    const CAROL_PEM: &str = include_str!("../../testdata/keys/carol.pem");

    fn signer(name: &str, pem: &str) -> RsaSigner {
        RsaSigner::from_pkcs8_pem(name, pem).expect("test key")
    }

    fn client() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn registry(mode: RegistrationMode) -> Registry {
        Registry::new([], [], mode, [1; 32], [2; 32])
    }

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([9; 32])
    }

    /// A registration of `name` with `key`, signed by `by`, over a nonce for `client()`.
    fn register(
        registry: &Registry,
        name: &str,
        key: &RsaSigner,
        by: &RsaSigner,
        invite: &[u8],
        now_ms: u64,
    ) -> Result<Operation, Refusal> {
        let nonce = registry.nonce(client(), now_ms);
        let mut request = KeyRegister {
            name: Name::new(name).unwrap(),
            public_key: PublicKey::new(key.public_key_der()).unwrap(),
            nonce: &nonce,
            invite: Token::new(invite).unwrap(),
            signature: Signature::default(),
        };
        let signature = by.sign(&mut rng(), &register_signing_input(&request));
        request.signature = Signature::new(&signature).unwrap();
        registry.check_register(client(), &request, now_ms)
    }

    /// Plans, "commits" and applies `operations`; returns each result.
    fn commit(registry: &mut Registry, operations: &[Operation]) -> Vec<OpResult> {
        let manager = signer("_keymgr", CAROL_PEM);
        let batch = registry.plan_batch(operations, 1_000, &manager, &mut rng());
        registry.apply(batch)
    }

    #[test]
    fn a_free_name_binds_once_and_re_registering_the_same_key_is_idempotent() {
        let mut registry = registry(RegistrationMode::Open);
        let alice = signer("alice", ALICE_PEM);
        let op = register(&registry, "alice", &alice, &alice, b"", 1_000).unwrap();
        assert_eq!(commit(&mut registry, &[op]), vec![Ok(())]);
        let record = registry.record("alice").expect("bound");
        assert_eq!(record.public_key, alice.public_key_der());
        assert_eq!(record.serial, 1);
        let again = register(&registry, "alice", &alice, &alice, b"", 2_000).unwrap();
        assert_eq!(commit(&mut registry, &[again]), vec![Ok(())]);
        assert_eq!(
            registry.record("alice").unwrap().serial,
            1,
            "nothing rewritten"
        );
    }

    #[test]
    fn a_bound_name_cannot_be_squatted_and_a_forged_proof_is_refused() {
        let mut registry = registry(RegistrationMode::Open);
        let alice = signer("alice", ALICE_PEM);
        let bob = signer("bob", BOB_PEM);
        let op = register(&registry, "alice", &alice, &alice, b"", 1_000).unwrap();
        commit(&mut registry, &[op]);
        let squat = register(&registry, "alice", &bob, &bob, b"", 1_000).unwrap_err();
        assert_eq!(squat.code, KeyResultCode::NAME_TAKEN);
        // Bob's key, "proved" with Alice's signature: no proof of possession.
        let forged = register(&registry, "bob", &bob, &alice, b"", 1_000).unwrap_err();
        assert_eq!(forged.code, KeyResultCode::BAD_SIGNATURE);
    }

    #[test]
    fn two_registrations_of_one_name_in_one_batch_bind_only_the_first() {
        let mut registry = registry(RegistrationMode::Open);
        let alice = signer("alice", ALICE_PEM);
        let bob = signer("bob", BOB_PEM);
        let first = register(&registry, "x", &alice, &alice, b"", 1_000).unwrap();
        let second = register(&registry, "x", &bob, &bob, b"", 1_000).unwrap();
        let results = commit(&mut registry, &[first, second]);
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1].as_ref().unwrap_err().code,
            KeyResultCode::NAME_TAKEN
        );
        assert_eq!(
            registry.record("x").unwrap().public_key,
            alice.public_key_der()
        );
    }

    #[test]
    fn nonces_are_bound_to_the_client_and_expire() {
        let registry = registry(RegistrationMode::Open);
        let nonce = registry.nonce(client(), 1_000);
        assert!(registry.check_nonce(client(), &nonce, 1_000).is_ok());
        assert!(registry
            .check_nonce(client(), &nonce, 1_000 + NONCE_LIFETIME_MS)
            .is_ok());
        let expired = registry.check_nonce(client(), &nonce, 1_001 + NONCE_LIFETIME_MS);
        assert_eq!(expired.unwrap_err().code, KeyResultCode::BAD_NONCE);
        let other: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        assert!(registry.check_nonce(other, &nonce, 1_000).is_err());
        assert!(registry.check_nonce(client(), &[0; 32], 1_000).is_err());
    }

    #[test]
    fn rotation_needs_the_old_key_and_revocation_is_final() {
        let mut registry = registry(RegistrationMode::Open);
        let alice = signer("alice", ALICE_PEM);
        let bob = signer("bob", BOB_PEM);
        let op = register(&registry, "alice", &alice, &alice, b"", 1_000).unwrap();
        commit(&mut registry, &[op]);
        let rotate = |registry: &Registry, old: &RsaSigner, new: &RsaSigner| {
            let nonce = registry.nonce(client(), 1_000);
            let mut request = KeyRotate {
                name: Name::new("alice").unwrap(),
                new_public_key: PublicKey::new(new.public_key_der()).unwrap(),
                nonce: &nonce,
                old_signature: Signature::default(),
                new_signature: Signature::default(),
            };
            let input = rotate_signing_input(&request);
            let old_signature = old.sign(&mut rng(), &input);
            let new_signature = new.sign(&mut rng(), &input);
            request.old_signature = Signature::new(&old_signature).unwrap();
            request.new_signature = Signature::new(&new_signature).unwrap();
            registry.check_rotate(client(), &request, 1_000)
        };
        // Signed by the new key only: refused.
        assert_eq!(
            rotate(&registry, &bob, &bob).unwrap_err().code,
            KeyResultCode::BAD_SIGNATURE
        );
        let op = rotate(&registry, &alice, &bob).unwrap();
        assert_eq!(commit(&mut registry, &[op]), vec![Ok(())]);
        let record = registry.record("alice").unwrap();
        assert_eq!(record.public_key, bob.public_key_der());
        assert_eq!(record.serial, 2);
        commit(
            &mut registry,
            &[Operation::Revoke {
                name: "alice".into(),
            }],
        );
        let record = registry.record("alice").unwrap();
        assert_eq!((record.status, record.serial), (KeyStatus::REVOKED, 3));
        assert_eq!(
            rotate(&registry, &bob, &alice).unwrap_err().code,
            KeyResultCode::REVOKED
        );
    }

    #[test]
    fn invite_mode_needs_a_valid_unused_token() {
        let mut registry = registry(RegistrationMode::Invite);
        let alice = signer("alice", ALICE_PEM);
        let bob = signer("bob", BOB_PEM);
        let none = register(&registry, "alice", &alice, &alice, b"", 1_000).unwrap_err();
        assert_eq!(none.code, KeyResultCode::INVITE_REQUIRED);
        let forged = Registry::mint_invite(&[7; 32], [1; 16]);
        let bad = register(&registry, "alice", &alice, &alice, &forged, 1_000).unwrap_err();
        assert_eq!(bad.code, KeyResultCode::INVITE_REQUIRED);
        let token = Registry::mint_invite(&[2; 32], [1; 16]);
        let first = register(&registry, "alice", &alice, &alice, &token, 1_000).unwrap();
        let second = register(&registry, "bob", &bob, &bob, &token, 1_000).unwrap();
        let results = commit(&mut registry, &[first, second]);
        assert_eq!(results[0], Ok(()));
        assert!(results[1].is_err(), "one token, one registration");
        let later = register(&registry, "bob", &bob, &bob, &token, 2_000).unwrap_err();
        assert_eq!(later.code, KeyResultCode::INVITE_REQUIRED);
    }

    #[test]
    fn a_batch_is_signed_once_and_every_record_proves_into_its_root() {
        let mut registry = registry(RegistrationMode::Open);
        let keys = [signer("alice", ALICE_PEM), signer("bob", BOB_PEM)];
        let ops: Vec<Operation> = ["a", "b", "c"]
            .iter()
            .zip(keys.iter().cycle())
            .map(|(name, key)| Operation::Register {
                name: (*name).into(),
                public_key: key.public_key_der().to_vec(),
                invite: None,
            })
            .collect();
        commit(&mut registry, &ops);
        let mut signatures = BTreeSet::new();
        for name in ["a", "b", "c"] {
            let bytes = &registry.record(name).unwrap().bytes;
            let record = KeyRecord::decode(&mut Reader::new(bytes, 0), "r").unwrap();
            assert_eq!(record.batch.size, 3);
            let fields = record_fields(
                name,
                record.public_key.as_bytes(),
                record.serial,
                record.issued_at_ms,
                record.status,
            )
            .unwrap();
            let root = merkle::root_from_proof(
                &merkle::leaf_hash(&fields),
                u64::from(record.batch.index),
                u64::from(record.batch.size),
                record.batch.path.iter().copied(),
            )
            .expect("the proof folds into a root");
            let manager = signer("_keymgr", CAROL_PEM);
            let mut keyring = RsaKeyring::new();
            keyring
                .insert_der("_keymgr", manager.public_key_der())
                .unwrap();
            keyring
                .verify(
                    "_keymgr",
                    &merkle::batch_signing_input(3, &root),
                    record.signature.as_bytes(),
                )
                .expect("the root is signed by the manager");
            signatures.insert(record.signature.as_bytes().to_vec());
        }
        assert_eq!(signatures.len(), 1, "one signature for the whole batch");
    }
}
