//! Issue 16: a node that dies has its pods replaced on the others within seconds (gossip
//! declares it down, it is tainted `unreachable:NoExecute`, its pods' 1 s toleration runs
//! out); when it comes back it stops its stale copies before it says it is Ready; a partition
//! shorter than the toleration replaces nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_tests::Cluster;
use futures::{StreamExt, TryStreamExt};

use crate::lab::{lab, Kube};

/// The names of the deployment's pods that are Ready, not being deleted, and not on `except`.
fn ready_elsewhere(kube: &Kube, except: &str) -> BTreeSet<String> {
    kube.pods("app=web")
        .into_iter()
        .filter(|(_, (node, phase, ready))| node != except && phase == "Running" && *ready)
        .map(|(name, _)| name)
        .collect()
}

fn node_status(kube: &Kube, node: &str) -> String {
    let row = kube.kubectl(&["get", "node", node, "--no-headers"]);
    row.split_whitespace().nth(1).unwrap_or("").to_string()
}

/// A lab running the deployment `web` (6 replicas, 2 per node), kubectl for it, and the
/// victim: a node that serves neither this kubectl nor as leader, so that the failover alone
/// is measured.
async fn lab_with_web() -> (Cluster, Kube, tempfile::TempDir, usize) {
    let (cluster, kubectl, dir) = lab().await;
    let kube = Kube::of(&cluster, &kubectl, dir.path());
    kube.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=6",
        "--",
        "sleep",
        "3600",
    ]);
    assert!(kube
        .rollout_status("deploy/web")
        .contains("successfully rolled out"));
    let leader = cluster.leader().await.unwrap();
    let victim = (1..3).find(|i| *i != leader).unwrap();
    (cluster, kube, dir, victim)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_pods_come_back_elsewhere_and_it_fences_them_on_return() {
    let (mut cluster, kube, _dir, victim) = lab_with_web().await;
    let name = cluster.nodes[victim].name.clone();
    let before = kube.pods("app=web");
    let stale: Vec<(String, String)> = before
        .iter()
        .filter(|(_, (node, _, _))| *node == name)
        .map(|(pod, _)| {
            (
                pod.clone(),
                kube.json(&["get", "pod", pod])["metadata"]["uid"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(stale.len(), 2, "2 of the 6 pods on {name}: {before:?}");
    // A pod that tolerates an unreachable node for good stays there, but not Ready (so that
    // it leaves services' endpoints), and is Ready again once its node is back.
    kube.apply(
        "keeper",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: keeper}}\nspec:\n  nodeName: {name}\n  \
             tolerations: [{{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}}]\n  \
             containers: [{{name: c, image: busybox, command: [sleep, '3600']}}]\n"
        ),
    );
    let keeper_ready = |k: &Kube| crate::lab::ready(&k.json(&["get", "pod", "keeper"]));
    kube.wait("keeper Ready", Duration::from_secs(30), keeper_ready);

    let killed = Instant::now();
    cluster.kill_with_pods(victim);
    kube.wait(
        "6 Ready pods on the other nodes",
        Duration::from_secs(30),
        |k| ready_elsewhere(k, &name).len() == 6,
    );
    eprintln!(
        "failover: {:?} from kill -9 to 6 Ready pods elsewhere",
        killed.elapsed()
    );
    assert_eq!(node_status(&kube, &name), "NotReady");
    let evictions = kube.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
        "--no-headers",
    ]);
    for (pod, _) in &stale {
        assert!(
            evictions.contains(pod.as_str()),
            "{pod} evicted: {evictions}"
        );
    }
    kube.wait("keeper not Ready", Duration::from_secs(10), |k| {
        !keeper_ready(k)
    });
    let keeper = kube.json(&["get", "pod", "keeper"]);
    assert!(
        keeper["metadata"]["deletionTimestamp"].is_null(),
        "{keeper}"
    );
    assert_eq!(keeper["spec"]["nodeName"], name.as_str());

    // Back: Ready only with its stale pods stopped and gone.
    cluster.restart(victim).await.unwrap();
    kube.wait("the node Ready again", Duration::from_secs(60), |k| {
        node_status(k, &name) == "Ready"
    });
    let runtime = cluster.nodes[victim].data_dir.join("runtime");
    let left: Vec<String> = std::fs::read_dir(&runtime)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for (pod, uid) in &stale {
        assert!(
            !left.iter().any(|e| e.starts_with(uid.as_str())),
            "{pod}'s containers still on {name} once it is Ready: {left:?}"
        );
    }
    kube.wait(
        "the stale pods gone from the API",
        Duration::from_secs(60),
        |k| {
            let pods = k.pods("app=web");
            stale.iter().all(|(p, _)| !pods.contains_key(p))
        },
    );
    assert_eq!(ready_elsewhere(&kube, "").len(), 6);
    kube.wait("keeper Ready again", Duration::from_secs(60), keeper_ready);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_shorter_than_the_toleration_replaces_nothing() {
    let (cluster, kube, _dir, victim) = lab_with_web().await;
    let leader = cluster.leader().await.unwrap();
    let name = cluster.nodes[victim].name.clone();
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let before: BTreeSet<String> = kube.pods("app=web").into_keys().collect();

    // Cut off just until the cluster has noticed (about a second): the node is tainted
    // unreachable, its pods' toleration running. Seen through an API watch, not kubectl, so
    // that the cut ends as soon as the taint is there.
    let others_addr = cluster.lab.as_ref().unwrap().addr(others[0]).to_string();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(
        flotilla_tests::kube_client(&cluster.kubeconfig, &others_addr)
            .await
            .unwrap(),
    );
    let from = nodes.get(&name).await.unwrap().metadata.resource_version;
    let mut events = nodes
        .watch(&kube::api::WatchParams::default(), &from.unwrap())
        .await
        .unwrap()
        .boxed();
    cluster.partition(&[vec![victim], others]).await.unwrap();
    let tainted = |n: &k8s_openapi::api::core::v1::Node| {
        n.metadata.name.as_deref() == Some(name.as_str())
            && n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/unreachable"))
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let kube::api::WatchEvent::Modified(n) = event {
                if tainted(&n) {
                    return;
                }
            }
        }
        panic!("the watch ended before {name} was declared down");
    })
    .await
    .unwrap_or_else(|_| panic!("{name} never declared down"));
    cluster.heal().await.unwrap();

    let back = flotilla_tests::wait_until_blocking(Duration::from_secs(30), || {
        let node = kube.json(&["get", "node", &name]);
        (node_status(&kube, &name) == "Ready" && node["spec"]["taints"].is_null()).then_some(())
    });
    assert!(
        back.is_some(),
        "{name} not Ready and untainted after the partition: {}\n{}",
        kube.json(&["get", "node", &name]),
        cluster.log_tail(victim, 80)
    );
    kube.wait("all six Ready", Duration::from_secs(30), |k| {
        ready_elsewhere(k, "").len() == 6
    });
    let after: BTreeSet<String> = kube.pods("app=web").into_keys().collect();
    assert_eq!(
        before,
        after,
        "a 1 s partition replaced pods; the leader said:\n{}",
        cluster.log_tail(leader, 60)
    );
    let evictions = kube.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
    ]);
    assert!(
        evictions.contains("No resources found") || evictions.trim().is_empty(),
        "{evictions}"
    );
    drop(cluster);
}
