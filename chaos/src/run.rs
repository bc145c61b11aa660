//! `flotilla-chaos run`: a real cluster of `flotilla node` processes in the lab's network
//! namespaces, clients on every node driving a workload through the Kubernetes API while a
//! seeded nemesis injects faults; the history recorded, then checked.
//!
//! The `register` workload: a few ConfigMaps (`chaos-r0`…), each an integer register in
//! `data.value` (missing: `nil`). Every client, bound to one node's API, reads (a GET, which
//! the API serves linearizably), writes (a merge patch of a value never written before) and
//! compare-and-sets: a read, then, if it saw the expected value, a PUT with the object's
//! resourceVersion as the precondition, recorded as its own operation. Because every written
//! value is unique, a PUT refused for its resourceVersion (409) means the value had changed:
//! the compare-and-set failed. An answer that never came, or an error that does not prove the
//! operation was refused, is `:info`: it may have happened at any time after its call.
//!
//! The nemesis, from the seed: every 2–4 s a fault on one node, never more than one at a time
//! (the cluster keeps its quorum): `kill` (SIGKILL of the node and so of its processes, then a
//! restart from its data directory 2–4 s later), `pause` (SIGSTOP, SIGCONT 2–4 s later) or
//! `partition` (the node cut off from the others, healed 2–4 s later).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::check::{check, Format};

/// How long an operation may take before it counts as unanswered.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL a node, restart it 2–4 s later.
    Kill,
    /// SIGSTOP a node, SIGCONT it 2–4 s later.
    Pause,
    /// Cut a node off from the others (nftables in the lab's namespaces; clients still reach
    /// it), heal 2–4 s later.
    Partition,
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub nodes: usize,
    pub seed: u64,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    /// Registers (ConfigMaps).
    pub keys: usize,
    /// Clients per node.
    pub clients: usize,
    pub report: PathBuf,
}

/// The history, one EDN map per line, in the order events happened.
struct Recorder {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Recorder {
    fn record(&self, process: u64, kind: &str, f: &str, key: &str, value: &str) {
        let mut lines = self.lines.lock().expect("history lock");
        let at = self.start.elapsed().as_secs_f64();
        lines.push(format!(
            "{{:process {process}, :type :{kind}, :f :{f}, :key \"{key}\", :value {value}, :time {at:.6}}}"
        ));
    }
}

/// How an operation ended.
enum Outcome {
    Ok(String),
    Fail,
    Info,
}

/// Whether an error proves that the operation was not applied: the API refused it (4xx), or
/// the request never left (the node's port refused the connection: it is down).
fn refused(e: &kube::Error) -> bool {
    if matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// After an operation that did not succeed, a client waits this long (a node that is down
/// refuses at once).
const BACKOFF: Duration = Duration::from_millis(200);

fn value_of(cm: &ConfigMap) -> Option<i64> {
    cm.data.as_ref()?.get("value")?.parse().ok()
}

fn edn(v: Option<i64>) -> String {
    v.map_or("nil".into(), |v| v.to_string())
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Option<kube::Error>> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// One client: operations until `deadline`.
async fn client(
    id: u64,
    clients: u64,
    api: Api<ConfigMap>,
    options: RunOptions,
    deadline: Instant,
    history: Arc<Recorder>,
) {
    let mut rng =
        StdRng::seed_from_u64(options.seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut process = id;
    let mut written = 0i64;
    let mut last_seen: std::collections::HashMap<String, i64> = Default::default();
    while Instant::now() < deadline {
        let key = format!("r{}", rng.random_range(0..options.keys));
        let name = format!("chaos-{key}");
        let roll = rng.random_range(0..4u8);
        // A read: also the first half of a compare-and-set, which is only tried when the
        // register holds the value it expects.
        let expected = last_seen.get(&key).copied().filter(|_| roll == 3);
        let (f, value, outcome) = if roll == 2 {
            written += 1;
            let v = (id as i64 + 1) * 1_000_000 + written;
            history.record(process, "invoke", "write", &key, &v.to_string());
            let patch = json!({"data": {"value": v.to_string()}});
            let outcome =
                match timed(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))).await
                {
                    Ok(_) => Outcome::Ok(v.to_string()),
                    Err(Some(e)) if refused(&e) => Outcome::Fail,
                    Err(_) => Outcome::Info,
                };
            ("write", v.to_string(), outcome)
        } else {
            history.record(process, "invoke", "read", &key, "nil");
            let cm = match timed(api.get(&name)).await {
                Ok(cm) => cm,
                Err(_) => {
                    // A read changes nothing: one that failed did not happen.
                    history.record(process, "fail", "read", &key, "nil");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            };
            let seen = value_of(&cm);
            history.record(process, "ok", "read", &key, &edn(seen));
            if let Some(v) = seen {
                last_seen.insert(key.clone(), v);
            }
            let Some(old) = expected.filter(|old| seen == Some(*old)) else {
                continue;
            };
            // The compare-and-set: a PUT with the resourceVersion of what was read.
            written += 1;
            let new = (id as i64 + 1) * 1_000_000 + written;
            let value = format!("[{old} {new}]");
            history.record(process, "invoke", "cas", &key, &value);
            let mut cm = cm;
            cm.data
                .get_or_insert_with(Default::default)
                .insert("value".into(), new.to_string());
            let outcome = match timed(api.replace(&name, &PostParams::default(), &cm)).await {
                Ok(_) => Outcome::Ok(value.clone()),
                // The object changed since the read: values are never written twice, so the
                // register no longer held the expected one.
                Err(Some(kube::Error::Api(s))) if s.code == 409 => Outcome::Fail,
                Err(_) => Outcome::Info,
            };
            ("cas", value, outcome)
        };
        match outcome {
            Outcome::Ok(v) => history.record(process, "ok", f, &key, &v),
            Outcome::Fail => {
                history.record(process, "fail", f, &key, &value);
                tokio::time::sleep(BACKOFF).await;
            }
            Outcome::Info => {
                history.record(process, "info", f, &key, &value);
                // A process has one operation open; an unanswered one stays open for ever.
                process += clients;
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Runs the cluster, the workload and the nemesis; writes `report.json` and `history.edn`
/// into the report directory; returns the report.
pub async fn run(options: RunOptions) -> Result<Value> {
    std::fs::create_dir_all(&options.report)
        .with_context(|| format!("--report {}", options.report.display()))?;
    let mut cluster = flotilla_testkit::Cluster::start(
        options.nodes,
        flotilla_testkit::Options::default().in_lab(),
    )
    .await
    .context("starting the cluster")?;
    let lab = cluster.lab.clone().context("a lab cluster")?;
    let mut apis = Vec::new();
    for i in 0..options.nodes {
        let client = flotilla_testkit::kube_client(&cluster.kubeconfig, &lab.addr(i).to_string())
            .await
            .with_context(|| format!("a client of n{}", i + 1))?;
        apis.push(Api::<ConfigMap>::namespaced(client, "default"));
    }
    for k in 0..options.keys {
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("chaos-r{k}")},
        }))?;
        apis[0]
            .create(&PostParams::default(), &cm)
            .await
            .with_context(|| format!("creating chaos-r{k}"))?;
    }
    let history = Arc::new(Recorder {
        start: Instant::now(),
        lines: Mutex::new(Vec::new()),
    });
    let deadline = Instant::now() + options.duration;
    let clients = (options.nodes * options.clients) as u64;
    let mut tasks = Vec::new();
    for id in 0..clients {
        let api = apis[id as usize % options.nodes].clone();
        tasks.push(tokio::spawn(client(
            id,
            clients,
            api,
            options.clone(),
            deadline,
            Arc::clone(&history),
        )));
    }
    // The nemesis.
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut faults = Vec::new();
    let pause = |rng: &mut StdRng| Duration::from_millis(rng.random_range(2000..4000));
    while !options.faults.is_empty() {
        let wait = pause(&mut rng);
        let (node, fault, hold) = (
            rng.random_range(0..options.nodes),
            options.faults[rng.random_range(0..options.faults.len())],
            pause(&mut rng),
        );
        if Instant::now() + wait + hold + Duration::from_secs(1) > deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        let start = history.start.elapsed();
        match fault {
            Fault::Kill => {
                cluster.kill(node);
                tokio::time::sleep(hold).await;
                cluster
                    .restart(node)
                    .await
                    .with_context(|| format!("restarting n{}", node + 1))?;
            }
            Fault::Pause => {
                cluster.signal(node, nix::sys::signal::Signal::SIGSTOP)?;
                tokio::time::sleep(hold).await;
                cluster.signal(node, nix::sys::signal::Signal::SIGCONT)?;
            }
            Fault::Partition => {
                let others: Vec<usize> = (0..options.nodes).filter(|i| *i != node).collect();
                cluster.partition(&[vec![node], others]).await?;
                tokio::time::sleep(hold).await;
                cluster.heal().await?;
            }
        }
        faults.push(json!({
            "fault": format!("{fault:?}").to_lowercase(),
            "node": format!("n{}", node + 1),
            "startSeconds": start.as_secs_f64(),
            "endSeconds": history.start.elapsed().as_secs_f64(),
        }));
    }
    for t in tasks {
        t.await.context("a client")?;
    }
    let lines = history.lines.lock().expect("history lock").clone();
    let text = lines.join("\n") + "\n";
    std::fs::write(options.report.join("history.edn"), &text)?;
    let count = |kind: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!(":type :{kind},")))
            .count()
    };
    let verdict = check(Format::Register, &text, Duration::from_secs(10))
        .context("reading the recorded history")?;
    let report = json!({
        "seed": options.seed,
        "nodes": options.nodes,
        "durationSeconds": options.duration.as_secs_f64(),
        "faults": faults,
        "register": {
            "operations": {"ok": count("ok"), "fail": count("fail"), "info": count("info")},
            "keys": verdict.keys,
            "linearizable": verdict.violation.is_none(),
            "violation": verdict.violation.as_ref().map(|(key, witness)| json!({"key": key, "operations": witness})),
        },
        "valid": verdict.violation.is_none(),
    });
    std::fs::write(
        options.report.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    Ok(report)
}
