//! The key manager's durable state, in one [redb] file.
//!
//! Three tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `records` | name (`&str`) | the KEY_RECORD frame body as served (SPEC.md §7.26): record fields, batch proof and signature |
//! | `used_invites` | invite token id (`&[u8]`) | when it was used, ms since the Unix epoch (`u64`) |
//! | `meta` | key (`&str`) | anything else (`&[u8]`) |
//!
//! Records are stored exactly as they go on the wire, signature and proof included: they are
//! signed once, when their batch is committed, and served as they are, so a restart needs
//! no signing key operation and cannot change what was once acknowledged.
//!
//! Invariants:
//!
//! - **Acknowledged means durable.** The server sends KEY_RESULT `OK` (or a record) only
//!   after [`Store::commit`] has returned, and `commit` returns only after the batch is on
//!   stable storage (redb [`Durability::Immediate`]: `fdatasync` before `commit` returns;
//!   and the directory holding a newly created file is synced by [`Store::open`], so the file
//!   itself cannot vanish in a crash). Nothing acknowledged may be lost: a lost registration
//!   would let someone else claim the name, a lost rotation would resurrect a replaced key, a
//!   lost invite use would let the token be spent twice.
//! - **A batch is atomic.** [`Store::commit`] writes a whole batch in one write transaction:
//!   after a crash either all of it is there or none of it. This is also what makes group
//!   commit pay: the server gathers the registrations that arrive while the previous batch is
//!   being synced, signs them as one Merkle batch ([`crate::merkle`]) and commits them with one
//!   `fsync`, so its throughput is bounded by batch size ÷ fsync latency, not 1 ÷ fsync latency.
//! - **One process.** redb locks the file; a second key manager on the same file gets
//!   [`StoreError::Locked`] instead of two writers corrupting each other's view.
//! - **The file is not trusted at open.** Every open verifies the checksums of the whole
//!   database ([`redb::Builder::set_check_integrity_on_open`]), because a plain redb open
//!   trusts the file and may panic later on one altered outside redb (a test here shows it
//!   does). So a garbage, truncated or damaged file is a [`StoreError`], never a panic, and
//!   never silently altered data. The database is small (one record per node), so the check
//!   costs little at start-up. Damage that appears while the manager runs is outside what
//!   this check covers.
//!
//! [`Store`] is `Send + Sync`; reads run concurrently with a commit and see the state before
//! or after it, never part of it. Write transactions are serialized by redb, so concurrent
//! callers of [`Store::commit`] queue up; the server should have one committer.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// name → KEY_RECORD frame body.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// invite token id → ms since the Unix epoch when it was used.
const USED_INVITES: TableDefinition<&[u8], u64> = TableDefinition::new("used_invites");
/// Free-form state: key → bytes.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why the store could not be opened, read or written. Each message is complete on its own
/// (it names the file and includes the underlying cause), so it can be printed as is;
/// `source()` is therefore not set.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another [`Store`] in this one) has the database open.
    #[error(
        "key database {} is locked by another process: the key manager is probably \
         already running",
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The file could not be opened as a database: unreadable, not a redb database,
    /// corrupted, or of an unsupported format version.
    #[error("cannot open key database {}: {error}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said (boxed: redb's errors are large, and errors are rare).
        error: Box<DatabaseError>,
    },
    /// A file-system operation around the database failed.
    #[error("key database {}: {action}: {error}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A read or write of the open database failed. After a failed [`Store::commit`] the
    /// batch may or may not be on disk, and redb refuses further writes: see
    /// [`Store::commit`].
    #[error("key database {}: {action}: {error}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// What redb said (boxed: redb's errors are large, and errors are rare).
        error: Box<redb::Error>,
    },
}

/// One write of a batch given to [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets (creates or replaces) the record of `name`; `bytes` is the KEY_RECORD frame body.
    Record { name: String, bytes: Vec<u8> },
    /// Marks the invite token `id` used at `at_ms` (ms since the Unix epoch).
    InviteUsed { id: Vec<u8>, at_ms: u64 },
    /// Sets a meta entry.
    Meta { key: String, value: Vec<u8> },
}

/// The key manager's database. See the module docs for the invariants.
pub struct Store {
    db: Database,
    /// For error messages.
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating the file (and the tables) if it does not
    /// exist. The whole file is checked on open (see the module docs).
    ///
    /// Fails with [`StoreError::Locked`] if another process has it open, and with
    /// [`StoreError::Open`] if the file is not a sound redb database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|error| match error {
                // LockProtocolMismatch: held by a process using another redb version's
                // locking; still "someone else has it open".
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    StoreError::Locked {
                        path: path.to_path_buf(),
                    }
                }
                error => StoreError::Open {
                    path: path.to_path_buf(),
                    error: Box::new(error),
                },
            })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // Create the tables once, so that readers never meet a missing table.
        let txn = store
            .db
            .begin_write()
            .map_err(|e| store.db_error("begin creating tables", e))?;
        {
            txn.open_table(RECORDS)
                .map_err(|e| store.db_error("open table records", e))?;
            txn.open_table(USED_INVITES)
                .map_err(|e| store.db_error("open table used_invites", e))?;
            txn.open_table(META)
                .map_err(|e| store.db_error("open table meta", e))?;
        }
        txn.commit()
            .map_err(|e| store.db_error("commit table creation", e))?;
        store.sync_parent_dir()?;
        Ok(store)
    }

    /// Every record, in name order (byte order), to load into memory at start-up.
    pub fn load_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| self.db_error("open table records", e))?;
        let iter = table.iter().map_err(|e| self.db_error("read records", e))?;
        let mut records = Vec::new();
        for entry in iter {
            let (name, bytes) = entry.map_err(|e| self.db_error("read records", e))?;
            records.push((name.value().to_owned(), bytes.value().to_vec()));
        }
        Ok(records)
    }

    /// The ids of every used invite token, in byte order, to load into memory at
    /// start-up (the registry refuses a token whose id it holds).
    pub fn load_used_invites(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(USED_INVITES)
            .map_err(|e| self.db_error("open table used_invites", e))?;
        let iter = table
            .iter()
            .map_err(|e| self.db_error("read used invites", e))?;
        let mut ids = Vec::new();
        for entry in iter {
            let (id, _) = entry.map_err(|e| self.db_error("read used invites", e))?;
            ids.push(id.value().to_vec());
        }
        Ok(ids)
    }

    /// The stored KEY_RECORD frame body of `name`, if any.
    pub fn record(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(RECORDS)
            .map_err(|e| self.db_error("open table records", e))?;
        let value = table
            .get(name)
            .map_err(|e| self.db_error("read a record", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Whether the invite token `id` has been used.
    pub fn invite_used(&self, id: &[u8]) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(USED_INVITES)
            .map_err(|e| self.db_error("open table used_invites", e))?;
        let value = table
            .get(id)
            .map_err(|e| self.db_error("read an invite", e))?;
        Ok(value.is_some())
    }

    /// The meta entry `key`, if any.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(META)
            .map_err(|e| self.db_error("open table meta", e))?;
        let value = table
            .get(key)
            .map_err(|e| self.db_error("read a meta entry", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Writes `batch` in one transaction and returns once it is on stable storage.
    ///
    /// Durability is [`Durability::Immediate`] (redb's default, set explicitly so that no
    /// future default can weaken it): redb `fdatasync`s before `commit` returns. The key
    /// manager acknowledges a registration, rotation or invite use only after this returns,
    /// and nothing acknowledged may be lost, so a write that is merely in the page cache
    /// does not count.
    ///
    /// The batch is atomic: after a crash, all of it or none of it is on disk. Writes apply
    /// in order, so a later write of the same key in the batch wins. An empty batch returns
    /// at once without touching the disk.
    ///
    /// On `Err` the outcome is unknown: the batch was applied atomically or not at all, but
    /// it may already be durable, so it must not be assumed rolled back; and redb refuses
    /// further writes until the database is reopened. The caller must acknowledge nothing
    /// from the batch (answer `UNAVAILABLE`) and should stop serving writes and reload from
    /// disk (restart), since its in-memory view may no longer match the file.
    pub fn commit(&self, batch: &[Write]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.db_error("begin a write", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.db_error("set durability", e))?;
        {
            let mut records = txn
                .open_table(RECORDS)
                .map_err(|e| self.db_error("open table records", e))?;
            let mut invites = txn
                .open_table(USED_INVITES)
                .map_err(|e| self.db_error("open table used_invites", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.db_error("open table meta", e))?;
            for write in batch {
                match write {
                    Write::Record { name, bytes } => {
                        records
                            .insert(name.as_str(), bytes.as_slice())
                            .map_err(|e| self.db_error("write a record", e))?;
                    }
                    Write::InviteUsed { id, at_ms } => {
                        invites
                            .insert(id.as_slice(), at_ms)
                            .map_err(|e| self.db_error("write an invite", e))?;
                    }
                    Write::Meta { key, value } => {
                        meta.insert(key.as_str(), value.as_slice())
                            .map_err(|e| self.db_error("write a meta entry", e))?;
                    }
                }
            }
        }
        // Dropping `txn` on an early return above aborts it: nothing of the batch is written.
        txn.commit().map_err(|e| self.db_error("commit", e))
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(|e| self.db_error("begin a read", e))
    }

    fn db_error(&self, action: &'static str, error: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            action,
            error: Box::new(error.into()),
        }
    }

    /// Makes the database file's directory entry durable. redb syncs the file's contents,
    /// but a newly created file's name lives in its directory, which must be synced too, or
    /// a crash could lose the whole file with every acknowledged record in it. Cheap, and
    /// done on every open so that no "was it just created?" race matters.
    fn sync_parent_dir(&self) -> Result<(), StoreError> {
        #[cfg(unix)]
        {
            let dir = match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|error| StoreError::Io {
                    path: self.path.clone(),
                    action: "sync its directory",
                    error,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "sockmsg-keymgr-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(name: &str, bytes: &[u8]) -> Write {
        Write::Record {
            name: name.to_owned(),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn store_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Store>();
    }

    #[test]
    fn round_trip_across_reopen() {
        let dir = TempDir::new("roundtrip");
        let path = dir.file("keys.redb");
        {
            let store = Store::open(&path).expect("create");
            assert_eq!(store.load_records().expect("load"), vec![]);
            store
                .commit(&[
                    record("bob", b"bob's record"),
                    record("alice", b"alice's record"),
                    Write::InviteUsed {
                        id: vec![1, 2, 3],
                        at_ms: 1_700_000_000_000,
                    },
                    Write::Meta {
                        key: "batch_seq".into(),
                        value: 42u64.to_be_bytes().to_vec(),
                    },
                ])
                .expect("commit");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.load_records().expect("load"),
            vec![
                ("alice".to_owned(), b"alice's record".to_vec()),
                ("bob".to_owned(), b"bob's record".to_vec()),
            ]
        );
        assert_eq!(
            store.record("bob").expect("read"),
            Some(b"bob's record".to_vec())
        );
        assert_eq!(store.record("carol").expect("read"), None);
        assert!(store.invite_used(&[1, 2, 3]).expect("read"));
        assert_eq!(
            store.load_used_invites().expect("load"),
            vec![vec![1, 2, 3]]
        );
        assert!(!store.invite_used(&[1, 2]).expect("read"));
        assert!(!store.invite_used(&[]).expect("read"));
        assert_eq!(
            store.meta("batch_seq").expect("read"),
            Some(42u64.to_be_bytes().to_vec())
        );
        assert_eq!(store.meta("other").expect("read"), None);
    }

    #[test]
    fn batch_writes_are_all_visible_and_later_writes_win() {
        let dir = TempDir::new("batch");
        let store = Store::open(&dir.file("keys.redb")).expect("create");
        let mut batch: Vec<Write> = (0..100)
            .map(|i| record(&format!("node{i:03}"), &[i as u8; 700]))
            .collect();
        batch.push(Write::InviteUsed {
            id: b"tok".to_vec(),
            at_ms: 5,
        });
        batch.push(record("node007", b"rotated"));
        store.commit(&batch).expect("commit");

        let records = store.load_records().expect("load");
        assert_eq!(records.len(), 100);
        for (i, (name, bytes)) in records.iter().enumerate() {
            assert_eq!(name, &format!("node{i:03}"));
            if i == 7 {
                assert_eq!(bytes, b"rotated");
            } else {
                assert_eq!(bytes, &vec![i as u8; 700]);
            }
        }
        assert!(store.invite_used(b"tok").expect("read"));

        // A later batch replaces a record.
        store.commit(&[record("node001", b"v2")]).expect("commit");
        assert_eq!(store.record("node001").expect("read"), Some(b"v2".to_vec()));
        // An empty batch is a no-op.
        store.commit(&[]).expect("commit");
        assert_eq!(store.load_records().expect("load").len(), 100);
    }

    #[test]
    fn second_open_is_locked() {
        let dir = TempDir::new("locked");
        let path = dir.file("keys.redb");
        let first = Store::open(&path).expect("create");
        match Store::open(&path) {
            Err(err @ StoreError::Locked { .. }) => {
                let message = err.to_string();
                assert!(message.contains("probably already running"), "{message}");
                assert!(message.contains("keys.redb"), "{message}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        Store::open(&path).expect("open after the holder closed");
    }

    /// Set by [`locked_by_another_process`] for the child it spawns.
    const HOLD_ENV: &str = "SOCKMSG_KEYMGR_TEST_HOLD_DB";

    /// Not a test: the child of [`locked_by_another_process`]. Opens the database named in
    /// `HOLD_ENV`, says so, and holds it until its stdin is closed.
    #[test]
    #[ignore = "helper process for locked_by_another_process"]
    fn hold_lock_helper() {
        let Some(path) = std::env::var_os(HOLD_ENV) else {
            return;
        };
        let _store = Store::open(Path::new(&path)).expect("child open");
        println!("HOLDING");
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    }

    #[test]
    fn locked_by_another_process() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        struct KillOnDrop(std::process::Child);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }

        let dir = TempDir::new("locked-proc");
        let path = dir.file("keys.redb");
        drop(Store::open(&path).expect("create"));

        let exe = std::env::current_exe().expect("test binary path");
        let mut child = KillOnDrop(
            Command::new(exe)
                .args([
                    "store::tests::hold_lock_helper",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HOLD_ENV, &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child"),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut holding = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            if line.contains("HOLDING") {
                holding = true;
                break;
            }
        }
        assert!(holding, "child did not open the database");
        assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
        drop(child);
        Store::open(&path).expect("open after the child exited");
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = TempDir::new("garbage");
        // xorshift: deterministic noise without a dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for (name, bytes) in [
            ("text", b"this is not a database\n".to_vec()),
            ("one-byte", vec![0u8]),
            ("noise", noise),
        ] {
            let path = dir.file(name);
            std::fs::write(&path, &bytes).expect("write garbage");
            match Store::open(&path) {
                Err(err @ StoreError::Open { .. }) => {
                    assert!(err.to_string().contains(name), "{err}");
                }
                other => panic!("{name}: expected StoreError::Open, got {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_database_is_an_error_not_a_panic() {
        let dir = TempDir::new("damaged");
        let good = dir.file("good.redb");
        {
            let store = Store::open(&good).expect("create");
            let batch: Vec<Write> = (0..200)
                .map(|i| record(&format!("node{i}"), &[i as u8; 900]))
                .collect();
            store.commit(&batch).expect("commit");
        }
        let expected = Store::open(&good)
            .expect("reopen")
            .load_records()
            .expect("load");
        let original = std::fs::read(&good).expect("read db");
        let len = original.len();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [len / 2, 4096, 600, 100] {
            cases.push((
                format!("truncated to {cut}"),
                original[..cut.min(len)].to_vec(),
            ));
        }
        for at in (0..len).step_by(len / 16 + 1) {
            let mut bytes = original.clone();
            for b in &mut bytes[at..(at + 64).min(len)] {
                *b ^= 0x5a;
            }
            cases.push((format!("64 bytes flipped at {at}"), bytes));
        }
        for (what, bytes) in cases {
            eprintln!("case: {what}");
            let path = dir.file("damaged.redb");
            std::fs::write(&path, &bytes).expect("write damaged db");
            // Either an error or (damage in unused space) exactly the original records:
            // never a panic, never silently altered data.
            if let Ok(store) = Store::open(&path) {
                assert_eq!(store.load_records().expect("load"), expected, "{what}");
            }
        }
    }

    /// Prints how long a commit of 1 and of 100 records takes on the temp dir's disk, to
    /// size group commit. Run with
    /// `cargo test -p sockmsg-keymgr --lib commit_timings -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing report, not a check"]
    fn commit_timings() {
        let dir = TempDir::new("timing");
        let store = Store::open(&dir.file("keys.redb")).expect("create");
        // A realistic record: a 4096-bit key's SPKI (~550 B), an 8-deep proof, a
        // 512-byte signature.
        let body = vec![0xabu8; 1_100];
        let mut serial = 0u32;
        let mut time = |n: usize| -> Duration {
            let batch: Vec<Write> = (0..n)
                .map(|i| {
                    serial += 1;
                    record(&format!("node{i:05}-{serial}"), &body)
                })
                .collect();
            let start = Instant::now();
            store.commit(&batch).expect("commit");
            start.elapsed()
        };
        for n in [1, 10, 100, 1000] {
            // Warm up, then take the median of 21.
            for _ in 0..3 {
                time(n);
            }
            let mut samples: Vec<Duration> = (0..21).map(|_| time(n)).collect();
            samples.sort();
            println!(
                "commit of {n:>4} records: median {:?}, min {:?}, max {:?}",
                samples[10], samples[0], samples[20]
            );
        }
    }
}
