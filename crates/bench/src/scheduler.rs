//! `flotilla-bench scheduler`: how fast the leader places pods, and how fast a deployment of
//! 100 runs, against Docker Swarm in the same run.
//!
//! 1. Hollow nodes, as kube-scheduler's `scheduler_perf` does: a 3-node lab cluster whose own
//!    nodes are cordoned, 5,000 Node objects written through the API (4 CPUs, 32 GiB, 110 pods,
//!    Ready; no agent behind them), then 10 deployments of 1,000 replicas each (requests
//!    100m / 500Mi, `scheduler_perf`'s default pod) created at once. A watch on the pods
//!    records when each one appears and when it is bound. Reported: pods bound per second from
//!    the deployments' creation until the last binding, the bindings' own rate (first to last
//!    binding), and the latency from a pod's appearance to its binding (p50, p99). A fresh
//!    cluster per run; the median of the runs is the figure.
//! 2. 100 replicas that really run: a fresh 3-node lab cluster with busybox imported, a
//!    deployment of 100 (`sleep 3600`) created, timed until 100 pods are `Running`; against
//!    `docker service create --replicas 100` on a fresh 3-node Swarm
//!    (`swarm-lab.sh bench svc`, its `create100_running_s`). Rounds alternate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{kube_client, Cluster, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Hollow Node objects.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Deployments of the hollow run.
    #[arg(long, default_value_t = 10)]
    deployments: usize,
    /// Replicas of each of them.
    #[arg(long, default_value_t = 1000)]
    replicas: usize,
    /// Runs of each part (and rounds against Swarm).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Replicas of the deployment that really runs.
    #[arg(long, default_value_t = 100)]
    running: usize,
    /// Only the hollow-node part.
    #[arg(long, conflicts_with = "running_only")]
    hollow_only: bool,
    /// Only the part with 100 replicas that really run.
    #[arg(long)]
    running_only: bool,
    #[command(flatten)]
    swarm: crate::failover::SwarmArgs,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
struct HollowRun {
    pods: usize,
    nodes: usize,
    /// From the deployments' creation until the last pod is bound, s.
    total_s: f64,
    /// `pods / total_s`.
    bound_per_s: f64,
    /// Pods created (seen by the watch) per second, first to last.
    created_per_s: f64,
    /// Bindings per second, first to last.
    binds_per_s: f64,
    /// From a pod's appearance to its binding, ms.
    bind_p50_ms: f64,
    bind_p99_ms: f64,
    bind_max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
struct RunningRound {
    system: String,
    round: usize,
    replicas: usize,
    /// From the create until every replica runs, s.
    running_s: f64,
}

#[derive(Serialize)]
struct Report {
    hollow: Vec<HollowRun>,
    running: Vec<RunningRound>,
}

/// When each pod was first seen, and first seen bound.
#[derive(Default)]
struct Seen {
    added: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

fn hollow_node(name: &str, zone: usize) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": format!("zone-{zone}"),
        }},
    }))
    .expect("a node")
}

fn hollow_status(name: &str) -> serde_json::Value {
    let resources =
        json!({"cpu": "4", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let now = flotilla_api::meta::now_rfc3339();
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "hollow", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "Hostname", "address": name}],
        },
    })
}

fn deployment(name: &str, replicas: usize, resources: bool, command: &[&str]) -> Deployment {
    let mut container = json!({"name": "c", "image": "busybox", "command": command});
    if resources {
        container["resources"] = json!({
            "requests": {"cpu": "100m", "memory": "500Mi"},
            "limits": {"cpu": "100m", "memory": "500Mi"},
        });
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }))
    .expect("a deployment")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rate(n: usize, first: Instant, last: Instant) -> f64 {
    n as f64 / last.duration_since(first).as_secs_f64().max(1e-3)
}

/// Watches the pods of `namespace` from `version` into `seen`.
async fn watch_pods(
    pods: Api<Pod>,
    version: String,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
) -> Result<()> {
    let mut version = version;
    loop {
        let params = WatchParams::default().timeout(290);
        let mut stream = pods.watch(&params, &version).await?.boxed();
        while let Some(event) = stream.try_next().await? {
            let pod = match event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(e) => bail!("watch error: {e:?}"),
            };
            let now = Instant::now();
            if let Some(v) = &pod.metadata.resource_version {
                version = v.clone();
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty());
            let mut s = seen.lock().expect("lock");
            s.added.entry(name.clone()).or_insert(now);
            if bound {
                s.bound.entry(name).or_insert(now);
            }
            drop(s);
            changed.notify_waiters();
        }
    }
}

async fn hollow_run(args: &SchedulerArgs) -> Result<HollowRun> {
    eprintln!(
        "scheduler: a 3-node cluster, {} hollow nodes ...",
        args.nodes
    );
    let cluster = Cluster::start(3, Options::default().in_lab()).await?;
    let lab = cluster.lab.clone().context("a lab")?;
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    // The cluster's own nodes take no pods: every pod goes to a hollow node.
    for n in &cluster.nodes {
        nodes
            .patch(
                &n.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await?;
    }
    let started = Instant::now();
    futures::stream::iter(0..args.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("hollow-{i:05}");
                nodes
                    .create(&PostParams::default(), &hollow_node(&name, i % 3))
                    .await?;
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(hollow_status(&name)),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "  {} hollow nodes in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "sched"}})).expect("a namespace");
    namespaces.create(&PostParams::default(), &ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sched");
    let version = pods
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let changed = Arc::new(Notify::new());
    let watcher = tokio::spawn(watch_pods(
        pods.clone(),
        version,
        Arc::clone(&seen),
        Arc::clone(&changed),
    ));

    let total = args.deployments * args.replicas;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "sched");
    let t0 = Instant::now();
    futures::future::try_join_all((0..args.deployments).map(|d| {
        let deployments = deployments.clone();
        async move {
            let d = deployment(&format!("d{d}"), args.replicas, true, &["sleep", "3600"]);
            deployments.create(&PostParams::default(), &d).await
        }
    }))
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let notified = changed.notified();
        let bound = seen.lock().expect("lock").bound.len();
        if bound >= total {
            break;
        }
        if watcher.is_finished() {
            bail!("the pods' watch ended: {:?}", watcher.await);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            bail!("{bound} of {total} pods bound after 600 s");
        }
    }
    watcher.abort();
    let s = seen.lock().expect("lock");
    let last_bound = *s.bound.values().max().expect("bound pods");
    let first_bound = *s.bound.values().min().expect("bound pods");
    let first_added = *s.added.values().min().expect("pods");
    let last_added = *s.added.values().max().expect("pods");
    let mut latencies: Vec<f64> = s
        .bound
        .iter()
        .filter_map(|(name, at)| {
            let added = s.added.get(name)?;
            Some(at.duration_since(*added).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let total_s = last_bound.duration_since(t0).as_secs_f64();
    let run = HollowRun {
        pods: s.bound.len(),
        nodes: args.nodes,
        total_s,
        bound_per_s: s.bound.len() as f64 / total_s,
        created_per_s: rate(s.added.len(), first_added, last_added),
        binds_per_s: rate(s.bound.len(), first_bound, last_bound),
        bind_p50_ms: quantile(&latencies, 0.50),
        bind_p99_ms: quantile(&latencies, 0.99),
        bind_max_ms: latencies.last().copied().unwrap_or(0.0),
    };
    eprintln!("  {run:?}");
    drop(s);
    drop(cluster);
    Ok(run)
}

async fn flotilla_running(archive: &Path, round: usize, replicas: usize) -> Result<RunningRound> {
    let cluster = Cluster::start(3, Options::default().in_lab()).await?;
    cluster.import_image("busybox", archive)?;
    let lab = cluster.lab.clone().context("a lab")?;
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let t0 = Instant::now();
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", replicas, false, &["sleep", "3600"]),
        )
        .await?;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let running = list
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.metadata.deletion_timestamp.is_none()
            })
            .count();
        if running >= replicas {
            break;
        }
        if Instant::now() > deadline {
            bail!("{running} of {replicas} Running after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let round = RunningRound {
        system: "flotilla".into(),
        round,
        replicas,
        running_s: t0.elapsed().as_secs_f64(),
    };
    eprintln!("  {round:?}");
    drop(cluster);
    Ok(round)
}

fn swarm_running(script: &Path, round: usize, replicas: usize) -> Result<RunningRound> {
    anyhow::ensure!(
        replicas == 100,
        "the Swarm lab measures 100 replicas; run with --running 100 or --no-swarm"
    );
    let dir = tempfile::tempdir()?;
    let result = (|| {
        crate::failover::swarm_lab(script, dir.path(), &[], &["up", "3"])?;
        crate::failover::swarm_lab(
            script,
            dir.path(),
            &[("REPS100", "1")],
            &["bench", "svc", "0"],
        )?;
        let results = std::fs::read_to_string(dir.path().join("results.jsonl"))?;
        for line in results.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["kind"] == "svc_create100" {
                let round = RunningRound {
                    system: "swarm".into(),
                    round,
                    replicas,
                    running_s: v["create100_running_s"]
                        .as_f64()
                        .context("create100_running_s")?,
                };
                eprintln!("  {round:?}");
                return Ok(round);
            }
        }
        bail!("no svc_create100 in the Swarm lab's results")
    })();
    let _ = crate::failover::swarm_lab(script, dir.path(), &[], &["down"]);
    result
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    anyhow::ensure!(
        crate::pods::nix_is_root(),
        "flotilla-bench scheduler needs root (network namespaces, containers)"
    );
    let mut hollow = Vec::new();
    if !args.running_only {
        for _ in 0..args.rounds {
            hollow.push(hollow_run(&args).await?);
        }
    }
    let mut running = Vec::new();
    if !args.hollow_only {
        let dir = tempfile::tempdir()?;
        let archive = flotilla_testkit::busybox_archive(dir.path());
        for round in 0..args.rounds {
            let flotilla_first = round % 2 == 0;
            for first in [flotilla_first, !flotilla_first] {
                if first {
                    running.push(flotilla_running(&archive, round, args.running).await?);
                } else if !args.swarm.no_swarm {
                    let (script, n) = (args.swarm.swarm_lab.clone(), args.running);
                    running.push(
                        tokio::task::spawn_blocking(move || swarm_running(&script, round, n))
                            .await??,
                    );
                }
            }
        }
    }
    if !hollow.is_empty() {
        println!(
            "scheduler: {} hollow nodes, {} deployments × {} replicas, median of {} runs",
            args.nodes, args.deployments, args.replicas, args.rounds
        );
        let med = |f: fn(&HollowRun) -> f64| median(hollow.iter().map(f).collect());
        println!(
            "  pods bound/s (create → last bound) {:>9.0}   total {:.2} s",
            med(|r| r.bound_per_s),
            med(|r| r.total_s)
        );
        println!(
            "  created/s {:>9.0}   bindings/s {:>9.0}",
            med(|r| r.created_per_s),
            med(|r| r.binds_per_s)
        );
        println!(
            "  bind latency p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            med(|r| r.bind_p50_ms),
            med(|r| r.bind_p99_ms),
            med(|r| r.bind_max_ms)
        );
    }
    for system in ["flotilla", "swarm"] {
        let v: Vec<f64> = running
            .iter()
            .filter(|r| r.system == system)
            .map(|r| r.running_s)
            .collect();
        if !v.is_empty() {
            println!(
                "{} replicas Running, {system:<9} median {:.2} s over {} rounds",
                args.running,
                median(v.clone()),
                v.len()
            );
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&Report { hollow, running })?,
        )?;
    }
    Ok(())
}
