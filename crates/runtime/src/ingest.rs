//! Blobs that arrive as a stream (from a registry or a peer node): written to
//! `ingest/<hex>` while hashed, kept only when their digest and size check out, and resumed
//! from what a broken transfer left. An image is named only once its manifest and every blob
//! it names are kept, so a pull that fails half way names nothing.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::images::{bad, ImageStore};
use crate::RuntimeError;

/// A blob being received.
pub struct Ingest {
    digest: String,
    partial: PathBuf,
    target: PathBuf,
    file: fs::File,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    /// Bytes already received (a resumed transfer asks for the rest from here).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends all of `reader`.
    pub fn copy_from(&mut self, reader: &mut dyn Read) -> Result<(), RuntimeError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.write(&buf[..n])?;
        }
    }

    /// Starts over: what was received is dropped (a source that cannot resume).
    pub fn restart(&mut self) -> Result<(), RuntimeError> {
        self.file = fs::File::create(&self.partial)?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Keeps the blob if it is `size` bytes (when known) hashing to its digest; otherwise
    /// drops what was received and says what was wrong.
    pub fn commit(self, size: Option<u64>) -> Result<(), RuntimeError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        let wrong = if actual != self.digest {
            Some(format!(
                "blob {} is corrupt: its content hashes to {actual}",
                self.digest
            ))
        } else {
            size.filter(|s| *s != self.written).map(|s| {
                format!(
                    "blob {} is {} bytes, not the {s} its manifest says",
                    self.digest, self.written
                )
            })
        };
        if let Some(message) = wrong {
            let _ = fs::remove_file(&self.partial);
            return Err(bad(message));
        }
        self.file.sync_all()?;
        fs::rename(&self.partial, &self.target)?;
        Ok(())
    }
}

impl ImageStore {
    /// Whether the store keeps blob `digest`.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// The file of blob `digest` as kept (not checked: a reader checks what it receives).
    pub fn open_blob(&self, digest: &str) -> Result<(fs::File, u64), RuntimeError> {
        let path = self.blob_path(digest)?;
        let file = fs::File::open(&path).map_err(|e| bad(format!("blob {digest}: {e}")))?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// Receives blob `digest`, from where an earlier attempt stopped.
    pub fn ingest(&self, digest: &str) -> Result<Ingest, RuntimeError> {
        let target = self.blob_path(digest)?;
        let dir = self.root.join("ingest");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(target.parent().expect("blobs dir"))?;
        let partial = dir.join(target.file_name().expect("a blob has a name"));
        let mut hasher = Sha256::new();
        let mut written = 0;
        if let Ok(mut existing) = fs::File::open(&partial) {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = existing.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                written += n as u64;
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)?;
        Ok(Ingest {
            digest: digest.to_string(),
            partial,
            target,
            file,
            hasher,
            written,
        })
    }

    /// The config and layers (digest, size) manifest `bytes` names.
    pub fn manifest_blobs(bytes: &[u8]) -> Result<Vec<(String, Option<u64>)>, RuntimeError> {
        let m: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("a manifest: {e}")))?;
        let mut out = Vec::new();
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
            let digest = d["digest"]
                .as_str()
                .ok_or_else(|| bad("a manifest names a blob without a digest".into()))?;
            out.push((digest.to_string(), d["size"].as_u64()));
        }
        if out.len() < 2 {
            return Err(bad("a manifest without layers".into()));
        }
        Ok(out)
    }

    /// Names `manifest` (kept, with every blob it names) `name`, after unpacking its layers;
    /// `pulled` records that it came from a registry (`imagePullPolicy: Always` asks the
    /// registry again for such a name; an imported name is the cluster's own).
    pub fn name_received(
        &self,
        name: &str,
        manifest: &str,
        pulled: bool,
    ) -> Result<(), RuntimeError> {
        let bytes = self.blob(manifest)?;
        for (digest, _) in ImageStore::manifest_blobs(&bytes)? {
            if !self.has_blob(&digest) {
                return Err(bad(format!(
                    "manifest {manifest} names blob {digest}, which is not here"
                )));
            }
        }
        self.unpack(manifest)?;
        let mut pulled_names = self.pulled();
        if pulled {
            pulled_names.insert(name.to_string());
        } else {
            pulled_names.remove(name);
        }
        let tmp = self.root.join("pulled.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec(&pulled_names).expect("names serialise"),
        )?;
        fs::rename(tmp, self.root.join("pulled.json"))?;
        self.set_ref(name, manifest)
    }

    /// The names that came from a registry.
    pub fn pulled(&self) -> BTreeSet<String> {
        fs::read(self.root.join("pulled.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The manifest digest the name `reference` (or one of its spellings) has here.
    pub fn lookup(&self, reference: &str) -> Option<(String, String)> {
        let refs = self.refs();
        crate::images::reference_candidates(reference)
            .into_iter()
            .find_map(|r| refs.get(&r).map(|m| (r, m.clone())))
    }
}
