//! Raft log storage on RocksDB. Appends, votes and truncations are written with `sync` so that
//! an acknowledged entry survives a crash; the RocksDB calls run on the blocking pool.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{
    index_from_key, index_key, Db, CF_LOG, CF_META, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE,
};
use crate::types::{decode, encode, io_err, Entry, LogId, TypeConfig, Vote};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.db.db.get_cf(self.db.cf(CF_META), key) {
            Ok(Some(bytes)) => decode(&bytes)
                .map(Some)
                .map_err(|e| io_err("decode raft metadata", e)),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err("read raft metadata", e)),
        }
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
        let from = index_key(start);
        let iter = self.db.db.iterator_cf(
            self.db.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(|e| io_err("read raft log", e))?;
            let index =
                index_from_key(&key).ok_or_else(|| io_err("read raft log", "malformed key"))?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            out.push(decode(&value).map_err(|e| io_err("decode log entry", e))?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
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
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_LOG);
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry));
        }
        let result = self.write(batch, true).await;
        let reply = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        callback.io_completed(reply);
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(CF_LOG), index_key(from), index_key(u64::MAX));
        self.write(batch, true).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Entries up to `log_id` are in a snapshot built from the state machine, whose writes are
        // not synced one by one: make the shared write-ahead log durable before they go.
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.db.flush_wal(true))
            .await
            .map_err(|e| io_err("flush task", e))?
            .map_err(|e| io_err("flush write-ahead log", e))?;
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
