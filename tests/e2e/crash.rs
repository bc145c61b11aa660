//! Issue 2, point 2: kill -9 a node in the middle of a write stream and restart it.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_tests::{Cluster, Options};

use crate::support::{assert_all_present, Writer};

const WIDTH: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_mid_stream_keeps_acknowledged_and_never_half_applies() {
    let mut cluster = Cluster::start(3, Options::default()).await.unwrap();
    // Batches of four keys, sent only through the node that will be killed.
    let victim = 1;
    let writer = Writer::start(vec![cluster.client(victim)], "/crash", WIDTH);
    assert!(writer.wait_acked(50 * WIDTH, Duration::from_secs(60)).await);
    cluster.kill(victim);
    let acked_before_kill = writer.stop().await;

    cluster.restart(victim).await.unwrap();
    cluster.converged().await.unwrap();

    for i in 0..3 {
        let client = cluster.client(i);
        assert_all_present(&client, "/crash/", &acked_before_kill).await;
        // Every batch is whole or absent: group the keys by batch.
        let mut batches: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (key, record) in client.list_all("/crash/", false).await.unwrap() {
            let batch = key.rsplit_once('/').unwrap().0.to_string();
            batches.entry(batch).or_default().push(record.mod_revision);
        }
        for (batch, revisions) in &batches {
            assert_eq!(
                revisions.len(),
                WIDTH,
                "batch {batch} is half applied on node {i}"
            );
            assert!(
                revisions.windows(2).all(|w| w[0] == w[1]),
                "batch {batch} spans revisions"
            );
        }
    }
}
