//! The system calls a container's init makes, behind a trait: [`LinuxSyscall`] makes them,
//! [`RecordingSyscall`] writes them down (for tests of the code that orders them).

use std::convert::Infallible;
use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

use crate::{Result, SysError};

/// The five capability sets, as names (`CAP_NET_BIND_SERVICE`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySets {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    /// Joins the namespace at `path` (`/proc/PID/ns/net`, a bind mount of one).
    fn setns(&self, path: &Path, kind: CloneFlags) -> Result<()>;
    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> Result<()>;
    fn set_rlimit(&self, resource: &str, soft: u64, hard: u64) -> Result<()>;
    /// Drops the bounding set to `sets.bounding`, keeps capabilities across the change of
    /// user, and becomes `uid`/`gid` with `groups`; then sets the other four sets.
    fn set_credentials(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        sets: &CapabilitySets,
    ) -> Result<()>;
    fn set_no_new_privs(&self) -> Result<()>;
    /// Replaces this process with `args[0]` (looked up in `PATH` from `env`).
    fn exec(&self, args: &[String], env: &[String]) -> Result<Infallible>;
}

/// The kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxSyscall;

fn cap(name: &str) -> Result<caps::Capability> {
    name.parse::<caps::Capability>()
        .map_err(|_| SysError::new("capability", name, nix::errno::Errno::EINVAL))
}

fn cap_set(names: &[String]) -> Result<caps::CapsHashSet> {
    names.iter().map(|n| cap(n)).collect()
}

fn caps_err(call: &'static str, e: caps::errors::CapsError) -> SysError {
    SysError::new(call, e, nix::errno::Errno::EPERM)
}

fn rlimit(name: &str) -> Result<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Ok(match name {
        "RLIMIT_AS" => R::RLIMIT_AS,
        "RLIMIT_CORE" => R::RLIMIT_CORE,
        "RLIMIT_CPU" => R::RLIMIT_CPU,
        "RLIMIT_DATA" => R::RLIMIT_DATA,
        "RLIMIT_FSIZE" => R::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => R::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => R::RLIMIT_NICE,
        "RLIMIT_NOFILE" => R::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => R::RLIMIT_NPROC,
        "RLIMIT_RSS" => R::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLIMIT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => R::RLIMIT_STACK,
        other => return Err(SysError::new("setrlimit", other, nix::errno::Errno::EINVAL)),
    })
}

fn cstrings(list: &[String]) -> Result<Vec<CString>> {
    list.iter()
        .map(|s| {
            CString::new(s.as_str())
                .map_err(|_| SysError::new("exec", s, nix::errno::Errno::EINVAL))
        })
        .collect()
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
            .map_err(|e| SysError::new("mount", target.display(), e))
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags)
            .map_err(|e| SysError::new("umount2", target.display(), e))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
            .map_err(|e| SysError::new("pivot_root", new_root.display(), e))
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).map_err(|e| SysError::new("chdir", path.display(), e))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).map_err(|e| SysError::new("sethostname", name, e))
    }

    fn setns(&self, path: &Path, kind: CloneFlags) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| {
            SysError::new(
                "open",
                path.display(),
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
        nix::sched::setns(&file, kind).map_err(|e| SysError::new("setns", path.display(), e))
    }

    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> Result<()> {
        nix::sys::stat::mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(|e| SysError::new("mknod", path.display(), e))
    }

    fn set_rlimit(&self, resource: &str, soft: u64, hard: u64) -> Result<()> {
        nix::sys::resource::setrlimit(rlimit(resource)?, soft, hard)
            .map_err(|e| SysError::new("setrlimit", resource, e))
    }

    fn set_credentials(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        sets: &CapabilitySets,
    ) -> Result<()> {
        let bounding = cap_set(&sets.bounding)?;
        for c in caps::all() {
            if !bounding.contains(&c) {
                caps::drop(None, caps::CapSet::Bounding, c)
                    .map_err(|e| caps_err("capbset_drop", e))?;
            }
        }
        caps::securebits::set_keepcaps(true).map_err(|e| caps_err("keepcaps", e))?;
        let groups: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| SysError::new("setgroups", gid, e))?;
        let (g, u) = (
            nix::unistd::Gid::from_raw(gid),
            nix::unistd::Uid::from_raw(uid),
        );
        nix::unistd::setresgid(g, g, g).map_err(|e| SysError::new("setresgid", gid, e))?;
        nix::unistd::setresuid(u, u, u).map_err(|e| SysError::new("setresuid", uid, e))?;
        // Inheritable while the permitted set is still whole, then effective before permitted
        // (effective must stay within permitted at every step).
        caps::set(
            None,
            caps::CapSet::Inheritable,
            &cap_set(&sets.inheritable)?,
        )
        .map_err(|e| caps_err("capset inheritable", e))?;
        caps::set(None, caps::CapSet::Effective, &cap_set(&sets.effective)?)
            .map_err(|e| caps_err("capset effective", e))?;
        caps::set(None, caps::CapSet::Permitted, &cap_set(&sets.permitted)?)
            .map_err(|e| caps_err("capset permitted", e))?;
        // The kernel raises an ambient capability only if it is permitted and inheritable.
        let possible: caps::CapsHashSet = cap_set(&sets.ambient)?
            .into_iter()
            .filter(|c| {
                sets.permitted.contains(&c.to_string()) && sets.inheritable.contains(&c.to_string())
            })
            .collect();
        caps::set(None, caps::CapSet::Ambient, &possible)
            .map_err(|e| caps_err("capset ambient", e))?;
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<()> {
        nix::sys::prctl::set_no_new_privs().map_err(|e| SysError::new("prctl", "NO_NEW_PRIVS", e))
    }

    fn exec(&self, args: &[String], env: &[String]) -> Result<Infallible> {
        let argv = cstrings(args)?;
        let envp = cstrings(env)?;
        let program = argv
            .first()
            .ok_or_else(|| SysError::new("exec", "no arguments", nix::errno::Errno::EINVAL))?;
        // PATH from the container's environment, as the OCI spec asks.
        if !args[0].contains('/') {
            let path = env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            for dir in path.split(':').filter(|d| !d.is_empty()) {
                let candidate = format!("{dir}/{}", args[0]);
                if Path::new(&candidate).is_file() {
                    let c = CString::new(candidate.clone()).map_err(|_| {
                        SysError::new("exec", &candidate, nix::errno::Errno::EINVAL)
                    })?;
                    return nix::unistd::execve(&c, &argv, &envp)
                        .map_err(|e| SysError::new("execve", candidate, e));
                }
            }
            return Err(SysError::new("execve", &args[0], nix::errno::Errno::ENOENT));
        }
        nix::unistd::execve(program, &argv, &envp).map_err(|e| SysError::new("execve", &args[0], e))
    }
}

/// Writes every call down as a line and succeeds (except `exec`, which cannot).
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    pub calls: Mutex<Vec<String>>,
}

impl RecordingSyscall {
    fn note(&self, line: String) -> Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        Ok(())
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let flags = format!("{flags:?}");
        let flags = flags.trim_start_matches("MsFlags(").trim_end_matches(')');
        self.note(format!(
            "mount {} {} {} {} {}",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display(),
            fstype.unwrap_or("-"),
            flags,
            data.unwrap_or("-")
        ))
    }
    fn umount(&self, target: &Path, _: MntFlags) -> Result<()> {
        self.note(format!("umount {}", target.display()))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.note(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.note(format!("chdir {}", path.display()))
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        self.note(format!("sethostname {name}"))
    }
    fn setns(&self, path: &Path, kind: CloneFlags) -> Result<()> {
        self.note(format!("setns {} {kind:?}", path.display()))
    }
    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> Result<()> {
        self.note(format!("mknod {} {major}:{minor} {mode:o}", path.display()))
    }
    fn set_rlimit(&self, resource: &str, soft: u64, hard: u64) -> Result<()> {
        self.note(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn set_credentials(
        &self,
        uid: u32,
        gid: u32,
        groups: &[u32],
        sets: &CapabilitySets,
    ) -> Result<()> {
        self.note(format!(
            "credentials {uid}:{gid} {groups:?} bounding={:?}",
            sets.bounding
        ))
    }
    fn set_no_new_privs(&self) -> Result<()> {
        self.note("no_new_privs".into())
    }
    fn exec(&self, args: &[String], _: &[String]) -> Result<Infallible> {
        self.note(format!("exec {}", args.join(" ")))?;
        Err(SysError::new("exec", "recorded", nix::errno::Errno::ENOSYS))
    }
}
