//! Credential files: private keys and tokens are written with mode 0600, atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::{Ca, Credential};
use crate::PkiError;

/// Writes `contents` to `path` readable by the owner only, replacing any old file atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o600)
}

/// Writes a public file (certificates) atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    // The mode given to open is filtered by the umask; set it exactly.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The CA's key is kept by the node that created it, under `DATA_DIR/pki/ca.key`.
pub fn save_ca(data_dir: &Path, ca: &Ca) -> std::io::Result<()> {
    let dir = NodePki::dir(data_dir);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    write_private(&dir.join("ca.key"), ca.credential().key_pem.as_bytes())?;
    write_public(&dir.join("ca.crt"), ca.credential().cert_pem.as_bytes())
}

/// The CA, if this node holds its key.
pub fn load_ca(data_dir: &Path) -> Result<Option<Ca>, PkiError> {
    let dir = NodePki::dir(data_dir);
    let key_pem = match fs::read_to_string(dir.join("ca.key")) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PkiError::Pem(format!("cannot read ca.key: {e}"))),
    };
    let cert_pem = fs::read_to_string(dir.join("ca.crt"))
        .map_err(|e| PkiError::Pem(format!("cannot read ca.crt: {e}")))?;
    Ca::from_pem(Credential { cert_pem, key_pem }).map(Some)
}

/// A node's own credentials, under `DATA_DIR/pki`.
#[derive(Clone, Debug)]
pub struct NodePki {
    pub ca_pem: String,
    pub node: Credential,
}

impl NodePki {
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("pki")
    }

    /// Loads the node's credentials; `Ok(None)` when there are none yet.
    pub fn load(data_dir: &Path) -> std::io::Result<Option<NodePki>> {
        let dir = Self::dir(data_dir);
        let read = |name: &str| fs::read_to_string(dir.join(name));
        match read("ca.crt") {
            Ok(ca_pem) => Ok(Some(NodePki {
                ca_pem,
                node: Credential {
                    cert_pem: read("node.crt")?,
                    key_pem: read("node.key")?,
                },
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves the credentials; `ca.crt` last, since its presence marks them complete.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let dir = Self::dir(data_dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        write_private(&dir.join("node.key"), self.node.key_pem.as_bytes())?;
        write_public(&dir.join("node.crt"), self.node.cert_pem.as_bytes())?;
        write_public(&dir.join("ca.crt"), self.ca_pem.as_bytes())
    }

    /// The chain a node presents: its certificate, then the CA (so joining nodes can pin it).
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.node.cert_pem, self.ca_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let pki = NodePki {
            ca_pem: "CA".into(),
            node: Credential {
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            },
        };
        assert!(NodePki::load(dir.path()).unwrap().is_none());
        pki.save(dir.path()).unwrap();
        let key = NodePki::dir(dir.path()).join("node.key");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = NodePki::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.node.key_pem, "KEY");
        assert_eq!(loaded.chain_pem(), "CERTCA");
    }
}
