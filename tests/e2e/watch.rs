//! Issue 2, point 4: watches deliver every change exactly once, in order, across a leader change.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_rpc::ClientError;
use flotilla_store::StoreError;
use flotilla_tests::{Cluster, Options};

use crate::support::Writer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_every_change_once_in_order_across_leader_change() {
    let mut cluster = Cluster::start(3, Options::default()).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let watched = (leader + 1) % 3;
    let client = cluster.client(watched);
    let start = client.create("/w/start", "x").await.unwrap();

    let mut stream = client.watch("/w/", start).await.unwrap();
    let writer = Writer::start(cluster.live_clients(), "/w/k", 1);
    assert!(writer.wait_acked(100, Duration::from_secs(60)).await);
    cluster.kill(leader);
    cluster.leader().await.unwrap();
    let n = writer.acked_count();
    assert!(writer.wait_acked(n + 100, Duration::from_secs(60)).await);
    let acked = writer.stop().await;
    // A last write marks the end of the stream.
    let end = client.create("/w/end", "x").await.unwrap();

    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = start;
    while !seen.contains_key("/w/end") {
        let events = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch ended");
        for e in events {
            assert!(
                e.revision > start,
                "event at {} not after the start {start}",
                e.revision
            );
            assert!(
                e.revision >= last,
                "out of order: {} after {last}",
                e.revision
            );
            assert!(
                seen.insert(e.key.clone(), e.revision).is_none(),
                "{} delivered twice",
                e.key
            );
            last = e.revision;
        }
    }
    assert_eq!(seen["/w/end"], end);
    // Every acknowledged write was delivered, at its revision.
    for (k, rev) in &acked {
        assert_eq!(
            seen.get(k),
            Some(rev),
            "acknowledged write {k} not delivered at {rev}"
        );
    }
    // And nothing else: the delivered keys are exactly those the store holds.
    let stored: BTreeMap<String, u64> = client
        .list_all("/w/k/", true)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, r)| (k, r.mod_revision))
        .collect();
    seen.remove("/w/end");
    assert_eq!(
        seen, stored,
        "watch delivered a different set of changes than the store holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_a_revision_older_than_the_window_is_compacted() {
    let cluster = Cluster::start(1, Options::default().arg("--watch-window", 50))
        .await
        .unwrap();
    let client = cluster.client(0);
    let first = client.create("/c/0", "v").await.unwrap();
    for i in 1..200 {
        client.create(&format!("/c/{i}"), "v").await.unwrap();
    }
    let mut stream = client.watch("/c/", first).await.unwrap();
    match stream.next().await {
        Err(ClientError::Store(StoreError::Compacted { requested, oldest })) => {
            assert_eq!(requested, first);
            assert!(oldest > first);
        }
        Err(other) => panic!("expected a compacted error, got {other:?}"),
        Ok(events) => panic!("expected a compacted error, got {events:?}"),
    }
    // A recent revision is still watchable.
    let (head, _) = client.get("/c/0", false).await.unwrap();
    let mut stream = client.watch("/c/", head).await.unwrap();
    let rev = client.update("/c/0", "w", None).await.unwrap();
    let events = stream.next().await.unwrap().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].revision, rev);
}
