//! `flotilla-bench api`: what the Kubernetes API costs on top of the replicated store, and how
//! it reads and fans out, against etcd in the same run.
//!
//! 1. ConfigMap creates through the API (the `kube` crate, the three nodes in turn) against
//!    creates of the same bytes through the store RPC, at the same concurrency.
//! 2. A list of 10,000 pods (linearizable and `resourceVersion=0`) against an etcd range read
//!    of the same 10,000 values (in pages of 1,000: etcd-client refuses messages over 4 MiB).
//! 3. 1,000 concurrent watchers and one change: the time until each one has it, against 1,000
//!    etcd watchers and one put.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_rpc::StoreClient;
use flotilla_store::{Command, Op};
use flotilla_testkit::{kube_client, Cluster, Options};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use serde_json::json;

use crate::etcd::EtcdCluster;
use crate::load::{self, LoadResult};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// How long each create run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients for the create runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Create runs per path, alternating; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Pods in the listed collection.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Lists timed per system.
    #[arg(long, default_value_t = 20)]
    lists: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Changes each watcher set must receive.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Updates (PUT) of one ConfigMap through a follower, one after another.
    #[arg(long, default_value_t = 300)]
    updates: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Latencies in milliseconds.
#[derive(Clone, Debug, Serialize)]
struct Latency {
    samples: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency(hist: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        samples: hist.len(),
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    api_creates: LoadResult,
    store_creates: LoadResult,
    api_over_store_writes_per_sec: f64,
    api_over_store_p99: f64,
    /// PUTs through a follower, one at a time: each costs the round trips to the leader.
    follower_updates: Latency,
    pods: usize,
    list_linearizable: Latency,
    list_resource_version_0: Latency,
    list_bytes: usize,
    etcd_range: Latency,
    watchers: usize,
    watch_fanout: Latency,
    etcd_watch_fanout: Latency,
}

fn median(mut runs: Vec<LoadResult>) -> LoadResult {
    runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    runs[runs.len() / 2].clone()
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some([("v".to_string(), "x".repeat(256))].into()),
        ..Default::default()
    }
}

/// A pod as a user would write it, with the defaults the API fills in.
fn pod(namespace: &str, name: &str, n: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("00000000-0000-4000-8000-{n:012x}"),
            "creationTimestamp": "2026-12-01T00:00:00Z", "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "web", "image": "busybox:1.36", "command": ["httpd", "-f"],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}], "imagePullPolicy": "IfNotPresent",
            "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30,
            "schedulerName": "default-scheduler", "securityContext": {}, "enableServiceLinks": true},
        "status": {"phase": "Pending"},
    })
}

pub async fn run(args: ApiArgs) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?;
    eprintln!("starting a 3-node Flotilla cluster (lab network) and a 3-member etcd ...");
    let cluster = Cluster::start(3, Options::default().in_lab()).await?;
    let lab = cluster.lab.clone().context("a lab cluster")?;
    let etcd = EtcdCluster::start(dir.path(), "etcd", None).await?;
    let mut kube = Vec::new();
    for i in 0..3 {
        kube.push(kube_client(&cluster.kubeconfig, &lab.addr(i).to_string()).await?);
    }
    let stores: Arc<Vec<StoreClient>> = Arc::new(cluster.live_clients());
    let mut etcd_client = etcd_client::Client::connect(&etcd.endpoints, None).await?;

    // 1. Creates: the API against the store, same bytes, alternating runs.
    let body = serde_json::to_vec(&config_map("x"))?;
    let (mut api_runs, mut store_runs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        eprintln!(
            "api: {} clients for {:?} (run {round}) ...",
            args.clients, args.duration
        );
        let apis: Arc<Vec<Api<ConfigMap>>> = Arc::new(
            kube.iter()
                .map(|c| Api::namespaced(c.clone(), "default"))
                .collect(),
        );
        api_runs.push(
            load::run(args.clients, args.duration, move |client, i| {
                let apis = Arc::clone(&apis);
                async move {
                    let cm = config_map(&format!("r{round}-c{client}-{i}"));
                    apis[client % apis.len()]
                        .create(&PostParams::default(), &cm)
                        .await
                        .is_ok()
                }
            })
            .await,
        );
        eprintln!(
            "store: {} clients for {:?} (run {round}) ...",
            args.clients, args.duration
        );
        let (s, b) = (Arc::clone(&stores), body.clone());
        store_runs.push(
            load::run(args.clients, args.duration, move |client, i| {
                let (s, b) = (Arc::clone(&s), b.clone());
                async move {
                    s[client % s.len()]
                        .create(&format!("/bench/r{round}/c{client}/{i}"), b)
                        .await
                        .is_ok()
                }
            })
            .await,
        );
    }
    let (api_creates, store_creates) = (median(api_runs), median(store_runs));

    // Updates through a follower, one at a time.
    let leader = cluster.leader().await?;
    let follower = (0..3).find(|i| *i != leader).expect("three nodes");
    eprintln!(
        "{} updates through follower n{} ...",
        args.updates,
        follower + 1
    );
    let api: Api<ConfigMap> = Api::namespaced(kube[follower].clone(), "default");
    let mut cm = api
        .create(&PostParams::default(), &config_map("bench-update"))
        .await?;
    let mut hist = histogram();
    for n in 0..args.updates {
        cm.data = Some([("v".to_string(), n.to_string())].into());
        let t = Instant::now();
        cm = api
            .replace("bench-update", &PostParams::default(), &cm)
            .await?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let follower_updates = latency(&hist);

    // 2. Lists of N pods, seeded through the store in batches.
    eprintln!("seeding {} pods ...", args.pods);
    let mut values = Vec::with_capacity(args.pods);
    for chunk in (0..args.pods).collect::<Vec<_>>().chunks(200) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|n| {
                let ns = format!("bench-{}", n % 10);
                let name = format!("pod-{n:05}");
                let value = pod(&ns, &name, *n).to_string().into_bytes();
                values.push(value.clone());
                Op::Create {
                    key: format!("/core/pods/{ns}/{name}"),
                    value,
                }
            })
            .collect();
        stores[0].propose(&Command::batch(ops)).await?;
    }
    eprintln!(
        "listing {} pods {} times each way ...",
        args.pods, args.lists
    );
    let (list_linearizable, list_bytes) =
        timed_list(&kube[1], "/api/v1/pods", args.lists, args.pods).await?;
    let (list_resource_version_0, _) = timed_list(
        &kube[2],
        "/api/v1/pods?resourceVersion=0",
        args.lists,
        args.pods,
    )
    .await?;
    for (n, v) in values.iter().enumerate() {
        etcd_client
            .put(format!("/bench-pods/{n:05}"), v.clone(), None)
            .await?;
    }
    // etcd-client cannot receive a message over 4 MiB, so the range is read in pages of 1,000
    // (as `etcdctl get --prefix --limit` would).
    let mut hist = histogram();
    for _ in 0..args.lists {
        let t = Instant::now();
        let mut got = 0;
        let mut from = b"/bench-pods/".to_vec();
        loop {
            let options = etcd_client::GetOptions::new()
                .with_range("/bench-pods0")
                .with_limit(1000);
            let page = etcd_client.get(from.clone(), Some(options)).await?;
            got += page.kvs().len();
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(got == args.pods, "a short etcd range: {got}");
    }
    let etcd_range = latency(&hist);

    // 3. Watch fan-out.
    eprintln!("{} watchers on the API ...", args.watchers);
    let namespaces: Api<Namespace> = Api::all(kube[0].clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("fanout".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;
    let watch_fanout = api_fanout(&kube, args.watchers, args.changes).await?;
    eprintln!("{} watchers on etcd ...", args.watchers);
    let etcd_watch_fanout = etcd_fanout(&etcd.endpoints, args.watchers, args.changes).await?;

    let report = Report {
        clients: args.clients,
        api_over_store_writes_per_sec: api_creates.ops_per_sec
            / store_creates.ops_per_sec.max(f64::MIN_POSITIVE),
        follower_updates,
        api_over_store_p99: api_creates.p99_ms / store_creates.p99_ms.max(f64::MIN_POSITIVE),
        api_creates,
        store_creates,
        pods: args.pods,
        list_linearizable,
        list_resource_version_0,
        list_bytes,
        etcd_range,
        watchers: args.watchers,
        watch_fanout,
        etcd_watch_fanout,
    };
    print(&report, args.rounds);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print(r: &Report, rounds: u64) {
    println!(
        "\nConfigMap creates, {} clients, median of {rounds} runs",
        r.clients
    );
    println!(
        "{:<26} {:>10} {:>9} {:>9} {:>7}",
        "path", "creates/s", "p50 ms", "p99 ms", "errors"
    );
    for (name, l) in [
        ("API (kube crate, HTTPS)", &r.api_creates),
        ("store RPC (same bytes)", &r.store_creates),
    ] {
        println!(
            "{:<26} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            name, l.ops_per_sec, l.p50_ms, l.p99_ms, l.errors
        );
    }
    println!(
        "API / store: creates/s {:.2}x, p99 {:.2}x",
        r.api_over_store_writes_per_sec, r.api_over_store_p99
    );
    let u = &r.follower_updates;
    println!(
        "\nConfigMap updates (PUT) through a follower, one at a time: p50 {:.2} ms, p99 {:.2} ms ({} updates)",
        u.p50_ms, u.p99_ms, u.samples
    );
    println!(
        "\nlist of {} pods ({:.1} MB)",
        r.pods,
        r.list_bytes as f64 / 1e6
    );
    println!("{:<34} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    for (name, l) in [
        ("API, linearizable", &r.list_linearizable),
        ("API, resourceVersion=0", &r.list_resource_version_0),
        ("etcd range of the same values", &r.etcd_range),
    ] {
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.1}",
            name, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    println!(
        "\n{} watchers, time from a write to each watcher having it",
        r.watchers
    );
    for (name, l) in [
        ("API watch", &r.watch_fanout),
        ("etcd watch", &r.etcd_watch_fanout),
    ] {
        println!(
            "{:<34} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} deliveries)",
            name, l.p50_ms, l.p99_ms, l.max_ms, l.samples
        );
    }
}

/// `lists` GETs of `path`, each checked to hold at least `pods` pods; latency and size.
async fn timed_list(
    client: &kube::Client,
    path: &str,
    lists: usize,
    pods: usize,
) -> Result<(Latency, usize)> {
    let mut hist = histogram();
    let mut bytes = 0;
    for _ in 0..lists {
        let t = Instant::now();
        let request = http::Request::get(path).body(Vec::new())?;
        let text = client.request_text(request).await?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
        bytes = text.len();
        anyhow::ensure!(
            text.matches("\"kind\":\"Pod\"").count() >= pods,
            "a short list"
        );
    }
    Ok((latency(&hist), bytes))
}

/// `watchers` API watches spread over the nodes, then `changes` creations, one at a time: the
/// time from each create's start until each watcher has its event.
async fn api_fanout(kube: &[kube::Client], watchers: usize, changes: usize) -> Result<Latency> {
    let start_rv = Api::<ConfigMap>::namespaced(kube[0].clone(), "fanout")
        .list(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    let mut opened = Vec::new();
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(kube[w % kube.len()].clone(), "fanout");
        let stream = api
            .watch(&WatchParams::default().timeout(290), &start_rv)
            .await?;
        opened.push(stream.boxed());
    }
    for mut stream in opened {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(cm) = event {
                    let n: usize = cm
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("change-"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    if tx.send((n, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let writer: Api<ConfigMap> = Api::namespaced(kube[0].clone(), "fanout");
    let mut hist = histogram();
    for c in 0..changes {
        let t0 = Instant::now();
        writer
            .create(&PostParams::default(), &config_map(&format!("change-{c}")))
            .await?;
        deliveries(&mut rx, watchers, c, t0, &mut hist).await?;
    }
    for t in tasks {
        t.abort();
    }
    Ok(latency(&hist))
}

/// Waits until `watchers` deliveries of change `c` (made at `t0`) have arrived on `rx`,
/// recording each one's latency.
async fn deliveries(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    watchers: usize,
    c: usize,
    t0: Instant,
    hist: &mut Histogram<u64>,
) -> Result<()> {
    let mut got = 0;
    while got < watchers {
        let (n, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("a watcher never saw a change")?
            .context("every watcher ended")?;
        if n == c {
            got += 1;
            hist.record(at.duration_since(t0).as_micros().max(1) as u64)?;
        }
    }
    Ok(())
}

/// The same with etcd: `watchers` watches on one prefix, `changes` puts.
async fn etcd_fanout(endpoints: &[String], watchers: usize, changes: usize) -> Result<Latency> {
    let client = etcd_client::Client::connect(endpoints, None).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let stream = client
            .watch_client()
            .watch(
                "/fanout/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        streams.push(stream);
    }
    let mut tasks = Vec::new();
    for mut stream in streams {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(resp)) = stream.next().await {
                for e in resp.events() {
                    let n = e
                        .kv()
                        .and_then(|kv| kv.key_str().ok())
                        .and_then(|k| k.strip_prefix("/fanout/change-"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    if tx.send((n, Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut kv = client.kv_client();
    let mut hist = histogram();
    for c in 0..changes {
        let t0 = Instant::now();
        kv.put(format!("/fanout/change-{c}"), "x".repeat(256), None)
            .await?;
        deliveries(&mut rx, watchers, c, t0, &mut hist).await?;
    }
    for t in tasks {
        t.abort();
    }
    Ok(latency(&hist))
}
