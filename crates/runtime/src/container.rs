//! Container lifecycle, as the OCI runtime commands define it: `create` starts the init in new
//! namespaces and cgroups and leaves it waiting, `start` lets it exec the process, `state`,
//! `kill`, `delete`; `run` is create, start, wait and delete in one. State lives in
//! `ROOT/<id>/state.json`; `ROOT/<id>/exec.fifo` exists while the container is created and
//! not yet started.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_sys::{ExitStatus, LinuxSyscall, Pid, Signal};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, Cgroup, Limits};
use crate::exit::{record_exit, ExitRecord, EXIT_FILE};
use crate::{init, RuntimeError};

/// What `state` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// What is kept about a container between commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// The init's start time, to tell it from a later process with the same pid.
    pub start_ticks: u64,
    pub bundle: PathBuf,
    pub cgroup: Cgroup,
    /// The sandbox whose namespaces it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The shim that reaps a detached container and records its exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<i32>,
    /// The shim's start time, to tell it from a later process with the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_start_ticks: Option<u64>,
    /// The image store whose image is mounted as its root (`ROOT/<id>/rootfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_store: Option<PathBuf>,
}

/// Where a container's root and namespaces come from, beyond its bundle.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Join this sandbox's network, IPC and UTS namespaces and use its `/etc` files.
    pub sandbox: Option<String>,
    /// The root is this image (name or manifest digest) of the store at the path, as an
    /// overlay with the container's own upper layer, instead of the bundle's `root.path`.
    pub image: Option<(PathBuf, String)>,
    /// The container reads a stdin that attached clients write (a pod's `stdin`); otherwise
    /// its stdin is the caller's (`/dev/null` for the agent's containers).
    pub stdin: bool,
    /// The stdin ends after the first client that attached it (`stdinOnce`).
    pub stdin_once: bool,
}

/// The image store's lease on layers for the container in `dir`: unique per container
/// directory, whichever runtime root it is in.
fn lease(dir: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes()))
}

/// How a container run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: ExitStatus,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// CPU time the container's cgroup used, in nanoseconds.
    pub cpu_ns: u64,
}

/// The runtime: where state lives and which cgroup tree to use.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub root: PathBuf,
    pub cgroup_root: PathBuf,
}

pub(crate) fn valid_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Spec(format!(
            "container id {id:?}: use 1 to 128 of letters, digits, '-', '_' and '.'"
        )))
    }
}

fn limits(spec: &Spec) -> Limits {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = resources.and_then(|r| r.memory().as_ref());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    Limits {
        memory_bytes: memory.and_then(|m| m.limit()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        cpu_quota_us: cpu.and_then(|c| c.quota()),
        cpu_period_us: cpu.and_then(|c| c.period()),
        pids: resources.and_then(|r| r.pids().as_ref()).map(|p| p.limit()),
    }
}

/// The shim's attach socket in the container's directory `dir`, bound with a short relative
/// path (a socket's path is at most 107 bytes). The shim is single-threaded here.
fn attach_listener(dir: &Path) -> Option<UnixListener> {
    std::env::set_current_dir(dir).ok()?;
    let listener = UnixListener::bind("attach.sock");
    let _ = std::env::set_current_dir("/");
    listener.ok()
}

/// How the init learns that it may exec the process.
enum Go<'a> {
    /// `start`, in another process, reads the FIFO (`create` then `start`).
    Fifo(&'a Path),
    /// The parent writes a byte on this pipe (`run`, which starts at once).
    Pipe(&'a OwnedFd),
}

/// The standard streams a detached container's init sets up.
#[derive(Clone, Copy)]
struct InitIo<'a> {
    /// The write ends of the stdout and stderr pipes.
    output: Option<(&'a OwnedFd, &'a OwnedFd)>,
    /// The read end of the stdin pipe.
    stdin: Option<&'a OwnedFd>,
    /// Where the master of the container's terminal goes (`process.terminal`).
    console: Option<&'a UnixStream>,
}

/// The container's init, in the child: every step, then the process. On failure the reason
/// goes to the parent through `report`.
fn init_main(
    spec: &Spec,
    rootfs: &Path,
    joins: &[(PathBuf, flotilla_sys::CloneFlags)],
    go: Go<'_>,
    report: &OwnedFd,
    io: InitIo<'_>,
) -> isize {
    let sys = LinuxSyscall;
    let mut out = fs::File::from(report.try_clone().expect("dup of the report pipe"));
    let result = (|| -> Result<std::convert::Infallible, RuntimeError> {
        if let Some((out, err)) = io.output {
            flotilla_sys::redirect_output(out.as_fd(), err.as_fd())?;
        }
        if let Some(input) = io.stdin {
            flotilla_sys::tty::redirect_input(input.as_fd())?;
        }
        for (path, kind) in joins {
            flotilla_sys::Syscall::setns(&sys, path, *kind)?;
        }
        // Opened by path before pivot_root, reopened for writing through /proc after it.
        let fifo_path = match go {
            Go::Fifo(fifo) => Some(
                fs::File::options()
                    .read(true)
                    .custom_flags(O_PATH)
                    .open(fifo)
                    .map_err(|e| RuntimeError::Setup(format!("open {}: {e}", fifo.display())))?,
            ),
            Go::Pipe(_) => None,
        };
        init::prepare_rootfs(&sys, spec, rootfs)?;
        init::configure(&sys, spec)?;
        init::find_program(spec)?;
        // A terminal of the container's devpts, its master to the shim (the slave stays
        // open until exec).
        let terminal = match io.console {
            Some(console) => Some(flotilla_sys::tty::send_console(console.as_fd())?),
            None => None,
        };
        out.write_all(b"ready\n")
            .map_err(|e| RuntimeError::Setup(format!("report: {e}")))?;
        match (go, fifo_path) {
            (Go::Pipe(pipe), _) => {
                let mut byte = [0u8; 1];
                let mut r = fs::File::from(pipe.try_clone()?);
                r.read_exact(&mut byte)
                    .map_err(|e| RuntimeError::Setup(format!("start pipe: {e}")))?;
            }
            (Go::Fifo(_), Some(fifo_path)) => {
                // Blocks until `start` opens the FIFO for reading.
                let mut go = fs::File::options()
                    .write(true)
                    .open(format!("/proc/self/fd/{}", fifo_path.as_raw_fd()))
                    .map_err(|e| RuntimeError::Setup(format!("open exec fifo: {e}")))?;
                go.write_all(b"0")
                    .map_err(|e| RuntimeError::Setup(format!("exec fifo: {e}")))?;
            }
            (Go::Fifo(_), None) => unreachable!("opened above"),
        }
        if let Some((slave, _held)) = &terminal {
            flotilla_sys::tty::attach_terminal(slave)?;
        }
        flotilla_sys::close_inherited_at_exec()?;
        init::exec(&sys, spec)
    })();
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = out.write_all(format!("error: {err}\n").as_bytes());
    127
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            root: root.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The socket `attach` clients reach container `id`'s shim on (see [`crate::shim`]).
    pub fn attach_socket(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.load(id)?;
        Ok(crate::shim::socket_path(&self.dir(id)))
    }

    /// Where a created container's output is logged (until it is deleted).
    pub fn log_path(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        self.load(id)?;
        Ok(crate::logs::path(&self.dir(id)))
    }

    pub(crate) fn load(&self, id: &str) -> Result<State, RuntimeError> {
        valid_id(id)?;
        let text = fs::read(self.dir(id).join("state.json"))
            .map_err(|_| RuntimeError::NotFound(id.to_string()))?;
        serde_json::from_slice(&text)
            .map_err(|e| RuntimeError::Setup(format!("state of {id}: {e}")))
    }

    /// Starts the container's init, which waits for `start`. The calling process must be
    /// single-threaded (see `flotilla_sys::clone_child`).
    /// The process's stdout and stderr go to its log (see [`crate::logs`]).
    pub fn create(&self, id: &str, bundle: &Path) -> Result<State, RuntimeError> {
        self.create_with(id, bundle, &CreateOptions::default())
    }

    /// `create`, in a sandbox or from an image.
    pub fn create_with(
        &self,
        id: &str,
        bundle: &Path,
        options: &CreateOptions,
    ) -> Result<State, RuntimeError> {
        self.spawn(id, bundle, true, options)
            .map(|(state, _, _)| state)
    }

    /// `create`, also returning the read end of the init's report pipe (after "ready", an
    /// exec failure is written there). With `detached` (`create`), the output goes to the log
    /// and `start` lets the init go through the FIFO; without, the output is the caller's and
    /// the init goes when a byte is written on the returned pipe (`run`).
    fn spawn(
        &self,
        id: &str,
        bundle: &Path,
        detached: bool,
        options: &CreateOptions,
    ) -> Result<(State, fs::File, Option<fs::File>), RuntimeError> {
        let logs = detached;
        valid_id(id)?;
        if !flotilla_sys::can_administer() {
            return Err(RuntimeError::Privilege);
        }
        let bundle = bundle
            .canonicalize()
            .map_err(|e| RuntimeError::Spec(format!("bundle {}: {e}", bundle.display())))?;
        let mut spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| RuntimeError::Spec(format!("{}/config.json: {e}", bundle.display())))?;
        if let Some(sandbox) = &options.sandbox {
            self.sandbox(sandbox)?.join(&mut spec)?;
        }
        let bundle_root =
            match &options.image {
                Some(_) => None,
                None => {
                    let root = spec
                        .root()
                        .as_ref()
                        .map(|r| r.path().clone())
                        .unwrap_or_else(|| "rootfs".into());
                    let rootfs = bundle.join(root);
                    Some(rootfs.canonicalize().map_err(|e| {
                        RuntimeError::Spec(format!("root {}: {e}", rootfs.display()))
                    })?)
                }
            };
        let (flags, joins) = init::namespaces(&spec)?;
        let dir = self.dir(id);
        let store = options
            .image
            .as_ref()
            .map(|(root, _)| crate::images::ImageStore::new(root));
        fs::create_dir_all(&self.root)?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        let cleanup = |cgroup: Option<&Cgroup>| {
            if let Some(c) = cgroup {
                let _ = c.remove();
            }
            if let Some(store) = &store {
                let _ = store.unmount_rootfs(&dir, &lease(&dir));
            }
            let _ = fs::remove_dir_all(&dir);
        };
        let rootfs = match (&store, &options.image, bundle_root) {
            (Some(store), Some((_, image)), _) => {
                match store.mount_rootfs(image, &dir, &lease(&dir)) {
                    Ok(r) => r,
                    Err(e) => {
                        cleanup(None);
                        return Err(e);
                    }
                }
            }
            (_, _, Some(r)) => r,
            _ => unreachable!("a root from the image or the bundle"),
        };
        // What `exec` later starts from: the spec as changed by the options.
        if let Err(e) = fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&spec).expect("spec serialises"),
        ) {
            cleanup(None);
            return Err(e.into());
        }
        let layout = match cgroups::detect(&self.cgroup_root) {
            Ok(l) => l,
            Err(e) => {
                cleanup(None);
                return Err(e.into());
            }
        };
        let cgroup = Cgroup::new(layout, id);
        if let Err(e) = cgroup.create(&limits(&spec)) {
            cleanup(Some(&cgroup));
            return Err(e.into());
        }
        let fifo = dir.join("exec.fifo");
        let started = (|| -> Result<(State, fs::File, Option<fs::File>), RuntimeError> {
            let go_pipe = if detached {
                flotilla_sys::mkfifo(&fifo)?;
                None
            } else {
                Some(flotilla_sys::pipe()?)
            };
            let (read, write) = flotilla_sys::pipe()?;
            let (output, writer) = if logs {
                let writer = crate::logs::Writer::open(crate::logs::path(&dir), LOG_MAX_BYTES)?;
                (
                    Some((flotilla_sys::pipe()?, flotilla_sys::pipe()?)),
                    Some(writer),
                )
            } else {
                (None, None)
            };
            let ends = output.as_ref().map(|((_, ow), (_, ew))| (ow, ew));
            // A terminal (its master comes from the init), or a stdin pipe the shim holds.
            let terminal = logs
                && spec
                    .process()
                    .as_ref()
                    .and_then(|p| p.terminal())
                    .unwrap_or(false);
            let console = if terminal {
                Some(UnixStream::pair()?)
            } else {
                None
            };
            let stdin = if logs && options.stdin && !terminal {
                Some(flotilla_sys::pipe()?)
            } else {
                None
            };
            let io = InitIo {
                output: ends,
                stdin: stdin.as_ref().map(|(r, _)| r),
                console: console.as_ref().map(|(_, init_end)| init_end),
            };
            let go = match &go_pipe {
                Some((r, _)) => Go::Pipe(r),
                None => Go::Fifo(&fifo),
            };
            let start_init = || {
                flotilla_sys::clone_child(flags, || {
                    let go = match &go {
                        Go::Pipe(r) => Go::Pipe(r),
                        Go::Fifo(f) => Go::Fifo(f),
                    };
                    init_main(&spec, &rootfs, &joins, go, &write, io)
                })
            };
            let (pid, shim) = match (&output, writer) {
                (Some(((out_r, _), (err_r, _))), Some(writer)) => {
                    // Detached, the init is a child of the shim, which copies its output to
                    // the log, reaps it and records how it ended (`exit.json`): it outlives
                    // this command. It has its own session and holds no terminal.
                    let (pid_r, pid_w) = flotilla_sys::pipe()?;
                    let exit_path = dir.join(EXIT_FILE);
                    let shim = flotilla_sys::fork_child(|| {
                        let _ = flotilla_sys::new_session();
                        if let Ok(null) = fs::File::options().write(true).open("/dev/null") {
                            let _ = flotilla_sys::redirect_output(null.as_fd(), null.as_fd());
                        }
                        let mut to_parent = fs::File::from(pid_w);
                        let pid = match start_init() {
                            Ok(pid) => pid,
                            Err(e) => {
                                let _ = writeln!(to_parent, "error: {e}");
                                return 1;
                            }
                        };
                        let _ = writeln!(to_parent, "{pid}");
                        drop(to_parent);
                        let out_r = out_r.try_clone().expect("dup of the output pipe");
                        let err_r = err_r.try_clone().expect("dup of the error pipe");
                        // Only the read ends stay open here, so the log ends with the output.
                        if let Some((ow, ew)) = ends {
                            let _ = flotilla_sys::close_raw(ow.as_raw_fd());
                            let _ = flotilla_sys::close_raw(ew.as_raw_fd());
                        }
                        let _ = flotilla_sys::close_raw(write.as_raw_fd());
                        if let Some((r, _)) = &stdin {
                            let _ = flotilla_sys::close_raw(r.as_raw_fd());
                        }
                        // The init's end closed here, the master arrives or the init ended.
                        let master = console.as_ref().and_then(|(shim_end, init_end)| {
                            let _ = flotilla_sys::close_raw(init_end.as_raw_fd());
                            flotilla_sys::tty::recv_fd(shim_end.as_fd()).ok().flatten()
                        });
                        let streams = crate::shim::Streams {
                            stdout: out_r,
                            stderr: err_r,
                            terminal: master,
                            // The only write end left (the container's input ends with it).
                            stdin: stdin.as_ref().and_then(|(_, w)| {
                                let only = w.try_clone().ok();
                                let _ = flotilla_sys::close_raw(w.as_raw_fd());
                                only
                            }),
                            stdin_enabled: options.stdin,
                            stdin_once: options.stdin_once,
                        };
                        crate::shim::run(streams, attach_listener(&dir), writer);
                        let status = flotilla_sys::wait_exit(pid);
                        record_exit(&exit_path, status, &cgroup);
                        0
                    })?;
                    let mut from_shim = fs::File::from(pid_r);
                    let line = read_line(&mut from_shim);
                    let pid = match line.parse::<i32>() {
                        Ok(pid) => Pid::from_raw(pid),
                        Err(_) => {
                            let _ = flotilla_sys::wait_exit(shim);
                            return Err(RuntimeError::Setup(
                                line.trim_start_matches("error: ").to_string(),
                            ));
                        }
                    };
                    (pid, Some(shim))
                }
                _ => (start_init()?, None),
            };
            drop(write);
            drop(output);
            // Only the shim and the init keep these: the shim learns that an init failed
            // before sending its terminal when the init's end closes.
            drop(console);
            drop(stdin);
            let go_writer = go_pipe.map(|(_, w)| fs::File::from(w));
            let state = State {
                id: id.to_string(),
                pid: pid.as_raw(),
                start_ticks: flotilla_sys::start_ticks(pid).unwrap_or(0),
                bundle: bundle.clone(),
                cgroup: cgroup.clone(),
                sandbox: options.sandbox.clone(),
                shim: shim.map(|p| p.as_raw()),
                shim_start_ticks: shim.and_then(flotilla_sys::start_ticks),
                image_store: options.image.as_ref().map(|(root, _)| root.clone()),
            };
            let joined = cgroup.add(pid.as_raw());
            let mut reader = fs::File::from(read);
            // The first line: "ready", or the init's error.
            let report = read_line(&mut reader);
            if report != "ready" || joined.is_err() {
                let _ = flotilla_sys::kill(pid, Signal::SIGKILL);
                let _ = flotilla_sys::wait_exit(shim.unwrap_or(pid));
                // The init's own error first: one that exits at once also makes joining
                // its cgroup fail.
                let reason = match (report.strip_prefix("error: "), joined) {
                    (Some(error), _) => error
                        .strip_prefix("container setup failed: ")
                        .unwrap_or(error)
                        .to_string(),
                    (None, Err(e)) => format!("cgroup: {e}"),
                    (None, Ok(())) if report.is_empty() => {
                        "the container's init exited before it was ready".into()
                    }
                    (None, Ok(())) => report.clone(),
                };
                return Err(RuntimeError::Setup(reason));
            }
            Ok((state, reader, go_writer))
        })();
        match started {
            Ok((state, reader, go_writer)) => {
                fs::write(
                    dir.join("state.json"),
                    serde_json::to_vec(&state).expect("state serialises"),
                )?;
                Ok((state, reader, go_writer))
            }
            Err(e) => {
                cleanup(Some(&cgroup));
                Err(e)
            }
        }
    }

    /// Lets a created container exec its process.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let state = self.load(id)?;
        let fifo = self.dir(id).join("exec.fifo");
        if !fifo.exists() {
            return Err(RuntimeError::State(format!(
                "container {id} was already started"
            )));
        }
        let mut file = fs::File::options()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut byte = [0u8; 1];
        loop {
            match file.read(&mut byte) {
                Ok(1) => break,
                // A process that exits at once may have taken the go and gone between the
                // read and this check: its byte is still in the FIFO.
                _ if !self.alive(&state) => {
                    if matches!(file.read(&mut byte), Ok(1)) {
                        break;
                    }
                    return Err(RuntimeError::State(format!(
                        "container {id} exited before it started"
                    )));
                }
                _ if Instant::now() > deadline => {
                    return Err(RuntimeError::State(format!(
                        "container {id} did not start within 10 s"
                    )))
                }
                _ => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        let _ = fs::remove_file(&fifo);
        Ok(())
    }

    /// Whether the container's shim still runs (it ends right after recording the exit).
    fn shim_alive(&self, state: &State) -> bool {
        state.shim.is_some_and(|p| {
            let pid = Pid::from_raw(p);
            flotilla_sys::pid_alive(pid) && flotilla_sys::start_ticks(pid) == state.shim_start_ticks
        })
    }

    fn alive(&self, state: &State) -> bool {
        let pid = Pid::from_raw(state.pid);
        flotilla_sys::pid_alive(pid) && flotilla_sys::start_ticks(pid) == Some(state.start_ticks)
    }

    pub fn state(&self, id: &str) -> Result<(State, Status), RuntimeError> {
        let state = self.load(id)?;
        let status = if !self.alive(&state) {
            Status::Stopped
        } else if self.dir(id).join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        };
        Ok((state, status))
    }

    /// How a created container ended, once it has (`None` while it runs).
    pub fn exit(&self, id: &str) -> Result<Option<Exit>, RuntimeError> {
        self.load(id)?;
        let Ok(bytes) = fs::read(self.dir(id).join(EXIT_FILE)) else {
            return Ok(None);
        };
        let r: ExitRecord = serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::Setup(format!("{id}/{EXIT_FILE}: {e}")))?;
        let status = match r.signal.and_then(|s| Signal::try_from(s).ok()) {
            Some(s) => ExitStatus::Signaled(s),
            None => ExitStatus::Exited(r.code),
        };
        Ok(Some(Exit {
            status,
            oom_killed: r.oom_killed,
            cpu_ns: r.cpu_ns,
        }))
    }

    /// Waits until a created container has ended; returns how.
    pub fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(exit) = self.exit(id)? {
                return Ok(exit);
            }
            let (state, status) = self.state(id)?;
            // Stopped, and its shim gone too without a record: nobody will write one.
            if status == Status::Stopped && state.shim.is_some() && !self.shim_alive(&state) {
                if let Some(exit) = self.exit(id)? {
                    return Ok(exit);
                }
                return Err(RuntimeError::State(format!(
                    "container {id} stopped and its exit was not recorded"
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let (state, status) = self.state(id)?;
        if status == Status::Stopped {
            return Err(RuntimeError::State(format!(
                "container {id} is not running"
            )));
        }
        Ok(flotilla_sys::kill(Pid::from_raw(state.pid), signal)?)
    }

    /// Removes a stopped container (any with `force`, killing what runs): its processes,
    /// cgroups and state.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let (state, status) = self.state(id)?;
        if status != Status::Stopped && !force {
            return Err(RuntimeError::State(format!(
                "container {id} is {status:?}; stop it first or delete with --force"
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut pids = state.cgroup.pids();
            if self.alive(&state) {
                pids.push(state.pid);
            }
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = flotilla_sys::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::State(format!(
                    "processes of {id} survived SIGKILL for 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The shim records the exit in the container's directory, then ends: let it finish
        // before the directory goes (and end it if it does not).
        while self.shim_alive(&state) {
            if Instant::now() > deadline {
                if let Some(p) = state.shim {
                    let _ = flotilla_sys::kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // An emptied cgroup may take a moment to be removable.
        let mut removed = state.cgroup.remove();
        while removed.is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            removed = state.cgroup.remove();
        }
        removed?;
        let dir = self.dir(id);
        if let Some(root) = &state.image_store {
            crate::images::ImageStore::new(root).unmount_rootfs(&dir, &lease(&dir))?;
        }
        // A pod container's log outlives it as `kubectl logs --previous`, in the sandbox's
        // directory (so it goes with the sandbox).
        let log = crate::logs::path(&dir);
        if let (Some(sandbox), true) = (&state.sandbox, log.exists()) {
            let previous = self.previous_log_path(sandbox, id);
            fs::create_dir_all(self.sandbox_dir(sandbox).join("previous-logs"))?;
            fs::rename(&log, previous)?;
        }
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    /// Where the log of the previous instance of container `id` of `sandbox` is kept.
    pub fn previous_log_path(&self, sandbox: &str, id: &str) -> PathBuf {
        let file = format!("{id}.log");
        self.sandbox_dir(sandbox).join("previous-logs").join(file)
    }

    /// Create, start, wait for the process to end, delete. The exit status is the process's,
    /// or 128 + the signal; an exec failure is an error.
    pub fn run(&self, id: &str, bundle: &Path) -> Result<Exit, RuntimeError> {
        self.run_with(id, bundle, &CreateOptions::default())
    }

    /// `run`, in a sandbox or from an image.
    pub fn run_with(
        &self,
        id: &str,
        bundle: &Path,
        options: &CreateOptions,
    ) -> Result<Exit, RuntimeError> {
        let (state, mut report, go) = self.spawn(id, bundle, false, options)?;
        let started = go
            .ok_or_else(|| RuntimeError::State("no start pipe".into()))
            .and_then(|mut go| Ok(go.write_all(b"0")?));
        if let Err(e) = started {
            let _ = self.delete(id, true);
            return Err(e);
        }
        let status = flotilla_sys::wait_exit(Pid::from_raw(state.pid));
        let mut failure = String::new();
        let _ = report.read_to_string(&mut failure);
        let oom_killed = state.cgroup.oom_kills() > 0;
        let (cpu_ns, _) = state.cgroup.usage();
        self.delete(id, true)?;
        if let Some(reason) = failure.lines().find_map(|l| l.strip_prefix("error: ")) {
            return Err(RuntimeError::Setup(reason.to_string()));
        }
        Ok(Exit {
            status: status?,
            oom_killed,
            cpu_ns,
        })
    }
}

/// Reads up to the end of a line (not beyond, so what follows stays in the pipe).
fn read_line(file: &mut fs::File) -> String {
    let mut line = String::new();
    let mut buf = [0u8; 1];
    while file.read(&mut buf).unwrap_or(0) == 1 {
        if buf[0] == b'\n' {
            break;
        }
        line.push(buf[0] as char);
    }
    line
}

/// A container's log is rotated past this size.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// O_NONBLOCK: open a FIFO for reading without waiting for its writer.
const O_NONBLOCK: i32 = 0o4000;
/// O_PATH: a handle on the FIFO that opens nothing (so does not wait for a partner).
const O_PATH: i32 = 0o10000000;
