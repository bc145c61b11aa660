//! `flotilla-bench`: figures for Flotilla next to its peer systems, measured in the same run.

mod etcd;
mod load;
mod membership;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Benchmarks Flotilla side by side with its peer systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicated writes: a 3-node Flotilla cluster against a 3-member etcd.
    Store(store::StoreArgs),
    /// Failure detection: kill -9 a node, time until every live node agrees it is dead.
    Membership(membership::MembershipArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Store(args) => runtime.block_on(store::run(args)),
        Command::Membership(args) => runtime.block_on(membership::run(args)),
    }
}
