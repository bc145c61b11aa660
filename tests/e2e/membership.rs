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
    cluster
        .wait_gossip_alive(Duration::from_secs(20))
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flotilla_leave_removes_a_voter_for_good_and_a_learner_takes_its_place() {
    let mut cluster = Cluster::start(4, Options::default()).await.unwrap();
    let status = cluster.client(0).status().await.unwrap();
    // A voter that is not the bootstrap node (whose address the kubeconfig names).
    let leaving = (1..4)
        .find(|i| {
            status
                .members
                .iter()
                .any(|m| m.id == cluster.nodes[*i].node_id && m.voter)
        })
        .expect("a voter besides n1");
    let name = cluster.nodes[leaving].name.clone();
    let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking({
        let name = name.clone();
        move || {
            flotilla_tests::run_cli(
                &["leave", &name, "--kubeconfig", &kubeconfig],
                Duration::from_secs(60),
            )
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let exit = cluster
        .wait_exit(leaving, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(exit.success(), "the leaving node exited with {exit}");

    // The others: three members, all voters again, the Node object and its pod CIDR gone.
    let client = cluster.client(0);
    let settled = wait_until(Duration::from_secs(30), || {
        let client = client.clone();
        let name = name.clone();
        async move {
            let s = client.status().await.ok()?;
            let voters = s.members.iter().filter(|m| m.voter).count();
            let gone = !s.members.iter().any(|m| m.name == name);
            let (_, node) = client
                .get(&format!("/core/nodes/{name}"), true)
                .await
                .ok()?;
            (gone && voters == 3 && s.members.len() == 3 && node.is_none()).then_some(())
        }
    })
    .await;
    assert!(
        settled.is_some(),
        "membership after leave: {:?}",
        client.status().await
    );
    let cidrs = client.list_all("/flotilla/podcidrs/", true).await.unwrap();
    assert!(
        cidrs.iter().all(|(_, r)| r.value != name.as_bytes()),
        "{name}'s pod CIDR is still taken: {cidrs:?}"
    );
    // Writes go on, and the node's data dir refuses to resume a membership it gave up.
    client.create("/after-leave", "ok").await.unwrap();
    let err = cluster.restart(leaving).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("left its cluster"),
        "restart after leave: {err:#}"
    );
}
