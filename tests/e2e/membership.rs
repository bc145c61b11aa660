//! Issue 3, points 2 and 5: a killed voter is seen dead by every live node, its Node turns
//! `Ready=Unknown`, a learner takes its place after the stabilisation time, and writes go on;
//! a leader that is stopped with SIGTERM hands over first.

use std::time::{Duration, Instant};

use flotilla_tests::{wait_until, Cluster, Options};

use crate::support::Writer;

/// The Ready condition of node `name`'s Node object, as `client` reads it.
async fn ready_of(client: &flotilla_rpc::StoreClient, name: &str) -> Option<String> {
    let (_, record) = client
        .get(&format!("/core/nodes/{name}"), true)
        .await
        .ok()?;
    let node: serde_json::Value = serde_json::from_slice(&record?.value).ok()?;
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_voter_is_seen_dead_and_replaced_while_writes_go_on() {
    let mut cluster = Cluster::start(4, Options::default().arg("--stabilization", "2s"))
        .await
        .unwrap();
    for i in 0..4 {
        let name = cluster.nodes[i].name.clone();
        let ready = wait_until(Duration::from_secs(20), || {
            let client = cluster.client(0);
            let name = name.clone();
            async move { (ready_of(&client, &name).await.as_deref() == Some("True")).then_some(()) }
        })
        .await;
        assert!(ready.is_some(), "{name} never registered as Ready");
    }
    let leader = cluster.leader().await.unwrap();
    let status = cluster.client(leader).status().await.unwrap();
    let victim_id = status
        .members
        .iter()
        .find(|m| m.voter && m.id != cluster.nodes[leader].node_id)
        .map(|m| m.id)
        .unwrap();
    let victim = (0..4)
        .find(|i| cluster.nodes[*i].node_id == victim_id)
        .unwrap();
    let victim_name = cluster.nodes[victim].name.clone();

    let writer = Writer::start(cluster.live_clients(), "/kv", 1);
    assert!(writer.wait_acked(20, Duration::from_secs(20)).await);
    let killed_at = Instant::now();
    cluster.kill(victim);

    // Every live node's gossip sees it dead.
    for i in (0..4).filter(|i| *i != victim) {
        let seen = wait_until(Duration::from_secs(20), || {
            let client = cluster.client(i);
            async move {
                let s = client.status().await.ok()?;
                s.members
                    .iter()
                    .any(|m| m.id == victim_id && m.down_ms.is_some())
                    .then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "node {i} never saw the victim dead");
    }
    let unknown = wait_until(Duration::from_secs(20), || {
        let client = cluster.client(leader);
        let name = victim_name.clone();
        async move { (ready_of(&client, &name).await.as_deref() == Some("Unknown")).then_some(()) }
    })
    .await;
    assert!(
        unknown.is_some(),
        "the victim's Node never turned Ready=Unknown"
    );

    // After the stabilisation time the learner is promoted: three voters, the victim not one.
    let replaced = wait_until(Duration::from_secs(30), || {
        let client = cluster.client(leader);
        async move {
            let s = client.status().await.ok()?;
            let voters: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            (voters.len() == 3 && !voters.contains(&victim_id)).then_some(())
        }
    })
    .await;
    assert!(replaced.is_some(), "the dead voter was not replaced");

    assert!(
        writer
            .wait_acked(writer.acked_count() + 20, Duration::from_secs(20))
            .await
    );
    // The victim was not the leader, so no election was needed at all; allow one election's
    // worth (election timeout at most 1 s) and then some for a loaded machine.
    let pause = writer.longest_pause_since(killed_at);
    assert!(
        pause < Duration::from_secs(3),
        "writes stopped for {pause:?}"
    );
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_first() {
    let mut cluster = Cluster::start(3, Options::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let clients = others.iter().map(|i| cluster.client(*i)).collect();
    let writer = Writer::start(clients, "/kv", 1);
    assert!(writer.wait_acked(20, Duration::from_secs(20)).await);
    let stopped_at = Instant::now();
    let status = cluster.terminate(leader).unwrap();
    assert!(status.success(), "SIGTERM exit status {status}");
    let log = cluster.log_tail(leader, 50);
    assert!(
        log.contains("handed leadership over"),
        "no handover in the log:\n{log}"
    );
    assert!(
        writer
            .wait_acked(writer.acked_count() + 20, Duration::from_secs(20))
            .await
    );
    // A handover takes one round trip and a vote; an election after a timeout would take up to
    // a second more. Far below that: no write waited for an election.
    let pause = writer.longest_pause_since(stopped_at);
    assert!(
        pause < Duration::from_secs(1),
        "writes stopped for {pause:?}"
    );
    writer.stop().await;
}
