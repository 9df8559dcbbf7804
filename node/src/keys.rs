//! The peer keys a node's sessions verify against: filled from key records the key
//! manager signed, shared between the driver (which fetches) and the session endpoint
//! (which verifies, synchronously, during handshakes).
//!
//! A miss is remembered: a handshake with a peer whose key the node has not fetched yet
//! waits (see `Connection`'s FINISH handling), and the driver fetches the names in
//! [`PeerKeyCache::take_wanted`] so that the retried handshake message verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use sockmsg_keymgr::verify::VerifiedRecord;
use sockmsg_wire::session::crypto::{AuthError, PeerKeys, RsaKeyring};

/// What learning a record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNews {
    /// First key seen for this name (remembered from now on).
    New { fingerprint: String },
    /// The same key as before.
    Same,
    /// A different key than the one this node saw before: someone rotated it, or
    /// someone else registered the name. Shown loudly, as ssh does.
    Changed { old: String, new: String },
    /// The key manager says this name's key is revoked.
    Revoked,
}

#[derive(Debug, Default)]
struct Inner {
    keyring: RsaKeyring,
    wanted: BTreeSet<String>,
    /// Fingerprints of records verified in this run, by name.
    fingerprints: BTreeMap<String, String>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PeerKeyCache(Arc<Mutex<Inner>>);

/// Names wanted at once at most (a flood of handshakes from unknown names costs at most
/// this many lookups in flight).
const MAX_WANTED: usize = 64;

impl PeerKeyCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in Inner can be left half-updated by a panic that matters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.lock().keyring.contains(name)
    }

    pub fn fingerprint(&self, name: &str) -> Option<String> {
        self.lock().fingerprints.get(name).cloned()
    }

    /// Notes that a session needs `name`'s key.
    pub fn want(&self, name: &str) {
        let mut inner = self.lock();
        if inner.wanted.len() < MAX_WANTED && !inner.keyring.contains(name) {
            inner.wanted.insert(name.to_owned());
        }
    }

    /// The names sessions needed since the last call.
    pub fn take_wanted(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().wanted)
            .into_iter()
            .collect()
    }

    /// Puts a verified record in force; `known` is what this node saw in earlier runs
    /// (updated here). Says what changed.
    pub fn learn(&self, record: &VerifiedRecord, known: &mut BTreeMap<String, String>) -> KeyNews {
        let mut inner = self.lock();
        let fingerprint = record.fingerprint();
        if record.apply_to(&mut inner.keyring).is_err() || !record.is_active() {
            inner.keyring.revoke(record.name.clone());
            return KeyNews::Revoked;
        }
        inner
            .fingerprints
            .insert(record.name.clone(), fingerprint.clone());
        inner.wanted.remove(&record.name);
        match known.insert(record.name.clone(), fingerprint.clone()) {
            None => KeyNews::New { fingerprint },
            Some(old) if old == fingerprint => KeyNews::Same,
            Some(old) => KeyNews::Changed {
                old,
                new: fingerprint,
            },
        }
    }
}

impl PeerKeys for PeerKeyCache {
    fn verify(&self, peer: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        let result = self.lock().keyring.verify(peer, message, signature);
        if result == Err(AuthError::UnknownPeer) {
            self.want(peer);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockmsg_wire::frame::KeyStatus;

    const ALICE: &str = include_str!("../../testdata/keys/alice.pub.pem");
    const MALLORY: &str = include_str!("../../testdata/keys/mallory.pub.pem");

    fn record(pem: &str, status: KeyStatus) -> VerifiedRecord {
        use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
        let key = rsa::PublicKey::from_public_key_pem(pem).unwrap();
        VerifiedRecord {
            name: "alice".into(),
            public_key_der: key.to_public_key_der().unwrap().as_bytes().to_vec(),
            serial: 1,
            issued_at_ms: 0,
            status,
        }
    }

    #[test]
    fn a_changed_key_is_reported_and_a_revoked_one_refused() {
        let cache = PeerKeyCache::default();
        let mut known = BTreeMap::new();
        // A handshake with an unknown peer asks for its key.
        assert_eq!(
            cache.verify("alice", b"m", b"s"),
            Err(AuthError::UnknownPeer)
        );
        assert_eq!(cache.take_wanted(), ["alice"]);
        assert!(cache.take_wanted().is_empty(), "asked once");

        let first = cache.learn(&record(ALICE, KeyStatus::ACTIVE), &mut known);
        assert!(matches!(first, KeyNews::New { .. }));
        assert!(cache.contains("alice"));
        assert_eq!(
            cache.learn(&record(ALICE, KeyStatus::ACTIVE), &mut known),
            KeyNews::Same
        );
        // Next run (same `known`): someone else's key under the name.
        let changed =
            PeerKeyCache::default().learn(&record(MALLORY, KeyStatus::ACTIVE), &mut known);
        assert!(matches!(changed, KeyNews::Changed { .. }), "{changed:?}");
        assert_eq!(
            cache.learn(&record(ALICE, KeyStatus::REVOKED), &mut known),
            KeyNews::Revoked
        );
        assert_eq!(cache.verify("alice", b"m", b"s"), Err(AuthError::Revoked));
    }
}
