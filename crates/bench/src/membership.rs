//! `flotilla-bench membership`: how fast every live node agrees that a killed node is dead, how
//! fast they see a node stopped with SIGTERM gone, and how many live nodes are wrongly declared
//! dead while `stress-ng` loads the CPUs.
//!
//! Each node reports in its status how long ago its own gossip saw a member down, so the moment
//! of detection is known to the millisecond on every observer, whatever the polling interval.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{Cluster, Options};
use serde::Serialize;

#[derive(clap::Args)]
pub struct MembershipArgs {
    /// Cluster sizes, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "5,20")]
    nodes: Vec<usize>,
    /// Nodes killed (and restarted) per cluster size.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Nodes stopped with SIGTERM (graceful leave) per cluster size, after the kills.
    #[arg(long, default_value_t = 5)]
    leaves: usize,
    /// How long to load the CPUs with stress-ng while counting false positives.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    stress: Duration,
    /// An extra flag for every node (repeatable): `--node-arg=--gossip-probe-timeout=150ms`.
    #[arg(long = "node-arg", value_name = "FLAG", allow_hyphen_values = true)]
    node_args: Vec<String>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Figures {
    nodes: usize,
    kills: usize,
    /// Kill to the last live node's detection, per kill.
    all_agree_ms: Vec<u64>,
    median_ms: u64,
    max_ms: u64,
    /// Kill to the first detection, median over kills.
    first_median_ms: u64,
    /// SIGTERM to the last live node seeing the member gone, per graceful leave.
    leave_all_agree_ms: Vec<u64>,
    leave_median_ms: u64,
    leave_max_ms: u64,
    stress_secs: u64,
    false_positives: usize,
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Waits until every live node sees member `id` down; returns (first, last) detection times
/// after `killed_at`.
async fn detection(
    cluster: &Cluster,
    victim: usize,
    killed_at: Instant,
) -> Result<(Duration, Duration)> {
    let id = cluster.nodes[victim].node_id;
    let observers: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != victim).collect();
    let mut seen: Vec<Option<Duration>> = vec![None; observers.len()];
    let deadline = killed_at + Duration::from_secs(60);
    while seen.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            let missing: Vec<String> = seen
                .iter()
                .zip(&observers)
                .filter(|(s, _)| s.is_none())
                .map(|(_, i)| cluster.nodes[*i].name.clone())
                .collect();
            let view = cluster.client(observers[0]).status().await;
            bail!("{missing:?} did not see node {victim} dead within 60 s; first observer's status: {view:?}");
        }
        for (slot, i) in seen.iter_mut().zip(&observers) {
            if slot.is_some() {
                continue;
            }
            let asked = Instant::now();
            let Ok(status) = cluster.client(*i).status().await else {
                continue;
            };
            if let Some(ms) = status
                .members
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.down_ms)
            {
                let at = asked - Duration::from_millis(ms);
                *slot = Some(at.saturating_duration_since(killed_at));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times: Vec<Duration> = seen.into_iter().flatten().collect();
    Ok((
        times.iter().min().copied().unwrap_or_default(),
        times.iter().max().copied().unwrap_or_default(),
    ))
}

/// Counts (observer, member) pairs reported down while stress-ng loads every CPU.
async fn false_positives(cluster: &Cluster, how_long: Duration) -> Result<usize> {
    let mut stress = Command::new("stress-ng")
        .args(["--cpu", "0", "--timeout"])
        .arg(format!("{}s", how_long.as_secs().max(1)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("run stress-ng (make deps installs it)")?;
    let mut wrong: BTreeSet<(usize, u64)> = BTreeSet::new();
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        for i in 0..cluster.nodes.len() {
            if let Ok(s) = cluster.client(i).status().await {
                for m in s.members.iter().filter(|m| m.down_ms.is_some()) {
                    wrong.insert((i, m.id));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stress.kill();
    let _ = stress.wait();
    Ok(wrong.len())
}

async fn measure(n: usize, args: &MembershipArgs) -> Result<Figures> {
    eprintln!("starting {n} nodes ...");
    let options = Options {
        extra_args: args.node_args.clone(),
        ..Options::default()
    };
    let mut cluster = Cluster::start(n, options).await?;
    cluster.wait_gossip_alive(Duration::from_secs(60)).await?;
    let mut all_agree = Vec::new();
    let mut first = Vec::new();
    for k in 0..args.kills {
        // Spread the kills over the nodes, leader or not.
        let victim = (k * 7 + 1) % n;
        let killed_at = Instant::now();
        cluster.kill(victim);
        let (earliest, latest) = detection(&cluster, victim, killed_at).await?;
        eprintln!(
            "  {n} nodes, kill {}: first {} ms, all {} ms",
            k + 1,
            earliest.as_millis(),
            latest.as_millis()
        );
        first.push(earliest.as_millis() as u64);
        all_agree.push(latest.as_millis() as u64);
        cluster.restart(victim).await?;
        cluster.wait_gossip_alive(Duration::from_secs(60)).await?;
    }
    let mut left = Vec::new();
    for k in 0..args.leaves {
        let victim = (k * 3 + 2) % n;
        let stopped_at = Instant::now();
        // Returns once the process exited; the detection times are measured from `stopped_at`
        // whatever the wait.
        let status = cluster.terminate(victim)?;
        anyhow::ensure!(status.success(), "SIGTERM exit status {status}");
        let (_, latest) = detection(&cluster, victim, stopped_at).await?;
        eprintln!(
            "  {n} nodes, SIGTERM {}: all {} ms",
            k + 1,
            latest.as_millis()
        );
        left.push(latest.as_millis() as u64);
        cluster.restart(victim).await?;
        cluster.wait_gossip_alive(Duration::from_secs(60)).await?;
    }
    eprintln!(
        "  {n} nodes: stress-ng on every CPU for {:?} ...",
        args.stress
    );
    let fp = false_positives(&cluster, args.stress).await?;
    Ok(Figures {
        nodes: n,
        kills: args.kills,
        median_ms: median(&all_agree),
        max_ms: all_agree.iter().max().copied().unwrap_or(0),
        first_median_ms: median(&first),
        all_agree_ms: all_agree,
        leave_median_ms: median(&left),
        leave_max_ms: left.iter().max().copied().unwrap_or(0),
        leave_all_agree_ms: left,
        stress_secs: args.stress.as_secs(),
        false_positives: fp,
    })
}

pub async fn run(args: MembershipArgs) -> Result<()> {
    let mut all = Vec::new();
    for n in &args.nodes {
        all.push(measure(*n, &args).await?);
    }
    println!();
    println!(
        "{:>6} {:>6} {:>16} {:>14} {:>18} {:>18} {:>16}",
        "nodes",
        "kills",
        "median all (ms)",
        "max all (ms)",
        "median first (ms)",
        "leave median (ms)",
        "false positives"
    );
    for f in &all {
        println!(
            "{:>6} {:>6} {:>16} {:>14} {:>18} {:>18} {:>16}",
            f.nodes,
            f.kills,
            f.median_ms,
            f.max_ms,
            f.first_median_ms,
            f.leave_median_ms,
            f.false_positives
        );
    }
    println!(
        "(false positives: live members reported down while stress-ng loaded every CPU for {} s)",
        args.stress.as_secs()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
