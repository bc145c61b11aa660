//! `flotilla-bench store`: replicated writes of 256-byte values, Flotilla against etcd, same
//! load generator, same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use flotilla_rpc::StoreClient;
use flotilla_testkit::{Cluster, Options};
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
    /// The systems to run (etcd is run twice: as it comes and with GOMAXPROCS=1); without both
    /// there are no ratios (for profiling one of them).
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
    system: String,
    /// The median run by writes/s.
    #[serde(flatten)]
    load: LoadResult,
    rss_mib_per_node: f64,
    /// Every run, in the order they ran.
    runs: Vec<LoadResult>,
}

/// The row for a system's runs at one level: the run with the median writes/s.
fn median_row(system: String, runs: Vec<(LoadResult, f64)>) -> Row {
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
    etcd_version: Option<String>,
    rows: Vec<Row>,
    /// Per client count: Flotilla ÷ the better etcd's writes/s, and p99 against the same.
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

/// One system under test, started once and loaded at every level.
enum Contender {
    Flotilla {
        _cluster: Cluster,
        clients: Arc<Vec<StoreClient>>,
        pids: Vec<u32>,
    },
    Etcd {
        label: String,
        cluster: EtcdCluster,
        client: Box<etcd_client::Client>,
    },
}

impl Contender {
    fn label(&self) -> String {
        match self {
            Contender::Flotilla { .. } => "flotilla".into(),
            Contender::Etcd { label, .. } => label.clone(),
        }
    }

    fn is_etcd(&self) -> bool {
        matches!(self, Contender::Etcd { .. })
    }

    /// One run of `n` clients writing fresh keys under `/bench/{run}/`.
    async fn run(
        &self,
        run: String,
        n: usize,
        duration: Duration,
        value: &Arc<Vec<u8>>,
    ) -> (LoadResult, f64) {
        match self {
            Contender::Flotilla { clients, pids, .. } => {
                let (c, v) = (Arc::clone(clients), Arc::clone(value));
                let result = load::run_measuring_cpu(pids, n, duration, move |client, i| {
                    let (c, v, run) = (Arc::clone(&c), Arc::clone(&v), run.clone());
                    async move {
                        let node = &c[client % c.len()];
                        node.create(&format!("/bench/{run}/{client}/{i}"), v.as_slice().to_vec())
                            .await
                            .is_ok()
                    }
                })
                .await;
                (result, mean_rss(pids))
            }
            Contender::Etcd {
                cluster, client, ..
            } => {
                let (kv, v) = (client.kv_client(), Arc::clone(value));
                let pids = cluster.pids();
                let result = load::run_measuring_cpu(&pids, n, duration, move |client, i| {
                    let (mut kv, v, run) = (kv.clone(), Arc::clone(&v), run.clone());
                    async move {
                        kv.put(
                            format!("/bench/{run}/{client}/{i}"),
                            v.as_slice().to_vec(),
                            None,
                        )
                        .await
                        .is_ok()
                    }
                })
                .await;
                (result, mean_rss(&pids))
            }
        }
    }
}

pub async fn run(args: StoreArgs) -> Result<()> {
    let value = Arc::new(vec![b'x'; args.value_size]);
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;

    let mut contenders = Vec::new();
    if args.systems.contains(&System::Flotilla) {
        eprintln!("starting a 3-node Flotilla cluster ...");
        let cluster = Cluster::start(3, Options::default()).await?;
        let clients = Arc::new(cluster.live_clients());
        let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
        contenders.push(Contender::Flotilla {
            _cluster: cluster,
            clients,
            pids,
        });
    }
    let etcd_version = if args.systems.contains(&System::Etcd) {
        Some(crate::etcd::version()?)
    } else {
        None
    };
    if let Some(version) = &etcd_version {
        // etcd as it comes, and with one scheduler thread per member as a Flotilla node has
        // one async worker: the better of the two is the one compared.
        for (name, gomaxprocs) in [("etcd", None), ("etcd-1", Some(1))] {
            let label = match gomaxprocs {
                None => format!("etcd {version}"),
                Some(n) => format!("etcd {version} GOMAXPROCS={n}"),
            };
            eprintln!("starting a 3-member {label} ...");
            let cluster = EtcdCluster::start(dir.path(), name, gomaxprocs).await?;
            let client = etcd_client::Client::connect(&cluster.endpoints, None).await?;
            contenders.push(Contender::Etcd {
                label,
                cluster,
                client: Box::new(client),
            });
        }
    }

    // Every round runs each system once, the first one rotating from round to round, so that
    // neither the machine's drift nor the order favours one of them.
    let mut rows: Vec<Vec<Row>> = Vec::new();
    for (level, &n) in args.clients.iter().enumerate() {
        let mut runs: Vec<Vec<(LoadResult, f64)>> = contenders.iter().map(|_| Vec::new()).collect();
        for rep in 0..args.rounds as usize {
            for k in 0..contenders.len() {
                let which = (rep + k) % contenders.len();
                let contender = &contenders[which];
                eprintln!(
                    "{}: {n} clients for {:?} (round {} of {}) ...",
                    contender.label(),
                    args.duration,
                    rep + 1,
                    args.rounds
                );
                let run = format!("{level}/{rep}");
                runs[which].push(contender.run(run, n, args.duration, &value).await);
            }
        }
        rows.push(
            contenders
                .iter()
                .zip(runs)
                .map(|(c, r)| median_row(c.label(), r))
                .collect(),
        );
    }

    println!(
        "\nmedian of {} runs per system and level\n{:<28} {:>7} {:>10} {:>9} {:>9} {:>8} {:>10} {:>12} {:>14}",
        args.rounds,
        "system",
        "clients",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "RSS MiB",
        "CPU us/write",
        "load gen us/w"
    );
    for r in rows.iter().flatten() {
        println!(
            "{:<28} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>10.1} {:>12.0} {:>14.0}",
            r.system,
            r.load.clients,
            r.load.ops_per_sec,
            r.load.p50_ms,
            r.load.p99_ms,
            r.load.errors,
            r.rss_mib_per_node,
            r.load.cpu_us_per_op.unwrap_or(f64::NAN),
            r.load.generator_cpu_us_per_op.unwrap_or(f64::NAN)
        );
    }
    for r in rows.iter().flatten() {
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
        for r in rows.iter().flatten() {
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
    let has_flotilla = contenders.iter().any(|c| !c.is_etcd());
    for level in rows
        .iter()
        .filter(|_| has_flotilla && etcd_version.is_some())
    {
        let flotilla = &level[0];
        let Some(etcd) = contenders
            .iter()
            .zip(level)
            .filter(|(c, _)| c.is_etcd())
            .map(|(_, r)| r)
            .max_by(|a, b| a.load.ops_per_sec.total_cmp(&b.load.ops_per_sec))
        else {
            continue;
        };
        let tput = flotilla.load.ops_per_sec / etcd.load.ops_per_sec.max(f64::MIN_POSITIVE);
        let p99 = flotilla.load.p99_ms / etcd.load.p99_ms.max(f64::MIN_POSITIVE);
        println!(
            "{} clients: flotilla / the better etcd ({}) writes/s = {tput:.2}x, p99 = {p99:.2}x",
            flotilla.load.clients, etcd.system
        );
        ratios.push(serde_json::json!({
            "clients": flotilla.load.clients,
            "compared_with": etcd.system,
            "writes_per_sec_ratio": tput,
            "p99_ratio": p99,
        }));
    }
    if let Some(path) = args.json {
        let report = Report {
            value_size: args.value_size,
            duration_s: args.duration.as_secs_f64(),
            etcd_version,
            rows: rows.into_iter().flatten().collect(),
            ratios,
        };
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
