//! The RocksDB database of one node: column families, the node's identity, and open errors.
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `meta` | `identity`, `vote`, `committed`, `last_purged` | JSON identity, postcard Raft state |
//! | `log` | log index, 8 bytes big-endian | postcard [`crate::types::Entry`] |
//! | `data` | the store's keys | [`flotilla_store::Record`] encoding |
//! | `sm` | `last_applied`, `membership` | postcard state-machine metadata |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};
use serde::{Deserialize, Serialize};

pub const CF_META: &str = "meta";
pub const CF_LOG: &str = "log";
pub const CF_DATA: &str = "data";
pub const CF_SM: &str = "sm";

pub const KEY_IDENTITY: &[u8] = b"identity";
pub const KEY_VOTE: &[u8] = b"vote";
pub const KEY_COMMITTED: &[u8] = b"committed";
pub const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub const KEY_MEMBERSHIP: &[u8] = b"membership";

/// An upper bound above every key of the `data` family: UTF-8 never contains the byte 0xFF.
pub const DATA_END: &[u8] = &[0xff];

/// One write of a batch, kept so that the batch can be made again (a RocksDB `WriteBatch` is
/// consumed by a refused write).
pub enum BatchOp {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

/// Who this node is, kept with its data so that a restart resumes the same member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    pub name: String,
    /// `host:port` of the peer endpoint.
    pub addr: String,
    /// Set once the node has bootstrapped or joined a cluster.
    pub cluster_id: Option<String>,
    /// `host:port` (UDP) of the gossip endpoint.
    #[serde(default)]
    pub gossip_addr: String,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data dir {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {dir} is corrupt (RocksDB: {detail}); restore it from a snapshot or remove it and rejoin")]
    Corrupt { dir: PathBuf, detail: String },
    #[error("data dir {dir} is in use by another process (RocksDB: {detail})")]
    Locked { dir: PathBuf, detail: String },
    #[error("cannot open data dir {dir}: {detail}")]
    Other { dir: PathBuf, detail: String },
    #[error("data dir {dir} holds an unreadable identity record: {detail}")]
    BadIdentity { dir: PathBuf, detail: String },
}

/// The database handle shared by the log store, the state machine and readers.
pub struct Db {
    pub db: DB,
    pub dir: PathBuf,
}

/// The objects' column family: most of its point reads are creates checking that a key is
/// new, so bloom filters (in the memtable and in each table file) answer "absent" without
/// walking the skip list or reading blocks.
fn data_options() -> Options {
    let mut options = Options::default();
    options.set_memtable_prefix_bloom_ratio(0.1);
    options.set_memtable_whole_key_filtering(true);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    options.set_block_based_table_factory(&table);
    options
}

impl Db {
    /// Opens (or creates) the database under `dir/db`.
    pub fn open(dir: &Path) -> Result<Arc<Db>, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        // The state machine's families are written without the write-ahead log (the Raft log
        // is their log): flushing all families together keeps `data` and `last_applied` at
        // the same point on disk.
        opts.set_atomic_flush(true);
        let cfs = [CF_META, CF_LOG, CF_DATA, CF_SM].map(|name| {
            let options = if name == CF_DATA {
                data_options()
            } else {
                Options::default()
            };
            ColumnFamilyDescriptor::new(name, options)
        });
        let db = DB::open_cf_descriptors(&opts, &path, cfs).map_err(|e| classify(dir, e))?;
        Ok(Arc::new(Db {
            db,
            dir: dir.to_path_buf(),
        }))
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // The four families are created on open, so a missing one is a bug, not an input error.
        self.db
            .cf_handle(name)
            .expect("column family created on open")
    }

    pub fn identity(&self) -> Result<Option<Identity>, OpenError> {
        let bad = |detail: String| OpenError::BadIdentity {
            dir: self.dir.clone(),
            detail,
        };
        match self.db.get_cf(self.cf(CF_META), KEY_IDENTITY) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| bad(e.to_string())),
            Err(e) => Err(classify(&self.dir, e)),
        }
    }

    /// Flushes the state machine's families (`data` and `sm`, together) to table files. Its
    /// writes skip the write-ahead log, so until this runs a crash takes them back to the last
    /// flush and openraft applies the entries since then again from the Raft log.
    pub fn persist_state_machine(&self) -> Result<(), rocksdb::Error> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.db
            .flush_cfs_opt(&[self.cf(CF_DATA), self.cf(CF_SM)], &opts)
    }

    /// Writes `ops` from an async task without ever blocking its worker thread on a write
    /// stall: the write is tried with `no_slowdown` (RocksDB refuses at once where it would
    /// wait for a flush or compaction) and, if refused, made on the blocking pool. The fast
    /// path is a memtable insert and an unsynced write to the WAL file, as before; a slow disk
    /// then delays this write, not the node's heartbeats. `wal: false` skips the WAL.
    pub async fn write_unstalled(
        self: &Arc<Self>,
        ops: Vec<BatchOp>,
        wal: bool,
    ) -> std::io::Result<()> {
        let options = move |no_slowdown: bool| {
            let mut o = rocksdb::WriteOptions::default();
            o.disable_wal(!wal);
            o.set_no_slowdown(no_slowdown);
            o
        };
        match self.db.write_opt(self.batch_of(&ops), &options(true)) {
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {
                tracing::debug!("rocksdb write stall: writing on the blocking pool");
                let db = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    db.db
                        .write_opt(db.batch_of(&ops), &options(false))
                        .map_err(std::io::Error::other)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            done => done.map_err(std::io::Error::other),
        }
    }

    fn batch_of(&self, ops: &[BatchOp]) -> rocksdb::WriteBatch {
        let mut batch = rocksdb::WriteBatch::default();
        for op in ops {
            match op {
                BatchOp::Put(cf, key, value) => batch.put_cf(self.cf(cf), key, value),
                BatchOp::Delete(cf, key) => batch.delete_cf(self.cf(cf), key),
            }
        }
        batch
    }

    pub fn save_identity(&self, identity: &Identity) -> Result<(), rocksdb::Error> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        let bytes = serde_json::to_vec(identity).expect("identity serialises to JSON");
        self.db
            .put_cf_opt(self.cf(CF_META), KEY_IDENTITY, bytes, &opts)
    }
}

fn classify(dir: &Path, e: rocksdb::Error) -> OpenError {
    let detail = e.to_string();
    let dir = dir.to_path_buf();
    match e.kind() {
        rocksdb::ErrorKind::Corruption => OpenError::Corrupt { dir, detail },
        _ if detail.contains("lock") || detail.contains("Resource temporarily unavailable") => {
            OpenError::Locked { dir, detail }
        }
        // A truncated or garbled MANIFEST/CURRENT can also surface as an I/O or invalid-argument
        // error; both mean the directory does not hold a usable database.
        rocksdb::ErrorKind::InvalidArgument | rocksdb::ErrorKind::IOError
            if detail.contains("CURRENT")
                || detail.contains("MANIFEST")
                || detail.contains("corrupt") =>
        {
            OpenError::Corrupt { dir, detail }
        }
        _ => OpenError::Other { dir, detail },
    }
}

pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn index_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}
