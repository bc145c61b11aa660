//! Processes: a child in new namespaces, its exit, signals.

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::{Result, SysError};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s as i32,
        }
    }
}

/// Runs `child` in a new process with `flags` (the namespaces to create); the child exits
/// with what `child` returns. The new process gets its own copy of the caller's memory, so
/// call this from a single-threaded process (the runtime's CLI, or a helper it forks): in the
/// child only the calling thread exists, and a lock another thread held stays held.
pub fn clone_child(flags: CloneFlags, child: impl FnMut() -> isize) -> Result<Pid> {
    let mut stack = vec![0u8; 1024 * 1024];
    // SAFETY: without CLONE_VM the child runs on its own copy of this process's memory, so the
    // stack and the closure stay valid for it; SIGCHLD makes it a normal child that `waitpid`
    // can collect. The caller is single-threaded (see above), so no lock is held elsewhere.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(child),
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as i32),
        )
    };
    pid.map_err(|e| SysError::new("clone", format!("{flags:?}"), e))
}

/// Waits for `pid` (a child of this process) to end.
pub fn wait_exit(pid: Pid) -> Result<ExitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signaled(signal)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("waitpid", pid, e)),
        }
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: Pid, signal: Signal) -> Result<()> {
    nix::sys::signal::kill(pid, signal).map_err(|e| SysError::new("kill", pid, e))
}

/// Whether a process `pid` exists (and is not a zombie).
pub fn pid_alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether this process may create namespaces and mount file systems (`CAP_SYS_ADMIN` in its
/// effective set).
pub fn can_administer() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

/// A pipe whose ends close on exec: (read, write).
pub fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SysError::new("pipe2", "", e))
}

/// Closes the descriptor `fd` of this process (one whose owner will not drop it here: a
/// forked child's copy).
pub fn close_raw(fd: std::os::fd::RawFd) -> Result<()> {
    nix::unistd::close(fd).map_err(|e| SysError::new("close", fd, e))
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &std::path::Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| SysError::new("mkfifo", path.display(), e))
}

/// The process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// tells a process from a later one that reused its pid.
pub fn start_ticks(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The wall-clock time of `start_ticks` (clock ticks since boot, as [`start_ticks`] reads
/// them): the boot time from `/proc/stat` plus the ticks at the kernel's `CLK_TCK`.
pub fn ticks_to_time(start_ticks: u64) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)? as u64;
    let since_boot = std::time::Duration::from_millis(start_ticks * 1000 / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + since_boot)
}

/// Forks; the child runs `child` and exits with its result, the parent gets the child's pid.
/// As with [`clone_child`], call it from a single-threaded process.
pub fn fork_child(child: impl FnOnce() -> i32) -> Result<Pid> {
    // SAFETY: the caller is single-threaded (see above), so the child's copy of the process
    // holds no lock another thread took; the child leaves through `exit` and never returns
    // into the caller's code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
        Ok(nix::unistd::ForkResult::Child) => {
            let code = child();
            std::process::exit(code)
        }
        Err(e) => Err(SysError::new("fork", "", e)),
    }
}

/// Makes `out` and `err` this process's stdout and stderr (a container's log pipes).
pub fn redirect_output(
    out: std::os::fd::BorrowedFd<'_>,
    err: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    nix::unistd::dup2_stdout(out).map_err(|e| SysError::new("dup2", "stdout", e))?;
    nix::unistd::dup2_stderr(err).map_err(|e| SysError::new("dup2", "stderr", e))
}

/// Starts a new session, leaving the caller's terminal and process group.
pub fn new_session() -> Result<()> {
    nix::unistd::setsid()
        .map(|_| ())
        .map_err(|e| SysError::new("setsid", "", e))
}

/// Ends this process at once with `code`, without running exit handlers (the C++ static
/// destructors of linked libraries): for short-lived commands whose output is flushed.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes any status and never returns; skipping the exit handlers is the
    // point (the caller has flushed what it wrote).
    unsafe { libc::_exit(code) }
}

/// Makes `command` start in the network namespace at `netns` (a file such as
/// `/run/netns/NAME`): the child enters it between fork and exec. Nothing else changes, unlike
/// `ip netns exec`, which also gives the child a mount namespace of its own with `/sys`
/// remounted (and so no cgroup file systems).
pub fn spawn_in_netns(
    command: &mut std::process::Command,
    netns: &std::path::Path,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let fd: std::os::fd::OwnedFd = std::fs::File::open(netns)?.into();
    // SAFETY: between fork and exec the closure makes one system call (setns) on a descriptor
    // it owns, allocating nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec: a container's process gets its standard
/// streams and nothing the node, the runtime or the shim had open.
pub fn close_inherited_at_exec() -> Result<()> {
    // SAFETY: close_range with the CLOEXEC flag only sets a flag on this process's
    // descriptors; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(SysError::new(
            "close_range",
            "3..",
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}
