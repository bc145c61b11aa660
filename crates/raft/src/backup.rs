//! Backup and restore, as every etcd operator expects them.
//!
//! `flotilla snapshot save FILE` asks any node (admin credentials) for a snapshot file of its
//! replica, taken after a read barrier so that it holds every write acknowledged before the
//! call; the file is the format members stream to each other (`snapshot.rs`), checksummed.
//!
//! `flotilla snapshot restore FILE --data-dir D` makes `D` the data dir of a new single-member
//! cluster holding that state, as `etcdutl snapshot restore` does: the file is verified in full
//! first, the directory is built beside `D` and renamed into place only when complete, so a bad
//! file or a failure leaves nothing behind. The objects keep their revisions (the new log
//! starts right after the snapshot's index, so `resourceVersion`s never go back); the old
//! members are forgotten (the node lifecycle then removes their Node objects); the cluster CA
//! is the one in the snapshot, so existing kubeconfigs stay valid, while the cluster id is new,
//! so a member of the old cluster cannot talk Raft to the new one. Others join it as usual.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_pki::files::save_ca;
use flotilla_pki::{CaHash, NodePki};
use flotilla_store::{Proposer, Record, StoreError};
use rocksdb::{WriteBatch, WriteOptions};

use crate::admission::{ca_of, CA_KEY};
use crate::db::{
    Db, Identity, CF_DATA, CF_META, CF_SM, KEY_LAST_APPLIED, KEY_LAST_PURGED, KEY_MEMBERSHIP,
    KEY_VOTE,
};
use crate::node::RaftNode;
use crate::snapshot::{self, SnapshotDir};
use crate::types::{encode, Member, StoredMembership, Vote};

impl RaftNode {
    /// Writes a backup of this node's replica, after a read barrier, to a temporary file; the
    /// caller streams it and removes it. Returns the file and the index it is at.
    pub(crate) async fn write_backup(&self) -> Result<(PathBuf, u64), StoreError> {
        self.read_barrier().await?;
        let db = Arc::clone(&self.replica.db);
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let (meta, _, path) =
                crate::state_machine::write_snapshot(&db, snapshots.temp_path("build"), |_| {
                    snapshots.temp_path("backup")
                })?;
            Ok::<_, io::Error>((path, meta.last_log_id.map_or(0, |l| l.index)))
        })
        .await
        .map_err(StoreError::storage)?
        .map_err(StoreError::storage)
    }
}

/// Where and as whom the restored node will run (the `flotilla node` flags it will be given).
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub name: String,
    pub advertise: IpAddr,
    pub peer_port: u16,
    pub gossip_port: u16,
}

/// What a restore made.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The revision the state is at.
    pub revision: u64,
    pub keys: usize,
    pub node_id: u64,
    pub cluster_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("--data-dir {dir} already exists and is not empty: restore into a new directory")]
    DataDirInUse { dir: PathBuf },
    #[error("{file} is not a usable snapshot: {detail}")]
    BadSnapshot { file: PathBuf, detail: String },
    #[error("cannot write the restored data dir {dir}: {detail}")]
    Write { dir: PathBuf, detail: String },
}

/// Restores `config.file` into the new data dir `config.data_dir`.
pub fn restore(config: &RestoreConfig) -> Result<Restored, RestoreError> {
    let dir = &config.data_dir;
    let in_use = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if in_use || dir.is_file() {
        return Err(RestoreError::DataDirInUse { dir: dir.clone() });
    }
    let bad = |detail: String| RestoreError::BadSnapshot {
        file: config.file.clone(),
        detail,
    };
    let contents = snapshot::read(&config.file).map_err(|e| bad(e.to_string()))?;
    let last = contents
        .meta
        .last_log_id
        .ok_or_else(|| bad("it holds no applied state".into()))?;
    let ca_record = contents
        .records
        .iter()
        .find(|(k, _)| k == CA_KEY.as_bytes())
        .and_then(|(_, v)| Record::decode(v))
        .ok_or_else(|| bad("it holds no cluster CA".into()))?;
    let ca = ca_of(&ca_record.value).map_err(bad)?;

    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write_err = |detail: String| RestoreError::Write {
        dir: dir.clone(),
        detail,
    };
    std::fs::create_dir_all(&parent).map_err(|e| write_err(e.to_string()))?;
    let leaf = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let tmp = parent.join(format!(".{leaf}.restoring-{:016x}", rand::random::<u64>()));
    let built = build(config, &tmp, &contents.records, last, &ca).and_then(|restored| {
        // An empty directory named by --data-dir is replaced.
        if dir.exists() {
            std::fs::remove_dir(dir)?;
        }
        std::fs::rename(&tmp, dir)?;
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(restored)
    });
    built.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        write_err(e.to_string())
    })
}

/// Writes the whole data dir under `tmp`.
fn build(
    config: &RestoreConfig,
    tmp: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    last: crate::types::LogId,
    ca: &flotilla_pki::Ca,
) -> io::Result<Restored> {
    let node_id = rand::random::<u64>().max(1);
    let addr = SocketAddr::new(config.advertise, config.peer_port).to_string();
    let gossip_port = match config.gossip_port {
        0 => config.peer_port,
        p => p,
    };
    let gossip_addr = SocketAddr::new(config.advertise, gossip_port).to_string();
    // A new cluster id (the CA's hash with this restore's node id), so that members of the
    // cluster the backup came from are refused.
    let cluster_id = {
        let hash = CaHash::of_pem(ca.cert_pem()).map_err(io::Error::other)?;
        let id = format!("{hash}{node_id:x}");
        let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(id));
        hex::encode(digest)[..16].to_string()
    };

    let pki = NodePki {
        ca_pem: ca.cert_pem().to_string(),
        node: ca
            .issue_node(&config.name, config.advertise)
            .map_err(io::Error::other)?,
    };
    pki.save(tmp)?;
    save_ca(tmp, ca)?;
    SnapshotDir::open(tmp.join("snapshots"))?;

    let member = Member {
        name: config.name.clone(),
        addr: addr.clone(),
        gossip_addr: gossip_addr.clone(),
    };
    let membership = openraft::Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, member)]),
    )
    .map_err(io::Error::other)?;
    let stored = StoredMembership::new(Some(last), membership);

    let db = Db::open(tmp).map_err(io::Error::other)?;
    let mut batch = WriteBatch::default();
    let data = db.cf(CF_DATA);
    for (key, value) in records {
        batch.put_cf(data, key, value);
    }
    batch.put_cf(db.cf(CF_SM), KEY_LAST_APPLIED, encode(&Some(last)));
    batch.put_cf(db.cf(CF_SM), KEY_MEMBERSHIP, encode(&stored));
    // The log starts after the snapshot; the vote is at its term, so the first election of
    // the new cluster is in a later one.
    batch.put_cf(db.cf(CF_META), KEY_LAST_PURGED, encode(&Some(last)));
    batch.put_cf(
        db.cf(CF_META),
        KEY_VOTE,
        encode(&Vote::new(last.leader_id.term, node_id)),
    );
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.db.write_opt(batch, &opts).map_err(io::Error::other)?;
    db.save_identity(&Identity {
        node_id,
        name: config.name.clone(),
        addr,
        cluster_id: Some(cluster_id.clone()),
        gossip_addr,
    })
    .map_err(io::Error::other)?;
    db.db.flush_wal(true).map_err(io::Error::other)?;
    drop(db);
    Ok(Restored {
        revision: last.index,
        keys: records.len(),
        node_id,
        cluster_id,
    })
}
