//! The collector against the in-memory store, with the time set by the test.

use std::time::Duration;

use flotilla_api::meta::rfc3339;
use flotilla_store::{MemoryStore, Proposer};
use flotilla_util::{Clock, ManualClock};
use serde_json::json;

use super::*;

struct Harness {
    store: Arc<MemoryStore>,
    clock: ManualClock,
    stop: CancellationToken,
}

impl Harness {
    fn start() -> Harness {
        let store = Arc::new(MemoryStore::new(10_000));
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let ctx = Context {
            engine: Arc::clone(&store) as _,
            proposer: Arc::clone(&store) as _,
            clock: Arc::new(clock.clone()),
        };
        let stop = CancellationToken::new();
        tokio::spawn(run(ctx, stop.clone()));
        Harness { store, clock, stop }
    }

    async fn create(&self, key: &str, object: Value) {
        self.store
            .propose(Command::create(key, object.to_string()))
            .await
            .unwrap();
    }

    fn get(&self, key: &str) -> Option<Value> {
        let record = self.store.get(key).unwrap().1?;
        Some(serde_json::from_slice(&record.value).unwrap())
    }

    async fn until(&self, what: &str, check: impl Fn(&Harness) -> bool) {
        let ok = flotilla_util::wait_until(Duration::from_secs(10), || {
            let v = check(self).then_some(());
            async move { v }
        })
        .await;
        assert!(ok.is_some(), "timed out waiting until {what}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn object(api_version: &str, kind: &str, name: &str, uid: &str, extra: Value) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "default", "uid": uid}});
    if let (Some(m), Some(e)) = (o["metadata"].as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    o
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({"ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}]})
}

const DEPLOY: &str = "/apps/deployments/default/web";
const RS: &str = "/apps/replicasets/default/web-1";
const POD: &str = "/core/pods/default/web-1-a";

#[tokio::test]
async fn an_owner_chain_goes_when_its_root_is_deleted() {
    let h = Harness::start();
    h.create(
        DEPLOY,
        object("apps/v1", "Deployment", "web", "d1", json!({})),
    )
    .await;
    h.create(
        RS,
        object(
            "apps/v1",
            "ReplicaSet",
            "web-1",
            "r1",
            owner("apps/v1", "Deployment", "web", "d1"),
        ),
    )
    .await;
    h.create(
        POD,
        object(
            "v1",
            "Pod",
            "web-1-a",
            "p1",
            owner("apps/v1", "ReplicaSet", "web-1", "r1"),
        ),
    )
    .await;
    h.store
        .propose(Command::delete(DEPLOY, None))
        .await
        .unwrap();
    h.until("the replica set and its pod are gone", |h| {
        h.get(RS).is_none() && h.get(POD).is_none()
    })
    .await;
}

#[tokio::test]
async fn orphaning_releases_the_dependents_then_removes_the_owner() {
    let h = Harness::start();
    let deleting = json!({"deletionTimestamp": rfc3339(h.clock.now()), "finalizers": ["orphan"]});
    h.create(
        RS,
        object("apps/v1", "ReplicaSet", "web-1", "r1", json!({})),
    )
    .await;
    h.create(
        POD,
        object(
            "v1",
            "Pod",
            "web-1-a",
            "p1",
            owner("apps/v1", "ReplicaSet", "web-1", "r1"),
        ),
    )
    .await;
    // The replica set is being deleted with the orphan finalizer (`--cascade=orphan`).
    let mut rs = h.get(RS).unwrap();
    rs["metadata"]
        .as_object_mut()
        .unwrap()
        .extend(deleting.as_object().unwrap().clone());
    h.store
        .propose(Command::update(RS, rs.to_string(), None))
        .await
        .unwrap();
    h.until("the owner is gone", |h| h.get(RS).is_none()).await;
    let pod = h.get(POD).expect("the orphaned pod stays");
    assert!(pod["metadata"].get("ownerReferences").is_none(), "{pod}");
}

#[tokio::test]
async fn a_terminating_namespace_is_emptied_then_removed() {
    let h = Harness::start();
    let ns_key = "/core/namespaces/team";
    let in_team = "/core/configmaps/team/settings";
    h.create(
        in_team,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "team", "uid": "c1"}}),
    )
    .await;
    h.create(
        ns_key,
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team", "uid": "n1", "deletionTimestamp": rfc3339(h.clock.now())},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}}),
    )
    .await;
    h.until("the namespace and its content are gone", |h| {
        h.get(in_team).is_none() && h.get(ns_key).is_none()
    })
    .await;
}

#[tokio::test]
async fn a_pod_stays_through_its_grace_period_by_the_injected_clock() {
    let h = Harness::start();
    let due = h.clock.now() + Duration::from_secs(30);
    h.create(
        POD,
        object(
            "v1",
            "Pod",
            "web-1-a",
            "p1",
            json!({"deletionTimestamp": rfc3339(due)}),
        ),
    )
    .await;
    // A dependent of a missing owner, created after the pod: once it is gone, a sweep has seen
    // the pod and kept it.
    let orphan = "/core/configmaps/default/orphan";
    h.create(
        orphan,
        object(
            "v1",
            "ConfigMap",
            "orphan",
            "c1",
            owner("apps/v1", "ReplicaSet", "gone", "r0"),
        ),
    )
    .await;
    h.until("the orphan is collected", |h| h.get(orphan).is_none())
        .await;
    assert!(
        h.get(POD).is_some(),
        "the pod went before its grace period ended"
    );

    // The grace period ends by the clock; the next sweep (here: brought by a change) removes it.
    h.clock.advance(Duration::from_secs(31));
    h.create(
        "/core/configmaps/default/nudge",
        object("v1", "ConfigMap", "nudge", "c2", json!({})),
    )
    .await;
    h.until("the pod is removed", |h| h.get(POD).is_none())
        .await;
}
