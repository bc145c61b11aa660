//! `flotilla runtime create|start|run|state|kill|delete`: the runtime on OCI bundles, as
//! `runc` and `crun` take them. Runs without the async runtime: creating a container clones
//! this process, which must then be single-threaded.

use std::path::PathBuf;

use clap::Subcommand;
use flotilla_runtime::{Runtime, RuntimeError, Status};
use flotilla_sys::Signal;

#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = "/run/flotilla/runtime")]
    root: PathBuf,
    #[command(subcommand)]
    command: RuntimeCommand,
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Create a container from an OCI bundle; its process waits for `start`.
    Create {
        /// The bundle: `config.json` and the root file system it names.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
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
        id: String,
    },
    /// The container's state as OCI JSON.
    State { id: String },
    /// Send a signal (default TERM) to the container's process.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Run a command in a running container; exits with its status.
    Exec {
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

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("flotilla: error: {message}");
    1
}

/// Runs the command; returns the process's exit code.
pub fn run(args: RuntimeArgs) -> i32 {
    let rt = Runtime::new(&args.root);
    let result = match args.command {
        RuntimeCommand::Create { bundle, id } => rt.create(&id, &bundle).map(|_| ()),
        RuntimeCommand::Start { id } => rt.start(&id),
        RuntimeCommand::Run { bundle, report, id } => {
            return match rt.run(&id, &bundle) {
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
        RuntimeCommand::State { id } => rt.state(&id).map(|(state, status)| {
            let json = serde_json::json!({
                "ociVersion": "1.0.2",
                "id": state.id,
                "status": status,
                "pid": state.pid,
                "bundle": state.bundle,
            });
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }),
        RuntimeCommand::Kill { id, signal: name } => match signal(&name) {
            Ok(s) => rt.kill(&id, s),
            Err(e) => return fail(e),
        },
        RuntimeCommand::Delete { force, id } => rt.delete(&id, force),
        RuntimeCommand::Exec { id, command } => {
            return match rt.exec(&id, &command) {
                Ok(status) => status.code().clamp(0, 255),
                Err(e) => fail(e),
            }
        }
        RuntimeCommand::Logs {
            follow,
            timestamps,
            id,
        } => logs(&rt, &id, follow, timestamps),
    };
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
