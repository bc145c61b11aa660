//! The replicated state machine on RocksDB, and [`Replica`], the local read view of it.
//!
//! Committed entries are applied in one `WriteBatch` holding their data changes and
//! `last_applied`, so a crash never leaves half an entry (or half a group) applied. After the
//! write, each entry's changes are published to the watch window and its proposer is answered.
//! Applies skip RocksDB's write-ahead log: after a crash the state machine is back at its last
//! flush (data and `last_applied` flush together) and openraft applies the committed entries
//! after it again from the Raft log, which keeps them until they are flushed.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_store::{
    list_start_key, plan, Engine, Listing, Outcome, Record, Revision, StoreError, WatchWindow,
};
use futures::{FutureExt, Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::db::{BatchOp, Db, CF_DATA, CF_SM, DATA_END, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::log_store::last_purged;
use crate::snapshot::{self, SnapshotDir, SnapshotWriter};
use crate::types::{
    decode, encode, io_err, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// At most this many committed entries are applied in one RocksDB write.
const MAX_APPLY_GROUP: usize = 512;

/// The local replica's data, shared by the state machine and readers.
#[derive(Clone)]
pub struct Replica {
    pub(crate) db: Arc<Db>,
    applied: Arc<AtomicU64>,
    window: Arc<WatchWindow>,
}

impl Replica {
    pub fn new(db: Arc<Db>, window_capacity: usize) -> io::Result<Self> {
        let (applied, _) = read_sm_meta(&db, None)?;
        let revision = applied.map_or(0, |l| l.index);
        Ok(Self {
            db,
            applied: Arc::new(AtomicU64::new(revision)),
            window: Arc::new(WatchWindow::new(revision, window_capacity)),
        })
    }

    fn storage(e: impl std::fmt::Display) -> StoreError {
        StoreError::storage(e)
    }

    /// A digest of every key with its revisions, and the revision it was taken at.
    pub fn digest(&self) -> Result<(Revision, String, u64), StoreError> {
        let listing = self.list("", None, 0)?;
        let digest = flotilla_store::digest(listing.items.iter().map(|(k, r)| (k.as_str(), r)));
        Ok((listing.revision, digest, listing.items.len() as u64))
    }
}

/// Reads `last_applied` and the membership, from a RocksDB snapshot when given.
fn read_sm_meta(
    db: &Db,
    snap: Option<&rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>>,
) -> io::Result<(Option<LogId>, StoredMembership)> {
    let get = |key: &[u8]| match snap {
        Some(s) => s.get_cf(db.cf(CF_SM), key),
        None => db.db.get_cf(db.cf(CF_SM), key),
    };
    let applied = match get(KEY_LAST_APPLIED).map_err(|e| io_err("read last_applied", e))? {
        Some(b) => decode::<Option<LogId>>(&b).map_err(|e| io_err("decode last_applied", e))?,
        None => None,
    };
    let membership = match get(KEY_MEMBERSHIP).map_err(|e| io_err("read membership", e))? {
        Some(b) => decode(&b).map_err(|e| io_err("decode membership", e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl Engine for Replica {
    fn get(&self, key: &str) -> Result<(Revision, Option<Record>), StoreError> {
        let snap = self.db.db.snapshot();
        let (applied, _) = read_sm_meta(&self.db, Some(&snap)).map_err(Self::storage)?;
        let record = snap
            .get_cf(self.db.cf(CF_DATA), key.as_bytes())
            .map_err(Self::storage)?
            .map(|b| {
                Record::decode(&b)
                    .ok_or_else(|| StoreError::storage(format!("malformed record at {key}")))
            })
            .transpose()?;
        Ok((applied.map_or(0, |l| l.index), record))
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let snap = self.db.db.snapshot();
        let (applied, _) = read_sm_meta(&self.db, Some(&snap)).map_err(Self::storage)?;
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        let from = list_start_key(prefix, start_after);
        let iter = self.db.db.iterator_cf_opt(
            self.db.cf(CF_DATA),
            opts,
            IteratorMode::From(from.as_bytes(), Direction::Forward),
        );
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut items = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(Self::storage)?;
            if !key.starts_with(prefix.as_bytes()) || items.len() >= limit {
                break;
            }
            let key = String::from_utf8(key.to_vec()).map_err(Self::storage)?;
            let record = Record::decode(&value)
                .ok_or_else(|| StoreError::storage(format!("malformed record at {key}")))?;
            items.push((key, record));
        }
        Ok(Listing {
            revision: applied.map_or(0, |l| l.index),
            items,
        })
    }

    fn applied_revision(&self) -> Revision {
        self.applied.load(Ordering::Acquire)
    }

    fn window(&self) -> &Arc<WatchWindow> {
        &self.window
    }
}

/// openraft's state machine: applies entries to the `data` family.
pub struct StateMachine {
    replica: Replica,
    snapshots: SnapshotDir,
}

impl StateMachine {
    pub fn new(replica: Replica, snapshots: SnapshotDir) -> Self {
        Self { replica, snapshots }
    }

    fn db(&self) -> &Db {
        &self.replica.db
    }

    /// Applies consecutive committed entries in one write (with `last_applied` set to the
    /// last of them), then publishes their changes and answers their proposers in order.
    async fn apply_group(&self, group: Vec<EntryResponder<TypeConfig>>) -> io::Result<()> {
        let mut ops = Vec::new();
        // Writes of earlier entries in this group, which later ones must see.
        let mut written: HashMap<String, Option<Record>> = HashMap::new();
        let mut applied = Vec::with_capacity(group.len());
        let mut last = None;
        for (entry, responder) in group {
            let log_id = entry.log_id;
            let revision = log_id.index;
            let mut events = Vec::new();
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome(Ok(revision)),
                EntryPayload::Normal(command) => match plan(command, revision, |k| {
                    match written.get(k) {
                        Some(record) => Ok(record.clone()),
                        None => self.read_record(k),
                    }
                })? {
                    Ok(planned) => {
                        for (key, value) in planned.writes {
                            ops.push(match &value {
                                Some(record) => {
                                    BatchOp::Put(CF_DATA, key.as_bytes().to_vec(), record.encode())
                                }
                                None => BatchOp::Delete(CF_DATA, key.as_bytes().to_vec()),
                            });
                            written.insert(key, value);
                        }
                        events = planned.events;
                        Outcome(Ok(revision))
                    }
                    Err(rejection) => Outcome(Err(rejection)),
                },
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m.clone());
                    ops.push(BatchOp::Put(
                        CF_SM,
                        KEY_MEMBERSHIP.to_vec(),
                        encode(&stored),
                    ));
                    Outcome(Ok(revision))
                }
            };
            last = Some(log_id);
            applied.push((revision, events, responder, outcome));
        }
        ops.push(BatchOp::Put(
            CF_SM,
            KEY_LAST_APPLIED.to_vec(),
            encode(&last),
        ));
        // No write-ahead log: the entries are in the Raft log, which is kept until the state
        // they produced is flushed (`LogStore::purge`). Never waiting on a write stall here.
        self.replica
            .db
            .write_unstalled(ops, false)
            .await
            .map_err(|e| io_err("apply entries", e))?;
        for (revision, events, responder, outcome) in applied {
            self.replica.applied.store(revision, Ordering::Release);
            self.replica.window.publish(revision, events);
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        Ok(())
    }

    fn read_record(&self, key: &str) -> io::Result<Option<Record>> {
        match self.db().db.get_cf(self.db().cf(CF_DATA), key.as_bytes()) {
            Ok(Some(b)) => Record::decode(&b)
                .map(Some)
                .ok_or_else(|| io_err("read record", format!("malformed record at {key}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err("read record", e)),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = PathBuf;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        read_sm_meta(self.db(), None)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Entries that are already committed arrive together; applying those in one write costs
        // one RocksDB write instead of one per entry, and keeps each crash all-or-nothing.
        let mut ended = false;
        while !ended {
            let Some(first) = entries.next().await else {
                break;
            };
            let mut group = vec![first?];
            while group.len() < MAX_APPLY_GROUP {
                match entries.next().now_or_never() {
                    Some(Some(item)) => group.push(item?),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            self.apply_group(group).await?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: Arc::clone(&self.replica.db),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, path: PathBuf) -> io::Result<()> {
        let db = Arc::clone(&self.replica.db);
        let snapshots = self.snapshots.clone();
        let meta = meta.clone();
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        tokio::task::spawn_blocking(move || install(&db, &snapshots, &meta, &path))
            .await
            .map_err(|e| io_err("install snapshot task", e))??;
        self.replica.applied.store(index, Ordering::Release);
        // Events between the old state and the snapshot are unknown here: open watchers must
        // start over from a list, as Kubernetes clients do after 410 Gone.
        self.replica.window.reset(index);
        tracing::info!(index, "installed snapshot");
        Ok(())
    }

    /// The newest snapshot file if it reaches the purged part of the log; otherwise one is
    /// written now from the current state (see [`SnapshotBuilder`] for why not earlier).
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let purged = last_purged(self.db())?.map(|l| l.index);
        if let Some(path) = self.snapshots.current()? {
            let meta = snapshot::read_meta(&path)?;
            if meta.last_log_id.map(|l| l.index) >= purged {
                return Ok(Some(Snapshot {
                    meta,
                    snapshot: path,
                }));
            }
        } else if purged.is_none() {
            // The whole log is still there: any member can be caught up from it.
            return Ok(None);
        }
        let db = Arc::clone(&self.replica.db);
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || write_file(&db, &snapshots))
            .await
            .map_err(|e| io_err("write snapshot task", e))?
            .map(Some)
    }
}

/// Verifies a received snapshot in full, then replaces the data in one batch.
fn install(
    db: &Db,
    snapshots: &SnapshotDir,
    meta: &SnapshotMeta,
    path: &std::path::Path,
) -> io::Result<()> {
    let contents = snapshot::read(path)?;
    if contents.meta.last_log_id != meta.last_log_id {
        return Err(io_err(
            "install snapshot",
            format!(
                "file is at {:?}, expected {:?}",
                contents.meta.last_log_id, meta.last_log_id
            ),
        ));
    }
    let mut batch = WriteBatch::default();
    let data = db.cf(CF_DATA);
    batch.delete_range_cf(data, &b""[..], DATA_END);
    for (key, value) in &contents.records {
        batch.put_cf(data, key, value);
    }
    batch.put_cf(db.cf(CF_SM), KEY_LAST_APPLIED, encode(&meta.last_log_id));
    batch.put_cf(db.cf(CF_SM), KEY_MEMBERSHIP, encode(&meta.last_membership));
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.db
        .write_opt(batch, &opts)
        .map_err(|e| io_err("install snapshot", e))?;
    let final_path = snapshots.path_for(meta);
    std::fs::rename(path, &final_path)?;
    snapshots.prune(&final_path)?;
    Ok(())
}

/// openraft "builds" a snapshot every `--snapshot-threshold` entries to learn how far it may
/// purge the log, and reads only the metadata of what it builds. The state machine is already
/// in RocksDB (and flushed before a purge, see `LogStore::purge`), so a build records the point
/// it reached and writes nothing. The file a member needs when it is
/// behind the purged log is written by `get_current_snapshot`, from the state at that time.
/// Writing the whole state at every threshold cost about a fifth of a loaded node's time.
pub struct SnapshotBuilder {
    pub(crate) db: Arc<Db>,
    snapshots: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = PathBuf;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let meta = snapshot_meta(&self.db, &self.db.db.snapshot())?;
        // Where a file for this point would go; openraft does not open it.
        let snapshot = self.snapshots.path_for(&meta);
        Ok(Snapshot { meta, snapshot })
    }
}

/// The point a RocksDB snapshot of the state machine is at.
fn snapshot_meta(
    db: &Db,
    snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
) -> io::Result<SnapshotMeta> {
    let (last_log_id, last_membership) = read_sm_meta(db, Some(snap))?;
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
    })
}

/// Writes a snapshot file from one consistent RocksDB snapshot of the state machine, at the
/// state applied when it is taken, and removes older files.
fn write_file(db: &Db, snapshots: &SnapshotDir) -> io::Result<Snapshot> {
    let started = std::time::Instant::now();
    let (meta, keys, path) = write_snapshot(db, snapshots.temp_path("build"), |meta| {
        snapshots.path_for(meta)
    })?;
    snapshots.prune(&path)?;
    tracing::info!(
        index = meta.last_log_id.as_ref().map_or(0, |l| l.index),
        keys,
        ms = started.elapsed().as_millis() as u64,
        "wrote snapshot file"
    );
    Ok(Snapshot {
        meta,
        snapshot: path,
    })
}

/// Writes a snapshot file of the state as one RocksDB snapshot sees it: built at `tmp`, moved
/// to `name(its point)` once sealed. Returns its point, how many keys it holds and its path.
pub(crate) fn write_snapshot(
    db: &Db,
    tmp: PathBuf,
    name: impl FnOnce(&SnapshotMeta) -> PathBuf,
) -> io::Result<(SnapshotMeta, u64, PathBuf)> {
    let snap = db.db.snapshot();
    let meta = snapshot_meta(db, &snap)?;
    let mut writer = SnapshotWriter::create(tmp, &meta)?;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    let mut keys = 0u64;
    for item in db
        .db
        .iterator_cf_opt(db.cf(CF_DATA), opts, IteratorMode::Start)
    {
        let (key, value) = item.map_err(|e| io_err("read state for snapshot", e))?;
        writer.record(&key, &value)?;
        keys += 1;
    }
    let path = name(&meta);
    writer.finish(&path)?;
    Ok((meta, keys, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{Command, EventKind};
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::storage::RaftLogStorage;
    use std::os::unix::process::ExitStatusExt;

    fn entry(index: u64, command: Command) -> EntryResponder<TypeConfig> {
        let log_id = openraft::LogId {
            leader_id: LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        };
        let entry = openraft::Entry {
            log_id,
            payload: EntryPayload::Normal(command),
        };
        (entry, None)
    }

    /// A state machine on a fresh database in `dir`.
    fn open_sm(dir: &std::path::Path) -> (Arc<Db>, Replica, SnapshotDir, StateMachine) {
        let db = Db::open(dir).unwrap();
        let replica = Replica::new(Arc::clone(&db), 100).unwrap();
        let snapshots = SnapshotDir::open(dir.join("snapshots")).unwrap();
        let sm = StateMachine::new(replica.clone(), snapshots.clone());
        (db, replica, snapshots, sm)
    }

    /// Later entries of a group see the writes of earlier ones, refused entries change nothing,
    /// and one write leaves the whole group applied.
    #[tokio::test]
    async fn a_group_applies_in_order_as_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let (db, replica, _, sm) = open_sm(dir.path());
        let mut watcher = replica.window().watch("/", 0).unwrap();

        sm.apply_group(vec![
            entry(1, Command::create("/a", b"1".to_vec())),
            entry(2, Command::update("/a", b"2".to_vec(), Some(1))),
            entry(3, Command::create("/a", b"3".to_vec())),
            entry(4, Command::update("/a", b"4".to_vec(), Some(1))),
            entry(5, Command::delete("/a", Some(2))),
            entry(6, Command::create("/b", b"6".to_vec())),
        ])
        .await
        .unwrap();

        assert_eq!(replica.applied_revision(), 6);
        let (at, a) = replica.get("/a").unwrap();
        assert_eq!((at, a), (6, None));
        let (_, b) = replica.get("/b").unwrap();
        let b = b.unwrap();
        assert_eq!(
            (b.create_revision, b.mod_revision, b.value),
            (6, 6, b"6".to_vec())
        );

        let mut seen = Vec::new();
        while seen.len() < 4 {
            for e in watcher.next().await.unwrap() {
                seen.push((e.revision, e.kind, e.key.clone()));
            }
        }
        assert_eq!(
            seen,
            vec![
                (1, EventKind::Created, "/a".to_string()),
                (2, EventKind::Updated, "/a".to_string()),
                (5, EventKind::Deleted, "/a".to_string()),
                (6, EventKind::Created, "/b".to_string()),
            ]
        );
        drop(sm);
        drop(replica);
        drop(db);
        // Reopened, the group is there as a whole.
        let db = Db::open(dir.path()).unwrap();
        let (applied, _) = read_sm_meta(&db, None).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(6));
    }

    /// A build writes no file; a file is written when a member needs entries already purged,
    /// from the state at that time, and reused while it still covers the purged log.
    #[tokio::test]
    async fn snapshot_files_are_written_only_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _, snapshots, mut sm) = open_sm(dir.path());
        let mut log = crate::log_store::LogStore::new(Arc::clone(&db));
        let id = |index| put(index).0.log_id;
        sm.apply_group((1..=3).map(put).collect()).await.unwrap();

        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(id(3)));
        assert_eq!(snapshots.current().unwrap(), None, "a build wrote a file");
        assert!(sm.get_current_snapshot().await.unwrap().is_none());

        log.purge(id(2)).await.unwrap();
        let first = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(first.meta.last_log_id, Some(id(3)));
        let contents = snapshot::read(&first.snapshot).unwrap();
        let keys: Vec<&[u8]> = contents.records.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"/k1"[..], b"/k2", b"/k3"]);

        // Still covering the purged log: the same file, although the state moved on.
        sm.apply_group(vec![put(4)]).await.unwrap();
        let again = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(
            (again.meta, again.snapshot),
            (first.meta, first.snapshot.clone())
        );

        log.purge(id(4)).await.unwrap();
        let newer = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(newer.meta.last_log_id, Some(id(4)));
        assert_eq!(snapshot::read(&newer.snapshot).unwrap().records.len(), 4);
        assert!(!first.snapshot.exists(), "the older file was not removed");
    }

    fn put(index: u64) -> EntryResponder<TypeConfig> {
        entry(index, Command::create(format!("/k{index}"), b"v".to_vec()))
    }

    /// Run by `a_crash_goes_back_to_the_last_flush` in a process of its own, which it kills.
    #[test]
    #[ignore = "a child process of a_crash_goes_back_to_the_last_flush"]
    fn crash_child() {
        let dir = std::env::var("FLOTILLA_CRASH_DIR").expect("run by the parent test");
        let (db, _, _, sm) = open_sm(std::path::Path::new(&dir));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(sm.apply_group((1..=3).map(put).collect()))
            .unwrap();
        db.persist_state_machine().unwrap();
        rt.block_on(sm.apply_group((4..=5).map(put).collect()))
            .unwrap();
        // Make sure the later group reached RocksDB before dying without a close.
        assert_eq!(
            db.db.get_cf(db.cf(CF_DATA), b"/k5").unwrap().as_deref(),
            Some(&put_record(5)[..])
        );
        std::process::abort();
    }

    fn put_record(index: u64) -> Vec<u8> {
        Record {
            value: b"v".to_vec(),
            create_revision: index,
            mod_revision: index,
        }
        .encode()
    }

    /// Applies skip the write-ahead log: a process that dies goes back to the state machine's
    /// last flush, data and `last_applied` together (the Raft log replays the rest).
    #[test]
    fn a_crash_goes_back_to_the_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "state_machine::tests::crash_child",
                "--nocapture",
            ])
            .env("FLOTILLA_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        // SIGABRT: it got past its flush and its unflushed group, then died without a close.
        assert_eq!(
            status.signal(),
            Some(6),
            "the child did not die as planned: {status:?}"
        );

        let db = Db::open(dir.path()).unwrap();
        let (applied, _) = read_sm_meta(&db, None).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        let data = db.cf(CF_DATA);
        for i in 1..=3 {
            let key = format!("/k{i}");
            assert_eq!(
                db.db.get_cf(data, &key).unwrap(),
                Some(put_record(i)),
                "{key}"
            );
        }
        for key in ["/k4", "/k5"] {
            assert_eq!(
                db.db.get_cf(data, key).unwrap(),
                None,
                "{key} outlived the crash"
            );
        }
    }
}
