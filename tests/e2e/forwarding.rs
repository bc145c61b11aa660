//! Issue 14: forwarding never guesses. A follower whose forwarded proposal reached the leader
//! but whose answer was lost must not send it again (a create would answer AlreadyExists
//! although it succeeded): it answers that the outcome is unknown, and the write is applied
//! once.

use std::time::Duration;

use flotilla_rpc::ClientError;
use flotilla_store::{EventKind, StoreError};
use flotilla_tests::{Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_is_reported_as_unknown_and_the_write_applies_once() {
    // Followers lose the leader's answer to the first forwarded write under /forwarding/.
    let options = Options::default().env("FLOTILLA_FAILPOINTS", "forward-reply-lost=/forwarding/");
    let cluster = Cluster::start(3, options).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let on_leader = cluster.client(leader);
    let (from, _) = on_leader.get("/forwarding/k", true).await.unwrap();
    let mut watch = on_leader.watch("/forwarding/", from).await.unwrap();

    let err = cluster
        .client(follower)
        .create("/forwarding/k", "v")
        .await
        .expect_err("the answer was lost: the outcome cannot be known");
    match &err {
        ClientError::Store(StoreError::Timeout { waiting_for, .. }) => {
            assert!(
                waiting_for.contains("may or may not have been applied"),
                "{err}"
            )
        }
        other => panic!("expected an unknown outcome (Timeout), got {other}"),
    }

    // The write was applied, once: one revision, one event.
    let (_, record) = on_leader.get("/forwarding/k", true).await.unwrap();
    let record = record.expect("the create was applied");
    assert_eq!(record.create_revision, record.mod_revision);
    let fence = on_leader.create("/forwarding/z", "fence").await.unwrap();
    let mut events = Vec::new();
    while !events
        .iter()
        .any(|e: &flotilla_store::Event| e.revision >= fence)
    {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch events")
            .unwrap()
            .expect("the watch stays open");
        events.extend(batch);
    }
    let for_k: Vec<_> = events.iter().filter(|e| e.key == "/forwarding/k").collect();
    assert_eq!(for_k.len(), 1, "{events:?}");
    assert_eq!(for_k[0].kind, EventKind::Created);
    assert_eq!(for_k[0].revision, record.create_revision);

    // The failpoint fired once: the next forwarded write answers normally.
    let rev = cluster
        .client(follower)
        .create("/forwarding/k2", "v")
        .await
        .unwrap();
    assert!(rev > fence);
}
