//! `flotilla runtime create|start|run|state|kill|delete|exec|logs`: the runtime on OCI
//! bundles, as `runc` and `crun` take them, optionally in a pod sandbox
//! (`flotilla runtime sandbox create|state|delete`) and from an image of the node's store. Runs without the async runtime: creating a container clones
//! this process, which must then be single-threaded.

use std::path::PathBuf;

use clap::Subcommand;
use flotilla_runtime::ipam::Cidr;
use flotilla_runtime::net::PodNetwork;
use flotilla_runtime::{CreateOptions, Runtime, RuntimeError, SandboxConfig, Status};
use flotilla_sys::Signal;

#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = "/run/flotilla/runtime")]
    root: PathBuf,
    #[command(subcommand)]
    command: RuntimeCommand,
}

/// Where a container's namespaces and root come from besides its bundle.
#[derive(clap::Args)]
struct Placement {
    /// Join this pod sandbox's network, IPC and UTS namespaces.
    #[arg(long, value_name = "ID")]
    sandbox: Option<String>,
    /// Use this image of the node's store as the root (an overlay with the container's own
    /// writable layer) instead of the bundle's root.path.
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// The image store.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/flotilla/images")]
    images: PathBuf,
    /// Keep a stdin open that `attach` clients write (otherwise stdin is this command's).
    #[arg(long)]
    stdin: bool,
    /// With --stdin: the stdin ends when the first client that attached it ends.
    #[arg(long, requires = "stdin")]
    stdin_once: bool,
}

impl Placement {
    fn options(self) -> CreateOptions {
        CreateOptions {
            sandbox: self.sandbox,
            image: self.image.map(|i| (self.images, i)),
            stdin: self.stdin,
            stdin_once: self.stdin_once,
        }
    }
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Create a pod sandbox: network, IPC and UTS namespaces, a veth into the bridge and an
    /// address from the pod CIDR. Prints it as JSON.
    Create {
        #[arg(long)]
        hostname: Option<String>,
        /// The node's bridge (created if missing, with the CIDR's first address).
        #[arg(long, default_value = "flt0")]
        bridge: String,
        /// The node's pod CIDR.
        #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/24", value_parser = parse_cidr)]
        pod_cidr: Cidr,
        /// Where addresses are allocated (default: /run/flotilla/ipam/BRIDGE).
        #[arg(long, value_name = "DIR")]
        ipam_dir: Option<PathBuf>,
        /// A name server for /etc/resolv.conf (repeatable; default: the host's file).
        #[arg(long, value_name = "IP")]
        dns: Vec<std::net::Ipv4Addr>,
        /// A search domain for /etc/resolv.conf (repeatable).
        #[arg(long, value_name = "DOMAIN")]
        search: Vec<String>,
        /// An option for /etc/resolv.conf, `ndots:5` (repeatable).
        #[arg(long = "dns-option", value_name = "OPTION")]
        dns_options: Vec<String>,
        /// Use the host's network and UTS namespaces (a `hostNetwork` pod): no veth, no
        /// address.
        #[arg(long)]
        host_network: bool,
        id: String,
    },
    /// The sandbox as JSON.
    State { id: String },
    /// Remove a sandbox: its veth, namespaces and address (with --force, its running
    /// containers too).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Create a container from an OCI bundle; its process waits for `start`.
    Create {
        /// The bundle: `config.json` and the root file system it names.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[command(flatten)]
        placement: Placement,
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Create, start, wait and delete; exits with the process's status (128 + signal if killed).
    Run {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Also write how it ended as JSON (exit code, OOM kill, CPU time) to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        placement: Placement,
        id: String,
    },
    /// The container's state as OCI JSON (with `exitCode`, `oomKilled` once it has ended).
    State { id: String },
    /// Wait for a created container to end; print its exit code (128 + signal if killed).
    Wait { id: String },
    /// Send a signal (default TERM) to the container's process.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Run a command in a running container; exits with its status.
    Exec {
        /// Give the command a terminal (the container's), relayed to this one.
        #[arg(long, short = 't')]
        tty: bool,
        /// With --tty: a FIFO whose `COLS ROWS` lines set the terminal's window size.
        #[arg(long, value_name = "PATH", requires = "tty")]
        resize_fifo: Option<PathBuf>,
        id: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a created container's output (stdout and stderr, in order).
    Logs {
        /// Keep printing new output until the container has stopped.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Prefix each line with the time it was written (RFC 3339, nanoseconds).
        #[arg(long)]
        timestamps: bool,
        id: String,
    },
    /// Remove a stopped container (with --force, a running one too).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Pod sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Remove every container (killed first) and sandbox of this root; with --volumes, also
    /// unmount and remove the pods' volumes there (what a node's agent keeps under
    /// DATA_DIR/pods). For a node that is gone for good.
    Clean {
        #[arg(long, value_name = "DIR")]
        volumes: Option<PathBuf>,
    },
}

/// Removes every sandbox and container of `rt`, then the pods' volumes under `volumes`.
fn clean(rt: &Runtime, volumes: Option<PathBuf>) -> Result<(), RuntimeError> {
    let sandboxes: Vec<String> = std::fs::read_dir(rt.root.join(".sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    let mut first_error = None;
    for id in sandboxes {
        if let Err(e) = rt.delete_sandbox(&id, true) {
            first_error.get_or_insert(e);
        }
    }
    for id in rt.list() {
        if let Err(e) = rt.delete(&id, true) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(dir) = volumes {
        for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for v in std::fs::read_dir(pod.path().join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
            {
                flotilla_sys::fs::unmount(&v.path())?;
            }
            flotilla_sys::fs::unmount(&pod.path().join("bundles"))?;
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn signal(name: &str) -> Result<Signal, String> {
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal {name:?}"));
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("unknown signal {name:?}"))
}

/// Prints the log from the start; with `follow`, then what comes until the container stops.
fn logs(rt: &Runtime, id: &str, follow: bool, timestamps: bool) -> Result<(), RuntimeError> {
    let path = rt.log_path(id)?;
    let mut offset = 0;
    loop {
        // Whether the log was complete before this read: then the read got everything.
        let done = flotilla_runtime::logs::done_path(&path).exists();
        let (lines, next) = flotilla_runtime::logs::read_from(&path, offset, timestamps)?;
        for l in lines {
            println!("{l}");
        }
        offset = next;
        if !follow || done || rt.state(id)?.1 == Status::Stopped && !path.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn sandbox(rt: &Runtime, command: SandboxCommand) -> Result<(), RuntimeError> {
    let print = |s: &flotilla_runtime::Sandbox| {
        println!("{}", serde_json::to_string_pretty(s).expect("JSON"));
    };
    match command {
        SandboxCommand::Create {
            hostname,
            bridge,
            pod_cidr,
            ipam_dir,
            dns,
            search,
            dns_options,
            host_network,
            id,
        } => {
            let config = SandboxConfig {
                hostname: hostname.unwrap_or_else(|| id.clone()),
                ipam_dir: ipam_dir
                    .unwrap_or_else(|| PathBuf::from("/run/flotilla/ipam").join(&bridge)),
                network: PodNetwork {
                    bridge,
                    cidr: pod_cidr,
                },
                dns,
                search,
                dns_options,
                host_network,
            };
            print(&rt.create_sandbox(&id, &config)?);
        }
        SandboxCommand::State { id } => print(&rt.sandbox(&id)?),
        SandboxCommand::Delete { force, id } => rt.delete_sandbox(&id, force)?,
    }
    Ok(())
}

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("flotilla: error: {message}");
    1
}

/// Runs the command; returns the process's exit code.
pub fn run(args: RuntimeArgs) -> i32 {
    let rt = Runtime::new(&args.root);
    let result = match args.command {
        RuntimeCommand::Create {
            bundle,
            placement,
            id,
        } => rt
            .create_with(&id, &bundle, &placement.options())
            .map(|_| ()),
        RuntimeCommand::Start { id } => rt.start(&id),
        RuntimeCommand::Clean { volumes } => clean(&rt, volumes),
        RuntimeCommand::Run {
            bundle,
            report,
            placement,
            id,
        } => {
            return match rt.run_with(&id, &bundle, &placement.options()) {
                Ok(exit) => {
                    if exit.oom_killed {
                        eprintln!("flotilla: container {id} was OOM-killed (OOMKilled)");
                    }
                    if let Some(path) = report {
                        let json = serde_json::json!({
                            "exitCode": exit.status.code(),
                            "oomKilled": exit.oom_killed,
                            "cpuNanoseconds": exit.cpu_ns,
                        });
                        if let Err(e) = std::fs::write(&path, json.to_string()) {
                            return fail(format!("--report {}: {e}", path.display()));
                        }
                    }
                    exit.status.code().clamp(0, 255)
                }
                Err(e) => fail(e),
            }
        }
        RuntimeCommand::State { id } => rt.state(&id).and_then(|(state, status)| {
            let mut json = serde_json::json!({
                "ociVersion": "1.0.2",
                "id": state.id,
                "status": status,
                "pid": state.pid,
                "bundle": state.bundle,
            });
            if let Some(exit) = rt.exit(&id)? {
                json["exitCode"] = exit.status.code().into();
                json["oomKilled"] = exit.oom_killed.into();
            }
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
            Ok(())
        }),
        RuntimeCommand::Wait { id } => rt.wait(&id).map(|exit| {
            if exit.oom_killed {
                eprintln!("flotilla: container {id} was OOM-killed (OOMKilled)");
            }
            println!("{}", exit.status.code());
        }),
        RuntimeCommand::Kill { id, signal: name } => match signal(&name) {
            Ok(s) => rt.kill(&id, s),
            Err(e) => return fail(e),
        },
        RuntimeCommand::Delete { force, id } => rt.delete(&id, force),
        RuntimeCommand::Exec {
            tty,
            resize_fifo,
            id,
            command,
        } => {
            let stdin = std::io::stdin();
            let saved = tty
                .then(|| flotilla_sys::tty::raw_mode(std::os::fd::AsFd::as_fd(&stdin)))
                .flatten();
            let result = rt.exec(&id, &command, tty, resize_fifo.as_deref());
            if let Some(saved) = &saved {
                flotilla_sys::tty::restore_mode(std::os::fd::AsFd::as_fd(&stdin), saved);
            }
            return match result {
                Ok(status) => status.code().clamp(0, 255),
                Err(e) => fail(e),
            };
        }
        RuntimeCommand::Logs {
            follow,
            timestamps,
            id,
        } => logs(&rt, &id, follow, timestamps),
        RuntimeCommand::Sandbox(command) => sandbox(&rt, command),
    };
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
