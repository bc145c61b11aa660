//! Snapshot files. A snapshot is written from one consistent RocksDB snapshot of the state
//! machine, streamed to lagging members in chunks, verified in full and only then installed.
//!
//! Format: `FLTSNAP1`, a length-prefixed postcard [`SnapshotMeta`], then records
//! (`1`, key length, key, value length, value) and an end mark `0`, then the SHA-256 of
//! everything before it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::types::{decode, encode, io_err, SnapshotMeta};

const MAGIC: &[u8; 8] = b"FLTSNAP1";
const SUFFIX: &str = ".snap";

/// Writes a snapshot file record by record, hashing as it goes.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    tmp: PathBuf,
}

impl SnapshotWriter {
    pub fn create(tmp: PathBuf, meta: &SnapshotMeta) -> io::Result<Self> {
        let out = BufWriter::new(File::create(&tmp)?);
        let mut w = Self {
            out,
            hasher: Sha256::new(),
            tmp,
        };
        w.put(MAGIC)?;
        let meta = encode(meta);
        w.put(&(meta.len() as u32).to_be_bytes())?;
        w.put(&meta)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[1])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }

    /// Seals the file, syncs it and moves it to `path`.
    pub fn finish(mut self, path: &Path) -> io::Result<()> {
        self.put(&[0])?;
        let sum = std::mem::take(&mut self.hasher).finalize();
        self.out.write_all(&sum)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A verified snapshot: its metadata and every key-value pair.
pub struct SnapshotContents {
    pub meta: SnapshotMeta,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes left in the file: a corrupt length cannot make a reader allocate past them.
    remaining: u64,
}

impl<R: Read> HashingReader<R> {
    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file ends {} bytes before a field of {n} bytes",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        let mut buf = vec![0; n];
        self.inner.read_exact(&mut buf)?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    fn len(&mut self) -> io::Result<usize> {
        let b = self.exact(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// Opens a snapshot file and reads its header: the reader, positioned after the metadata.
fn open(path: &Path) -> io::Result<(HashingReader<BufReader<File>>, SnapshotMeta)> {
    let file = File::open(path)?;
    let remaining = file.metadata()?.len();
    let mut r = HashingReader {
        inner: BufReader::new(file),
        hasher: Sha256::new(),
        remaining,
    };
    if r.exact(MAGIC.len())? != MAGIC {
        return Err(io_err(
            "snapshot",
            format!("{} is not a snapshot file", path.display()),
        ));
    }
    let n = r.len()?;
    let meta = decode(&r.exact(n)?).map_err(|e| io_err("snapshot metadata", e))?;
    Ok((r, meta))
}

/// Reads only the metadata of a snapshot file (no verification).
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    Ok(open(path)?.1)
}

/// Reads and verifies a whole snapshot file.
pub fn read(path: &Path) -> io::Result<SnapshotContents> {
    let (mut r, meta) = open(path)?;
    let mut records = Vec::new();
    loop {
        match r.exact(1)?[0] {
            0 => break,
            1 => {
                let klen = r.len()?;
                let key = r.exact(klen)?;
                let vlen = r.len()?;
                let value = r.exact(vlen)?;
                records.push((key, value));
            }
            tag => return Err(io_err("snapshot", format!("unknown record tag {tag}"))),
        }
    }
    let expected = std::mem::take(&mut r.hasher).finalize();
    let mut sum = [0u8; 32];
    r.inner.read_exact(&mut sum)?;
    if sum[..] != expected[..] {
        return Err(io_err(
            "snapshot",
            format!("{} fails its checksum", path.display()),
        ));
    }
    Ok(SnapshotContents { meta, records })
}

/// Verifies a snapshot file in full (format and checksum): the index it is at and its number
/// of keys.
pub fn verify(path: &Path) -> io::Result<(u64, usize)> {
    let contents = read(path)?;
    let index = contents.meta.last_log_id.map_or(0, |l| l.index);
    Ok((index, contents.records.len()))
}

/// The directory of a node's snapshot files.
#[derive(Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of an interrupted build or transfer are never installed.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp" || e == "part") {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(Self { dir })
    }

    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir
            .join(format!("{what}-{:016x}.tmp", rand::random::<u64>()))
    }

    pub fn incoming_path(&self) -> PathBuf {
        self.dir
            .join(format!("incoming-{:016x}.part", rand::random::<u64>()))
    }

    /// The final name of a snapshot: sorted by index, then term.
    pub fn path_for(&self, meta: &SnapshotMeta) -> PathBuf {
        let (index, term) = meta
            .last_log_id
            .as_ref()
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        self.dir
            .join(format!("snap-{index:020}-{term:020}{SUFFIX}"))
    }

    /// The newest snapshot file, if any.
    pub fn current(&self) -> io::Result<Option<PathBuf>> {
        let mut newest: Option<PathBuf> = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snap = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-") && n.ends_with(SUFFIX));
            if is_snap && newest.as_ref().is_none_or(|n| path > *n) {
                newest = Some(path);
            }
        }
        Ok(newest)
    }

    /// Removes every snapshot file but `keep`.
    pub fn prune(&self, keep: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != keep && path.extension().is_some_and(|e| e == "snap") {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId {
                leader_id: openraft::impls::leader_id_adv::LeaderId {
                    term: 3,
                    node_id: 1,
                },
                index,
            }),
            last_membership: StoredMembership::default(),
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::open(dir.path().to_path_buf()).unwrap();
        let m = meta(42);
        let mut w = SnapshotWriter::create(snaps.temp_path("build"), &m).unwrap();
        w.record(b"/a", b"1").unwrap();
        w.record(b"/b", b"22").unwrap();
        let path = snaps.path_for(&m);
        w.finish(&path).unwrap();
        assert_eq!(snaps.current().unwrap(), Some(path.clone()));
        let got = read(&path).unwrap();
        assert_eq!(got.meta, m);
        assert_eq!(
            got.records,
            vec![
                (b"/a".to_vec(), b"1".to_vec()),
                (b"/b".to_vec(), b"22".to_vec())
            ]
        );
        assert_eq!(read_meta(&path).unwrap(), m);

        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(read(&path).is_err());
    }
}
