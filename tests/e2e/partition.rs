//! A 5-node cluster, each node in its own network namespace, cut 2|3 with nftables: the
//! minority cannot commit, the majority goes on, and after healing every node converges with
//! never two leaders in one term.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_tests::{Cluster, Options};

use crate::support::{assert_all_present, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_the_majority_goes_on_and_all_converge() {
    let cluster = Cluster::start(5, Options::default().in_lab())
        .await
        .unwrap();
    cluster
        .wait_gossip_alive(Duration::from_secs(60))
        .await
        .unwrap();
    let leader = cluster.leader().await.unwrap();
    let term_before = cluster.client(leader).status().await.unwrap().term;
    // The leader goes to the minority, so the majority has to elect a new one.
    let minority = vec![leader, (0..5).find(|i| *i != leader).unwrap()];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();
    cluster
        .partition(&[minority.clone(), majority.clone()])
        .await
        .unwrap();

    // The majority keeps accepting writes.
    let writer = Writer::start(
        majority.iter().map(|i| cluster.client(*i)).collect(),
        "/major",
        1,
    );
    // Meanwhile a write through each minority node fails: its nodes cannot reach a quorum.
    // The node gives up after its 10 s request timeout, so the outcome is known, not pending.
    let attempts = minority.iter().map(|i| {
        let client = cluster.client(*i);
        let key = format!("/minor/{i}");
        async move { (key.clone(), client.create(&key, "lost").await) }
    });
    // The Kubernetes API of a minority node at the same time: a write fails and says why,
    // rather than hanging; a read with resourceVersion=0 is served from the local replica.
    let api = {
        let server = format!(
            "https://{}:6443",
            cluster.lab.as_ref().unwrap().addr(minority[1])
        );
        let kubeconfig = cluster.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let kubectl = |args: &[&str]| {
                std::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["--server", &server, "--request-timeout", "40s"])
                    .args(args)
                    .output()
                    .expect("kubectl is installed on these machines")
            };
            let read = kubectl(&["get", "--raw", "/api/v1/namespaces?resourceVersion=0"]);
            let write = kubectl(&["create", "configmap", "minority", "--from-literal=a=b"]);
            (read, write)
        })
    };
    for (key, result) in futures::future::join_all(attempts).await {
        assert!(
            result.is_err(),
            "{key} was acknowledged by a minority: {result:?}"
        );
    }
    let (read, write) = api.await.unwrap();
    assert!(
        read.status.success() && String::from_utf8_lossy(&read.stdout).contains("\"default\""),
        "a resourceVersion=0 read on the minority failed: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    let stderr = String::from_utf8_lossy(&write.stderr);
    assert!(!write.status.success(), "a minority node accepted a write");
    // The minority node forwarded it to the old leader, which never answered: it cannot know
    // whether the write will be applied, and says so (504, as etcd and Kubernetes answer);
    // had it known no leader, it would have said that (503).
    assert!(
        stderr.contains("may or may not have been applied") || stderr.contains("no leader"),
        "{stderr}"
    );
    assert!(
        writer.wait_acked(30, Duration::from_secs(30)).await,
        "the majority stopped accepting writes: {} acknowledged",
        writer.acked_count()
    );
    // A new leader in a new term, inside the majority.
    let majority_status = cluster.client(majority[0]).status().await.unwrap();
    assert!(majority_status.term > term_before);
    let new_leader = majority_status
        .leader_id
        .expect("the majority has a leader");
    assert!(
        majority
            .iter()
            .any(|i| cluster.nodes[*i].node_id == new_leader),
        "leader {new_leader} is not in the majority"
    );
    // Nothing the minority was asked to write was committed anywhere.
    for i in 0..5 {
        let items = cluster.client(i).list_all("/minor/", false).await.unwrap();
        assert!(
            items.is_empty(),
            "node {i} applied minority writes: {items:?}"
        );
    }

    cluster.heal().await.unwrap();
    let acked = writer.stop().await;
    // After healing the minority commits again, through either of its nodes.
    for i in &minority {
        cluster
            .client(*i)
            .create(&format!("/healed/{i}"), "ok")
            .await
            .unwrap_or_else(|e| panic!("node {i} cannot write after healing: {e}"));
    }
    let digest = cluster.converged().await.unwrap();
    assert!(digest.revision > 0);
    for i in 0..5 {
        assert_all_present(&cluster.client(i), "/major/", &acked).await;
    }
    // Never more than one leader per term: each node reports every term it led.
    let mut leaders: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..5 {
        let s = cluster.client(i).status().await.unwrap();
        for term in s.led_terms {
            leaders.entry(term).or_default().push(s.node_id);
        }
    }
    assert!(
        leaders.len() >= 2,
        "expected the old and a new leader's terms, got {leaders:?}"
    );
    let doubled: Vec<_> = leaders.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(doubled.is_empty(), "two leaders in one term: {doubled:?}");
}
