//! Raft log storage on RocksDB. Votes and truncations are written with `sync`; appends are
//! written at once (so readers see them) and made durable in groups by a sync thread, which
//! tells openraft an append is flushed only after the write-ahead log holding it is synced, so
//! an acknowledged entry survives a crash. Other RocksDB calls run on the blocking pool.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{
    index_from_key, index_key, BatchOp, Db, CF_LOG, CF_META, KEY_COMMITTED, KEY_LAST_PURGED,
    KEY_VOTE,
};
use crate::recent::{Recent, DEFAULT_BUDGET};
use crate::types::{decode, encode, io_err, Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
    /// The newest entries, for the reads that follow an append (see [`crate::recent`]).
    recent: Arc<Mutex<Recent>>,
}

/// The sync thread: waits for appends' callbacks, syncs the write-ahead log once for all that
/// have queued up (every one was written before it was queued), then completes them in order.
/// It ends when every `LogStore` clone is gone.
fn start_syncer(db: Arc<Db>) -> mpsc::Sender<IOFlushed<TypeConfig>> {
    let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
    let spawned = std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut flushed = vec![first];
                flushed.extend(rx.try_iter());
                let synced = db.db.flush_wal(true);
                for callback in flushed {
                    callback.io_completed(match &synced {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io_err("sync raft log", e)),
                    });
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread, the channel is closed and appends sync themselves.
        tracing::warn!("cannot start the raft log sync thread: {e}");
    }
    tx
}

fn get_meta<T: serde::de::DeserializeOwned>(db: &Db, key: &[u8]) -> io::Result<Option<T>> {
    match db.db.get_cf(db.cf(CF_META), key) {
        Ok(Some(bytes)) => decode(&bytes)
            .map(Some)
            .map_err(|e| io_err("decode raft metadata", e)),
        Ok(None) => Ok(None),
        Err(e) => Err(io_err("read raft metadata", e)),
    }
}

/// The last log id purged from the log, if any.
pub(crate) fn last_purged(db: &Db) -> io::Result<Option<LogId>> {
    Ok(get_meta::<Option<LogId>>(db, KEY_LAST_PURGED)?.flatten())
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> Self {
        let syncer = start_syncer(Arc::clone(&db));
        Self {
            db,
            syncer,
            recent: Arc::new(Mutex::new(Recent::new(DEFAULT_BUDGET))),
        }
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        // The cache is only ever changed by whole-method calls that cannot panic halfway.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a write on the blocking pool; `sync` makes it durable before returning.
    async fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let mut opts = WriteOptions::default();
            opts.set_sync(sync);
            db.db
                .write_opt(batch, &opts)
                .map_err(|e| io_err("write raft log", e))
        })
        .await
        .map_err(|e| io_err("raft log writer task", e))?
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self
            .db
            .db
            .iterator_cf(self.db.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(Ok((_, value))) => {
                let entry: Entry = decode(&value).map_err(|e| io_err("decode log entry", e))?;
                Ok(Some(entry.log_id))
            }
            Some(Err(e)) => Err(io_err("read raft log", e)),
        }
    }
}

/// Entries from `start` up to `end` (exclusive; `None`: to the last) from RocksDB.
fn read_entries(db: &Db, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
    let from = index_key(start);
    let iter = db
        .db
        .iterator_cf(db.cf(CF_LOG), IteratorMode::From(&from, Direction::Forward));
    let mut out = Vec::new();
    for item in iter {
        let (key, value) = item.map_err(|e| io_err("read raft log", e))?;
        let index = index_from_key(&key).ok_or_else(|| io_err("read raft log", "malformed key"))?;
        if end.is_some_and(|end| index >= end) {
            break;
        }
        out.push(decode(&value).map_err(|e| io_err("decode log entry", e))?);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
        // Older entries (a follower catching up) come from RocksDB, on the blocking pool.
        let db = Arc::clone(&self.db);
        let mut out = tokio::task::spawn_blocking(move || read_entries(&db, start, end))
            .await
            .map_err(|e| io_err("raft log reader task", e))??;
        // The newest entries may still be on their way to RocksDB (an append is in the run
        // before it is written): the rest of the range comes from the run.
        let next = out.last().map_or(start, |e| e.log_id.index + 1);
        if end.is_none_or(|end| next < end) {
            if let Some(rest) = self.recent().get(next, end) {
                out.extend(rest);
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        get_meta(&self.db, KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = last_purged(&self.db)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), KEY_VOTE, encode(vote));
        self.write(batch, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), KEY_COMMITTED, encode(&committed));
        self.write(batch, false).await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(get_meta::<Option<LogId>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        {
            let mut recent = self.recent();
            for entry in entries {
                let bytes = encode(&entry);
                let key = index_key(entry.log_id.index).to_vec();
                // Into the recent entries first: a reader served from them must never find
                // fewer entries than RocksDB already has.
                recent.appended(entry, bytes.len());
                ops.push(BatchOp::Put(CF_LOG, key, bytes));
            }
        }
        // Written now, without a sync (a memtable insert and a write to the WAL file), and
        // never waiting on a write stall on this async worker; the sync thread makes it durable
        // and only then reports it flushed.
        let written = self.db.write_unstalled(ops, true).await;
        if let Err(e) = written {
            // The run may have replaced entries RocksDB still holds: read from RocksDB only.
            self.recent().clear();
            return Err(io_err("write raft log", e));
        }
        if let Err(mpsc::SendError(callback)) = self.syncer.send(callback) {
            let synced = self.db.db.flush_wal(true);
            callback.io_completed(synced.map_err(|e| io_err("sync raft log", e)));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.recent().truncate_from(from);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(CF_LOG), index_key(from), index_key(u64::MAX));
        self.write(batch, true).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The state machine's writes skip the write-ahead log: the entries that produced them
        // may go only once they are flushed.
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.persist_state_machine())
            .await
            .map_err(|e| io_err("flush task", e))?
            .map_err(|e| io_err("flush the state machine", e))?;
        self.recent().purge_through(log_id.index);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), KEY_LAST_PURGED, encode(&Some(log_id)));
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            index_key(0),
            index_key(log_id.index + 1),
        );
        self.write(batch, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::impls::leader_id_adv::LeaderId;

    /// The purge point is read back as written, also after the database is reopened.
    #[tokio::test]
    async fn the_purged_log_id_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = |index| LogId {
            leader_id: LeaderId {
                term: 3,
                node_id: 7,
            },
            index,
        };
        {
            let db = Db::open(dir.path()).unwrap();
            let mut log = LogStore::new(Arc::clone(&db));
            let entries = (1..=5).map(|i| openraft::Entry {
                log_id: id(i),
                payload: openraft::EntryPayload::Blank,
            });
            log.append(entries, IOFlushed::noop()).await.unwrap();
            log.purge(id(3)).await.unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(3)));
            assert_eq!(state.last_log_id, Some(id(5)));
            // Read from the recent entries here, from RocksDB after the reopen below.
            let cached = log.try_get_log_entries(4..10).await.unwrap();
            let indexes: Vec<u64> = cached.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, vec![4, 5]);
            drop(log);
            // The sync thread lets go of the database once it sees the channel closed.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::strong_count(&db) > 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the sync thread kept the db"
                );
                std::thread::yield_now();
            }
        }
        let db = Db::open(dir.path()).unwrap();
        let mut log = LogStore::new(db);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(3)));
        assert_eq!(state.last_log_id, Some(id(5)));
        let rest = log.try_get_log_entries(0..10).await.unwrap();
        let indexes: Vec<u64> = rest.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![4, 5]);
    }
}
