//! Issue 2, point 1: kill -9 the leader under a continuous write load.

use std::time::Duration;

use flotilla_tests::{Cluster, Options};

use crate::support::{assert_all_present, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_under_writes_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3, Options::default()).await.unwrap();
    let writer = Writer::start(cluster.live_clients(), "/failover", 1);
    assert!(
        writer.wait_acked(100, Duration::from_secs(60)).await,
        "no writes before the kill"
    );

    let leader = cluster.leader().await.unwrap();
    cluster.kill(leader);
    let before = writer.acked_count();

    // A new leader among the survivors, and writes resume.
    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, leader);
    assert!(
        writer
            .wait_acked(before + 100, Duration::from_secs(60))
            .await,
        "writes did not resume after the leader was killed"
    );

    // The old leader comes back from its data dir and catches up.
    cluster.restart(leader).await.unwrap();
    let resumed = writer.acked_count();
    assert!(
        writer
            .wait_acked(resumed + 50, Duration::from_secs(60))
            .await
    );
    let acked = writer.stop().await;

    cluster.converged().await.unwrap();
    for i in 0..3 {
        assert_all_present(&cluster.client(i), "/failover/", &acked).await;
    }
}
