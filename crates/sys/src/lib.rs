//! The only crate with `unsafe` code: the global allocator chosen by role ([`alloc`]), starting
//! a process in new namespaces (`clone`), and the
//! system calls a container's init makes (mounts, `pivot_root`, hostname, credentials,
//! capabilities, rlimits), behind the [`Syscall`] trait so that the code driving them can be
//! tested with [`RecordingSyscall`] instead of a kernel.

pub mod alloc;
pub mod fs;
pub mod process;
pub mod syscall;
pub mod tty;

pub use nix::mount::{MntFlags, MsFlags};
pub use nix::sched::CloneFlags;
pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
pub use process::{
    can_administer, clone_child, close_inherited_at_exec, close_raw, exit_now, fork_child, kill,
    mkfifo, new_session, pid_alive, pipe, redirect_output, spawn_in_netns, start_ticks,
    ticks_to_time, wait_exit, ExitStatus,
};
pub use syscall::{LinuxSyscall, RecordingSyscall, Syscall};

/// A failed system call: which, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call}({what}): {errno}")]
pub struct SysError {
    pub call: &'static str,
    pub what: String,
    #[source]
    pub errno: nix::errno::Errno,
}

impl SysError {
    pub fn new(call: &'static str, what: impl std::fmt::Display, errno: nix::errno::Errno) -> Self {
        SysError {
            call,
            what: what.to_string(),
            errno,
        }
    }

    /// Whether the call failed for lack of privilege (EPERM or EACCES).
    pub fn is_permission(&self) -> bool {
        matches!(
            self.errno,
            nix::errno::Errno::EPERM | nix::errno::Errno::EACCES
        )
    }
}

pub type Result<T> = std::result::Result<T, SysError>;
