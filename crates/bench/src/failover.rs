//! `flotilla-bench failover`: a node running 2 of a deployment's 6 pods is killed with
//! SIGKILL (the node and every container of it); the time from the kill until 6 replicas run
//! again on the live nodes. Flotilla and a 3-node Docker Swarm (`../shared/swarm-lab/`) in the
//! same run, with Swarm's defaults and tuned (1 s dispatcher heartbeat, no restart delay),
//! rounds alternating.
//!
//! Flotilla: a 3-node lab; each kill gets a fresh deployment (`sleep 3600`, spread 2/2/2),
//! the victim is a node that is neither the API node nor the Raft leader, the API is polled
//! every 50 ms for pods Running and Ready, not being deleted, on another node; then the victim
//! restarts and the next kill waits for it to be Ready. Swarm: `swarm-lab.sh bench failover`,
//! which does the same with `docker service create --replicas 6` and polls the Engine API every
//! 50 ms for 6 running tasks off the victim (`six_running_s` in its results).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{kube_client, Cluster, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Kills per round and system.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Rounds, alternating the systems.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[command(flatten)]
    swarm: SwarmArgs,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the Docker Swarm peer comes from, for the benchmarks that compare with it.
#[derive(clap::Args)]
pub(crate) struct SwarmArgs {
    /// Skip Swarm.
    #[arg(long)]
    pub no_swarm: bool,
    /// The Swarm lab's script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/swarm-lab/swarm-lab.sh"))]
    pub swarm_lab: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
struct Kill {
    system: String,
    round: usize,
    /// From the kill until 6 replicas run on the live nodes, s.
    recovered_s: f64,
    /// From the kill until the node is reported down (`NotReady`, Swarm's `down`), s.
    node_down_s: Option<f64>,
}

const REPLICAS: usize = 6;
const POLL: Duration = Duration::from_millis(50);

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Pods of `app` Running and Ready, not being deleted, not on `except`.
async fn live(pods: &Api<Pod>, app: &str, except: &str) -> Result<Vec<Pod>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p) && node_of(p) != except)
        .collect())
}

async fn node_ready(nodes: &Api<Node>, name: &str) -> Result<bool> {
    let node = nodes.get(name).await?;
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await.unwrap_or(false) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }))
    .expect("a deployment")
}

async fn flotilla_round(archive: &Path, round: usize, kills: usize) -> Result<Vec<Kill>> {
    let mut cluster = Cluster::start(3, Options::default().in_lab()).await?;
    cluster.import_image("busybox", archive)?;
    let lab = cluster.lab.clone().context("a lab")?;
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    let mut out = Vec::new();
    for k in 0..kills {
        let app = format!("fo-{round}-{k}");
        for n in &cluster.nodes {
            until("every node Ready", Duration::from_secs(120), || {
                node_ready(&nodes, &n.name)
            })
            .await?;
        }
        // A formed cluster: every node's gossip sees every member (a node killed before it
        // is in gossip is caught only by the 5 s rule for members gossip never saw).
        cluster.wait_gossip_alive(Duration::from_secs(60)).await?;
        deployments
            .create(&PostParams::default(), &deployment(&app))
            .await?;
        until("6 replicas", Duration::from_secs(120), || async {
            Ok(live(&pods, &app, "").await?.len() == REPLICAS)
        })
        .await?;
        let leader = cluster.leader().await?;
        let running = live(&pods, &app, "").await?;
        // A node with two of them, not serving the API, not leading.
        let victim = (1..3)
            .filter(|i| *i != leader)
            .find(|i| {
                running
                    .iter()
                    .filter(|p| node_of(p) == cluster.nodes[*i].name)
                    .count()
                    == 2
            })
            .context("no node with 2 of the 6 pods")?;
        let name = cluster.nodes[victim].name.clone();
        let killed = Instant::now();
        cluster.kill_with_pods(victim);
        let mut down = None;
        let deadline = killed + Duration::from_secs(120);
        let back = loop {
            if down.is_none() && !node_ready(&nodes, &name).await.unwrap_or(true) {
                down = Some(killed.elapsed().as_secs_f64());
            }
            if live(&pods, &app, &name).await.map(|l| l.len()).unwrap_or(0) == REPLICAS {
                break Instant::now();
            }
            if Instant::now() > deadline {
                let list = pods
                    .list(&ListParams::default().labels(&format!("app={app}")))
                    .await?;
                for p in &list.items {
                    eprintln!(
                        "{} on {:?}: phase {:?}, ready {}, deleting {}",
                        p.metadata.name.as_deref().unwrap_or(""),
                        node_of(p),
                        p.status.as_ref().and_then(|s| s.phase.clone()),
                        ready(p),
                        p.metadata.deletion_timestamp.is_some()
                    );
                }
                for n in nodes.list(&ListParams::default()).await?.items {
                    eprintln!(
                        "node {}: conditions {:?}, taints {:?}",
                        n.metadata.name.as_deref().unwrap_or(""),
                        n.status.and_then(|s| s.conditions).map(|c| c
                            .into_iter()
                            .map(|c| (c.type_, c.status))
                            .collect::<Vec<_>>()),
                        n.spec.and_then(|s| s.taints)
                    );
                }
                bail!(
                    "6 replicas did not come back within 120 s (the nodes' logs: {})",
                    keep_logs(&cluster)?.display()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let kill = Kill {
            system: "flotilla".into(),
            round,
            recovered_s: back.duration_since(killed).as_secs_f64(),
            node_down_s: down,
        };
        eprintln!("{kill:?}");
        if kill.recovered_s > SLOW.as_secs_f64() {
            eprintln!(
                "slower than {SLOW:?}: the nodes' logs are in {}",
                keep_logs(&cluster)?.display()
            );
        }
        out.push(kill);
        cluster.restart(victim).await?;
        deployments.delete(&app, &DeleteParams::default()).await?;
        until("the pods gone", Duration::from_secs(120), || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await?;
            Ok(list.items.is_empty())
        })
        .await?;
    }
    drop(cluster);
    Ok(out)
}

/// A kill slower than this keeps the nodes' logs.
const SLOW: Duration = Duration::from_secs(4);

/// Copies the nodes' logs where they outlive the cluster; the directory.
fn keep_logs(cluster: &Cluster) -> Result<PathBuf> {
    let kept = std::env::temp_dir().join(format!(
        "flotilla-bench-failover-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    ));
    std::fs::create_dir_all(&kept)?;
    for n in &cluster.nodes {
        std::fs::copy(n.log_path(), kept.join(format!("{}.log", n.name)))?;
    }
    Ok(kept)
}

/// Runs `swarm-lab.sh` with `args` and environment `env`.
pub(crate) fn swarm_lab(
    script: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<()> {
    let status = Command::new("bash")
        .arg(script)
        .args(args)
        .env("SWARM_LAB_DIR", dir)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(status.success(), "swarm-lab.sh {args:?} failed: {status}");
    Ok(())
}

/// One Swarm round: a fresh 3-node swarm, `kills` kills with `heartbeat` and `restart_delay`.
fn swarm_round(
    script: &Path,
    round: usize,
    kills: usize,
    heartbeat: &str,
    restart_delay: &str,
) -> Result<Vec<Kill>> {
    let dir = tempfile::tempdir()?;
    let system = format!("swarm hb {heartbeat} delay {restart_delay}");
    let result = (|| {
        swarm_lab(script, dir.path(), &[], &["up", "3"])?;
        swarm_lab(
            script,
            dir.path(),
            &[
                ("HB", heartbeat),
                ("RESTART_DELAY", restart_delay),
                ("FOMODE", "kill"),
            ],
            &["bench", "failover", &kills.to_string()],
        )?;
        let results = std::fs::read_to_string(dir.path().join("results.jsonl"))?;
        let mut out = Vec::new();
        for line in results.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["kind"] != "failover" {
                continue;
            }
            let kill = Kill {
                system: system.clone(),
                round,
                recovered_s: v["six_running_s"].as_f64().context("six_running_s")?,
                node_down_s: v["node_down_s"].as_f64(),
            };
            eprintln!("{kill:?}");
            out.push(kill);
        }
        Ok(out)
    })();
    let _ = swarm_lab(script, dir.path(), &[], &["down"]);
    result
}

fn summary(kills: &[Kill], system: &str) -> Option<(usize, f64, f64)> {
    let mut v: Vec<f64> = kills
        .iter()
        .filter(|k| k.system == system)
        .map(|k| k.recovered_s)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    let p50 = (v[(n - 1) / 2] + v[n / 2]) / 2.0;
    Some((v.len(), p50, *v.last().expect("not empty")))
}

pub async fn run(args: FailoverArgs) -> Result<()> {
    anyhow::ensure!(
        crate::pods::nix_is_root(),
        "flotilla-bench failover needs root (network namespaces, containers)"
    );
    let dir = tempfile::tempdir()?;
    let archive = flotilla_testkit::busybox_archive(dir.path());
    let swarm = [("5s", "5s"), ("1s", "0s")];
    let mut kills = Vec::new();
    for round in 0..args.rounds {
        let flotilla_first = round % 2 == 0;
        for first in [flotilla_first, !flotilla_first] {
            if first {
                kills.extend(flotilla_round(&archive, round, args.kills).await?);
            } else if !args.swarm.no_swarm {
                for (heartbeat, delay) in swarm {
                    let script = args.swarm.swarm_lab.clone();
                    let n = args.kills;
                    let got = tokio::task::spawn_blocking(move || {
                        swarm_round(&script, round, n, heartbeat, delay)
                    })
                    .await??;
                    kills.extend(got);
                }
            }
        }
    }
    println!(
        "failover: kill -9 a node with 2 of 6 replicas → 6 running elsewhere, {} kills per system",
        args.kills * args.rounds
    );
    println!(
        "{:<28} {:>6} {:>9} {:>9}",
        "system", "kills", "p50 s", "max s"
    );
    let mut systems: Vec<String> = kills.iter().map(|k| k.system.clone()).collect();
    systems.dedup();
    systems.sort();
    systems.dedup();
    for s in &systems {
        if let Some((n, p50, max)) = summary(&kills, s) {
            println!("{s:<28} {n:>6} {p50:>9.2} {max:>9.2}");
        }
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&kills)?)?;
    }
    Ok(())
}
