//! The key manager's data directory: its signing key, its invite secret and its database.
//!
//! | file | contents | mode |
//! |---|---|---|
//! | `manager.pem` | the manager's RSA private key, PKCS#8 PEM | `0600` |
//! | `invite.key` | 32 random bytes: the MAC key behind invite tokens | `0600` |
//! | `keys.redb` | the records and used invites ([`crate::store`]) | |
//!
//! The directory itself is created `0700`. Secrets are written to a temporary file created
//! with mode `0600` (before a byte of the secret is written), synced, and moved into place,
//! so a crash leaves either the whole file or none of it. `manager.pem` is written last and
//! never overwritten: its presence means `init` completed.
//!
//! [`init`] also publishes the manager's own key as the record [`MANAGER_NAME`] (signed by
//! itself), so a client holding only the pinned fingerprint can fetch and check it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use sockmsg_wire::frame::{KeyRecord, KeyStatus};
use sockmsg_wire::session::crypto::RsaSigner;
use sockmsg_wire::{Decode as _, Reader};

use crate::registry::{
    self, Operation, RegistrationMode, Registry, StoredRecord, INVITE_LEN, MANAGER_NAME,
};
use crate::store::{Store, StoreError};

/// The manager's private key.
pub const MANAGER_KEY_FILE: &str = "manager.pem";
/// The invite MAC key.
pub const INVITE_KEY_FILE: &str = "invite.key";
/// The database.
pub const STORE_FILE: &str = "keys.redb";
/// Default modulus of the manager key (config.yml `keymgr.key_bits`).
pub const DEFAULT_KEY_BITS: usize = 3072;
/// Accepted manager key sizes (as `sockmsg-config` and the wire crate accept).
pub const KEY_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// The user's default data directory for the key manager:
/// `$XDG_DATA_HOME/sockmsg/keymgr`, else `~/.local/share/sockmsg/keymgr`.
pub fn default_data_dir() -> Option<PathBuf> {
    sockmsg_config::default_data_dir("keymgr")
}

/// A fresh RNG seeded from the operating system's entropy.
pub fn os_rng() -> Result<ChaCha20Rng> {
    Ok(ChaCha20Rng::from_seed(random_bytes()?))
}

/// 32 bytes from the operating system's entropy.
pub fn random_bytes() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow!("cannot read random bytes from the operating system: {e}"))?;
    Ok(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Generates an RSA private key of `bits` bits with a CSPRNG seeded from the OS.
pub fn generate_key(bits: usize) -> Result<rsa::PrivateKey> {
    if !KEY_BITS.contains(&bits) {
        bail!(
            "a manager key of {bits} bits is not supported: use {}..={} bits",
            KEY_BITS.start(),
            KEY_BITS.end()
        );
    }
    let mut rng = os_rng()?;
    rsa::PrivateKey::new(&mut rng, bits).context("RSA key generation failed")
}

/// Makes a new data directory in `dir` with a freshly generated `bits`-bit manager key.
/// Returns the manager key's fingerprint (SHA-256 of its DER public key, hex).
///
/// Refuses if `dir` already holds a manager key.
pub fn init(dir: &Path, bits: usize) -> Result<String> {
    refuse_existing_key(dir)?;
    let key = generate_key(bits)?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("cannot encode the new key as PKCS#8 PEM: {e}"))?;
    init_with_key(dir, &pem)
}

/// Like [`init`], with an existing manager key (PKCS#8 PEM) instead of a new one: for
/// tests (key generation takes seconds) and for operators who make keys elsewhere.
pub fn init_with_key(dir: &Path, pem: &str) -> Result<String> {
    refuse_existing_key(dir)?;
    let manager = RsaSigner::from_pkcs8_pem(MANAGER_NAME, pem)
        .map_err(|e| anyhow!("unusable manager key: {e}"))?;
    create_private_dir(dir)?;
    let mut rng = os_rng()?;

    // invite.key: a rerun after an interrupted init may replace it, since no token can
    // have been minted without manager.pem.
    let invite_secret = random_bytes()?;
    write_secret(&dir.join(INVITE_KEY_FILE), &invite_secret, Replace::Yes)?;

    // keys.redb, with the manager's own record.
    {
        let store = open_store(dir)?;
        let foreign = store
            .load_records()
            .with_context(|| format!("cannot read {}", dir.join(STORE_FILE).display()))?
            .into_iter()
            .filter(|(name, _)| name != MANAGER_NAME)
            .count();
        if foreign > 0 {
            bail!(
                "{} already holds {foreign} key record(s), signed by another manager key; \
                 move it away (or restore that key as {}) before running init",
                dir.join(STORE_FILE).display(),
                dir.join(MANAGER_KEY_FILE).display()
            );
        }
        let registry = Registry::new(
            [],
            [],
            RegistrationMode::Open,
            random_bytes()?,
            invite_secret,
        );
        let operation = Operation::PublishManagerKey {
            public_key: manager.public_key_der().to_vec(),
        };
        let planned = registry.plan_batch(&[operation], now_ms(), &manager, &mut rng);
        if let Some(Err(refusal)) = planned.results.first() {
            bail!("cannot publish the manager key: {}", refusal.reason);
        }
        store
            .commit(&planned.writes)
            .context("cannot write the manager's record")?;
    }

    // manager.pem last: its presence means the directory is complete.
    write_secret(&dir.join(MANAGER_KEY_FILE), pem.as_bytes(), Replace::No)?;
    Ok(registry::fingerprint(manager.public_key_der()))
}

fn refuse_existing_key(dir: &Path) -> Result<()> {
    let path = dir.join(MANAGER_KEY_FILE);
    if fs::symlink_metadata(&path).is_ok() {
        bail!(
            "{} already exists: refusing to replace the manager key (every node pins its \
             fingerprint). Remove it yourself if you really mean to start over.",
            path.display()
        );
    }
    Ok(())
}

/// Creates `dir` (and its parents), mode 0700. Shared with the node's data directory.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// Whether [`write_secret`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    Yes,
    No,
}

/// Writes `contents` to `path` atomically, mode 0600: a temporary file in the same
/// directory (created with its final mode, then written and synced), then moved into place,
/// then the directory synced. With `Replace::No` an existing `path` is never replaced.
pub fn write_secret(path: &Path, contents: &[u8], replace: Replace) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover of an interrupted run of ours: never anyone's data.
    let _ = fs::remove_file(&tmp);
    let result = (|| -> Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(file);
        match replace {
            Replace::Yes => fs::rename(&tmp, path)
                .with_context(|| format!("cannot move {} into place", path.display()))?,
            Replace::No => match fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    bail!("{} appeared meanwhile: not replacing it", path.display())
                }
                // A file system without hard links: fall back to rename after a check.
                Err(_) if fs::symlink_metadata(path).is_err() => fs::rename(&tmp, path)
                    .with_context(|| format!("cannot move {} into place", path.display()))?,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            },
        }
        sync_dir(dir)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))?;
    Ok(())
}

/// Reads a secret file, refusing one that others may read (as ssh does).
pub fn read_secret(path: &Path, dir: &Path) -> Result<Vec<u8>> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "{} not found: run `sockmsg-keymgr init --data-dir {}` first",
            path.display(),
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is accessible by other users (mode {mode:03o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn check_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "the data directory {} does not exist: run `sockmsg-keymgr init --data-dir {}` first",
            dir.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Loads the manager key from `dir`.
pub fn load_manager_key(dir: &Path) -> Result<RsaSigner> {
    check_dir(dir)?;
    let path = dir.join(MANAGER_KEY_FILE);
    let pem = read_secret(&path, dir)?;
    let pem =
        std::str::from_utf8(&pem).map_err(|_| anyhow!("{} is not a PEM file", path.display()))?;
    RsaSigner::from_pkcs8_pem(MANAGER_NAME, pem)
        .map_err(|e| anyhow!("{}: unusable manager key: {e}", path.display()))
}

/// Loads the invite secret from `dir` (needs no database, so it works while the server
/// runs).
pub fn load_invite_secret(dir: &Path) -> Result<[u8; 32]> {
    check_dir(dir)?;
    // An invite is only meaningful for a complete directory.
    load_manager_key(dir)?;
    let path = dir.join(INVITE_KEY_FILE);
    let bytes = read_secret(&path, dir)?;
    bytes.as_slice().try_into().map_err(|_| {
        anyhow!(
            "{} holds {} bytes, expected 32: it is damaged",
            path.display(),
            bytes.len()
        )
    })
}

/// Mints a one-time invite token with the secret of `dir` (`sockmsg-keymgr invite`).
pub fn mint_invite(dir: &Path) -> Result<[u8; INVITE_LEN]> {
    let secret = load_invite_secret(dir)?;
    let bytes = random_bytes()?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[..16]);
    Ok(Registry::mint_invite(&secret, id))
}

fn open_store(dir: &Path) -> Result<Store> {
    Store::open(&dir.join(STORE_FILE)).map_err(|e| match e {
        StoreError::Locked { .. } => {
            anyhow!("{e}. Stop it first: this command needs the key database to itself.")
        }
        e => anyhow!(e),
    })
}

/// An opened data directory: the manager key, the invite secret and the database.
pub struct DataDir {
    dir: PathBuf,
    manager: Arc<RsaSigner>,
    invite_secret: [u8; 32],
    store: Store,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Opens the data directory `dir` made by [`init`]: loads the keys and opens the database
/// (which locks it: one process at a time).
pub fn open(dir: &Path) -> Result<DataDir> {
    let manager = load_manager_key(dir)?;
    let invite_secret = load_invite_secret(dir)?;
    let store = open_store(dir)?;
    Ok(DataDir {
        dir: dir.to_path_buf(),
        manager: Arc::new(manager),
        invite_secret,
        store,
    })
}

/// One line of `sockmsg-keymgr list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
    pub serial: u64,
    pub status: KeyStatus,
    pub issued_at_ms: u64,
    /// Fingerprint of the bound key (SHA-256 of its DER, hex).
    pub fingerprint: String,
}

impl DataDir {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manager(&self) -> &Arc<RsaSigner> {
        &self.manager
    }

    /// The manager key's fingerprint, as nodes pin it.
    pub fn fingerprint(&self) -> String {
        registry::fingerprint(self.manager.public_key_der())
    }

    pub fn invite_secret(&self) -> &[u8; 32] {
        &self.invite_secret
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The parts the server keeps: manager key, invite secret, database.
    pub fn into_parts(self) -> (Arc<RsaSigner>, [u8; 32], Store) {
        (self.manager, self.invite_secret, self.store)
    }

    /// The registry as stored, with a fresh nonce secret.
    pub fn registry(&self, mode: RegistrationMode) -> Result<Registry> {
        load_registry(&self.store, mode, random_bytes()?, self.invite_secret)
    }

    /// Every record, in name order.
    pub fn list(&self) -> Result<Vec<Listing>> {
        let records = self.store.load_records()?;
        records
            .into_iter()
            .map(|(name, bytes)| {
                let record = KeyRecord::decode(&mut Reader::new(&bytes, 0), "KeyRecord")
                    .map_err(|e| anyhow!("the stored record of {name:?} is damaged: {e}"))?;
                Ok(Listing {
                    name: record.name.as_str().to_owned(),
                    serial: record.serial,
                    status: record.status,
                    issued_at_ms: record.issued_at_ms,
                    fingerprint: registry::fingerprint(record.public_key.as_bytes()),
                })
            })
            .collect()
    }

    /// Revokes `name`'s key (operator revocation): one batch signed by the manager key,
    /// committed durably. Returns the new serial.
    pub fn revoke(&self, name: &str) -> Result<u64> {
        if name == MANAGER_NAME {
            bail!("{MANAGER_NAME} is the manager's own key: it cannot be revoked, only replaced by a new init");
        }
        let registry = self.registry(RegistrationMode::Open)?;
        match registry.record(name) {
            None => bail!("no key is registered under the name {name:?}"),
            Some(record) if record.status == KeyStatus::REVOKED => {
                bail!("{name:?} is already revoked (serial {})", record.serial)
            }
            Some(_) => {}
        }
        let mut rng = os_rng()?;
        let operation = Operation::Revoke {
            name: name.to_owned(),
        };
        let planned = registry.plan_batch(&[operation], now_ms(), &*self.manager, &mut rng);
        if let Some(Err(refusal)) = planned.results.first() {
            bail!("cannot revoke {name:?}: {}", refusal.reason);
        }
        self.store
            .commit(&planned.writes)
            .with_context(|| format!("cannot write the revocation of {name:?}"))?;
        let mut registry = registry;
        registry.apply(planned);
        Ok(registry.record(name).map_or(0, |r| r.serial))
    }
}

/// Builds the registry from what `store` holds: every record and every used invite.
pub fn load_registry(
    store: &Store,
    mode: RegistrationMode,
    nonce_secret: [u8; 32],
    invite_secret: [u8; 32],
) -> Result<Registry> {
    let mut records = Vec::new();
    for (name, bytes) in store.load_records()? {
        let record = StoredRecord::decode(bytes)
            .ok_or_else(|| anyhow!("the stored record of {name:?} is damaged"))?;
        records.push(record);
    }
    let used_invites = store.load_used_invites()?;
    Ok(Registry::new(
        records,
        used_invites,
        mode,
        nonce_secret,
        invite_secret,
    ))
}
