//! Issue 2, point 5: compare-and-set races have exactly one winner per revision.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use flotilla_rpc::ClientError;
use flotilla_store::StoreError;
use flotilla_tests::{Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_has_one_winner_per_revision() {
    let cluster = Cluster::start(3, Options::default()).await.unwrap();
    let first = cluster.client(0).create("/cas/counter", "0").await.unwrap();
    // (expected revision, new revision) of every successful update.
    let wins: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..24 {
        let client = cluster.client(c % 3);
        let wins = Arc::clone(&wins);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..15 {
                let (_, record) = client.get("/cas/counter", true).await.unwrap();
                let record = record.unwrap();
                let n: u64 = String::from_utf8(record.value).unwrap().parse().unwrap();
                match client
                    .update(
                        "/cas/counter",
                        (n + 1).to_string(),
                        Some(record.mod_revision),
                    )
                    .await
                {
                    Ok(rev) => wins.lock().unwrap().push((record.mod_revision, rev)),
                    Err(ClientError::Store(StoreError::Conflict { .. })) => conflicts += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let wins = wins.lock().unwrap().clone();
    assert!(
        conflicts > 0,
        "24 racing clients never conflicted: the race was not exercised"
    );

    // Exactly one winner per revision: the expected revisions are distinct and form one chain.
    let expected: BTreeSet<u64> = wins.iter().map(|w| w.0).collect();
    assert_eq!(
        expected.len(),
        wins.len(),
        "two clients won at the same revision"
    );
    let mut chain = vec![first];
    let by_expected: std::collections::BTreeMap<u64, u64> = wins.iter().copied().collect();
    while let Some(next) = by_expected.get(chain.last().unwrap()) {
        chain.push(*next);
    }
    assert_eq!(
        chain.len(),
        wins.len() + 1,
        "the winners do not form a single chain"
    );

    // The counter counts the winners, and sits at the last winner's revision.
    let (_, record) = cluster.client(2).get("/cas/counter", true).await.unwrap();
    let record = record.unwrap();
    assert_eq!(
        String::from_utf8(record.value).unwrap(),
        wins.len().to_string()
    );
    assert_eq!(record.mod_revision, *chain.last().unwrap());
}
