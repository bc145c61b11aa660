//! `flotilla-chaos`: see the crate's documentation and `docs/chaos.md`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use flotilla_chaos::check::{check, Format};

#[derive(Parser)]
#[command(
    name = "flotilla-chaos",
    version,
    about = "Faults on a real Flotilla cluster, and the checkers of what it recorded"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a recorded history for linearizability, key by key. Exits 0 when it is
    /// linearizable, 1 when it is not (a small set of operations that shows it is printed),
    /// 2 when the file cannot be read.
    Check {
        /// The history's format.
        #[arg(long, value_enum)]
        format: Format,
        /// At most this long making the witness of a violation small (seconds).
        #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
        witness_time: f64,
        file: PathBuf,
    },
    /// Start a cluster in network namespaces (root), drive workloads through its API while a
    /// seeded nemesis injects faults, and check what was recorded. Writes DIR/history.edn and
    /// DIR/report.json; exits 0 when every check passed, 1 on a violation, 2 when the run
    /// could not be made.
    Run {
        /// Nodes (3 or 5 voters).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The seed of the fault schedule and of the operations (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// How long the workload runs (`60s`, `2m`).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// The faults the nemesis picks from, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "kill,pause,partition"
        )]
        faults: Vec<flotilla_chaos::run::Fault>,
        /// The workloads, comma-separated (this far: register).
        #[arg(long, value_delimiter = ',', default_value = "register")]
        workloads: Vec<String>,
        /// Registers the register workload uses.
        #[arg(long, default_value_t = 3)]
        keys: usize,
        /// Clients per node.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Where the history and the report go.
        #[arg(long, value_name = "DIR")]
        report: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            nodes,
            seed,
            duration,
            faults,
            workloads,
            keys,
            clients,
            report,
        } => {
            if let Some(w) = workloads.iter().find(|w| w.as_str() != "register") {
                eprintln!("flotilla-chaos: --workloads {w}: not built yet (this far: register)");
                return ExitCode::from(2);
            }
            if !(1..=5).contains(&nodes) || keys == 0 || clients == 0 {
                eprintln!("flotilla-chaos: --nodes takes 1 to 5, --keys and --clients at least 1");
                return ExitCode::from(2);
            }
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            // The nodes run the `flotilla` binary beside this one unless FLOTILLA_BIN says
            // otherwise (set before any thread starts).
            if std::env::var_os("FLOTILLA_BIN").is_none() {
                if let Some(bin) = std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("flotilla")))
                {
                    std::env::set_var("FLOTILLA_BIN", bin);
                }
            }
            let options = flotilla_chaos::run::RunOptions {
                nodes,
                seed,
                duration,
                faults,
                keys,
                clients,
                report: report.clone(),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("flotilla-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("flotilla-chaos run: seed {seed}, {nodes} nodes, {duration:?}");
            match runtime.block_on(flotilla_chaos::run::run(options)) {
                Ok(r) => {
                    let ops = &r["register"]["operations"];
                    println!(
                        "register: {} ok, {} failed, {} unanswered; {} faults; {}",
                        ops["ok"],
                        ops["fail"],
                        ops["info"],
                        r["faults"].as_array().map_or(0, Vec::len),
                        if r["valid"] == true {
                            "linearizable"
                        } else {
                            "NOT linearizable"
                        }
                    );
                    println!("report: {}", report.join("report.json").display());
                    if r["valid"] == true {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("flotilla-chaos: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check {
            format,
            witness_time,
            file,
        } => {
            let Ok(witness_time) = std::time::Duration::try_from_secs_f64(witness_time) else {
                eprintln!("flotilla-chaos: --witness-time {witness_time}: not a number of seconds");
                return ExitCode::from(2);
            };
            let name = file.display();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("flotilla-chaos: {name}: {e}");
                    return ExitCode::from(2);
                }
            };
            let started = Instant::now();
            let verdict = match check(format, &text, witness_time) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("flotilla-chaos: {name}: {e}");
                    return ExitCode::from(2);
                }
            };
            let took = started.elapsed();
            let scope = format!(
                "{} operations on {} key{}, checked in {:.1} ms",
                verdict.operations,
                verdict.keys,
                if verdict.keys == 1 { "" } else { "s" },
                took.as_secs_f64() * 1000.0
            );
            // Written without panicking when the reader has gone (`| head`).
            let mut out = std::io::stdout().lock();
            match verdict.violation {
                None => {
                    let _ = writeln!(out, "{name}: linearizable ({scope})");
                    ExitCode::SUCCESS
                }
                Some((key, witness)) => {
                    let _ = writeln!(out, "{name}: NOT linearizable ({scope})");
                    let _ = writeln!(
                        out,
                        "key {key:?}: these {} operations cannot be ordered (times are lines):",
                        witness.len()
                    );
                    for op in witness {
                        let _ = writeln!(out, "  {op}");
                    }
                    ExitCode::from(1)
                }
            }
        }
    }
}
