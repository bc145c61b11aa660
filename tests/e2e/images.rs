//! Issue 18: images reach every node. From a real registry (Debian's `docker-registry` with
//! htpasswd auth, images pushed by skopeo), with `imagePullSecrets` made by `kubectl create
//! secret docker-registry`: two pods of one image pull it once, a deployment runs on every
//! node (the others fetch the blobs from the first, after the registry said which manifest
//! the tag names), a wrong password and a missing tag say why. With no registry: an image
//! imported on one node runs on all (peer fetch), and a blob corrupted on one peer is refused
//! by its digest and fetched from another.

use std::time::Duration;

use flotilla_tests::{Cluster, Kubectl, Options, Registry};
use serde_json::Value;

use crate::lab::Kube;

const GATEWAY_NETWORK: &str = "10.213.0.0/16";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab tests need root (CI runs them as root)"
    );
}

/// A 3-node lab whose nodes reach the lab's registries over HTTP; no image imported.
async fn bare_lab() -> (Cluster, Kube, tempfile::TempDir) {
    require_root();
    let cluster = Cluster::start(
        3,
        Options::default()
            .in_lab()
            .arg("--insecure-registry", GATEWAY_NETWORK),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: dir.path().join("kube-cache"),
    };
    let kube = Kube::of(&cluster, &kubectl, dir.path());
    (cluster, kube, dir)
}

/// A pod of `image` on `node` that sleeps, with `secret` as its pull secret.
fn pod(name: &str, node: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret.map_or(String::new(), |s| {
        format!("\n  imagePullSecrets: [{{name: {s}}}]")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}{secrets}\n  containers:\n  - name: main\n    image: {image}\n    command: [sleep, '3600']\n"
    )
}

/// Three replicas of `image`, one per node (required anti-affinity on the hostname).
fn spread(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret.map_or(String::new(), |s| {
        format!("\n      imagePullSecrets: [{{name: {s}}}]")
    });
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:{secrets}
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: {name}}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: main
        image: {image}
        command: [sleep, '3600']
"#
    )
}

fn running(kube: &Kube, pod: &str) -> bool {
    kube.json(&["get", "pod", pod])["status"]["phase"] == "Running"
}

/// The waiting reason and message of a pod's first container, once it has `reason`.
fn waiting_for(kube: &Kube, pod: &str, reason: &str) -> String {
    let mut message = String::new();
    kube.wait(&format!("{pod} {reason}"), Duration::from_secs(60), |k| {
        let p = k.json(&["get", "pod", pod]);
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        message = w["message"].as_str().unwrap_or_default().to_string();
        w["reason"] == reason
    });
    message
}

/// The messages of the events about `pod` with `reason`.
fn events(kube: &Kube, pod: &str, reason: &str) -> Vec<String> {
    let list = kube.json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason={reason}"),
    ]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The sum of the blob sizes of the manifest `reference` names at `registry`.
fn image_size(registry: &Registry, reference: &str) -> u64 {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{}:{}", registry.user, registry.password))
        .arg(format!("docker://{}/{reference}", registry.direct))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| d["size"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_pulls_with_pull_secrets_and_peers_for_the_blobs() {
    let (cluster, kube, dir) = bare_lab().await;
    let lab = cluster.lab.as_ref().unwrap();
    let registry = Registry::start(lab.gateway(), "alice", "s3cret").unwrap();
    let archive = flotilla_tests::busybox_archive(dir.path());
    registry.push(&archive, "busybox:v1").unwrap();
    registry.push(&archive, "busybox:v2").unwrap();
    let host = registry.host();
    let size = image_size(&registry, "busybox:v1");
    for (name, password) in [("regcred", "s3cret"), ("badcred", "wrong")] {
        kube.kubectl(&[
            "create",
            "secret",
            "docker-registry",
            name,
            &format!("--docker-server={host}"),
            "--docker-username=alice",
            &format!("--docker-password={password}"),
        ]);
    }

    // Two pods of one image on one node: one pull.
    let image = format!("{host}/busybox:v1");
    kube.apply("a", &pod("twin-a", "n1", &image, Some("regcred")));
    kube.apply("b", &pod("twin-b", "n1", &image, Some("regcred")));
    kube.wait("both twins Running", Duration::from_secs(60), |k| {
        running(k, "twin-a") && running(k, "twin-b")
    });
    let after_twins = registry.egress();
    assert!(
        after_twins >= size && after_twins < size + size / 2,
        "two pods of one image pull it once: the registry sent {after_twins} bytes for an image of {size}"
    );
    let pulled = [
        events(&kube, "twin-a", "Pulled"),
        events(&kube, "twin-b", "Pulled"),
    ]
    .concat();
    assert!(
        pulled
            .iter()
            .any(|m| m.contains(&format!("from registry {host}"))),
        "{pulled:?}"
    );

    // A deployment on every node: n2 and n3 ask the registry for the manifest and fetch the
    // blobs from n1.
    kube.apply("spread", &spread("pulled", &image, Some("regcred")));
    kube.wait("3 pods Running on 3 nodes", Duration::from_secs(90), |k| {
        let pods = k.pods("app=pulled");
        let nodes: std::collections::BTreeSet<_> = pods.values().map(|p| p.0.clone()).collect();
        pods.len() == 3 && nodes.len() == 3 && pods.values().all(|p| p.1 == "Running")
    });
    for (name, (node, _, _)) in kube.pods("app=pulled") {
        let pulled = events(&kube, &name, "Pulled");
        if node != "n1" {
            assert!(
                pulled.iter().any(|m| m.contains("from peer n1")),
                "{name} on {node}: {pulled:?}"
            );
        }
    }
    assert!(
        registry.egress() - after_twins < size / 2,
        "the other nodes fetched the blobs from n1, not the registry: {} bytes",
        registry.egress() - after_twins
    );

    // A wrong password, on a tag no node has; a tag that does not exist.
    kube.apply(
        "wrong",
        &pod(
            "wrongpw",
            "n2",
            &format!("{host}/busybox:v2"),
            Some("badcred"),
        ),
    );
    let message = waiting_for(&kube, "wrongpw", "ImagePullBackOff");
    assert!(
        message.contains("401 Unauthorized") && message.contains("authentication required"),
        "{message}"
    );
    let failed = events(&kube, "wrongpw", "Failed");
    assert!(
        failed.iter().any(|m| m.contains("Failed to pull image")),
        "{failed:?}"
    );
    kube.apply(
        "nosuch",
        &pod(
            "notag",
            "n3",
            &format!("{host}/busybox:nosuch"),
            Some("regcred"),
        ),
    );
    let message = waiting_for(&kube, "notag", "ImagePullBackOff");
    assert!(
        message.contains("404 Not Found") && message.contains("manifest unknown"),
        "{message}"
    );
    // Without a secret, the registry's refusal names what is missing.
    kube.apply(
        "nosecret",
        &pod("nosecret", "n3", &format!("{host}/busybox:v2"), None),
    );
    let message = waiting_for(&kube, "nosecret", "ImagePullBackOff");
    assert!(
        message.contains("no imagePullSecret has credentials"),
        "{message}"
    );
    // The node lists what it pulled.
    let node = kube.json(&["get", "node", "n1"]);
    let names: Vec<&str> = node["status"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["names"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&image.as_str()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_imported_on_one_node_runs_on_every_node() {
    let (cluster, kube, dir) = bare_lab().await;
    let archive = flotilla_tests::busybox_archive(dir.path());
    cluster.import_image_on(0, "busybox", &archive).unwrap();
    // `busybox` is `:latest`, so imagePullPolicy is Always: an imported image is the
    // cluster's own, fetched from the peer that has it.
    kube.apply("spread", &spread("everywhere", "busybox", None));
    kube.wait("3 pods Running on 3 nodes", Duration::from_secs(90), |k| {
        let pods = k.pods("app=everywhere");
        let nodes: std::collections::BTreeSet<_> = pods.values().map(|p| p.0.clone()).collect();
        pods.len() == 3 && nodes.len() == 3 && pods.values().all(|p| p.1 == "Running")
    });
    for (name, (node, _, _)) in kube.pods("app=everywhere") {
        if node != "n1" {
            let pulled = events(&kube, &name, "Pulled");
            assert!(
                pulled.iter().any(|m| m.contains("from peer n1")),
                "{pulled:?}"
            );
        }
    }

    // The same root file system imported on n1 and n2; n1's copy of its layer corrupted.
    let rootfs = dir.path().join("rootfs");
    flotilla_tests::busybox_rootfs(&rootfs);
    for i in [0, 1] {
        cluster.import_image_on(i, "tools:v1", &rootfs).unwrap();
    }
    let store = cluster.nodes[0].data_dir.join("images");
    let refs: Value =
        serde_json::from_slice(&std::fs::read(store.join("refs.json")).unwrap()).unwrap();
    let manifest_digest = refs["tools:v1"].as_str().unwrap();
    let blob = |d: &str| {
        store
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(blob(&layer)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(blob(&layer), bytes).unwrap();
    // Both list it, so n1 (first by name) is asked first.
    kube.wait("n1 and n2 list tools:v1", Duration::from_secs(30), |k| {
        ["n1", "n2"].iter().all(|n| {
            k.json(&["get", "node", n])["status"]["images"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| {
                    i["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == "tools:v1")
                })
        })
    });
    kube.apply("tools", &pod("tools", "n3", "tools:v1", None));
    kube.wait("tools Running on n3", Duration::from_secs(60), |k| {
        running(k, "tools")
    });
    let retried = events(&kube, "tools", "PullRetried");
    assert!(
        retried
            .iter()
            .any(|m| m.contains("from n1") && m.contains(&format!("blob {layer} is corrupt"))),
        "{retried:?}"
    );
    let pulled = events(&kube, "tools", "Pulled");
    // Its other blobs may come from n1: only the corrupt one had to come from n2.
    assert!(pulled.iter().any(|m| m.contains("peer n2")), "{pulled:?}");
    let out = kube.kubectl(&["exec", "tools", "--", "sh", "-c", "echo ok"]);
    assert_eq!(out.trim(), "ok");
    // n3 kept the good copy.
    let n3_blob = cluster.nodes[2]
        .data_dir
        .join("images/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let good = std::fs::read(n3_blob).unwrap();
    use sha2::Digest as _;
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&good))),
        layer,
        "n3's copy of the layer"
    );
}
