//! `exec`: a command inside a running container, with the container's terminal or the
//! caller's streams.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use flotilla_sys::{ExitStatus, LinuxSyscall};
use oci_spec::runtime::Spec;

use crate::container::{Runtime, Status};
use crate::{init, RuntimeError};

impl Runtime {
    /// Runs `args` inside a running container: in its namespaces and cgroups, with its
    /// environment, working directory, user and capabilities; waits for it and returns how it
    /// ended. stdin, stdout and stderr are the caller's; with `tty`, the command gets a new
    /// terminal of the container's devpts instead (as its controlling terminal), relayed to
    /// and from them, and `resize` (a FIFO) may carry `COLS ROWS` lines that set its window
    /// size. The calling process must be single-threaded (it forks).
    pub fn exec(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
        resize: Option<&Path>,
    ) -> Result<ExitStatus, RuntimeError> {
        let (state, status) = self.state(id)?;
        if status != Status::Running {
            return Err(RuntimeError::State(format!(
                "container {id} is not running"
            )));
        }
        if args.is_empty() {
            return Err(RuntimeError::Spec("exec needs a command".into()));
        }
        let spec = Spec::load(self.dir(id).join("config.json"))
            .map_err(|e| RuntimeError::Spec(format!("{id}/config.json: {e}")))?;
        let mut process_spec = spec.clone();
        if let Some(p) = process_spec.process_mut() {
            p.set_args(Some(args.to_vec()));
            p.set_terminal(Some(tty));
            let mut env = p.env().clone().unwrap_or_default();
            if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
                p.set_env(Some(env));
            }
        }
        let pid = state.pid;
        let cgroup = state.cgroup.clone();
        // Opened for writing too, so that the FIFO never reads as ended between writers.
        let resize = match resize {
            Some(path) => Some(
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| {
                        RuntimeError::Setup(format!("resize FIFO {}: {e}", path.display()))
                    })?,
            ),
            None => None,
        };
        // A child joins the namespaces (the mount namespace last, while host paths still
        // resolve) and forks the command, which is then inside the pid namespace too.
        let child = flotilla_sys::fork_child(move || {
            let sys = LinuxSyscall;
            let joined = (|| -> Result<flotilla_sys::Pid, RuntimeError> {
                cgroup.add(std::process::id() as i32)?;
                for (ns, kind) in [
                    ("ipc", flotilla_sys::CloneFlags::CLONE_NEWIPC),
                    ("uts", flotilla_sys::CloneFlags::CLONE_NEWUTS),
                    ("net", flotilla_sys::CloneFlags::CLONE_NEWNET),
                    ("pid", flotilla_sys::CloneFlags::CLONE_NEWPID),
                    ("mnt", flotilla_sys::CloneFlags::CLONE_NEWNS),
                ] {
                    flotilla_sys::Syscall::setns(
                        &sys,
                        Path::new(&format!("/proc/{pid}/ns/{ns}")),
                        kind,
                    )?;
                }
                // The terminal comes from the container's own /dev/ptmx.
                let pty = if tty {
                    Some(flotilla_sys::tty::open_pty()?)
                } else {
                    None
                };
                let slave = pty.as_ref().map(|(_, slave)| slave.clone());
                let command = flotilla_sys::fork_child(|| {
                    let started = slave
                        .as_ref()
                        .map_or(Ok(()), |s| flotilla_sys::tty::attach_terminal(s))
                        .and_then(|()| flotilla_sys::close_inherited_at_exec())
                        .map_err(RuntimeError::from)
                        .and_then(|()| init::exec(&sys, &process_spec));
                    match started {
                        Ok(never) => match never {},
                        Err(e) => {
                            eprintln!("flotilla: error: exec in {}: {e}", pid);
                            127
                        }
                    }
                })?;
                if let Some((master, _)) = &pty {
                    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
                    flotilla_sys::tty::copy_window_size(stdin.as_fd(), master.as_fd());
                    let resize = resize.as_ref().map(AsFd::as_fd);
                    flotilla_sys::tty::relay(master, stdin.as_fd(), stdout.as_fd(), resize)?;
                }
                Ok(command)
            })();
            match joined.and_then(|p| Ok(flotilla_sys::wait_exit(p)?)) {
                Ok(status) => status.code(),
                Err(e) => {
                    eprintln!("flotilla: error: {e}");
                    126
                }
            }
        })?;
        Ok(flotilla_sys::wait_exit(child)?)
    }
}
