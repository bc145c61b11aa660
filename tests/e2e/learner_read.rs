//! Issue 2, point 6: a linearizable read on a learner returns the latest acknowledged write.

use flotilla_tests::{Cluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_on_a_learner_sees_the_latest_write() {
    let cluster = Cluster::start(4, Options::default()).await.unwrap();
    let status = cluster.client(0).status().await.unwrap();
    let learner_id = status
        .members
        .iter()
        .find(|m| !m.voter)
        .expect("four nodes keep one learner")
        .id;
    let learner = cluster
        .nodes
        .iter()
        .position(|n| n.node_id == learner_id)
        .unwrap();
    let learner_client = cluster.client(learner);
    assert_eq!(learner_client.status().await.unwrap().role, "learner");
    let leader = cluster.leader().await.unwrap();
    let writer = cluster.client(leader);

    let mut stale_local_reads = 0;
    for i in 0..100u32 {
        let rev = writer.update_or_create("/lin/key", i.to_string()).await;
        let (_, record) = learner_client.get("/lin/key", true).await.unwrap();
        let record = record.expect("the key exists");
        assert_eq!(record.mod_revision, rev, "read {i} on the learner is stale");
        assert_eq!(record.value, i.to_string().into_bytes());
        // A local read may lag; count how often, to show the linearizable read did real work.
        let (_, local) = learner_client.get("/lin/key", false).await.unwrap();
        if local.map(|r| r.mod_revision) != Some(rev) {
            stale_local_reads += 1;
        }
    }
    eprintln!("local reads that lagged the write: {stale_local_reads} of 100");
}

trait UpdateOrCreate {
    async fn update_or_create(&self, key: &str, value: String) -> u64;
}

impl UpdateOrCreate for flotilla_rpc::StoreClient {
    async fn update_or_create(&self, key: &str, value: String) -> u64 {
        match self.update(key, value.clone(), None).await {
            Ok(rev) => rev,
            Err(_) => self.create(key, value).await.unwrap(),
        }
    }
}
