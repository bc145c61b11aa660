//! What a container's init does between `clone` and `execve`, in order: join the namespaces
//! the spec names by path, build the root file system (the bundle's rootfs bound onto itself,
//! the spec's mounts, the standard devices), `pivot_root` into it, mask and make read-only the
//! spec's paths, set the hostname and rlimits, wait for `start`, then become the process
//! (cwd, user, capabilities, `no_new_privs`) and `execve` it. Every call goes through
//! [`Syscall`], so the order is tested against a recording fake.

use std::path::{Path, PathBuf};

use flotilla_sys::syscall::CapabilitySets;
use flotilla_sys::{CloneFlags, MntFlags, MsFlags, Syscall};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::mounts;
use crate::RuntimeError;

/// The Kubernetes default capability set (containerd's and CRI-O's default for pods).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The standard devices every container gets in `/dev`: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn ns_flag(kind: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// The namespaces `clone` creates (those the spec lists without a path) and those to join.
pub fn namespaces(spec: &Spec) -> Result<(CloneFlags, Vec<(PathBuf, CloneFlags)>), RuntimeError> {
    let mut create = CloneFlags::empty();
    let mut join = Vec::new();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let Some(flag) = ns_flag(ns.typ()) else {
            return Err(RuntimeError::Unsupported(format!(
                "{:?} namespaces",
                ns.typ()
            )));
        };
        match ns.path() {
            Some(path) if flag == CloneFlags::CLONE_NEWPID => {
                return Err(RuntimeError::Unsupported(format!(
                    "joining a pid namespace ({})",
                    path.display()
                )))
            }
            Some(path) => join.push((path.clone(), flag)),
            None => create |= flag,
        }
    }
    if !create.contains(CloneFlags::CLONE_NEWNS) {
        return Err(RuntimeError::Unsupported(
            "a container without its own mount namespace".into(),
        ));
    }
    Ok((create, join))
}

fn inside(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

/// Creates the mount point for `source` at `target` (a file for a file, else a directory).
fn mount_point(source: Option<&Path>, target: &Path) -> std::io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    if source.is_some_and(|s| s.is_file()) {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(target).map(|_| ())
    } else {
        std::fs::create_dir_all(target)
    }
}

/// Builds the container's root file system at `rootfs` and moves into it.
pub fn prepare_rootfs(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<(), RuntimeError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        RuntimeError::Setup(format!("{what} {}: {e}", p.display()))
    };
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    sys.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let kind = m.typ().as_deref().unwrap_or("");
        // cgroup file systems are not mounted: on hybrid hosts there is no single tree to show.
        if kind == "cgroup" || kind == "cgroup2" {
            continue;
        }
        let target = inside(rootfs, m.destination());
        let options = mounts::parse(m.options().as_deref().unwrap_or_default());
        let source = m.source().as_deref();
        mount_point(source.filter(|_| options.bind), &target)
            .map_err(|e| io("mount point", &target, e))?;
        let data = options.data.join(",");
        let data = (!data.is_empty()).then_some(data.as_str());
        if options.bind {
            sys.mount(
                source,
                &target,
                None,
                MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC),
                None,
            )?;
            if options.flags.intersects(!MsFlags::MS_REC) {
                sys.mount(
                    None,
                    &target,
                    None,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (options.flags & !MsFlags::MS_REC),
                    None,
                )?;
            }
        } else {
            let fs_source = source
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(kind));
            sys.mount(Some(&fs_source), &target, Some(kind), options.flags, data)?;
        }
        if let Some(p) = options.propagation {
            sys.mount(None, &target, None, p, None)?;
        }
    }
    let dev = rootfs.join("dev");
    std::fs::create_dir_all(&dev).map_err(|e| io("mkdir", &dev, e))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        if !path.exists() {
            sys.mknod_char(&path, major, minor, 0o666)?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path).map_err(|e| io("symlink", &path, e))?;
        }
    }
    sys.chdir(rootfs)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount(Path::new("."), MntFlags::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            Ok(_) => sys.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            Err(_) => {}
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        if path.exists() {
            sys.mount(
                Some(path),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            sys.mount(
                None,
                path,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None,
            )?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Hostname and rlimits, after the root file system.
pub fn configure(sys: &dyn Syscall, spec: &Spec) -> Result<(), RuntimeError> {
    if let Some(h) = spec.hostname() {
        sys.sethostname(h)?;
    }
    let process = spec.process().as_ref();
    for r in process
        .and_then(|p| p.rlimits().as_deref())
        .unwrap_or_default()
    {
        sys.set_rlimit(&r.typ().to_string(), r.soft(), r.hard())?;
    }
    Ok(())
}

fn names(set: &Option<oci_spec::runtime::Capabilities>) -> Option<Vec<String>> {
    set.as_ref()
        .map(|s| s.iter().map(|c| format!("CAP_{c}")).collect())
}

/// Finds the program `process.args[0]` names in the container's root, as `execvp` would with
/// the process's `PATH`, so that a missing or non-executable program fails `create` with
/// exec's own words (as runc does) rather than a process that exits 127.
pub fn find_program(spec: &Spec) -> Result<PathBuf, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::Spec("the spec has no process".into()))?;
    let program = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .ok_or_else(|| RuntimeError::Spec("process.args is empty".into()))?;
    let executable = |path: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| {
            let text = e.to_string();
            let short = text
                .split(" (os error")
                .next()
                .unwrap_or(&text)
                .to_lowercase();
            format!("stat {}: {short}", path.display())
        })?;
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
            return Err("permission denied".into());
        }
        Ok(())
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path)
            .map(|()| path)
            .map_err(|e| RuntimeError::Setup(format!("exec: {program:?}: {e}")));
    }
    let path_var = process
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p).is_ok())
        .ok_or_else(|| {
            RuntimeError::Setup(format!(
                "exec: {program:?}: executable file not found in $PATH"
            ))
        })
}

/// Becomes the spec's process: cwd, user and groups, capabilities, `no_new_privs`, execve.
pub fn exec(sys: &dyn Syscall, spec: &Spec) -> Result<std::convert::Infallible, RuntimeError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::Spec("the spec has no process".into()))?;
    sys.chdir(process.cwd())?;
    let default: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let caps = process.capabilities().as_ref();
    let sets = CapabilitySets {
        bounding: caps
            .and_then(|c| names(c.bounding()))
            .unwrap_or_else(|| default.clone()),
        effective: caps
            .and_then(|c| names(c.effective()))
            .unwrap_or_else(|| default.clone()),
        permitted: caps
            .and_then(|c| names(c.permitted()))
            .unwrap_or_else(|| default.clone()),
        inheritable: caps
            .and_then(|c| names(c.inheritable()))
            .unwrap_or_default(),
        ambient: caps.and_then(|c| names(c.ambient())).unwrap_or_default(),
    };
    let user = process.user();
    let groups = user.additional_gids().clone().unwrap_or_default();
    sys.set_credentials(user.uid(), user.gid(), &groups, &sets)?;
    if process.no_new_privileges() == Some(true) {
        sys.set_no_new_privs()?;
    }
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(RuntimeError::Spec("process.args is empty".into()));
    }
    let env = process.env().clone().unwrap_or_default();
    Ok(sys.exec(&args, &env)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_sys::RecordingSyscall;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "process": {"args": ["sh", "-c", "true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/bin"], "noNewPrivileges": true,
                        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/run/netns/x"}],
                      "maskedPaths": ["/proc/nonexistent"], "readonlyPaths": []}
        })
    }

    #[test]
    fn namespaces_are_created_or_joined() {
        let (create, join) = namespaces(&spec(minimal())).unwrap();
        assert_eq!(
            create,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(
            join,
            vec![(PathBuf::from("/run/netns/x"), CloneFlags::CLONE_NEWNET)]
        );
        let mut no_mount = minimal();
        no_mount["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        assert!(namespaces(&spec(no_mount)).is_err());
    }

    #[test]
    fn the_root_file_system_is_built_then_pivoted_into() {
        let rootfs = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::default();
        prepare_rootfs(&sys, &spec(minimal()), rootfs.path()).unwrap();
        configure(&sys, &spec(minimal())).unwrap();
        let calls = sys.calls();
        let r = rootfs.path().display().to_string();
        let at = |prefix: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
        };
        assert!(calls[0].starts_with("mount - / -"), "{calls:#?}");
        assert_eq!(calls[1], format!("mount {r} {r} - MS_BIND | MS_REC -"));
        assert!(
            calls.contains(&format!("mount proc {r}/proc proc 0x0 -")),
            "{calls:#?}"
        );
        assert!(
            calls.contains(&format!(
                "mount tmpfs {r}/dev tmpfs MS_NOSUID | MS_STRICTATIME mode=755,size=65536k"
            )),
            "{calls:#?}"
        );
        assert!(
            !calls.iter().any(|c| c.contains("cgroup")),
            "cgroup mounts are skipped"
        );
        assert!(at(&format!("mknod {r}/dev/null 1:3")) < at("pivot_root"));
        assert_eq!(calls[at("pivot_root") + 1], "umount .");
        assert!(at("mount - / - MS_RDONLY | MS_REMOUNT | MS_BIND") > at("pivot_root"));
        assert!(at("sethostname box") > at("pivot_root"));
        assert!(calls.contains(&"setrlimit RLIMIT_NOFILE 1024 1024".to_string()));
        assert!(rootfs.path().join("dev/fd").symlink_metadata().is_ok());
    }

    #[test]
    fn the_process_gets_the_default_capabilities_and_no_new_privs() {
        let sys = RecordingSyscall::default();
        let err = exec(&sys, &spec(minimal())).unwrap_err();
        assert!(err.to_string().contains("recorded"), "{err}");
        let calls = sys.calls();
        assert_eq!(calls[0], "chdir /");
        assert!(
            calls[1].starts_with("credentials 0:0 [] bounding=[\"CAP_CHOWN\""),
            "{calls:?}"
        );
        assert_eq!(calls[2], "no_new_privs");
        assert_eq!(calls[3], "exec sh -c true");
    }
}
