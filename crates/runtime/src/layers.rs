//! Images as root file systems. Each layer is unpacked once into `layers/sha256/<hex>` (plain
//! or gzip tar; OCI whiteouts become overlay whiteouts: `.wh.NAME` a 0:0 character device,
//! `.wh..wh..opq` the opaque attribute on its directory) and shared read-only by every
//! container of every image that has it. A container's root is an overlay of its image's
//! layers with its own upper and work directories, so what it writes never reaches a layer.
//! A mounted root holds a lease (`leases/<id>`: the manifest digest) so that removing the
//! image does not pull the layers from under it; layers no image and no lease uses are
//! removed.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::images::{bad, ImageStore};
use crate::RuntimeError;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// `path` inside a layer, refused if it could leave it (`..`, absolute after `./`).
fn inside(path: &Path) -> Result<PathBuf, RuntimeError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(bad(format!(
                    "layer entry {} leaves the layer",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Unpacks the tar (plain or gzip) `bytes` into `dir`, turning whiteouts into overlay's.
fn unpack_into(bytes: &[u8], dir: &Path, digest: &str) -> Result<(), RuntimeError> {
    let reader: Box<dyn Read + '_> = match bytes {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(bytes)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            return Err(bad(format!(
                "layer {digest} is zstd-compressed, which is not supported yet"
            )))
        }
        _ => Box::new(bytes),
    };
    let layer_err = |e: std::io::Error| {
        // tar's errors hide their cause behind `source`.
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        bad(format!("layer {digest}: {message}"))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(layer_err)? {
        let mut entry = entry.map_err(layer_err)?;
        let path = inside(&entry.path().map_err(layer_err)?)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dir.join(path.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            fs::create_dir_all(&parent)?;
            flotilla_sys::fs::set_opaque(&parent)?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            fs::create_dir_all(&parent)?;
            flotilla_sys::fs::whiteout(&parent.join(hidden))?;
        } else if !entry.unpack_in(dir).map_err(layer_err)? {
            return Err(bad(format!(
                "layer {digest}: entry {} leaves the layer",
                path.display()
            )));
        }
    }
    Ok(())
}

impl ImageStore {
    fn layer_dir(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        let blob = self.blob_path(digest)?;
        Ok(self
            .root
            .join("layers/sha256")
            .join(blob.file_name().expect("a blob has a name")))
    }

    /// The manifest digest of `image`: a name, or a digest the store holds.
    pub fn resolve(&self, image: &str) -> Result<String, RuntimeError> {
        if let Some(m) = self.refs().get(image) {
            return Ok(m.clone());
        }
        if image.starts_with("sha256:") && self.blob_path(image)?.exists() {
            return Ok(image.to_string());
        }
        Err(bad(format!("no image named {image}")))
    }

    fn manifest(&self, digest: &str) -> Result<Value, RuntimeError> {
        serde_json::from_slice(&self.blob(digest)?)
            .map_err(|e| bad(format!("manifest {digest}: {e}")))
    }

    /// Unpacks the layers of the image whose manifest is `manifest` that are not unpacked
    /// yet; returns their directories top first (overlay's order of lower directories).
    pub fn unpack(&self, manifest: &str) -> Result<Vec<PathBuf>, RuntimeError> {
        let m = self.manifest(manifest)?;
        let mut dirs = Vec::new();
        for layer in m["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"]
                .as_str()
                .ok_or_else(|| bad(format!("manifest {manifest}: a layer without a digest")))?;
            let dir = self.layer_dir(digest)?;
            if !dir.exists() {
                // Unpacked aside, then renamed: a layer directory is complete or absent.
                let parent = dir.parent().expect("layers dir");
                fs::create_dir_all(parent)?;
                let tmp = tempfile::Builder::new()
                    .prefix(".unpack-")
                    .tempdir_in(parent)?;
                unpack_into(&self.blob(digest)?, tmp.path(), digest)?;
                match fs::rename(tmp.path(), &dir) {
                    Ok(()) => {
                        let _ = tmp.keep();
                    }
                    // Another import unpacked it meanwhile: theirs is as good.
                    Err(_) if dir.exists() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            dirs.push(dir);
        }
        if dirs.is_empty() {
            return Err(bad(format!("image {manifest} has no layers")));
        }
        dirs.reverse();
        Ok(dirs)
    }

    /// The manifests of named images and of leased roots.
    pub(crate) fn manifests_in_use(&self) -> BTreeSet<String> {
        let mut manifests: BTreeSet<String> = self.refs().into_values().collect();
        for entry in fs::read_dir(self.root.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(m) = fs::read_to_string(entry.path()) {
                manifests.insert(m);
            }
        }
        manifests
    }

    fn lease_path(&self, lease: &str) -> PathBuf {
        self.root.join("leases").join(lease)
    }

    /// Mounts `image` as a container's root at `dir/rootfs`, writes going to `dir/upper`;
    /// `lease` (the container's id) keeps the layers until [`ImageStore::unmount_rootfs`].
    pub fn mount_rootfs(
        &self,
        image: &str,
        dir: &Path,
        lease: &str,
    ) -> Result<PathBuf, RuntimeError> {
        let manifest = self.resolve(image)?;
        fs::create_dir_all(self.root.join("leases"))?;
        fs::write(self.lease_path(lease), &manifest)?;
        self.mark_used(&manifest);
        let mounted = (|| {
            let lowers = self.unpack(&manifest)?;
            let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
            for d in [&upper, &work, &rootfs] {
                fs::create_dir_all(d)?;
            }
            flotilla_sys::fs::mount_overlay(&lowers, &upper, &work, &rootfs)?;
            Ok(rootfs)
        })();
        if mounted.is_err() {
            let _ = fs::remove_file(self.lease_path(lease));
        }
        mounted
    }

    /// Unmounts the root [`ImageStore::mount_rootfs`] made in `dir`, drops the lease and
    /// removes the layers nothing uses any more.
    pub fn unmount_rootfs(&self, dir: &Path, lease: &str) -> Result<(), RuntimeError> {
        flotilla_sys::fs::unmount(&dir.join("rootfs"))?;
        match fs::remove_file(self.lease_path(lease)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.collect_layers()
    }

    /// Removes every unpacked layer that no named image and no lease uses.
    pub fn collect_layers(&self) -> Result<(), RuntimeError> {
        let mut used = BTreeSet::new();
        for m in &self.manifests_in_use() {
            let Ok(manifest) = self.manifest(m) else {
                continue;
            };
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                if let Some(d) = layer["digest"].as_str() {
                    used.insert(self.layer_dir(d)?);
                }
            }
        }
        for entry in fs::read_dir(self.root.join("layers/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let unpacking = entry.file_name().to_string_lossy().starts_with('.');
            if !unpacking && !used.contains(&path) {
                fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }
}
