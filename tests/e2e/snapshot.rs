//! Issue 2, point 3: a node that missed more than the snapshot threshold rejoins by snapshot.

use std::time::Duration;

use flotilla_tests::{wait_until, Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_node_catches_up_through_a_snapshot() {
    let options = Options::default()
        .arg("--snapshot-threshold", 200)
        .arg("--snapshot-keep-logs", 10);
    let mut cluster = Cluster::start(3, options).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let lagger = (leader + 1) % 3;
    let writer_node = (leader + 2) % 3;
    cluster.terminate(lagger).unwrap();

    let client = cluster.client(writer_node);
    for i in 0..1200 {
        client
            .create(&format!("/snap/{i:05}"), format!("v{i}"))
            .await
            .unwrap();
    }
    for i in (0..1200).step_by(3) {
        client
            .update(&format!("/snap/{i:05}"), "updated", None)
            .await
            .unwrap();
    }
    for i in (1..1200).step_by(7) {
        client.delete(&format!("/snap/{i:05}"), None).await.unwrap();
    }
    // The leader has compacted its log past everything the stopped node has.
    let leader_client = cluster.client(leader);
    let purged = wait_until(Duration::from_secs(30), || {
        let c = leader_client.clone();
        async move {
            let s = c.status().await.ok()?;
            (s.purged_index > 1000).then_some(s.purged_index)
        }
    })
    .await
    .expect("the leader never purged its log");
    assert!(purged > 1000);

    cluster.restart(lagger).await.unwrap();
    let digest = cluster.converged().await.unwrap();
    let status = cluster.client(lagger).status().await.unwrap();
    assert!(
        status.snapshot_index >= purged,
        "the restarted node caught up without installing a snapshot (snapshot index {}, leader purged {purged})",
        status.snapshot_index
    );
    // Identical state on every node, key by key.
    let reference = cluster
        .client(leader)
        .list_all("/snap/", false)
        .await
        .unwrap();
    assert_eq!(
        reference.len(),
        1200 - (1..1200).step_by(7).count(),
        "digest {digest:?}"
    );
    for i in 0..3 {
        assert_eq!(
            cluster.client(i).list_all("/snap/", false).await.unwrap(),
            reference,
            "node {i} differs"
        );
    }
}
