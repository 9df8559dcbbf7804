//! Checking a key record the key manager signed (SPEC.md §7.26, §9). Sans-IO.
//!
//! A KEY_RECORD is trusted because of the manager's signature over the root of the Merkle
//! batch it was committed in, not because of where it came from: a node may receive one
//! over UDP from anyone. [`verify_record`] recomputes the record's leaf hash from its
//! fields, folds the inclusion proof into a root, and checks the manager's RSA-PSS
//! signature over `batch.size ‖ root`.
//!
//! The manager's own key is published as the record [`MANAGER_NAME`], signed by itself.
//! A self-signature proves nothing about *who* holds the key, so a client must pin its
//! fingerprint (config.yml) or trust it on first use and remember it (see
//! [`crate::client`]); [`ManagerKey::from_self_record`] checks both the self-signature and
//! an expected fingerprint.
//!
//! A `REVOKED` record verifies like any other (it is genuine: the manager really said the
//! key is revoked). Callers must look at [`VerifiedRecord::status`], or use
//! [`VerifiedRecord::is_active`], before trusting the key.

use sockmsg_wire::frame::{KeyRecord, KeyStatus};
use sockmsg_wire::session::crypto::{PeerKeys, RsaKeyring};
use sockmsg_wire::{Decode, DecodeError, Reader};

use crate::merkle;
use crate::registry::{fingerprint, record_fields, MANAGER_NAME};

/// Why a key record (or the manager's key) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes are not a well-formed KEY_RECORD body.
    #[error("malformed key record: {0}")]
    Malformed(String),
    /// The record is genuine but for another name than the one asked for.
    #[error("key record is for {found:?}, expected {expected:?}")]
    WrongName { expected: String, found: String },
    /// The inclusion proof does not fit the batch size and index it claims.
    #[error(
        "key record's batch proof is inconsistent (index {index} of {size}, {path_len} hashes)"
    )]
    BadProof {
        index: u32,
        size: u32,
        path_len: usize,
    },
    /// The manager's signature over the batch root does not verify: the record was
    /// altered, or was signed by another key manager.
    #[error("key record's batch signature does not verify under the key manager's key")]
    BadSignature,
    /// The manager's key is not the one expected (pinned, or remembered).
    #[error(
        "key manager's key has fingerprint {found}, but {expected} was expected: \
         this is not the key manager you trust"
    )]
    FingerprintMismatch { expected: String, found: String },
    /// The manager's key itself cannot be used (not an RSA key of an accepted size).
    #[error("key manager's public key is unusable: {0}")]
    BadManagerKey(String),
    /// The manager's own record says its key is revoked: nothing it signs can be trusted.
    #[error("the key manager's own key record ({name}) is revoked")]
    Revoked { name: String },
}

/// A key record whose batch signature verified under the manager's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    pub name: String,
    /// DER SubjectPublicKeyInfo of the name's RSA key.
    pub public_key_der: Vec<u8>,
    pub serial: u64,
    pub issued_at_ms: u64,
    pub status: KeyStatus,
}

impl VerifiedRecord {
    /// Whether the key is in force. `false` for `REVOKED`, and for any status code this
    /// version does not know.
    pub fn is_active(&self) -> bool {
        self.status == KeyStatus::ACTIVE
    }

    /// The key's fingerprint (SHA-256 of its DER, hex), as `sockmsg-keymgr list` shows.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key_der)
    }

    /// Puts what this record says into `keyring`: trusts the key if it is active, marks
    /// the name revoked otherwise (so signatures by it fail with `AuthError::Revoked`).
    pub fn apply_to(
        &self,
        keyring: &mut RsaKeyring,
    ) -> Result<(), sockmsg_wire::session::crypto::KeyError> {
        if self.is_active() {
            keyring.insert_der(self.name.clone(), &self.public_key_der)
        } else {
            keyring.revoke(self.name.clone());
            Ok(())
        }
    }
}

/// The key manager's public key, ready to check batch signatures.
#[derive(Debug, Clone)]
pub struct ManagerKey {
    public_key_der: Vec<u8>,
    fingerprint: String,
    keyring: RsaKeyring,
}

impl ManagerKey {
    /// Wraps the manager's public key (DER SubjectPublicKeyInfo). Checks only that it is
    /// a usable RSA key: whether it is the *right* key is the caller's business (compare
    /// [`ManagerKey::fingerprint`] with a pinned one).
    pub fn from_der(public_key_der: &[u8]) -> Result<ManagerKey, VerifyError> {
        let mut keyring = RsaKeyring::new();
        keyring
            .insert_der(MANAGER_NAME, public_key_der)
            .map_err(|e| VerifyError::BadManagerKey(e.to_string()))?;
        Ok(ManagerKey {
            public_key_der: public_key_der.to_vec(),
            fingerprint: fingerprint(public_key_der),
            keyring,
        })
    }

    /// Takes the manager's key from its own record (the KEY_RECORD body of
    /// [`MANAGER_NAME`]): checks that the record is self-signed by the key it carries,
    /// that it is not revoked, and, if `expected_fingerprint` is given, that the key's
    /// fingerprint is that one (compared as hex, ignoring case, `:` separators and a
    /// `sha256:` prefix).
    pub fn from_self_record(
        body: &[u8],
        expected_fingerprint: Option<&str>,
    ) -> Result<ManagerKey, VerifyError> {
        let record = decode_record(body)?;
        ManagerKey::from_self_key_record(&record, expected_fingerprint)
    }

    /// [`ManagerKey::from_self_record`] on an already decoded record.
    pub fn from_self_key_record(
        record: &KeyRecord<'_>,
        expected_fingerprint: Option<&str>,
    ) -> Result<ManagerKey, VerifyError> {
        check_name(record, MANAGER_NAME)?;
        let der = record.public_key.as_bytes();
        if let Some(expected) = expected_fingerprint {
            let found = fingerprint(der);
            if normalize_fingerprint(expected) != found {
                return Err(VerifyError::FingerprintMismatch {
                    expected: expected.to_owned(),
                    found,
                });
            }
        }
        let key = ManagerKey::from_der(der)?;
        let verified = verify_key_record(record, MANAGER_NAME, &key)?;
        if !verified.is_active() {
            return Err(VerifyError::Revoked {
                name: MANAGER_NAME.to_owned(),
            });
        }
        Ok(key)
    }

    /// SHA-256 of the key's DER, lowercase hex (as `sockmsg-keymgr init` prints it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// Whether `fingerprint` (hex, any case, optional `:` separators or `sha256:`
    /// prefix) names this key.
    pub fn matches_fingerprint(&self, fingerprint: &str) -> bool {
        normalize_fingerprint(fingerprint) == self.fingerprint
    }
}

/// Verifies a KEY_RECORD body (the frame's bytes after its `0x31` type byte, nothing
/// after it) for `expected_name` against the manager's key.
pub fn verify_record(
    body: &[u8],
    expected_name: &str,
    manager: &ManagerKey,
) -> Result<VerifiedRecord, VerifyError> {
    let record = decode_record(body)?;
    verify_key_record(&record, expected_name, manager)
}

/// [`verify_record`] on an already decoded record (as a client gets it from
/// `Frame::KeyRecord`).
pub fn verify_key_record(
    record: &KeyRecord<'_>,
    expected_name: &str,
    manager: &ManagerKey,
) -> Result<VerifiedRecord, VerifyError> {
    check_name(record, expected_name)?;
    let name = record.name.as_str();
    let public_key = record.public_key.as_bytes();
    // Decoded fields always re-encode (the decoder checked the same bounds).
    let fields = record_fields(
        name,
        public_key,
        record.serial,
        record.issued_at_ms,
        record.status,
    )
    .ok_or_else(|| VerifyError::Malformed("record fields do not re-encode".into()))?;
    let leaf = merkle::leaf_hash(&fields);
    let batch = &record.batch;
    let root = merkle::root_from_proof(
        &leaf,
        u64::from(batch.index),
        u64::from(batch.size),
        batch.path.iter().copied(),
    )
    .ok_or(VerifyError::BadProof {
        index: batch.index,
        size: batch.size,
        path_len: batch.path.len(),
    })?;
    // The same `size` the proof was folded with: the path alone does not fix it.
    let signed = merkle::batch_signing_input(batch.size, &root);
    manager
        .keyring
        .verify(MANAGER_NAME, &signed, record.signature.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(VerifiedRecord {
        name: name.to_owned(),
        public_key_der: public_key.to_vec(),
        serial: record.serial,
        issued_at_ms: record.issued_at_ms,
        status: record.status,
    })
}

/// Decodes a whole KEY_RECORD body; trailing bytes are an error.
fn decode_record(body: &[u8]) -> Result<KeyRecord<'_>, VerifyError> {
    let mut reader = Reader::new(body, 0);
    let record = KeyRecord::decode(&mut reader, "KeyRecord")
        .map_err(|e: DecodeError| VerifyError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(VerifyError::Malformed(format!(
            "{} trailing bytes after the record",
            reader.remaining()
        )));
    }
    Ok(record)
}

fn check_name(record: &KeyRecord<'_>, expected: &str) -> Result<(), VerifyError> {
    let found = record.name.as_str();
    if found == expected {
        Ok(())
    } else {
        Err(VerifyError::WrongName {
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

/// Lowercase hex without separators, so that `AB:CD…`, `sha256:abcd…` and `abcd…` compare
/// equal to [`fingerprint`]'s output.
pub(crate) fn normalize_fingerprint(text: &str) -> String {
    let text = text.trim();
    let text = match text.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
        _ => text,
    };
    text.chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use sockmsg_wire::frame::BatchProof;
    use sockmsg_wire::session::crypto::RsaSigner;
    use sockmsg_wire::{Encode, List, Name, PublicKey, Signature};

    use crate::registry::{Operation, RegistrationMode, Registry};

    pub(crate) const CAROL_PEM: &str = include_str!("../../testdata/keys/carol.pem");
    pub(crate) const DAVE_PEM: &str = include_str!("../../testdata/keys/dave.pem");
    pub(crate) const ALICE_PEM: &str = include_str!("../../testdata/keys/alice.pem");
    pub(crate) const BOB_PEM: &str = include_str!("../../testdata/keys/bob.pem");
    pub(crate) const MALLORY_PEM: &str = include_str!("../../testdata/keys/mallory.pem");

    pub(crate) const NOW_MS: u64 = 1_750_000_000_000;

    pub(crate) fn signer(name: &str, pem: &str) -> RsaSigner {
        RsaSigner::from_pkcs8_pem(name, pem).expect("test key loads")
    }

    pub(crate) fn key_der(pem: &str) -> Vec<u8> {
        signer("k", pem).public_key_der().to_vec()
    }

    pub(crate) fn empty_registry() -> Registry {
        Registry::new(
            Vec::new(),
            Vec::<Vec<u8>>::new(),
            RegistrationMode::Open,
            [7; 32],
            [9; 32],
        )
    }

    fn register(name: &str, pem: &str) -> Operation {
        Operation::Register {
            name: name.to_owned(),
            public_key: key_der(pem),
            invite: None,
        }
    }

    /// Plans and applies one batch; returns the (name, body) of every record it wrote.
    pub(crate) fn commit(
        registry: &mut Registry,
        operations: &[Operation],
        manager: &RsaSigner,
        seed: u64,
    ) -> Vec<(String, Vec<u8>)> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let batch = registry.plan_batch(operations, NOW_MS, manager, &mut rng);
        let written: Vec<(String, Vec<u8>)> = batch
            .writes
            .iter()
            .filter_map(|write| match write {
                crate::store::Write::Record { name, bytes } => Some((name.clone(), bytes.clone())),
                _ => None,
            })
            .collect();
        for result in registry.apply(batch) {
            result.expect("operation admitted");
        }
        written
    }

    /// A registry holding `_keymgr` (self-signed by `manager`), alice and bob, committed
    /// as one batch.
    pub(crate) fn populated_registry(manager: &RsaSigner) -> Registry {
        let mut registry = empty_registry();
        let ops = [
            Operation::PublishManagerKey {
                public_key: manager.public_key_der().to_vec(),
            },
            register("alice", ALICE_PEM),
            register("bob", BOB_PEM),
        ];
        commit(&mut registry, &ops, manager, 1);
        registry
    }

    fn manager_key(signer: &RsaSigner) -> ManagerKey {
        ManagerKey::from_der(signer.public_key_der()).unwrap()
    }

    fn decoded(body: &[u8]) -> KeyRecord<'_> {
        KeyRecord::decode(&mut Reader::new(body, 0), "KeyRecord").unwrap()
    }

    /// `fields_of`'s name..status with `proof_of`'s batch proof and signature.
    fn splice(fields_of: &[u8], proof_of: &[u8], signature_of: &[u8]) -> Vec<u8> {
        let (a, b, c) = (decoded(fields_of), decoded(proof_of), decoded(signature_of));
        let spliced = KeyRecord {
            batch: b.batch,
            signature: c.signature,
            ..a
        };
        let mut bytes = Vec::new();
        spliced.encode(&mut bytes);
        bytes
    }

    #[test]
    fn every_record_of_batches_of_every_shape_verifies() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        for size in 1..=9usize {
            let mut registry = empty_registry();
            let mut ops = vec![Operation::PublishManagerKey {
                public_key: carol.public_key_der().to_vec(),
            }];
            for i in 1..size {
                let pem = if i % 2 == 0 { ALICE_PEM } else { BOB_PEM };
                ops.push(register(&format!("node-{i}"), pem));
            }
            let written = commit(&mut registry, &ops, &carol, size as u64);
            assert_eq!(written.len(), size);
            for (index, (name, body)) in written.iter().enumerate() {
                let record = decoded(body);
                assert_eq!(record.batch.size as usize, size);
                assert_eq!(record.batch.index as usize, index);
                let verified = verify_record(body, name, &key)
                    .unwrap_or_else(|e| panic!("{name} of batch {size}: {e}"));
                assert_eq!(&verified.name, name);
                assert_eq!(verified.serial, 1);
                assert_eq!(verified.issued_at_ms, NOW_MS);
                assert!(verified.is_active());
                assert_eq!(verified.public_key_der, record.public_key.as_bytes());
            }
        }
    }

    #[test]
    fn flipping_any_byte_of_a_record_fails() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        let mut registry = empty_registry();
        let written = commit(
            &mut registry,
            &[
                register("alice", ALICE_PEM),
                register("bob", BOB_PEM),
                register("mallory", MALLORY_PEM),
            ],
            &carol,
            3,
        );
        // The last record of a 3-batch has a 1-hash path, the first a 2-hash path.
        for (name, body) in [&written[0], &written[2]] {
            let original = verify_record(body, name, &key).unwrap();
            for position in 0..body.len() {
                for mask in [0x01u8, 0x80, 0xff] {
                    let mut bad = body.clone();
                    bad[position] ^= mask;
                    match verify_record(&bad, name, &key) {
                        Err(_) => {}
                        Ok(v) => panic!(
                            "byte {position} ^ {mask:#04x} of {name}'s record verified: \
                             {v:?} (original {original:?})"
                        ),
                    }
                }
            }
            // Truncated or extended bodies fail too.
            for len in 0..body.len() {
                assert!(verify_record(&body[..len], name, &key).is_err());
            }
            let mut longer = body.clone();
            longer.push(0);
            assert!(matches!(
                verify_record(&longer, name, &key),
                Err(VerifyError::Malformed(_))
            ));
        }
    }

    #[test]
    fn a_proof_or_signature_from_another_batch_fails() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        let mut registry = empty_registry();
        let first = commit(
            &mut registry,
            &[register("alice", ALICE_PEM), register("bob", BOB_PEM)],
            &carol,
            10,
        );
        let second = commit(
            &mut registry,
            &[register("dave", DAVE_PEM), register("mallory", MALLORY_PEM)],
            &carol,
            11,
        );
        let alice = &first[0].1;
        let dave = &second[0].1;
        // Same shape (index 0 of 2), so only the hashes and signature differ.
        assert_eq!(
            verify_record(&splice(alice, dave, dave), "alice", &key),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_record(&splice(alice, alice, dave), "alice", &key),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_record(&splice(alice, dave, alice), "alice", &key),
            Err(VerifyError::BadSignature)
        );
        // Bob's proof (index 1) does not fold alice's leaf to the signed root.
        assert_eq!(
            verify_record(&splice(alice, &first[1].1, alice), "alice", &key),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn an_inconsistent_proof_shape_is_bad_proof() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        let mut registry = empty_registry();
        let written = commit(&mut registry, &[register("alice", ALICE_PEM)], &carol, 4);
        let record = decoded(&written[0].1);
        let hash = [0x33u8; 32];
        let path = [&hash];
        for batch in [
            BatchProof {
                size: 1,
                index: 1,
                path: record.batch.path,
            },
            BatchProof {
                size: 0,
                index: 0,
                path: record.batch.path,
            },
            BatchProof {
                size: 1,
                index: 0,
                path: List::new(&path).unwrap(),
            },
            BatchProof {
                size: 2,
                index: 0,
                path: record.batch.path,
            },
        ] {
            let mut bytes = Vec::new();
            KeyRecord { batch, ..record }.encode(&mut bytes);
            assert!(
                matches!(
                    verify_record(&bytes, "alice", &key),
                    Err(VerifyError::BadProof { .. })
                ),
                "{batch:?}"
            );
        }
    }

    #[test]
    fn a_record_signed_by_another_manager_fails() {
        let carol = signer("carol", CAROL_PEM);
        let dave = signer("dave", DAVE_PEM);
        let mut registry = empty_registry();
        let written = commit(&mut registry, &[register("alice", ALICE_PEM)], &dave, 5);
        assert!(verify_record(&written[0].1, "alice", &manager_key(&dave)).is_ok());
        assert_eq!(
            verify_record(&written[0].1, "alice", &manager_key(&carol)),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn a_wrong_expected_name_fails() {
        let carol = signer("carol", CAROL_PEM);
        let registry = populated_registry(&carol);
        let body = &registry.record("alice").unwrap().bytes;
        assert_eq!(
            verify_record(body, "bob", &manager_key(&carol)),
            Err(VerifyError::WrongName {
                expected: "bob".into(),
                found: "alice".into()
            })
        );
    }

    #[test]
    fn a_revoked_record_verifies_but_is_not_active() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        let mut registry = populated_registry(&carol);
        let written = commit(
            &mut registry,
            &[Operation::Revoke {
                name: "alice".into(),
            }],
            &carol,
            6,
        );
        let verified = verify_record(&written[0].1, "alice", &key).unwrap();
        assert_eq!(verified.status, KeyStatus::REVOKED);
        assert_eq!(verified.serial, 2);
        assert!(!verified.is_active());
        let mut keyring = RsaKeyring::new();
        verified.apply_to(&mut keyring).unwrap();
        assert!(!keyring.contains("alice"));
    }

    #[test]
    fn the_manager_key_comes_from_its_self_signed_record() {
        let carol = signer("carol", CAROL_PEM);
        let registry = populated_registry(&carol);
        let body = &registry.record(MANAGER_NAME).unwrap().bytes;
        let carol_fp = fingerprint(carol.public_key_der());

        let key = ManagerKey::from_self_record(body, None).unwrap();
        assert_eq!(key.fingerprint(), carol_fp);
        assert_eq!(key.public_key_der(), carol.public_key_der());
        ManagerKey::from_self_record(body, Some(&carol_fp)).unwrap();
        // Fingerprints as people paste them.
        ManagerKey::from_self_record(body, Some(&carol_fp.to_uppercase())).unwrap();
        let colons: Vec<String> = carol_fp
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let pasted = format!("SHA256:{}", colons.join(":"));
        ManagerKey::from_self_record(body, Some(&pasted)).unwrap();
        assert!(key.matches_fingerprint(&pasted));

        // And the key verifies the other records.
        let alice = &registry.record("alice").unwrap().bytes;
        assert!(verify_record(alice, "alice", &key).unwrap().is_active());
    }

    #[test]
    fn a_fingerprint_mismatch_reports_both_values() {
        let carol = signer("carol", CAROL_PEM);
        let dave = signer("dave", DAVE_PEM);
        let registry = populated_registry(&carol);
        let body = &registry.record(MANAGER_NAME).unwrap().bytes;
        let dave_fp = fingerprint(dave.public_key_der());
        let err = ManagerKey::from_self_record(body, Some(&dave_fp)).unwrap_err();
        assert_eq!(
            err,
            VerifyError::FingerprintMismatch {
                expected: dave_fp.clone(),
                found: fingerprint(carol.public_key_der()),
            }
        );
        let message = err.to_string();
        assert!(message.contains(&dave_fp));
        assert!(message.contains(&fingerprint(carol.public_key_der())));
    }

    #[test]
    fn a_manager_record_not_signed_by_its_own_key_fails() {
        let carol = signer("carol", CAROL_PEM);
        let dave = signer("dave", DAVE_PEM);
        // A `_keymgr` record carrying carol's key, signed by dave.
        let mut registry = empty_registry();
        let written = commit(
            &mut registry,
            &[Operation::PublishManagerKey {
                public_key: carol.public_key_der().to_vec(),
            }],
            &dave,
            7,
        );
        assert_eq!(
            ManagerKey::from_self_record(&written[0].1, None).unwrap_err(),
            VerifyError::BadSignature
        );
        // A record of another name is not the manager's.
        let registry = populated_registry(&carol);
        let alice = &registry.record("alice").unwrap().bytes;
        assert!(matches!(
            ManagerKey::from_self_record(alice, None),
            Err(VerifyError::WrongName { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let carol = signer("carol", CAROL_PEM);
        let key = manager_key(&carol);
        for body in [&b""[..], b"\x05alice", &[0xff; 40]] {
            assert!(matches!(
                verify_record(body, "alice", &key),
                Err(VerifyError::Malformed(_))
            ));
        }
        // A hand-built record with an unsigned, empty signature.
        let der = key_der(ALICE_PEM);
        let mut bytes = Vec::new();
        KeyRecord {
            name: Name::new("alice").unwrap(),
            public_key: PublicKey::new(&der).unwrap(),
            serial: 1,
            issued_at_ms: 0,
            status: KeyStatus::ACTIVE,
            batch: BatchProof {
                size: 1,
                index: 0,
                path: List::new(&[]).unwrap(),
            },
            signature: Signature::new(&[]).unwrap(),
        }
        .encode(&mut bytes);
        assert_eq!(
            verify_record(&bytes, "alice", &key),
            Err(VerifyError::BadSignature)
        );
    }
}
