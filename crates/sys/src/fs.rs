//! The calls the runtime makes on the host side, outside a container's init: overlay mounts
//! through the new mount API (any number of lower layers), bind mounts that hold a namespace,
//! detaching unmounts, `unshare`, overlay whiteouts and the opaque-directory attribute.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::{Result, SysError};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn cstring(call: &'static str, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SysError::new(call, path.display(), Errno::EINVAL))
}

/// The result of a raw system call returning a descriptor or 0.
fn check(
    call: &'static str,
    what: impl std::fmt::Display,
    ret: libc::c_long,
) -> Result<libc::c_long> {
    if ret < 0 {
        Err(SysError::new(call, what, Errno::last()))
    } else {
        Ok(ret)
    }
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let k = CString::new(key).expect("static key");
    let v = cstring("fsconfig", value)?;
    // SAFETY: `fs` is an open fs context; both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    };
    check("fsconfig", format!("{key}={}", value.display()), ret).map(|_| ())
}

/// Mounts an overlay at `target`: `lowers` top first, then `upper` and `work` (on the same
/// file system as each other). Each lower is its own `lowerdir+` parameter of the new mount
/// API, so the count is not limited by the 4 KiB option string of `mount(2)`; a kernel without
/// `lowerdir+` (before 6.8) gets the classic colon-separated list.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let name = CString::new("overlay").expect("static name");
    // SAFETY: fsopen takes a NUL-terminated name and flags; the result is a new descriptor.
    let fd = check("fsopen", "overlay", unsafe {
        libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC)
    })?;
    // SAFETY: fsopen returned this descriptor, owned by nobody else.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut lowers_added = true;
    for lower in lowers {
        match fsconfig_string(&fs, "lowerdir+", lower) {
            Ok(()) => {}
            Err(e) if e.errno == Errno::EINVAL && lower == &lowers[0] => {
                lowers_added = false;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if !lowers_added {
        let joined: Vec<_> = lowers.iter().map(|l| l.display().to_string()).collect();
        fsconfig_string(&fs, "lowerdir", Path::new(&joined.join(":")))?;
    }
    fsconfig_string(&fs, "upperdir", upper)?;
    fsconfig_string(&fs, "workdir", work)?;
    // SAFETY: a create command on the open context takes no pointers.
    check("fsconfig", "create overlay", unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount on a created context returns a new mount descriptor.
    let mnt = check("fsmount", "overlay", unsafe {
        libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0)
    })?;
    // SAFETY: fsmount returned this descriptor, owned by nobody else.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as RawFd) };
    let empty = CString::new("").expect("empty");
    let to = cstring("move_mount", target)?;
    // SAFETY: both paths are NUL-terminated; the mount descriptor is open.
    check("move_mount", target.display(), unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Binds `source` onto `target` (which must exist).
pub fn bind_mount(source: &Path, target: &Path) -> Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        SysError::new(
            "mount",
            format!("{} on {}", source.display(), target.display()),
            e,
        )
    })
}

/// Mounts a tmpfs on `target` (which must exist) with `data` (`mode=755,size=1048576`), not
/// executable, without devices or set-uid.
pub fn mount_tmpfs(target: &Path, data: &str) -> Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(|e| SysError::new("mount", format!("tmpfs on {}", target.display()), e))
}

/// Detaches the mount at `target`; a path that is not a mount point (or is gone) is fine.
pub fn unmount(target: &Path) -> Result<()> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(SysError::new("umount2", target.display(), e)),
    }
}

/// Moves the calling thread into new namespaces of the kinds in `flags`.
pub fn unshare(flags: CloneFlags) -> Result<()> {
    nix::sched::unshare(flags).map_err(|e| SysError::new("unshare", format!("{flags:?}"), e))
}

/// An overlay whiteout at `path`: a character device 0:0, which hides the same name in lower
/// layers.
pub fn whiteout(path: &Path) -> Result<()> {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|e| SysError::new("mknod", path.display(), e))
}

/// Sets the extended attribute `name` of `path` (not following a symlink).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = cstring("lsetxattr", path)?;
    let n = CString::new(name).map_err(|_| SysError::new("lsetxattr", name, Errno::EINVAL))?;
    // SAFETY: NUL-terminated path and name; `value` is valid for its length.
    let ret = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(
        "lsetxattr",
        format!("{} {name}", path.display()),
        ret as libc::c_long,
    )
    .map(|_| ())
}

/// Marks a directory of an overlay layer opaque: lower layers' entries under it are hidden.
pub fn set_opaque(dir: &Path) -> Result<()> {
    set_xattr(dir, "trusted.overlay.opaque", b"y")
}

/// The size and the space available to unprivileged users of the file system holding `path`,
/// in bytes.
pub fn capacity(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let block = s.fragment_size() as u64;
    Some((
        s.blocks() as u64 * block,
        s.blocks_available() as u64 * block,
    ))
}
