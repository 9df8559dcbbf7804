//! The peer keys a node's sessions verify against: filled from key records the key
//! manager signed, shared between the driver (which fetches) and the session endpoint
//! (which verifies, synchronously, during handshakes).
//!
//! A miss is remembered: a handshake with a peer whose key the node has not fetched yet
//! waits (see `Connection`'s FINISH handling), and the driver fetches the names in
//! [`PeerKeyCache::take_wanted`] so that the retried handshake message verifies.
//!
//! Also here: [`open_keylog`], the file `SOCKMSG_KEYLOG` names (session secrets, for
//! `sockmsg-dump`), opened so that nobody else can read it or slip it a symlink.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
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

/// Why the key log was not opened.
#[derive(Debug, thiserror::Error)]
pub enum KeylogError {
    #[error("cannot open {}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} is a symbolic link: refusing to write session secrets through it (name the \
         file itself)",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} belongs to another user (uid {owner}, we are {me}): refusing to write session \
         secrets into it",
        path.display()
    )]
    NotOurs { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{} can be read by other users (mode {mode:03o}): run `chmod 600 {}` or name a \
         new file",
        path.display(),
        path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
}

/// Opens the key log at `path` for appending (SPEC.md §5.4): created mode 0600; never
/// through a symbolic link (`O_NOFOLLOW`: the last component is not followed); an
/// existing file must be a regular file of ours that no other user can read. The checks
/// are made on the opened file (`fstat`), so the file cannot be swapped in between.
pub fn open_keylog(path: &Path) -> Result<File, KeylogError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path).map_err(|error| {
        // O_NOFOLLOW on a symbolic link fails with ELOOP.
        #[cfg(unix)]
        if error.raw_os_error() == Some(libc::ELOOP)
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return KeylogError::Symlink {
                path: path.to_owned(),
            };
        }
        KeylogError::Open {
            path: path.to_owned(),
            error,
        }
    })?;
    let metadata = file.metadata().map_err(|error| KeylogError::Open {
        path: path.to_owned(),
        error,
    })?;
    if !metadata.is_file() {
        return Err(KeylogError::NotAFile {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if metadata.uid() != me {
            return Err(KeylogError::NotOurs {
                path: path.to_owned(),
                owner: metadata.uid(),
                me,
            });
        }
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeylogError::Readable {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(file)
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

#[cfg(all(test, unix))]
mod keylog_tests {
    use super::*;
    use crate::testdir::TempDir;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_new_key_log_is_mode_0600_and_appended_to() {
        let dir = TempDir::new("new");
        let path = dir.0.join("keys.log");
        open_keylog(&path).unwrap().write_all(b"one\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        open_keylog(&path).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn a_symlink_is_refused_and_its_target_left_alone() {
        let dir = TempDir::new("symlink");
        let target = dir.0.join("victim");
        std::fs::write(&target, "precious\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.0.join("keys.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = open_keylog(&link).unwrap_err();
        assert!(matches!(error, KeylogError::Symlink { .. }), "{error:?}");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        // A dangling link (the usual trick: make us create the file elsewhere) too.
        let dangling = dir.0.join("dangling.log");
        std::os::unix::fs::symlink(dir.0.join("created-by-us"), &dangling).unwrap();
        assert!(matches!(
            open_keylog(&dangling),
            Err(KeylogError::Symlink { .. })
        ));
        assert!(!dir.0.join("created-by-us").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn a_file_others_can_read_or_not_a_file_is_refused() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("keys.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = open_keylog(&path).unwrap_err();
        assert!(
            matches!(error, KeylogError::Readable { mode: 0o644, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open_keylog(&path).is_ok());
        assert!(matches!(
            open_keylog(&dir.0),
            Err(KeylogError::Open { .. } | KeylogError::NotAFile { .. })
        ));
    }

    /// A file owned by another user: only testable as root (chown). Skipped otherwise.
    #[test]
    fn a_file_of_another_user_is_refused() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot make a file of another user; skipped");
            return;
        }
        let dir = TempDir::new("owner");
        let path = dir.0.join("keys.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let error = open_keylog(&path).unwrap_err();
        assert!(
            matches!(error, KeylogError::NotOurs { owner: 65534, .. }),
            "{error:?}"
        );
    }
}
