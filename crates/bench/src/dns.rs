//! `flotilla-bench dns`: a node's DNS against NSD serving the same records from a zone file,
//! in the same run; then the proxy's apply time (`proxy.rs`).
//!
//! Flotilla: a one-node lab cluster with `--services` ClusterIP services (a named port each)
//! created through the API; its DNS answers on the node's address, port 53. NSD 4 (Debian's
//! `nsd`) runs in the same network namespace on port 5353 with the same names in zone files
//! (`cluster.local` and the reverse zone), response rate limiting off, as many servers as
//! Flotilla has UDP threads (2). Before measuring, a sample of the queries is asked of both
//! and their answers must agree. `dnsperf` (Debian's, from the host) sends a mix over every
//! service: 40 % A hits, 20 % SRV, 20 % NXDOMAIN, 20 % PTR. Each round measures queries per
//! second at saturation (`--seconds`), then latency at a fixed `--latency-qps` with every
//! answer's time (`dnsperf -v`: it prints no percentiles); rounds alternate which system
//! goes first. Then, on a 3-node lab, `--spread` services created one at a time: the time
//! from sending each create until every node's DNS answers its name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{kube_client, Cluster, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::proxy::{self, ProxyFigures};

#[derive(clap::Args)]
pub struct DnsArgs {
    /// Services in the cluster (and records in NSD's zone).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Length of each throughput run, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds per system, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The fixed load of the latency runs, queries per second.
    #[arg(long, default_value_t = 10_000)]
    latency_qps: u64,
    /// Skip NSD.
    #[arg(long)]
    no_nsd: bool,
    /// The proxy's table: services …
    #[arg(long, default_value_t = 10_000)]
    proxy_services: usize,
    /// … with this many endpoints each.
    #[arg(long, default_value_t = 5)]
    proxy_endpoints: usize,
    /// Rounds of the proxy's measurement (a full rewrite and 20 changes each).
    #[arg(long, default_value_t = 3)]
    proxy_rounds: usize,
    /// Skip the proxy's measurement.
    #[arg(long)]
    no_proxy: bool,
    /// Skip the DNS measurement (the proxy's alone).
    #[arg(long)]
    no_dns: bool,
    /// Services created one by one on a 3-node lab to time their names' arrival on every
    /// node's DNS (0: skip).
    #[arg(long, default_value_t = 20)]
    spread: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One round of one system.
#[derive(Clone, Debug, Serialize)]
struct Round {
    system: &'static str,
    qps: f64,
    /// Mean latency of the throughput run, ms.
    mean_ms: f64,
    lost: u64,
    /// At the fixed load: ms.
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Summary {
    services: usize,
    rounds: Vec<Round>,
    flotilla: Option<Medians>,
    nsd: Option<Medians>,
    /// From sending a create until each node's DNS answers the name: ms.
    spread_p50_ms: Option<f64>,
    spread_max_ms: Option<f64>,
    proxy: Option<ProxyFigures>,
}

#[derive(Serialize)]
struct Medians {
    qps: f64,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The queries, one per line (`name type`), and the zone files NSD serves for the same
/// services: `(cluster.local, 96.10.in-addr.arpa)`.
fn queries_and_zones(services: &[(String, Ipv4Addr)]) -> (String, String, String) {
    let soa = |zone: &str| {
        format!(
            "$ORIGIN {zone}.\n$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ IN NS ns.dns.cluster.local.\n"
        )
    };
    let mut queries = String::new();
    let mut forward = soa("cluster.local");
    forward.push_str("ns.dns IN A 10.96.0.10\n");
    let mut reverse = soa("96.10.in-addr.arpa");
    for (name, ip) in services {
        let fqdn = format!("{name}.default.svc.cluster.local");
        let [_, _, c, d] = ip.octets();
        let ptr = format!("{d}.{c}.96.10.in-addr.arpa");
        queries.push_str(&format!(
            "{fqdn} A\n_http._tcp.{fqdn} SRV\nmissing-{name}.default.svc.cluster.local A\n{ptr} PTR\n{fqdn} A\n"
        ));
        forward.push_str(&format!(
            "{name}.default.svc IN A {ip}\n_http._tcp.{name}.default.svc IN SRV 0 100 80 {fqdn}.\n"
        ));
        reverse.push_str(&format!("{d}.{c} IN PTR {fqdn}.\n"));
    }
    (queries, forward, reverse)
}

/// `dig +short` of one query line, in order, for comparing two servers' answers.
fn dig(server: Ipv4Addr, port: u16, line: &str) -> Result<String> {
    let mut parts = line.split_whitespace();
    let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or("A"));
    let out = Command::new("dig")
        .args([
            &format!("@{server}"),
            "-p",
            &port.to_string(),
            "+time=2",
            "+tries=1",
            "+noall",
            "+answer",
            "+comments",
            name,
            kind,
        ])
        .output()
        .context("dig (apt-get install bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_string();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    answers.sort();
    Ok(format!("{status}: {}", answers.join(" | ")))
}

/// Waits until `server:port` answers `line` with NOERROR.
async fn answering(server: Ipv4Addr, port: u16, line: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = dig(server, port, line)?;
        if answer.starts_with("NOERROR: ") && !answer.ends_with(": ") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{server}:{port} does not answer {line}: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

/// A throughput run: (qps, mean latency ms, lost).
fn dnsperf_throughput(
    server: Ipv4Addr,
    port: u16,
    file: &Path,
    seconds: u64,
) -> Result<(f64, f64, u64)> {
    let out = Command::new("dnsperf")
        .args(["-s", &server.to_string(), "-p", &port.to_string()])
        .args(["-d", file.to_str().context("utf-8")?])
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-T",
            "2",
            "-q",
            "400",
            "-t",
            "2",
        ])
        .output()
        .context("dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "dnsperf: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qps: f64 = field(&text, "Queries per second:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no qps in {text}"))?;
    let mean: f64 = field(&text, "Average Latency (s):")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no latency in {text}"))?;
    let lost: u64 = field(&text, "Queries lost:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let codes = field(&text, "Response codes:").unwrap_or("");
    anyhow::ensure!(
        !codes.contains("SERVFAIL") && !codes.contains("REFUSED"),
        "failures in the answers: {codes}"
    );
    Ok((qps, mean * 1e3, lost))
}

/// A run at a fixed rate with every answer's latency: (p50, p99) in ms.
fn dnsperf_latency(server: Ipv4Addr, port: u16, file: &Path, qps: u64) -> Result<(f64, f64)> {
    let out = Command::new("dnsperf")
        .args(["-s", &server.to_string(), "-p", &port.to_string()])
        .args(["-d", file.to_str().context("utf-8")?])
        .args([
            "-l", "5", "-c", "8", "-T", "1", "-q", "400", "-t", "2", "-v",
        ])
        .args(["-Q", &qps.to_string()])
        .output()
        .context("dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `> NOERROR name TYPE 0.000123`
    let mut ms: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    anyhow::ensure!(
        ms.len() > 100,
        "dnsperf -v printed no latencies: {}",
        &text[..text.len().min(2000)]
    );
    ms.sort_by(f64::total_cmp);
    let q = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok((q(0.5), q(0.99)))
}

fn round(
    system: &'static str,
    server: Ipv4Addr,
    port: u16,
    file: &Path,
    args: &DnsArgs,
) -> Result<Round> {
    let (qps, mean_ms, lost) = dnsperf_throughput(server, port, file, args.seconds)?;
    let (p50_ms, p99_ms) = dnsperf_latency(server, port, file, args.latency_qps)?;
    let r = Round {
        system,
        qps,
        mean_ms,
        lost,
        p50_ms,
        p99_ms,
    };
    eprintln!("{r:?}");
    Ok(r)
}

/// NSD in lab node `i`'s namespace on `addr:5353`, with `forward` and `reverse` zones.
fn start_nsd(
    lab: &flotilla_lab::LabNet,
    dir: &Path,
    addr: Ipv4Addr,
    forward: &str,
    reverse: &str,
) -> Result<Child> {
    std::fs::write(dir.join("cluster.local.zone"), forward)?;
    std::fs::write(dir.join("reverse.zone"), reverse)?;
    let d = dir.display();
    let conf = format!(
        "server:\n  ip-address: {addr}@5353\n  server-count: 2\n  username: \"\"\n  zonesdir: \"{d}\"\n  \
         database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n  \
         verbosity: 1\n\
         remote-control:\n  control-enable: no\n\
         zone:\n  name: cluster.local\n  zonefile: cluster.local.zone\n\
         zone:\n  name: 96.10.in-addr.arpa\n  zonefile: reverse.zone\n"
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    let mut c = lab
        .command(0, Path::new("/usr/sbin/nsd"))
        .context("nsd (apt-get install nsd)")?;
    c.args(["-d", "-c"]).arg(dir.join("nsd.conf"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c.spawn().context("nsd (apt-get install nsd)")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn medians(rounds: &[Round], system: &str) -> Option<Medians> {
    let of = |f: fn(&Round) -> f64| {
        let v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.system == system)
            .map(f)
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    Some(Medians {
        qps: of(|r| r.qps)?,
        mean_ms: of(|r| r.mean_ms)?,
        p50_ms: of(|r| r.p50_ms)?,
        p99_ms: of(|r| r.p99_ms)?,
    })
}

async fn measure_dns(args: &DnsArgs) -> Result<Vec<Round>> {
    let cluster = Cluster::start(1, Options::default().in_lab()).await?;
    let lab = cluster.lab.clone().context("a lab")?;
    let addr = lab.addr(0);
    let client = kube_client(&cluster.kubeconfig, &addr.to_string()).await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    let t = Instant::now();
    let mut services: Vec<(String, Ipv4Addr)> = futures::stream::iter(0..args.services)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("svc-{i}");
                let s: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
                }))?;
                let made = api.create(&PostParams::default(), &s).await?;
                let ip: Ipv4Addr = made
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .context("no clusterIP")?
                    .parse()?;
                anyhow::Ok((name, ip))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    services.sort();
    eprintln!("{} services created in {:?}", services.len(), t.elapsed());
    let dir = tempfile::tempdir()?;
    let (queries, forward, reverse) = queries_and_zones(&services);
    let file = dir.path().join("queries.txt");
    std::fs::write(&file, &queries)?;
    let last = queries
        .lines()
        .nth(queries.lines().count() - 5)
        .context("queries")?;
    answering(addr, 53, last).await?;
    let mut nsd = None;
    if !args.no_nsd {
        nsd = Some(start_nsd(&lab, dir.path(), addr, &forward, &reverse)?);
        answering(addr, 5353, last).await?;
        // The same answers from both, on a sample of the mix.
        for line in queries.lines().step_by(97).take(50) {
            let (ours, theirs) = (dig(addr, 53, line)?, dig(addr, 5353, line)?);
            anyhow::ensure!(ours == theirs, "{line}: flotilla {ours:?}, nsd {theirs:?}");
        }
    }
    let mut rounds = Vec::new();
    let result = (|| {
        for r in 0..args.rounds {
            let order = if r % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for flotilla in order {
                if flotilla {
                    rounds.push(round("flotilla", addr, 53, &file, args)?);
                } else if nsd.is_some() {
                    rounds.push(round("nsd", addr, 5353, &file, args)?);
                }
            }
        }
        anyhow::Ok(())
    })();
    if let Some(mut nsd) = nsd {
        let _ = nsd.kill();
        let _ = nsd.wait();
    }
    result?;
    drop(cluster);
    Ok(rounds)
}

/// One A query for `name` over UDP: whether `server` answers it with an address.
fn answers(
    socket: &std::net::UdpSocket,
    server: std::net::SocketAddr,
    name: &str,
    id: u16,
) -> bool {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; A; IN
    if socket.send_to(&q, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            return buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0;
        }
    }
    false
}

/// Services created one at a time through node 1 of a 3-node lab; for each, the time from
/// sending the create until each node's DNS answers its name.
async fn measure_spread(services: usize) -> Result<Vec<f64>> {
    let cluster = Cluster::start(3, Options::default().in_lab()).await?;
    let lab = cluster.lab.clone().context("a lab")?;
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    let servers: Vec<std::net::SocketAddr> = (0..3).map(|i| (lab.addr(i), 53).into()).collect();
    let mut delays = Vec::new();
    for i in 0..services {
        let name = format!("spread-{i}");
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]}
        }))?;
        // From before the create is sent: the commit is somewhere in between, so this bounds
        // the time from the commit from above.
        let created = Instant::now();
        api.create(&PostParams::default(), &s).await?;
        let fqdn = format!("{name}.default.svc.cluster.local");
        let servers = servers.clone();
        let mut seen = tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut id = 0u16;
            servers
                .iter()
                .map(|server| loop {
                    id = id.wrapping_add(1);
                    if answers(&socket, *server, &fqdn, id) {
                        return Ok(created.elapsed().as_secs_f64() * 1e3);
                    }
                    if created.elapsed() > Duration::from_secs(10) {
                        bail!("{server} does not answer {fqdn} 10 s after its creation");
                    }
                })
                .collect()
        })
        .await??;
        delays.append(&mut seen);
    }
    drop(cluster);
    Ok(delays)
}

pub async fn run(args: DnsArgs) -> Result<()> {
    anyhow::ensure!(
        crate::pods::nix_is_root(),
        "flotilla-bench dns needs root (network namespaces, nftables)"
    );
    let rounds = if args.no_dns {
        Vec::new()
    } else {
        measure_dns(&args).await?
    };
    let spread = if args.spread == 0 {
        Vec::new()
    } else {
        measure_spread(args.spread).await?
    };
    let proxy = if args.no_proxy {
        None
    } else {
        let (s, e, r) = (args.proxy_services, args.proxy_endpoints, args.proxy_rounds);
        Some(tokio::task::spawn_blocking(move || proxy::measure(s, e, r)).await??)
    };
    let summary = Summary {
        services: args.services,
        flotilla: medians(&rounds, "flotilla"),
        nsd: medians(&rounds, "nsd"),
        spread_p50_ms: (!spread.is_empty()).then(|| median(spread.clone())),
        spread_max_ms: spread.iter().copied().reduce(f64::max),
        rounds,
        proxy,
    };
    if let Some(f) = &summary.flotilla {
        println!(
            "DNS, {} services, medians of {} alternating rounds (dnsperf {} s at saturation; latency at {} qps)",
            args.services, args.rounds, args.seconds, args.latency_qps
        );
        println!(
            "{:<10} {:>10} {:>10} {:>9} {:>9}",
            "system", "qps", "mean ms", "p50 ms", "p99 ms"
        );
        let row = |name: &str, m: &Medians| {
            println!(
                "{name:<10} {:>10.0} {:>10.3} {:>9.3} {:>9.3}",
                m.qps, m.mean_ms, m.p50_ms, m.p99_ms
            );
        };
        row("flotilla", f);
        if let Some(n) = &summary.nsd {
            row("nsd", n);
            println!(
                "ratio flotilla/nsd: qps {:.2}, p99 {:.2} (anchor: CoreDNS ≈ 34,000 qps on 2 vCPU, published)",
                f.qps / n.qps,
                f.p99_ms / n.p99_ms
            );
        }
    }
    if let (Some(p50), Some(max)) = (summary.spread_p50_ms, summary.spread_max_ms) {
        println!(
            "a new service's name on every node's DNS, from sending its create: p50 {p50:.1} ms, max {max:.1} ms ({} services × 3 nodes)",
            args.spread
        );
    }
    if let Some(p) = &summary.proxy {
        println!(
            "proxy, {} services × {} endpoints: one endpoint change p50 {:.1} ms (max {:.1} ms, {} changes, {} B script); full rewrite p50 {:.0} ms ({} rewrites, {:.1} MB script); rendering all {:.0} ms",
            p.services,
            p.endpoints,
            p.change_p50_ms,
            p.change_max_ms,
            p.changes,
            p.change_script_bytes,
            p.full_p50_ms,
            p.rewrites,
            p.full_script_bytes as f64 / 1e6,
            p.render_ms
        );
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}
