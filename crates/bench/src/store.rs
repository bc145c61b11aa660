//! `flotilla-bench store`: replicated writes of 256-byte values, Flotilla against etcd, same
//! load generator, same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use flotilla_rpc::StoreClient;
use flotilla_tests::{Cluster, Options};
use serde::Serialize;

use crate::etcd::EtcdCluster;
use crate::load::{self, rss_mib, LoadResult};

#[derive(clap::Args)]
pub struct StoreArgs {
    /// How long each load level runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Also write the figures and ratios as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runs per system and load level, alternating the systems; the table shows the median run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// The systems to run; without both there are no ratios (for profiling one of them).
    #[arg(long, value_delimiter = ',', default_value = "flotilla,etcd")]
    systems: Vec<System>,
    /// Also print each run's writes per second, second by second.
    #[arg(long)]
    timeline: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    Flotilla,
    Etcd,
}

#[derive(Serialize)]
struct Row {
    system: &'static str,
    /// The median run by writes/s.
    #[serde(flatten)]
    load: LoadResult,
    rss_mib_per_node: f64,
    /// Every run, in the order they ran.
    runs: Vec<LoadResult>,
}

/// The row for a system's runs at one level: the run with the median writes/s.
fn median_row(system: &'static str, runs: Vec<(LoadResult, f64)>) -> Row {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|a, b| runs[*a].0.ops_per_sec.total_cmp(&runs[*b].0.ops_per_sec));
    let (load, rss) = runs[order[order.len() / 2]].clone();
    Row {
        system,
        load,
        rss_mib_per_node: rss,
        runs: runs.into_iter().map(|(r, _)| r).collect(),
    }
}

#[derive(Serialize)]
struct Report {
    value_size: usize,
    duration_s: f64,
    rows: Vec<Row>,
    /// Per client count: Flotilla ÷ etcd writes/s, and Flotilla ÷ etcd p99.
    ratios: Vec<serde_json::Value>,
}

fn mean_rss(pids: &[u32]) -> f64 {
    let v: Vec<f64> = pids.iter().filter_map(|p| rss_mib(*p)).collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let value = Arc::new(vec![b'x'; args.value_size]);
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;
    let mut rows = Vec::new();

    let flotilla = if args.systems.contains(&System::Flotilla) {
        eprintln!("starting a 3-node Flotilla cluster ...");
        let cluster = Cluster::start(3, Options::default()).await?;
        let clients: Arc<Vec<StoreClient>> = Arc::new(cluster.live_clients());
        let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
        Some((cluster, clients, pids))
    } else {
        None
    };
    let etcd = if args.systems.contains(&System::Etcd) {
        eprintln!("starting a 3-member etcd ...");
        let etcd = EtcdCluster::start(dir.path()).await?;
        let client = etcd_client::Client::connect(&etcd.endpoints, None).await?;
        Some((etcd, client))
    } else {
        None
    };

    // Alternate the systems at each load level so that machine noise hits both alike.
    for (level, &n) in args.clients.iter().enumerate() {
        let mut flotilla_runs = Vec::new();
        let mut etcd_runs = Vec::new();
        for rep in 0..args.rounds {
            if let Some((_cluster, clients, pids)) = &flotilla {
                eprintln!(
                    "flotilla: {n} clients for {:?} (run {} of {}) ...",
                    args.duration,
                    rep + 1,
                    args.rounds
                );
                let (c, v) = (Arc::clone(clients), Arc::clone(&value));
                let result = load::run_measuring_cpu(pids, n, args.duration, move |client, i| {
                    let (c, v) = (Arc::clone(&c), Arc::clone(&v));
                    async move {
                        let node = &c[client % c.len()];
                        node.create(
                            &format!("/bench/{level}/{rep}/{client}/{i}"),
                            v.as_slice().to_vec(),
                        )
                        .await
                        .is_ok()
                    }
                })
                .await;
                flotilla_runs.push((result, mean_rss(pids)));
            }

            if let Some((etcd, etcd_client)) = &etcd {
                eprintln!(
                    "etcd: {n} clients for {:?} (run {} of {}) ...",
                    args.duration,
                    rep + 1,
                    args.rounds
                );
                let (kv, v) = (etcd_client.kv_client(), Arc::clone(&value));
                let pids = etcd.pids();
                let result = load::run_measuring_cpu(&pids, n, args.duration, move |client, i| {
                    let (mut kv, v) = (kv.clone(), Arc::clone(&v));
                    async move {
                        kv.put(
                            format!("/bench/{level}/{rep}/{client}/{i}"),
                            v.as_slice().to_vec(),
                            None,
                        )
                        .await
                        .is_ok()
                    }
                })
                .await;
                etcd_runs.push((result, mean_rss(&pids)));
            }
        }
        if !flotilla_runs.is_empty() {
            rows.push(median_row("flotilla", flotilla_runs));
        }
        if !etcd_runs.is_empty() {
            rows.push(median_row("etcd 3.4", etcd_runs));
        }
    }

    println!(
        "\nmedian of {} runs per system and level\n{:<10} {:>7} {:>10} {:>9} {:>9} {:>8} {:>10} {:>12}",
        args.rounds,
        "system",
        "clients",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "RSS MiB",
        "CPU us/write"
    );
    for r in &rows {
        println!(
            "{:<10} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>10.1} {:>12.0}",
            r.system,
            r.load.clients,
            r.load.ops_per_sec,
            r.load.p50_ms,
            r.load.p99_ms,
            r.load.errors,
            r.rss_mib_per_node,
            r.load.cpu_us_per_op.unwrap_or(f64::NAN)
        );
    }
    for r in &rows {
        let each = |f: &dyn Fn(&LoadResult) -> f64| {
            let v: Vec<String> = r.runs.iter().map(|l| format!("{:.0}", f(l))).collect();
            v.join(" / ")
        };
        println!(
            "  {} at {} clients, every run: writes/s {}; CPU us/write {}",
            r.system,
            r.load.clients,
            each(&|l| l.ops_per_sec),
            each(&|l| l.cpu_us_per_op.unwrap_or(f64::NAN))
        );
    }
    if args.timeline {
        for r in &rows {
            for (i, l) in r.runs.iter().enumerate() {
                let each: Vec<String> = l.per_second.iter().map(|n| n.to_string()).collect();
                println!(
                    "  {} at {} clients, run {}, writes each second: {}",
                    r.system,
                    r.load.clients,
                    i + 1,
                    each.join(" ")
                );
            }
        }
    }
    let mut ratios = Vec::new();
    // Each level's rows are Flotilla's then etcd's; with one system there is nothing to pair.
    let both = flotilla.is_some() && etcd.is_some();
    for pair in rows.chunks(2).filter(|_| both) {
        if let [f, e] = pair {
            let tput = f.load.ops_per_sec / e.load.ops_per_sec.max(f64::MIN_POSITIVE);
            let p99 = f.load.p99_ms / e.load.p99_ms.max(f64::MIN_POSITIVE);
            println!(
                "{} clients: flotilla/etcd writes/s = {tput:.2}x, p99 = {p99:.2}x",
                f.load.clients
            );
            ratios.push(serde_json::json!({
                "clients": f.load.clients,
                "writes_per_sec_ratio": tput,
                "p99_ratio": p99,
            }));
        }
    }
    if let Some(path) = args.json {
        let report = Report {
            value_size: args.value_size,
            duration_s: args.duration.as_secs_f64(),
            rows,
            ratios,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
