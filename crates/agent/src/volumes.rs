//! A pod's volumes on the node, under `PODS/<uid>/volumes/<name>`: `emptyDir` (a directory, or
//! a tmpfs with `medium: Memory`), `configMap`, `secret`, `downwardAPI` and `projected` (files
//! written as the kubelet writes them: a timestamped directory, a `..data` symlink swapped
//! atomically to it, and each file a symlink through `..data`, so a reader sees an update
//! whole or not at all), and `hostPath` (the host's path, checked against its `type`).
//! Secrets live on a tmpfs, never on disk. What a volume holds is a pure function of the pod
//! and the replica ([`content`]); [`Volumes::write`] puts it on the node.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};

use crate::env::{ConfigError, Lookup, Runtime};

/// What a volume is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// An empty directory kept for the pod's life; on a tmpfs of at most this many bytes when
    /// set (`medium: Memory`).
    EmptyDir { memory: bool, size: Option<u64> },
    /// Files (path → bytes, mode), on a tmpfs when `secret`.
    Files {
        files: BTreeMap<String, (Vec<u8>, u32)>,
        secret: bool,
    },
    /// A path of the host, bound as it is.
    HostPath(PathBuf),
}

fn items(
    data: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ConfigError> {
    let mut out = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        let m = item.mode.map(|m| m as u32).unwrap_or(mode);
                        out.insert(item.path.clone(), (v.clone(), m));
                    }
                    None if optional => {}
                    None => {
                        return Err(ConfigError(format!(
                            "configured to use key {} of {what}, which does not have it",
                            item.key
                        )))
                    }
                }
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), mode));
            }
        }
    }
    Ok(out)
}

fn downward_field(pod: &Pod, path: &str, rt: &Runtime) -> Result<Vec<u8>, ConfigError> {
    let var = k8s_openapi::api::core::v1::EnvVar {
        name: "x".into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = k8s_openapi::api::core::v1::Container {
        name: "x".into(),
        env: Some(vec![var]),
        ..Default::default()
    };
    struct None_;
    impl Lookup for None_ {
        fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            None
        }
        fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            None
        }
    }
    let node = crate::resources::NodeCapacity {
        cpus: 1,
        memory_bytes: 0,
    };
    let env = crate::env::environment(pod, &c, &None_, rt, &node)?;
    Ok(env
        .into_iter()
        .next()
        .map(|(_, v)| v.into_bytes())
        .unwrap_or_default())
}

/// The files a configMap or secret source gives: its keys (or the `items` chosen), nothing
/// when it is missing and optional.
#[allow(clippy::too_many_arguments)]
fn source_files(
    data: Option<BTreeMap<String, Vec<u8>>>,
    kind: &str,
    ns: &str,
    name: &str,
    chosen: &Option<Vec<KeyToPath>>,
    mode: u32,
    optional: bool,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ConfigError> {
    match data {
        Some(data) => items(
            &data,
            chosen,
            mode,
            &format!("{kind} {ns}/{name}"),
            optional,
        ),
        None if optional => Ok(BTreeMap::new()),
        None => Err(ConfigError(format!(
            "{} \"{name}\" not found",
            kind.to_lowercase()
        ))),
    }
}

/// The files of downward API items.
fn downward_files(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    mode: u32,
    rt: &Runtime,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>, ConfigError> {
    let mut files = BTreeMap::new();
    for item in items {
        let Some(f) = &item.field_ref else { continue };
        let m = item.mode.map(|m| m as u32).unwrap_or(mode);
        files.insert(
            item.path.clone(),
            (downward_field(pod, &f.field_path, rt)?, m),
        );
    }
    Ok(files)
}

/// What volume `v` of `pod` holds now.
pub fn content(
    pod: &Pod,
    v: &Volume,
    lookup: &dyn Lookup,
    rt: &Runtime,
) -> Result<Content, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mode_of = |m: Option<i32>| m.unwrap_or(0o644) as u32;
    if let Some(e) = &v.empty_dir {
        return Ok(Content::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
            size: e
                .size_limit
                .as_ref()
                .and_then(|q| crate::resources::parse_quantity(&q.0)),
        });
    }
    if let Some(c) = &v.config_map {
        let data = lookup.config_map(ns, &c.name);
        let mode = mode_of(c.default_mode);
        let optional = c.optional == Some(true);
        let files = source_files(data, "ConfigMap", ns, &c.name, &c.items, mode, optional)?;
        return Ok(Content::Files {
            files,
            secret: false,
        });
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = lookup.secret(ns, &name);
        let mode = mode_of(s.default_mode);
        let optional = s.optional == Some(true);
        let files = source_files(data, "Secret", ns, &name, &s.items, mode, optional)?;
        return Ok(Content::Files {
            files,
            secret: true,
        });
    }
    if let Some(d) = &v.downward_api {
        let items = d.items.as_deref().unwrap_or_default();
        return Ok(Content::Files {
            files: downward_files(pod, items, mode_of(d.default_mode), rt)?,
            secret: false,
        });
    }
    if let Some(p) = &v.projected {
        let mode = mode_of(p.default_mode);
        let mut files = BTreeMap::new();
        let mut secret = false;
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                let data = lookup.config_map(ns, &c.name);
                let optional = c.optional == Some(true);
                files.extend(source_files(
                    data,
                    "ConfigMap",
                    ns,
                    &c.name,
                    &c.items,
                    mode,
                    optional,
                )?);
            }
            if let Some(s) = &source.secret {
                secret = true;
                let data = lookup.secret(ns, &s.name);
                let optional = s.optional == Some(true);
                files.extend(source_files(
                    data, "Secret", ns, &s.name, &s.items, mode, optional,
                )?);
            }
            if let Some(d) = &source.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                files.extend(downward_files(pod, items, mode, rt)?);
            }
        }
        return Ok(Content::Files { files, secret });
    }
    if let Some(h) = &v.host_path {
        return Ok(Content::HostPath(PathBuf::from(&h.path)));
    }
    Err(ConfigError(format!(
        "volume {:?} has a type this node does not support",
        v.name
    )))
}

/// Checks (and, for the `OrCreate` types, makes) a `hostPath` of `type`.
pub fn check_host_path(path: &Path, kind: &str) -> Result<(), ConfigError> {
    let meta = fs::metadata(path);
    let fail = |what: &str| {
        Err(ConfigError(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        )))
    };
    use std::os::unix::fs::FileTypeExt;
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                fs::create_dir_all(path)
                    .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(0o755)))
                    .map_err(|e| ConfigError(format!("hostPath {}: {e}", path.display())))?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = path.parent() {
                    let _ = fs::create_dir_all(parent);
                }
                fs::File::create(path)
                    .map_err(|e| ConfigError(format!("hostPath {}: {e}", path.display())))?;
            }
            Ok(())
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => fail("a directory"),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => fail("a file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => fail("a socket"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => fail("a character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => fail("a block device"),
        },
        other => Err(ConfigError(format!("unknown hostPath type {other:?}"))),
    }
}

/// Where a node keeps its pods' volumes, and whether it may mount tmpfs (it runs as root).
#[derive(Clone, Debug)]
pub struct Volumes {
    pub root: PathBuf,
    pub mounts: bool,
}

const DATA: &str = "..data";

impl Volumes {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    pub fn dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes").join(volume)
    }

    fn mount_tmpfs(&self, dir: &Path, size: Option<u64>, mode: u32) -> io::Result<()> {
        if !self.mounts || is_mount_point(dir) {
            return Ok(());
        }
        let mut data = format!("mode={mode:o}");
        if let Some(s) = size {
            data.push_str(&format!(",size={s}"));
        }
        flotilla_sys::fs::mount_tmpfs(dir, &data).map_err(io::Error::other)
    }

    /// Puts `content` in place for volume `name` of pod `uid` (again: an update). Returns the
    /// path to mount into containers.
    pub fn write(&self, uid: &str, name: &str, content: &Content) -> io::Result<PathBuf> {
        let dir = self.dir(uid, name);
        match content {
            Content::HostPath(p) => return Ok(p.clone()),
            Content::EmptyDir { memory, size } => {
                fs::create_dir_all(&dir)?;
                if *memory {
                    self.mount_tmpfs(&dir, *size, 0o777)?;
                }
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
            }
            Content::Files { files, secret } => {
                fs::create_dir_all(&dir)?;
                if *secret {
                    self.mount_tmpfs(&dir, None, 0o755)?;
                }
                write_atomically(&dir, files)?;
            }
        }
        Ok(dir)
    }

    /// Where pod `uid`'s container bundles (`NAME/config.json`) are written: a tmpfs of its
    /// own (when mounts are allowed), because a config holds the container's environment,
    /// secrets included, which never go to disk.
    pub fn bundles(&self, uid: &str) -> io::Result<PathBuf> {
        let dir = self.pod_dir(uid).join("bundles");
        fs::create_dir_all(&dir)?;
        if self.mounts && !is_mount_point(&dir) {
            flotilla_sys::fs::mount_tmpfs(&dir, "mode=700,size=4m").map_err(io::Error::other)?;
        }
        Ok(dir)
    }

    /// Removes everything of pod `uid`: unmounts its tmpfs volumes and bundles, then its
    /// directory.
    pub fn remove(&self, uid: &str) -> io::Result<()> {
        let dir = self.pod_dir(uid);
        let volumes = fs::read_dir(dir.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        for path in volumes.chain([dir.join("bundles")]) {
            if is_mount_point(&path) {
                flotilla_sys::fs::unmount(&path).map_err(io::Error::other)?;
            }
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The pods that have a directory here.
    pub fn pods(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    }
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(dir), dir.parent().map(fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Writes `files` into `dir` as the kubelet's atomic writer does: the files go to a new
/// `..<timestamp>` directory, `..data` is swapped to it by a rename, each top-level name is a
/// symlink through `..data`, and the old directory and names no longer wanted go. Nothing
/// changes when the content is the same.
pub fn write_atomically(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> io::Result<()> {
    let current = dir.join(DATA);
    if let Ok(target) = fs::read_link(&current) {
        let old = dir.join(&target);
        if same_content(&old, files) {
            return Ok(());
        }
    }
    for path in files.keys() {
        if path.split('/').any(|p| p == ".." || p.is_empty()) || path.starts_with("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("volume file path {path:?} must be relative and stay inside"),
            ));
        }
    }
    let stamp = format!(
        "..{}.{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        rand::random::<u32>()
    );
    let new = dir.join(&stamp);
    fs::create_dir(&new)?;
    for (path, (bytes, mode)) in files {
        let file = new.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&file, bytes)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    let old = fs::read_link(&current).ok();
    fs::rename(&tmp, &current)?;
    // The top-level names: a symlink through ..data for each wanted, none for the rest.
    let wanted: std::collections::BTreeSet<String> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect();
    for top in &wanted {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA).join(top), &link)?;
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn same_content(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> bool {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            count += 1;
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some((bytes, mode)) = files.get(&rel) else {
                return false;
            };
            let same_mode = fs::metadata(&p)
                .map(|m| m.permissions().mode() & 0o7777 == *mode)
                .unwrap_or(false);
            if !same_mode || fs::read(&p).ok().as_ref() != Some(bytes) {
                return false;
            }
        }
    }
    count == files.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_update_swaps_the_data_link_and_keeps_only_wanted_names() {
        let dir = tempfile::tempdir().unwrap();
        let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, (Vec<u8>, u32)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
                .collect()
        };
        write_atomically(dir.path(), &files(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "1");
        let first = fs::read_link(dir.path().join(DATA)).unwrap();
        // The same content changes nothing.
        write_atomically(dir.path(), &files(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(fs::read_link(dir.path().join(DATA)).unwrap(), first);
        // An update: new value, one name gone, the old directory gone.
        write_atomically(dir.path(), &files(&[("a", "one")])).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "one");
        assert!(fs::symlink_metadata(dir.path().join("b")).is_err());
        assert!(!dir.path().join(&first).exists());
        assert_eq!(
            fs::read_link(dir.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
        assert!(write_atomically(dir.path(), &files(&[("../x", "1")])).is_err());
    }

    struct Maps;
    impl Lookup for Maps {
        fn config_map(&self, _: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (name == "cfg").then(|| BTreeMap::from([("k".to_string(), b"v".to_vec())]))
        }
        fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            None
        }
    }

    #[test]
    fn contents_follow_the_volume_type() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [], "volumes": [
                {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "dir/file", "mode": 0o600}]}},
                {"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                {"name": "s", "secret": {"secretName": "nope"}},
                {"name": "o", "secret": {"secretName": "nope", "optional": true}},
                {"name": "d", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "x", "configMap": {"name": "cfg", "items": [{"key": "missing", "path": "f"}]}},
            ]},
        }))
        .unwrap();
        let v = pod.spec.as_ref().unwrap().volumes.clone().unwrap();
        let rt = Runtime::default();
        assert_eq!(
            content(&pod, &v[0], &Maps, &rt).unwrap(),
            Content::Files {
                files: BTreeMap::from([("dir/file".into(), (b"v".to_vec(), 0o600))]),
                secret: false
            }
        );
        assert_eq!(
            content(&pod, &v[1], &Maps, &rt).unwrap(),
            Content::EmptyDir {
                memory: true,
                size: Some(1 << 20)
            }
        );
        assert_eq!(
            content(&pod, &v[2], &Maps, &rt).unwrap_err().0,
            "secret \"nope\" not found"
        );
        assert!(matches!(
            content(&pod, &v[3], &Maps, &rt).unwrap(),
            Content::Files { secret: true, .. }
        ));
        assert!(matches!(
            content(&pod, &v[4], &Maps, &rt).unwrap(),
            Content::Files { files, .. } if files["name"].0 == b"p"
        ));
        assert!(content(&pod, &v[5], &Maps, &rt)
            .unwrap_err()
            .0
            .contains("key missing"));
    }

    #[test]
    fn host_path_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        check_host_path(&made, "DirectoryOrCreate").unwrap();
        assert!(made.is_dir());
        check_host_path(&made, "Directory").unwrap();
        assert!(check_host_path(&made, "File")
            .unwrap_err()
            .0
            .contains("is not a file"));
        assert!(check_host_path(&dir.path().join("nope"), "Directory").is_err());
    }
}
