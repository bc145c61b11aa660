//! Images to every node: a 100 MB image in 5 layers (busybox and random bytes) in a real
//! registry (Debian's `docker-registry`, pushed by skopeo). n1 has pulled it already; a
//! 3-replica deployment spread over the 3 nodes is timed from create to all Running, with
//! the bytes the registry sent. Registry pull (`--peer-fetch false`: n2 and n3 pull from the
//! registry) and peer fetch (they fetch the blobs from n1) alternate, each on a fresh lab.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_testkit::{kube_client, Cluster, Options, Registry};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sha2::Digest as _;

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Rounds of each mode, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Layers of the image (the first holds busybox too).
    #[arg(long, default_value_t = 5)]
    layers: usize,
    /// Megabytes of random bytes per layer.
    #[arg(long, default_value_t = 20)]
    layer_mb: usize,
}

#[derive(Debug)]
struct Round {
    mode: &'static str,
    running_s: f64,
    egress: u64,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn tar_of(files: &[(String, Vec<u8>)], rootfs: Option<&Path>) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    if let Some(dir) = rootfs {
        b.append_dir_all(".", dir)?;
    }
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

/// An OCI archive of `layers` layers of `layer_mb` MB of random bytes, busybox in the first.
fn big_image(dir: &Path, layers: usize, layer_mb: usize) -> Result<(PathBuf, u64)> {
    let rootfs = dir.join("rootfs");
    flotilla_testkit::busybox_rootfs(&rootfs);
    let mut blobs = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut random = std::fs::File::open("/dev/urandom")?;
    for i in 0..layers {
        let mut data = vec![0u8; layer_mb << 20];
        std::io::Read::read_exact(&mut random, &mut data)?;
        let layer = tar_of(
            &[(format!("data/layer{i}"), data)],
            (i == 0).then_some(rootfs.as_path()),
        )?;
        let d = digest(&layer);
        descriptors.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": layer.len()}));
        diff_ids.push(d.clone());
        blobs.push((d, layer));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_d = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": descriptors,
    }))?;
    let manifest_d = digest(&manifest);
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_d, "size": manifest.len()}
    ]}))?;
    let size: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + config.len() as u64;
    blobs.push((config_d, config));
    blobs.push((manifest_d, manifest));
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for (d, b) in blobs {
        files.push((
            format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            b,
        ));
    }
    let archive = dir.join("big-oci.tar");
    std::fs::write(&archive, tar_of(&files, None)?)?;
    Ok((archive, size))
}

fn pod_spec(image: &str, node: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "imagePullSecrets": [{"name": "regcred"}],
        "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}],
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    spec
}

async fn running(pods: &Api<Pod>, selector: &str, want: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let n = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if n >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    let s = serde_json::to_value(p.status.as_ref()).unwrap_or_default();
                    format!(
                        "{}: {}",
                        p.metadata.name.as_deref().unwrap_or_default(),
                        s["containerStatuses"][0]["state"]
                    )
                })
                .collect();
            bail!("{n} of {want} pods Running after {timeout:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn round(archive: &Path, peer: bool) -> Result<Round> {
    let cluster = Cluster::start(
        3,
        Options::default()
            .in_lab()
            .arg("--insecure-registry", "10.213.0.0/16")
            .arg("--peer-fetch", peer),
    )
    .await?;
    let lab = cluster.lab.clone().context("a lab")?;
    let registry = Registry::start(lab.gateway(), "bench", "bench-password")?;
    registry.push(archive, "big:v1")?;
    let image = format!("{}/big:v1", registry.host());
    let client = kube_client(&cluster.kubeconfig, &lab.addr(0).to_string()).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": registry.dockerconfigjson(&registry.user, &registry.password)},
    });
    secrets
        .create(&PostParams::default(), &serde_json::from_value(secret)?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let first = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "first", "labels": {"app": "first"}},
        "spec": pod_spec(&image, Some("n1"))});
    pods.create(&PostParams::default(), &serde_json::from_value(first)?)
        .await?;
    running(&pods, "app=first", 1, Duration::from_secs(300)).await?;
    let before = registry.egress();
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let mut spec = pod_spec(&image, None);
    spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "big"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "big"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": spec}}});
    let t0 = Instant::now();
    deployments
        .create(&PostParams::default(), &serde_json::from_value(deployment)?)
        .await?;
    running(&pods, "app=big", 3, Duration::from_secs(600)).await?;
    let r = Round {
        mode: if peer { "peer fetch" } else { "registry pull" },
        running_s: t0.elapsed().as_secs_f64(),
        egress: registry.egress() - before,
    };
    eprintln!("  {r:?}");
    drop(registry);
    drop(cluster);
    Ok(r)
}

pub async fn run(args: ImagesArgs) -> Result<()> {
    anyhow::ensure!(
        crate::pods::nix_is_root(),
        "flotilla-bench images needs root (network namespaces, containers)"
    );
    let dir = tempfile::tempdir()?;
    let (archive, size) = big_image(dir.path(), args.layers, args.layer_mb)?;
    eprintln!("image: {} layers, {:.1} MB", args.layers, size as f64 / 1e6);
    let mut rounds = Vec::new();
    for i in 0..args.rounds {
        let peer_first = i % 2 == 0;
        for peer in [peer_first, !peer_first] {
            rounds.push(round(&archive, peer).await?);
        }
    }
    println!(
        "images: a {:.0} MB image in {} layers to 3 nodes (n1 has it; deployment create → 3 Running), median of {} rounds",
        size as f64 / 1e6,
        args.layers,
        args.rounds
    );
    for mode in ["registry pull", "peer fetch"] {
        let of: Vec<&Round> = rounds.iter().filter(|r| r.mode == mode).collect();
        let times: Vec<f64> = of.iter().map(|r| r.running_s).collect();
        let egress: Vec<f64> = of.iter().map(|r| r.egress as f64 / 1e6).collect();
        println!(
            "  {mode:<14} {:>6.2} s   registry egress {:>7.1} MB   (runs: {})",
            crate::scheduler::median(times.clone()),
            crate::scheduler::median(egress),
            times
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    Ok(())
}
