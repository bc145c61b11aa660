//! Containers and images for the runtime and agent tests: busybox as an image archive, a root
//! file system and OCI bundles, and `flotilla runtime` run as a command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::{flotilla_bin, Cluster};

/// The busybox image as an OCI archive in `dir`, made by `deploy/busybox-image.sh` from
/// Debian's `busybox-static`.
pub fn busybox_archive(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/busybox-image.sh");
    let archive = dir.join("busybox-oci.tar");
    let status = Command::new("sh")
        .arg(&script)
        .arg(&archive)
        .status()
        .expect("run deploy/busybox-image.sh");
    assert!(status.success(), "building the busybox image failed");
    archive
}

impl Cluster {
    /// Imports the image `archive` as `name` into every node's image store
    /// (`DATA_DIR/images`, where the node's agent finds it).
    pub fn import_image(&self, name: &str, archive: &Path) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.import_image_on(i, name, archive)?;
        }
        Ok(())
    }

    /// Imports `archive` (an image archive or a root file system directory) as `name` into
    /// node `i`'s image store only, with `flotilla image import`.
    pub fn import_image_on(&self, i: usize, name: &str, archive: &Path) -> Result<()> {
        let store = self.nodes[i].data_dir.join("images");
        let out = Command::new(flotilla_bin())
            .arg("image")
            .arg("--root")
            .arg(&store)
            .arg("import")
            .arg(archive)
            .args(["--name", name])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "import into {}: {}",
            store.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// A busybox root file system at `dir` (Debian's `busybox-static`, which `make deps`
/// installs): the binary, a link per applet, and `/etc/passwd`.
pub fn busybox_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: `make deps` installs Debian's busybox-static"
    );
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for name in String::from_utf8_lossy(&list.stdout).lines() {
        if name != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(name));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
}

/// An OCI bundle in `dir` running `args` in a busybox root file system, with the usual
/// mounts and namespaces; `tweak` edits the `config.json` before it is written.
pub fn busybox_bundle(
    dir: &Path,
    args: &[&str],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    busybox_rootfs(&dir.join("rootfs"));
    spec_bundle(dir, args, tweak)
}

/// An OCI bundle in `dir` of only a `config.json` (for a container whose root is an image).
pub fn spec_bundle(
    dir: &Path,
    args: &[&str],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    });
    tweak(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

/// Runs `flotilla runtime ARGS` with its state under `root`: (exit code, stdout, stderr).
/// Output goes through files, not pipes: a created container inherits them and keeps them
/// open long after the command has exited.
pub fn runtime_cli(root: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tempfile::tempfile().expect("a temporary file");
    let err = tempfile::tempfile().expect("a temporary file");
    let status = Command::new(flotilla_bin())
        .arg("runtime")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .status()
        .expect("run flotilla runtime");
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.read_to_string(&mut text).expect("read");
        text
    };
    (status.code(), read(out), read(err))
}

impl Cluster {
    /// `kill -9` every process of node `i`: the node itself, then each of its containers
    /// (found in its runtime's state under `DATA_DIR/runtime`), as a machine losing power
    /// would leave them.
    pub fn kill_with_pods(&mut self, i: usize) {
        self.kill(i);
        let root = self.nodes[i].data_dir.join("runtime");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            // Containers are `UID_NAME`; sandboxes are bare uids.
            if id.contains('_') {
                let _ = runtime_cli(&root, &["kill", &id, "KILL"]);
            }
        }
    }
}
