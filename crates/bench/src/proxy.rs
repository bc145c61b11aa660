//! The proxy's part of `flotilla-bench dns`: how long one endpoint change takes to reach
//! nftables with `services` × `endpoints` programmed, against a rewrite of the whole table.
//!
//! The node's own code does the work: `flotilla_proxy::model` renders the services, `diff`
//! makes the change, `Netlink::apply` sends it as one batch as a node does; a full rewrite is
//! `nft -f -` of the whole table, as a node's first apply. It runs in a network
//! namespace of its own, entered by the measuring thread (so `nft` is spawned inside it with
//! no `ip netns exec` in the way). A change is timed from its rendering until `nft` returns;
//! a full rewrite is the script a node applies at start: the table replaced, in one
//! transaction. Changes and rewrites alternate.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result};
use flotilla_proxy::model::{self, Endpoint, ProxyConfig, Rendered, ServicePort, ServiceView};
use flotilla_proxy::{Netlink, Nft};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ProxyFigures {
    pub services: usize,
    pub endpoints: usize,
    /// One endpoint of one service replaced: p50 and max, ms.
    pub change_p50_ms: f64,
    pub change_max_ms: f64,
    pub change_script_bytes: usize,
    /// The whole table rewritten: p50, ms.
    pub full_p50_ms: f64,
    pub full_script_bytes: usize,
    /// Rendering every service (what a node does once at start), ms.
    pub render_ms: f64,
    pub changes: usize,
    pub rewrites: usize,
}

fn address(base: Ipv4Addr, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + offset as u32)
}

fn service(i: usize, endpoints: usize, generation: usize) -> ServiceView {
    let ports: BTreeMap<(String, String), u16> = [(("http".into(), "tcp".into()), 8080)].into();
    ServiceView {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        // Above the static band (10.96.0.1 and .10 live there).
        cluster_ip: Some(address(Ipv4Addr::new(10, 96, 1, 0), i)),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: "tcp".into(),
            port: 80,
            node_port: None,
        }],
        affinity_seconds: None,
        external_local: false,
        endpoints: (0..endpoints)
            .map(|e| Endpoint {
                // The first endpoint moves with each generation of the service.
                ip: address(
                    Ipv4Addr::new(10, 244, 0, 0),
                    (i * endpoints + e) + if e == 0 { generation * 1_000_000 } else { 0 },
                ),
                node: Some("n1".into()),
                ready: true,
                ports: ports.clone(),
            })
            .collect(),
    }
}

/// A network namespace of the bench's own, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!("flotilla-bench-proxy-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("ip netns add (apt-get install iproute2)")?;
        anyhow::ensure!(ok.success(), "ip netns add {name} failed (root needed)");
        Ok(Netns(name))
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) -> Result<()> {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the bench's namespace")?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures on a thread of its own (it moves into the bench's namespace).
pub fn measure(services: usize, endpoints: usize, rounds: usize) -> Result<ProxyFigures> {
    let netns = Netns::new()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            netns.enter()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(services, endpoints, rounds))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the proxy bench thread panicked"))?
    })
}

async fn run(services: usize, endpoints: usize, rounds: usize) -> Result<ProxyFigures> {
    let config = ProxyConfig {
        node: "n1".into(),
        cluster_cidr: "10.244.0.0/16".into(),
    };
    let nft = Nft::default();
    let mut generation = vec![0usize; services];
    let t = Instant::now();
    let mut applied: Vec<Rendered> = (0..services)
        .map(|i| model::render(&service(i, endpoints, 0), &config))
        .collect();
    let render_ms = t.elapsed().as_secs_f64() * 1e3;
    let full_script = |applied: &[Rendered]| {
        let mut changes = Vec::new();
        for r in applied {
            model::diff(&Rendered::default(), r, &mut changes);
        }
        model::base() + &model::script(&changes)
    };
    let mut netlink = Netlink::open().context("a netlink socket")?;
    let (mut full, mut change) = (Vec::new(), Vec::new());
    let (mut full_bytes, mut change_bytes) = (0, 0);
    let changes_per_round = 20;
    // Spread over the table: a prime stride through the services.
    let mut next = 0usize;
    for round in 0..rounds {
        let script = full_script(&applied);
        full_bytes = script.len();
        let t = Instant::now();
        nft.apply(&script)
            .await
            .map_err(|e| anyhow::anyhow!("full rewrite: {e}"))?;
        full.push(t.elapsed().as_secs_f64() * 1e3);
        eprintln!(
            "proxy round {}: full rewrite {:.0} ms",
            round + 1,
            full.last().unwrap()
        );
        for _ in 0..changes_per_round {
            let i = next % services;
            next += 7919;
            generation[i] += 1;
            let t = Instant::now();
            let rendered = model::render(&service(i, endpoints, generation[i]), &config);
            let mut changes = Vec::new();
            model::diff(&applied[i], &rendered, &mut changes);
            netlink
                .apply(&changes)
                .with_context(|| format!("change of svc-{i}"))?;
            change.push(t.elapsed().as_secs_f64() * 1e3);
            change_bytes = model::script(&changes).len();
            applied[i] = rendered;
        }
    }
    // The table as the last change left it: one more check that the changes were applied.
    let out = tokio::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        listed.matches("goto svc-").count() == services,
        "the table does not hold {services} services after the changes"
    );
    full.sort_by(f64::total_cmp);
    change.sort_by(f64::total_cmp);
    Ok(ProxyFigures {
        services,
        endpoints,
        change_p50_ms: quantile(&change, 0.5),
        change_max_ms: *change.last().unwrap_or(&f64::NAN),
        change_script_bytes: change_bytes,
        full_p50_ms: quantile(&full, 0.5),
        full_script_bytes: full_bytes,
        render_ms,
        changes: change.len(),
        rewrites: full.len(),
    })
}
