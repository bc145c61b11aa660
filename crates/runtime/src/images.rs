//! The node's image store: content-addressed blobs (`blobs/sha256/<hex>`, as in an OCI image
//! layout) and names (`refs.json`: name → manifest digest). Imports read an OCI image archive
//! or a `docker save` archive, or make one layer of a root file system directory; every blob is checked against its digest before it is kept, and
//! a mismatch refuses the whole import, naming the digest. Removing the last name of an image
//! removes the blobs nothing else uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::RuntimeError;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image as `ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub manifest: String,
    /// Bytes of the manifest, config and layers.
    pub size: u64,
}

/// What an image runs by default (its config's `Entrypoint`, `Cmd`, `Env`, `WorkingDir`,
/// `User`) and its digests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// The manifest's digest: what names this image in the store.
    pub manifest: String,
    /// The config's digest: the image id Docker and the kubelet report.
    pub config_digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// The names `reference` may be stored under, most specific first.
pub(crate) fn reference_candidates(reference: &str) -> Vec<String> {
    let short = reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference);
    let mut out = Vec::new();
    for name in [reference, short] {
        out.push(name.to_string());
        let last = name.rsplit('/').next().unwrap_or(name);
        if let Some(untagged) = name.strip_suffix(":latest") {
            out.push(untagged.to_string());
        } else if !last.contains(':') && !name.contains('@') {
            out.push(format!("{name}:latest"));
        }
    }
    out.dedup();
    out
}

pub struct ImageStore {
    pub(crate) root: PathBuf,
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn bad(message: String) -> RuntimeError {
    RuntimeError::Image(message)
}

/// Every regular file of a tar archive, by its path (without a leading `./`).
fn read_archive(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, RuntimeError> {
    let file = fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut files = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("{}: not a tar archive: {e}", path.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("{}: {name}: {e}", path.display())))?;
        files.insert(name, data);
    }
    Ok(files)
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> ImageStore {
        ImageStore { root: root.into() }
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| bad(format!("unsupported digest {digest:?}")))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    pub(crate) fn refs(&self) -> BTreeMap<String, String> {
        fs::read(self.root.join("refs.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), RuntimeError> {
        let tmp = self.root.join("refs.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(refs).expect("refs serialise"),
        )?;
        fs::rename(tmp, self.root.join("refs.json"))?;
        Ok(())
    }

    /// Keeps `bytes` as the blob `digest`, after checking that they are.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(bad(format!(
                "blob {digest} is corrupt: its content hashes to {actual}"
            )));
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        fs::create_dir_all(path.parent().expect("blobs dir"))?;
        let tmp = path.with_extension("tmp");
        fs::File::create(&tmp)?.write_all(bytes)?;
        fs::rename(tmp, path)?;
        Ok(())
    }

    /// Reads a blob back, checking it again.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let bytes =
            fs::read(self.blob_path(digest)?).map_err(|e| bad(format!("blob {digest}: {e}")))?;
        if digest_of(&bytes) != digest {
            return Err(bad(format!("blob {digest} is corrupt in the store")));
        }
        Ok(bytes)
    }

    /// What the image named `reference` runs by default, from its config: `None` when the
    /// store has no such image. A reference without a tag is `:latest`, and Docker Hub's
    /// `docker.io/library/` prefix is optional (`busybox`, `busybox:latest` and
    /// `docker.io/library/busybox:latest` name one image).
    pub fn image_config(&self, reference: &str) -> Result<Option<ImageConfig>, RuntimeError> {
        let Some((_, manifest)) = self.lookup(reference) else {
            return Ok(None);
        };
        let m: serde_json::Value = serde_json::from_slice(&self.blob(&manifest)?)
            .map_err(|e| bad(format!("manifest {manifest}: {e}")))?;
        let config_digest = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("manifest {manifest} has no config")))?;
        let config: serde_json::Value = serde_json::from_slice(&self.blob(config_digest)?)
            .map_err(|e| bad(format!("config {config_digest}: {e}")))?;
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        Ok(Some(ImageConfig {
            manifest,
            config_digest: config_digest.to_string(),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        }))
    }

    /// Imports the image in the archive at `path` (OCI image layout or `docker save`) as
    /// `name`; returns its manifest digest. Nothing is named unless every blob checked out.
    pub fn import(&self, path: &Path, name: &str) -> Result<String, RuntimeError> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad(format!("image name {name:?} is not valid")));
        }
        if path.is_dir() {
            let manifest = self.import_dir(path)?;
            return self.name(name, manifest);
        }
        let files = read_archive(path)?;
        let manifest = if files.contains_key("oci-layout") {
            self.import_oci(&files)?
        } else if files.contains_key("manifest.json") {
            self.import_docker(&files)?
        } else {
            return Err(bad(format!(
                "{}: neither an OCI image layout (oci-layout, index.json) nor a docker save archive (manifest.json)",
                path.display()
            )));
        };
        self.name(name, manifest)
    }

    /// Names `manifest` once its layers are unpacked, as `docker load` does: a pod's first
    /// start then only mounts them, and a layer that cannot be unpacked fails the import.
    fn name(&self, name: &str, manifest: String) -> Result<String, RuntimeError> {
        self.unpack(&manifest)?;
        self.set_ref(name, &manifest)?;
        self.mark_used(&manifest);
        Ok(manifest)
    }

    pub(crate) fn set_ref(&self, name: &str, manifest: &str) -> Result<(), RuntimeError> {
        let mut refs = self.refs();
        refs.insert(name.to_string(), manifest.to_string());
        self.save_refs(&refs)
    }

    /// A root file system directory: one uncompressed layer of everything under it (symlinks
    /// kept as links), a config with the usual `PATH`.
    fn import_dir(&self, dir: &Path) -> Result<String, RuntimeError> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder
            .append_dir_all(".", dir)
            .map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        let layer = builder
            .into_inner()
            .map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        let layer_digest = digest_of(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .expect("config serialises");
        self.store_manifest(&config, &[(layer_digest, &layer)])
    }

    /// Keeps a config and layers (checked already) and an OCI manifest naming them; returns
    /// the manifest's digest.
    fn store_manifest(
        &self,
        config: &[u8],
        layers: &[(String, &Vec<u8>)],
    ) -> Result<String, RuntimeError> {
        let config_digest = digest_of(config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|(d, b)| json!({"mediaType": LAYER_TAR, "digest": d, "size": b.len()})).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        let manifest_digest = digest_of(&manifest_bytes);
        self.put(&config_digest, config)?;
        for (d, b) in layers {
            self.put(d, b)?;
        }
        self.put(&manifest_digest, &manifest_bytes)?;
        Ok(manifest_digest)
    }

    fn import_oci(&self, files: &BTreeMap<String, Vec<u8>>) -> Result<String, RuntimeError> {
        let blob = |digest: &str| -> Result<&Vec<u8>, RuntimeError> {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            files
                .get(&format!("blobs/sha256/{hex}"))
                .ok_or_else(|| bad(format!("the archive lacks blob {digest}")))
        };
        let index: Value = serde_json::from_slice(
            files
                .get("index.json")
                .ok_or_else(|| bad("the archive has no index.json".into()))?,
        )
        .map_err(|e| bad(format!("index.json: {e}")))?;
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| bad("index.json names no manifest".into()))?
            .to_string();
        let manifest_bytes = blob(&digest)?;
        // Check everything before keeping anything.
        let manifest: Value = serde_json::from_slice(manifest_bytes)
            .map_err(|e| bad(format!("manifest {digest}: {e}")))?;
        let mut all = vec![(digest.clone(), manifest_bytes)];
        let config = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad(format!("manifest {digest} has no config")))?;
        all.push((config.to_string(), blob(config)?));
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let d = layer["digest"]
                .as_str()
                .ok_or_else(|| bad(format!("manifest {digest}: a layer without a digest")))?;
            all.push((d.to_string(), blob(d)?));
        }
        for (d, bytes) in &all {
            if digest_of(bytes) != *d {
                return Err(bad(format!(
                    "blob {d} is corrupt: its content hashes to {}",
                    digest_of(bytes)
                )));
            }
        }
        for (d, bytes) in all {
            self.put(&d, bytes)?;
        }
        Ok(digest)
    }

    /// `docker save`: `manifest.json` names a config file and layer tars; they become an OCI
    /// manifest with uncompressed layers.
    fn import_docker(&self, files: &BTreeMap<String, Vec<u8>>) -> Result<String, RuntimeError> {
        let list: Value = serde_json::from_slice(&files["manifest.json"])
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let entry = &list[0];
        let file = |name: &str| {
            files
                .get(name)
                .ok_or_else(|| bad(format!("the archive lacks {name}")))
        };
        let config_name = entry["Config"]
            .as_str()
            .ok_or_else(|| bad("manifest.json names no Config".into()))?;
        let config = file(config_name)?;
        let config_digest = digest_of(config);
        // Newer docker saves name blobs by digest: they must match.
        if let Some(hex) = config_name.strip_prefix("blobs/sha256/") {
            if !config_digest.ends_with(hex) {
                return Err(bad(format!(
                    "blob sha256:{hex} is corrupt: its content hashes to {config_digest}"
                )));
            }
        }
        let config_json: Value =
            serde_json::from_slice(config).map_err(|e| bad(format!("{config_name}: {e}")))?;
        let diff_ids: Vec<String> = config_json["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut layers = Vec::new();
        for (i, name) in entry["Layers"].as_array().into_iter().flatten().enumerate() {
            let name = name.as_str().unwrap_or_default();
            let bytes = file(name)?;
            let digest = digest_of(bytes);
            // The config's diff_ids are the layers' digests (uncompressed tars).
            if let Some(expected) = diff_ids.get(i).filter(|d| **d != digest) {
                return Err(bad(format!(
                    "blob {expected} is corrupt: its content hashes to {digest}"
                )));
            }
            layers.push((digest, bytes));
        }
        self.store_manifest(config, &layers)
    }

    /// The blobs an image's manifest names, with itself.
    pub(crate) fn blobs_of(&self, manifest: &str) -> Result<Vec<(String, u64)>, RuntimeError> {
        let bytes = self.blob(manifest)?;
        let mut out = vec![(manifest.to_string(), bytes.len() as u64)];
        out.extend(
            ImageStore::manifest_blobs(&bytes)?
                .into_iter()
                .map(|(d, size)| (d, size.unwrap_or(0))),
        );
        Ok(out)
    }

    pub fn list(&self) -> Result<Vec<Image>, RuntimeError> {
        self.refs()
            .into_iter()
            .map(|(name, manifest)| {
                let size = self.blobs_of(&manifest)?.iter().map(|(_, s)| s).sum();
                Ok(Image {
                    name,
                    manifest,
                    size,
                })
            })
            .collect()
    }

    /// Removes the name `name`, then every blob no remaining image uses.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let mut refs = self.refs();
        if refs.remove(name).is_none() {
            return Err(bad(format!("no image named {name}")));
        }
        self.save_refs(&refs)?;
        let mut pulled = self.pulled();
        if pulled.remove(name) {
            fs::write(
                self.root.join("pulled.json"),
                serde_json::to_vec(&pulled).expect("names serialise"),
            )?;
        }
        let mut used = BTreeSet::new();
        for manifest in self.manifests_in_use() {
            used.extend(self.blobs_of(&manifest)?.into_iter().map(|(d, _)| d));
        }
        let dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !used.contains(&digest) {
                fs::remove_file(entry.path())?;
            }
        }
        self.collect_layers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// An OCI archive with one layer holding `hello`; returns (archive, manifest digest).
    fn oci_archive(layer_content: &[u8]) -> (Vec<u8>, String, String) {
        let layer = tar_of(&[("hello", layer_content)]);
        let layer_d = digest_of(&layer);
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_d]}})).unwrap();
        let config_d = digest_of(&config);
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_d, "size": config.len()},
            "layers": [{"mediaType": LAYER_TAR, "digest": layer_d, "size": layer.len()}]}))
        .unwrap();
        let manifest_d = digest_of(&manifest);
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{"mediaType": MANIFEST, "digest": manifest_d, "size": manifest.len()}]})).unwrap();
        let hex = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let archive = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
            (&hex(&manifest_d), &manifest),
            (&hex(&config_d), &config),
            (&hex(&layer_d), &layer),
        ]);
        (archive, manifest_d, layer_d)
    }

    #[test]
    fn oci_archives_import_and_corrupt_blobs_are_refused_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("store"));
        let (archive, manifest, layer) = oci_archive(b"hi\n");
        let path = dir.path().join("image.tar");
        fs::write(&path, &archive).unwrap();
        assert_eq!(store.import(&path, "busybox:1").unwrap(), manifest);
        let images = store.list().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(
            (images[0].name.as_str(), images[0].manifest.as_str()),
            ("busybox:1", manifest.as_str())
        );
        assert!(store.blob(&layer).is_ok());
        // Flip a byte of the layer's content inside the archive.
        let mut corrupt = archive.clone();
        let at = corrupt.windows(3).position(|w| w == b"hi\n").unwrap();
        corrupt[at] = b'H';
        fs::write(&path, &corrupt).unwrap();
        let fresh = ImageStore::new(dir.path().join("other"));
        let err = fresh.import(&path, "bad").unwrap_err().to_string();
        assert!(err.contains(&format!("blob {layer} is corrupt")), "{err}");
        assert!(
            fresh.list().unwrap().is_empty(),
            "nothing is named after a refused import"
        );
        // Removing the last name removes the blobs.
        store.remove("busybox:1").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("store/blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn garbage_collection_removes_unused_images_and_keeps_leased_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("store"));
        let path = dir.path().join("image.tar");
        let mut manifests = Vec::new();
        for (name, content) in [("kept", &b"one\n"[..]), ("gone", &b"two\n"[..])] {
            let (archive, manifest, _) = oci_archive(content);
            fs::write(&path, &archive).unwrap();
            store.import(&path, name).unwrap();
            manifests.push(manifest);
        }
        // A container's root holds "kept".
        fs::create_dir_all(dir.path().join("store/leases")).unwrap();
        fs::write(dir.path().join("store/leases/c1"), &manifests[0]).unwrap();
        let policy = crate::gc::GcPolicy {
            high_percent: 85,
            low_percent: 0,
            min_age: std::time::Duration::ZERO,
        };
        let now = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        // Plenty of room: nothing goes.
        assert!(store
            .collect_garbage(policy, (100, 50), now)
            .unwrap()
            .is_empty());
        assert_eq!(
            store.collect_garbage(policy, (100, 0), now).unwrap(),
            ["gone"]
        );
        let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["kept"]);
        assert!(
            !store.has_blob(&manifests[1]),
            "the removed image's blobs go"
        );
        assert!(store.has_blob(&manifests[0]));
        // Too recent to go, however full.
        let young = crate::gc::GcPolicy {
            min_age: std::time::Duration::from_secs(3600),
            ..policy
        };
        fs::remove_file(dir.path().join("store/leases/c1")).unwrap();
        assert!(store
            .collect_garbage(young, (100, 0), now)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn docker_save_archives_become_oci_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("store"));
        let layer = tar_of(&[("bin/sh", b"#!")]);
        let config = serde_json::to_vec(
            &json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]}}),
        )
        .unwrap();
        let manifest = serde_json::to_vec(&json!([{"Config": "abc.json", "RepoTags": ["busybox:latest"], "Layers": ["l1/layer.tar"]}])).unwrap();
        let archive = tar_of(&[
            ("manifest.json", &manifest),
            ("abc.json", &config),
            ("l1/layer.tar", &layer),
        ]);
        let path = dir.path().join("save.tar");
        fs::write(&path, archive).unwrap();
        let digest = store.import(&path, "busybox").unwrap();
        let m: Value = serde_json::from_slice(&store.blob(&digest).unwrap()).unwrap();
        assert_eq!(m["layers"][0]["digest"], digest_of(&layer));
        assert_eq!(m["config"]["digest"], digest_of(&config));
        let bad_config = serde_json::to_vec(&json!({"rootfs": {"diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}})).unwrap();
        let archive = tar_of(&[
            ("manifest.json", &manifest),
            ("abc.json", &bad_config),
            ("l1/layer.tar", &layer),
        ]);
        fs::write(&path, archive).unwrap();
        let err = store.import(&path, "bad").unwrap_err().to_string();
        assert!(err.contains("blob sha256:0000000000000000000000000000000000000000000000000000000000000000 is corrupt"), "{err}");
    }
}
