//! The group state machine's hard state on disk (`<group>.state`).
//!
//! It is written on the election's critical path: the candidate, each voter and the new
//! leader write it before they send (Raft §5.2), so its cost is paid several times in
//! sequence per failover. Replacing the file (write a copy, fsync, rename, fsync the
//! directory) costs two journal commits, which every process on the file system
//! queues for. Instead the file holds two fixed-size slots, overwritten in turn and
//! synced with `fdatasync`: once the file's blocks exist, an overwrite changes no
//! metadata a reader needs, so the sync flushes only the data (a quarter of the cost
//! on the machines we measured, and no shared journal commit).
//!
//! Invariant: after [`StateFile::save`] returns, the newest valid slot holds that state.
//! A torn write can spoil only the slot being written, which its checksum exposes, and
//! the other slot still holds the state saved before; [`StateFile::open`] takes the
//! valid slot with the higher sequence number.
//!
//! Slot layout ([`SLOT_LEN`] bytes, integers big-endian):
//!
//! ```text
//! off  size  field
//!   0     8  magic "SMSTATE1"
//!   8     8  seq      increases by one per save
//!  16     4  len      body length, at most SLOT_LEN - HEADER_LEN
//!  20    32  SHA-256 of bytes 0..20 and the body
//!  52   len  body     one `key value` per line, members as `member NAME ADDR RANK INC`,
//!                     then `former_member NAME` lines (at most 64)
//! ```
//!
//! A file in the text format of earlier versions (the body alone) is read once and
//! rewritten in slots.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use sockmsg_keymgr::datadir::{write_secret, Replace};

use crate::group::HardState;
use crate::message::MemberInfo;

/// One slot: room for 64 members (at most ~130 bytes each in the body) and the header.
pub const SLOT_LEN: usize = 16 * 1024;
const HEADER_LEN: usize = 52;
const MAGIC: &[u8; 8] = b"SMSTATE1";

/// An open state file; [`StateFile::save`] overwrites the older slot.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    file: File,
    /// The sequence number of the newest valid slot.
    seq: u64,
}

impl StateFile {
    /// Opens `path` and reads the newest state it holds (the default state if there is
    /// no file yet, which is then created).
    pub fn open(path: &Path) -> Result<(StateFile, HardState)> {
        let (state, seq) = match read_bounded(path) {
            Ok(bytes) => read_slots(&bytes)?,
            Err(e) if e.kind() == ErrorKind::NotFound => (HardState::default(), None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let seq = match seq {
            Some(seq) => seq,
            None => {
                // New, or in the old text format: write the slotted file whole, in place
                // atomically (copy, fsync, rename), with the state in slot 0.
                let mut image = vec![0u8; 2 * SLOT_LEN];
                let slot = encode_slot(1, &state)?;
                let at = slot_offset(1);
                image[at..at + slot.len()].copy_from_slice(&slot);
                write_secret(path, &image, Replace::Yes)?;
                1
            }
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let path = path.to_path_buf();
        Ok((StateFile { path, file, seq }, state))
    }

    /// Writes `state` durably before returning: into the slot not holding the newest
    /// state, then `fdatasync`.
    pub fn save(&mut self, state: &HardState) -> Result<()> {
        let seq = self.seq + 1;
        let slot = encode_slot(seq, state)?;
        self.file
            .write_all_at(&slot, slot_offset(seq) as u64)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.seq = seq;
        Ok(())
    }
}

/// The file's bytes, refusing one larger than two slots (no state file of ours, old
/// or new, is) rather than reading whatever size it has.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let limit = 2 * SLOT_LEN as u64;
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("larger than a state file ({limit} bytes)"),
        ));
    }
    Ok(bytes)
}

/// Where the slot of sequence number `seq` starts: odd and even alternate, so a save
/// never overwrites the slot holding the newest state.
fn slot_offset(seq: u64) -> usize {
    (seq % 2) as usize * SLOT_LEN
}

fn encode_slot(seq: u64, state: &HardState) -> Result<Vec<u8>> {
    let body = format_state(state);
    if body.len() > SLOT_LEN - HEADER_LEN {
        bail!(
            "the group state ({} bytes) exceeds a state slot",
            body.len()
        );
    }
    let mut slot = Vec::with_capacity(HEADER_LEN + body.len());
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&seq.to_be_bytes());
    slot.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let digest = Sha256::new()
        .chain_update(&slot)
        .chain_update(body.as_bytes())
        .finalize();
    slot.extend_from_slice(&digest);
    slot.extend_from_slice(body.as_bytes());
    Ok(slot)
}

/// The slot's (seq, body) if it is whole: magic, bounded length, checksum.
fn decode_slot(slot: &[u8]) -> Option<(u64, &str)> {
    let header = slot.get(..HEADER_LEN)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let len = u32::from_be_bytes(header[16..20].try_into().ok()?) as usize;
    if len > SLOT_LEN - HEADER_LEN {
        return None;
    }
    let body = slot.get(HEADER_LEN..HEADER_LEN + len)?;
    let digest = Sha256::new()
        .chain_update(&header[..20])
        .chain_update(body)
        .finalize();
    if digest.as_slice() != &header[20..52] {
        return None;
    }
    Some((seq, std::str::from_utf8(body).ok()?))
}

/// The newest state in a file's bytes, with its slot's sequence number (`None`: the
/// old text format, to be rewritten).
fn read_slots(bytes: &[u8]) -> Result<(HardState, Option<u64>)> {
    if !bytes.starts_with(MAGIC) && bytes.get(SLOT_LEN..SLOT_LEN + 8) != Some(MAGIC) {
        let text =
            std::str::from_utf8(bytes).map_err(|_| anyhow!("neither state slots nor text"))?;
        return Ok((parse_state(text)?, None));
    }
    let newest = bytes
        .chunks(SLOT_LEN)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|(seq, _)| *seq)
        .ok_or_else(|| anyhow!("no intact state slot"))?;
    Ok((parse_state(newest.1)?, Some(newest.0)))
}

/// The body: one `key value` per line, members as `member NAME ADDR RANK INC`.
fn format_state(state: &HardState) -> String {
    let mut out = String::from("# sockmsg-node group state: written by the node, do not edit\n");
    out += &format!("term {}\n", state.term);
    out += &format!("voted_for {}\n", state.voted_for.as_deref().unwrap_or("-"));
    out += &format!("membership_term {}\n", state.membership_term);
    out += &format!("membership_version {}\n", state.membership_version);
    for m in &state.members {
        out += &format!(
            "member {} {} {} {}\n",
            m.name, m.addr, m.rank, m.incarnation
        );
    }
    for name in &state.former_members {
        out += &format!("former_member {name}\n");
    }
    for (term, name) in &state.votes_ahead {
        out += &format!("vote_ahead {term} {name}\n");
    }
    out
}

fn parse_state(text: &str) -> Result<HardState> {
    let mut state = HardState::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |s: &str| -> Result<u64> {
            s.parse()
                .map_err(|_| anyhow!("line {}: {s:?} is not a number", i + 1))
        };
        match fields.as_slice() {
            ["term", n] => state.term = number(n)?,
            ["voted_for", "-"] => state.voted_for = None,
            ["voted_for", name] => state.voted_for = Some((*name).to_owned()),
            ["membership_term", n] => state.membership_term = number(n)?,
            ["membership_version", n] => state.membership_version = number(n)?,
            ["member", name, addr, rank, incarnation] => {
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|_| anyhow!("line {}: {addr:?} is not an address", i + 1))?;
                state.members.push(MemberInfo {
                    name: (*name).to_owned(),
                    addr,
                    rank: number(rank)?,
                    incarnation: number(incarnation)?,
                });
            }
            ["former_member", name] => state.former_members.push((*name).to_owned()),
            ["vote_ahead", term, name] => {
                state.votes_ahead.push((number(term)?, (*name).to_owned()))
            }
            _ => bail!("line {}: not understood: {line:?}", i + 1),
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sockmsg-statefile-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("lobby.state")
    }

    fn state(term: u64) -> HardState {
        HardState {
            term,
            voted_for: Some("bob".into()),
            membership_term: term - 1,
            membership_version: 12,
            members: vec![MemberInfo {
                name: "bob".into(),
                addr: "[::1]:7402".parse().unwrap(),
                rank: u64::MAX,
                incarnation: 5,
            }],
            former_members: vec!["carol".into(), "dave".into()],
            votes_ahead: vec![(term + 2, "carol".into())],
        }
    }

    #[test]
    fn a_new_file_holds_the_default_and_then_the_newest_save() {
        let path = temp_file("new");
        let (mut file, loaded) = StateFile::open(&path).unwrap();
        assert_eq!(loaded, HardState::default());
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT_LEN as u64);
        for term in 2..7 {
            file.save(&state(term)).unwrap();
        }
        drop(file);
        assert_eq!(StateFile::open(&path).unwrap().1, state(6));
    }

    #[test]
    fn a_torn_write_leaves_the_state_saved_before() {
        let path = temp_file("torn");
        let (mut file, _) = StateFile::open(&path).unwrap();
        file.save(&state(2)).unwrap();
        file.save(&state(3)).unwrap();
        drop(file);
        // seq 3 (term 3) went to slot 1: spoil its body, as a crash mid-write would.
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT_LEN + HEADER_LEN + 10] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (mut file, loaded) = StateFile::open(&path).unwrap();
        assert_eq!(loaded, state(2));
        // The next save goes over the spoilt slot, not over the good one.
        file.save(&state(4)).unwrap();
        drop(file);
        assert_eq!(StateFile::open(&path).unwrap().1, state(4));
    }

    #[test]
    fn damage_is_reported_not_guessed() {
        let path = temp_file("damage");
        let (mut file, _) = StateFile::open(&path).unwrap();
        file.save(&state(2)).unwrap();
        drop(file);
        let mut bytes = fs::read(&path).unwrap();
        for slot in 0..2 {
            bytes[slot * SLOT_LEN + 16] ^= 0x01;
        }
        fs::write(&path, &bytes).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("no intact state slot"),
            "{err:#}"
        );
        // A huge length is bounded, not followed.
        bytes[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_slot(&bytes[..SLOT_LEN]).is_none());
        fs::write(&path, "term x\n").unwrap();
        assert!(StateFile::open(&path).is_err());
        fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(StateFile::open(&path).is_err());
        fs::write(&path, vec![b'#'; 2 * SLOT_LEN + 1]).unwrap();
        let err = StateFile::open(&path).unwrap_err();
        assert!(format!("{err:#}").contains("larger than"), "{err:#}");
    }

    #[test]
    fn the_old_text_format_is_read_and_rewritten_in_slots() {
        let path = temp_file("legacy");
        fs::write(&path, format_state(&state(9))).unwrap();
        let (mut file, loaded) = StateFile::open(&path).unwrap();
        assert_eq!(loaded, state(9));
        assert!(fs::read(&path).unwrap()[SLOT_LEN..].starts_with(MAGIC));
        file.save(&state(10)).unwrap();
        drop(file);
        assert_eq!(StateFile::open(&path).unwrap().1, state(10));
    }

    #[test]
    fn sixty_four_long_members_fit_a_slot() {
        let mut big = state(2);
        big.members = (0..64)
            .map(|i| MemberInfo {
                name: format!("{i:0>32}"),
                addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                    .parse()
                    .unwrap(),
                rank: u64::MAX,
                incarnation: u64::MAX,
            })
            .collect();
        assert!(encode_slot(u64::MAX, &big).unwrap().len() <= SLOT_LEN);
    }
}
