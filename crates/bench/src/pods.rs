//! `flotilla-bench pods`: pod start on one node, Flotilla against Docker, in the same run.
//!
//! Flotilla: a one-node cluster in a lab namespace with busybox in its store; a pod with
//! `spec.nodeName` is created through the API and timed until a watch sees it `Running`:
//! 100 one after another (p50, p99), then 100 at once (time until all run), then the RSS of the
//! node's processes. Docker: Debian's `docker.io` daemon, started here in a network namespace
//! of its own (and a private mount namespace with the host's cgroups), the same busybox image
//! loaded; `docker run -d busybox sleep 3600` timed until it returns (the container started),
//! 100 one after another, then 100 at once, then the RSS of dockerd, containerd and the shims.
//! Rounds alternate between the two; the first system rotates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{kube_client, Cluster, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;

#[derive(clap::Args)]
pub struct PodsArgs {
    /// Pods per measurement (one after another, then at once).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Rounds per system, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip Docker (when `docker.io` cannot be installed).
    #[arg(long)]
    no_docker: bool,
}

/// One round of one system.
#[derive(Clone, Debug, Serialize)]
struct Round {
    system: &'static str,
    /// One at a time: start → Running, in ms.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// All at once: time until every one runs, in s.
    burst_s: f64,
    /// The daemon alone (flotilla node; dockerd + containerd) with the burst's pods (and the
    /// warm-up one) running, MiB.
    daemon_rss_mib: f64,
    /// The daemon and every helper process it keeps per container (shims): the sum of their
    /// proportional set sizes, MiB.
    total_pss_mib: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    quantile(values, 0.5)
}

fn latencies(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
    )
}

/// Proportional set size of a process in MiB: its private memory plus its share of what it
/// shares (a shim forked from a big binary shares most of its pages), so sums are fair.
fn pss_mib(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// PSS of every process in network namespace `netns` (a daemon and its shims; containers
/// have namespaces of their own), in MiB, and the pids.
fn netns_rss(netns: &str) -> (f64, Vec<u32>) {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pids: Vec<u32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let rss = pids.iter().filter_map(|p| pss_mib(*p)).sum();
    (rss, pids)
}

/// Containers in a runtime root.
fn containers_in(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "n1",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }))
    .expect("a pod")
}

/// When the watch first saw each pod Running.
#[derive(Default)]
struct Seen {
    running: Mutex<HashMap<String, Instant>>,
    changed: Notify,
}

impl Seen {
    async fn wait(&self, name: &str, timeout: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(at) = self.running.lock().expect("lock").get(name) {
                return Ok(*at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("pod {name} was not Running within {timeout:?}");
            }
        }
    }
}

async fn flotilla_round(archive: &Path, n: usize) -> Result<Round> {
    let cluster = Cluster::start(1, Options::default().in_lab()).await?;
    cluster.import_image("busybox", archive)?;
    let lab = cluster.lab.clone().context("a lab")?;
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let seen = Arc::new(Seen::default());
    let watching = {
        let pods = pods.clone();
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut stream = pods.watch(&WatchParams::default(), "0").await?.boxed();
            while let Some(event) = stream.try_next().await? {
                if let WatchEvent::Added(p) | WatchEvent::Modified(p) = event {
                    let running =
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if running {
                        let name = p.metadata.name.unwrap_or_default();
                        seen.running
                            .lock()
                            .expect("lock")
                            .entry(name)
                            .or_insert_with(Instant::now);
                        seen.changed.notify_waiters();
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    // Warm up: the agent has registered and made the bridge.
    pods.create(&PostParams::default(), &pod("warmup")).await?;
    seen.wait("warmup", Duration::from_secs(60)).await?;

    let mut one_by_one = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("seq-{i}");
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod(&name)).await?;
        let at = seen.wait(&name, Duration::from_secs(60)).await?;
        one_by_one.push(at.duration_since(started).as_secs_f64() * 1000.0);
    }
    // The burst starts on a node that runs only the warm-up pod again.
    let names: Vec<String> = (0..n).map(|i| format!("seq-{i}")).collect();
    for name in &names {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    let runtime_root = cluster.nodes[0].data_dir.join("runtime");
    let deadline = Instant::now() + Duration::from_secs(120);
    while containers_in(&runtime_root) > 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the deleted pods' containers remain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let creates = (0..n).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(&format!("burst-{i}")))
                .await
        }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let mut last = started;
    for i in 0..n {
        last = last.max(
            seen.wait(&format!("burst-{i}"), Duration::from_secs(300))
                .await?,
        );
    }
    let burst_s = last.duration_since(started).as_secs_f64();
    // Settled: the node as it is with every pod running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node_pid = cluster.nodes[0].pid().context("the node runs")?;
    let daemon_rss_mib = crate::load::rss_mib(node_pid).unwrap_or(f64::NAN);
    let (total_pss_mib, _) = netns_rss(&lab.netns(0));
    watching.abort();
    let (p50_ms, p99_ms, max_ms) = latencies(one_by_one);
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &Default::default(),
        )
        .await;
    drop(cluster);
    Ok(Round {
        system: "flotilla",
        p50_ms,
        p99_ms,
        max_ms,
        burst_s,
        daemon_rss_mib,
        total_pss_mib,
    })
}

/// A dockerd of our own: data and state under `dir`, in network namespace `netns`.
struct Docker {
    dir: PathBuf,
    netns: String,
    socket: String,
}

impl Docker {
    fn start(dir: &Path) -> Result<Docker> {
        let netns = format!("fltdock{}", std::process::id() % 10_000);
        run("ip", &["netns", "add", &netns])?;
        run(
            "ip",
            &["netns", "exec", &netns, "ip", "link", "set", "lo", "up"],
        )?;
        let socket = format!("{}/docker.sock", dir.display());
        let data = dir.join("data");
        let exec = dir.join("exec");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&exec)?;
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        // A private mount namespace with sysfs for the network namespace and the host's
        // cgroups (as `ip netns exec` would, but keeping /sys/fs/cgroup), then dockerd.
        let cg = dir.join("cg");
        std::fs::create_dir_all(&cg)?;
        let script = format!(
            "mount --rbind /sys/fs/cgroup {cg} && mount -t sysfs sysfs /sys && mount --move {cg} /sys/fs/cgroup && \
             exec dockerd --data-root {data} --exec-root {exec} --pidfile {dir}/dockerd.pid -H unix://{socket} \
             --storage-driver overlay2 --log-level warn",
            cg = cg.display(),
            data = data.display(),
            exec = exec.display(),
            dir = dir.display(),
        );
        Command::new("setsid")
            .args([
                "nsenter",
                &format!("--net=/run/netns/{netns}"),
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd (apt-get install docker.io)")?;
        let docker = Docker {
            dir: dir.to_path_buf(),
            netns,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while docker.cli(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not start: {}",
                    std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(docker)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn cli(&self, args: &[&str]) -> Result<()> {
        let out = self.command(args).output()?;
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket))
            .args(["ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        for chunk in ids.chunks(50) {
            let mut args = vec!["rm", "-f"];
            args.extend(chunk);
            let _ = self.cli(&args);
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("dockerd.pid")) {
            let _ = run("kill", &[pid.trim()]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{}", pid.trim())).exists() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let (_, pids) = netns_rss(&self.netns);
        for p in pids {
            let _ = run("kill", &["-9", &p.to_string()]);
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
        // Whatever overlay or netns mounts a killed daemon left.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|t| t.starts_with(&dir))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = run("umount", &["-l", t]);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn docker_round(docker_archive: &Path, n: usize) -> Result<Round> {
    let dir = tempfile::tempdir()?;
    let docker = Docker::start(dir.path())?;
    docker.cli(&["load", "-i", docker_archive.to_str().context("utf-8 path")?])?;
    docker.cli(&["run", "-d", "--name", "warmup", "busybox", "sleep", "3600"])?;
    let mut one_by_one = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("seq-{i}");
        let started = Instant::now();
        docker.cli(&["run", "-d", "--name", &name, "busybox", "sleep", "3600"])?;
        one_by_one.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // The burst starts with only the warm-up container again.
    let names: Vec<String> = (0..n).map(|i| format!("seq-{i}")).collect();
    for chunk in names.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        docker.cli(&args)?;
    }
    let started = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            docker
                .command(&[
                    "run",
                    "-d",
                    "--name",
                    &format!("burst-{i}"),
                    "busybox",
                    "sleep",
                    "3600",
                ])
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "docker run: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let burst_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (total_pss_mib, pids) = netns_rss(&docker.netns);
    let daemon_rss_mib = pids
        .iter()
        .filter(|p| matches!(comm(**p).as_str(), "dockerd" | "containerd"))
        .filter_map(|p| crate::load::rss_mib(*p))
        .sum();
    let (p50_ms, p99_ms, max_ms) = latencies(one_by_one);
    drop(docker);
    Ok(Round {
        system: "docker",
        p50_ms,
        p99_ms,
        max_ms,
        burst_s,
        daemon_rss_mib,
        total_pss_mib,
    })
}

#[derive(Serialize)]
struct Summary {
    pods: usize,
    rounds: Vec<Round>,
    flotilla: Medians,
    docker: Option<Medians>,
}

#[derive(Serialize)]
struct Medians {
    p50_ms: f64,
    p99_ms: f64,
    burst_s: f64,
    daemon_rss_mib: f64,
    total_pss_mib: f64,
}

fn medians(rounds: &[Round], system: &str) -> Option<Medians> {
    let of = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.system == system)
            .map(f)
            .collect();
        (!v.is_empty()).then(|| median(&mut v))
    };
    Some(Medians {
        p50_ms: of(|r| r.p50_ms)?,
        p99_ms: of(|r| r.p99_ms)?,
        burst_s: of(|r| r.burst_s)?,
        daemon_rss_mib: of(|r| r.daemon_rss_mib)?,
        total_pss_mib: of(|r| r.total_pss_mib)?,
    })
}

pub async fn run_bench(args: PodsArgs) -> Result<()> {
    anyhow::ensure!(
        nix_is_root(),
        "flotilla-bench pods needs root (namespaces, cgroups, dockerd)"
    );
    let dir = tempfile::tempdir()?;
    let oci = flotilla_testkit::busybox_archive(dir.path());
    let docker_archive = dir.path().join("busybox-docker.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/busybox-image.sh");
    run(
        "sh",
        &[
            script.to_str().context("utf-8")?,
            docker_archive.to_str().context("utf-8")?,
            "docker",
        ],
    )?;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        let flotilla_first = r % 2 == 0;
        for first in [flotilla_first, !flotilla_first] {
            if first {
                let round = flotilla_round(&oci, args.pods).await?;
                eprintln!("{round:?}");
                rounds.push(round);
            } else if !args.no_docker {
                let archive = docker_archive.clone();
                let n = args.pods;
                let round =
                    tokio::task::spawn_blocking(move || docker_round(&archive, n)).await??;
                eprintln!("{round:?}");
                rounds.push(round);
            }
        }
    }
    let summary = Summary {
        pods: args.pods,
        flotilla: medians(&rounds, "flotilla").context("no flotilla round")?,
        docker: medians(&rounds, "docker"),
        rounds,
    };
    println!(
        "pod start on one node, {} pods, medians of {} alternating rounds",
        args.pods, args.rounds
    );
    println!(
        "{:<10} {:>9} {:>9} {:>12} {:>14} {:>14}",
        "system", "p50 ms", "p99 ms", "burst s", "daemon MiB", "total PSS MiB"
    );
    let row = |name: &str, m: &Medians| {
        println!(
            "{name:<10} {:>9.1} {:>9.1} {:>12.2} {:>14.1} {:>14.1}",
            m.p50_ms, m.p99_ms, m.burst_s, m.daemon_rss_mib, m.total_pss_mib
        );
    };
    row("flotilla", &summary.flotilla);
    if let Some(d) = &summary.docker {
        row("docker", d);
        println!(
            "ratios flotilla/docker: p50 {:.2}, p99 {:.2}, burst {:.2}, daemon RSS {:.2}, total PSS {:.2}",
            summary.flotilla.p50_ms / d.p50_ms,
            summary.flotilla.p99_ms / d.p99_ms,
            summary.flotilla.burst_s / d.burst_s,
            summary.flotilla.daemon_rss_mib / d.daemon_rss_mib,
            summary.flotilla.total_pss_mib / d.total_pss_mib,
        );
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}

pub(crate) fn nix_is_root() -> bool {
    // The effective uid, from /proc (this crate has no libc binding).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
