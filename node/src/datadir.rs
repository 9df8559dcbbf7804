//! The node's data directory: its identity key, what its group state machine must
//! remember across restarts, the keys it has seen (to flag a change, as ssh does), and
//! a lock so that one name runs once per directory.
//!
//! ```text
//! <data_dir>/<name>/identity.pem      RSA private key, PKCS#8, mode 0600
//! <data_dir>/<name>/<group>.state     HardState (term, vote, membership): crate::statefile
//! <data_dir>/<name>/known_peers       "<name> <fingerprint>" per peer key seen
//! <data_dir>/<name>/known_keymgr      the key manager's fingerprint (trust on first use)
//! <data_dir>/<name>/history           the interactive line history
//! <data_dir>/<name>/lock              held (flock) while the node runs
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use sockmsg_keymgr::datadir::{create_private_dir, read_secret, write_secret, Replace};
use sockmsg_wire::session::crypto::RsaSigner;

use crate::group::HardState;
use crate::statefile::StateFile;

/// One node's directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct NodeDir {
    dir: PathBuf,
    _lock: File,
}

impl NodeDir {
    /// Opens (creating it, mode 0700) `<data_dir>/<name>` and takes its lock.
    pub fn open(data_dir: &Path, name: &str) -> Result<NodeDir> {
        let dir = data_dir.join(name);
        create_private_dir(&dir)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "a node named {name} is already running from {} (pick another --name, or \
                 another --data-dir)",
                dir.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        Ok(NodeDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The node's RSA identity: loaded, or generated (`bits` bits) and saved on first
    /// start. Returns whether it was generated.
    pub fn identity(&self, name: &str, bits: usize) -> Result<(RsaSigner, bool)> {
        let path = self.dir.join("identity.pem");
        if path.exists() {
            let pem = read_secret(&path, &self.dir)?;
            let pem = String::from_utf8(pem)
                .map_err(|_| anyhow!("{} is not a PEM file", path.display()))?;
            let signer = RsaSigner::from_pkcs8_pem(name, &pem)
                .map_err(|e| anyhow!("{} is not a usable RSA key: {e}", path.display()))?;
            return Ok((signer, false));
        }
        let key = sockmsg_keymgr::datadir::generate_key(bits)?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow!("cannot encode the new key: {e}"))?;
        write_secret(&path, pem.as_bytes(), Replace::No)?;
        let signer = RsaSigner::from_pkcs8_pem(name, &pem)
            .map_err(|e| anyhow!("the new key is unusable: {e}"))?;
        Ok((signer, true))
    }

    /// The state file of `group` and what the group state machine last saved in it
    /// (the default state if never).
    pub fn state_file(&self, group: &str) -> Result<(StateFile, HardState)> {
        let path = self.dir.join(format!("{group}.state"));
        StateFile::open(&path).with_context(|| {
            format!(
                "{} is damaged (move it away to rejoin as a new member)",
                path.display()
            )
        })
    }

    /// The fingerprints of peer keys seen before, by name.
    pub fn known_peers(&self) -> BTreeMap<String, String> {
        let text = fs::read_to_string(self.dir.join("known_peers")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (name, fingerprint) = line.split_once(' ')?;
                Some((name.to_owned(), fingerprint.trim().to_owned()))
            })
            .collect()
    }

    pub fn save_known_peers(&self, peers: &BTreeMap<String, String>) -> Result<()> {
        let text: String = peers
            .iter()
            .map(|(name, fingerprint)| format!("{name} {fingerprint}\n"))
            .collect();
        write_secret(&self.dir.join("known_peers"), text.as_bytes(), Replace::Yes)
    }

    pub fn known_keymgr_file(&self) -> PathBuf {
        self.dir.join("known_keymgr")
    }

    pub fn history_file(&self) -> PathBuf {
        self.dir.join("history")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MemberInfo;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockmsg-node-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_round_trips_and_damage_is_reported() {
        let dir = temp_dir("state");
        let node = NodeDir::open(&dir, "alice").unwrap();
        let (mut file, loaded) = node.state_file("lobby").unwrap();
        assert_eq!(loaded, HardState::default());
        let state = HardState {
            term: 7,
            voted_for: Some("bob".into()),
            membership_term: 6,
            membership_version: 12,
            members: vec![MemberInfo {
                name: "bob".into(),
                addr: "127.0.0.1:7402".parse().unwrap(),
                rank: 99,
                incarnation: 5,
            }],
            former_members: Vec::new(),
            votes_ahead: Vec::new(),
        };
        file.save(&state).unwrap();
        drop(file);
        assert_eq!(node.state_file("lobby").unwrap().1, state);
        fs::write(node.path().join("lobby.state"), "term x\n").unwrap();
        let err = node.state_file("lobby").unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
        drop(node);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_name_runs_once_per_directory() {
        let dir = temp_dir("lock");
        let first = NodeDir::open(&dir, "alice").unwrap();
        let err = NodeDir::open(&dir, "alice").unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        assert!(NodeDir::open(&dir, "bob").is_ok());
        drop(first);
        assert!(NodeDir::open(&dir, "alice").is_ok(), "released on drop");
        let _ = fs::remove_dir_all(&dir);
    }
}
