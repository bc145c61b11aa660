//! `flotilla-bench`: figures for Flotilla next to its peer systems, measured in the same run.

mod api;
mod dns;
mod etcd;
mod failover;
mod images;
mod load;
mod membership;
mod pods;
mod proxy;
mod runtime;
mod scheduler;
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
    /// The Kubernetes API: creates against the store, lists of 10,000 pods and 1,000-watcher
    /// fan-out against etcd.
    Api(api::ApiArgs),
    /// Failure detection: kill -9 a node, time until every live node agrees it is dead.
    Membership(membership::MembershipArgs),
    /// Container start: run-to-exit of /bin/true under Flotilla's runtime, runc and crun.
    Runtime(runtime::RuntimeArgs),
    /// Pod start on one node: created through the API → Running, against `docker run -d`.
    Pods(pods::PodsArgs),
    /// Node failover: kill -9 a node with 2 of a deployment's 6 pods, time until 6 run
    /// elsewhere, against Docker Swarm (defaults and tuned).
    Failover(failover::FailoverArgs),
    /// Scheduling: 10,000 pods in deployments onto 5,000 hollow nodes; and 100 replicas that
    /// really run against `docker service create --replicas 100` on Docker Swarm.
    Scheduler(scheduler::SchedulerArgs),
    /// Service DNS: a node's DNS against NSD with the same records (dnsperf); and the proxy:
    /// one endpoint change against a full rewrite of 10,000 services' rules.
    Dns(dns::DnsArgs),
    /// Images to every node: a 100 MB 5-layer image, registry pull against peer fetch, with
    /// the registry's egress.
    Images(images::ImagesArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Without threads: it re-executes itself in a private mount namespace.
    let cli = match cli.command {
        Command::Runtime(args) => return runtime::run(args),
        command => Cli { command },
    };
    // One worker: the load generator takes as little as it can of the cores both systems
    // under test share with it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Store(args) => runtime.block_on(store::run(args)),
        Command::Api(args) => runtime.block_on(api::run(args)),
        Command::Membership(args) => runtime.block_on(membership::run(args)),
        Command::Pods(args) => runtime.block_on(pods::run_bench(args)),
        Command::Failover(args) => runtime.block_on(failover::run(args)),
        Command::Scheduler(args) => runtime.block_on(scheduler::run(args)),
        Command::Dns(args) => runtime.block_on(dns::run(args)),
        Command::Images(args) => runtime.block_on(images::run(args)),
        Command::Runtime(_) => unreachable!("run before the async runtime starts"),
    }
}
