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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
