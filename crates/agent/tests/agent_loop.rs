//! The agent's loop against the in-memory store and the fake runtime (no root): a pod bound to
//! the node goes through its init container to Running with its configuration in place,
//! restarts by its policy, reports config errors, and is torn down and removed when deleted.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::resources::NodeCapacity;
use flotilla_agent::volumes::Volumes;
use flotilla_agent::{Agent, Config};
use flotilla_controllers::Context;
use flotilla_runtime::{FakeRuntime, PodRuntime};
use flotilla_store::{Command, Engine, MemoryStore, Proposer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Harness {
    store: Arc<MemoryStore>,
    rt: FakeRuntime,
    dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Harness {
    async fn start() -> Harness {
        let store = Arc::new(MemoryStore::new(10_000));
        let rt = FakeRuntime::new();
        rt.add_image("busybox", &["sh"]);
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let ctx = Context {
            engine: Arc::clone(&store) as _,
            proposer: Arc::clone(&store) as _,
            clock: Arc::new(flotilla_util::SystemClock),
        };
        Agent::start(
            ctx,
            Arc::new(rt.clone()) as Arc<dyn PodRuntime>,
            Config {
                node_name: "n1".into(),
                node_ip: "10.0.0.1".into(),
                capacity: NodeCapacity {
                    cpus: 2,
                    memory_bytes: 1 << 30,
                },
                volumes: Volumes {
                    root: dir.path().join("pods"),
                    mounts: false,
                },
                workers: 4,
                images: None,
            },
            stop.clone(),
        )
        .await;
        Harness {
            store,
            rt,
            dir,
            stop,
        }
    }

    async fn put(&self, key: &str, object: Value) {
        let (_, current) = self.store.get(key).unwrap();
        let command = match current {
            Some(r) => Command::update(key, object.to_string(), Some(r.mod_revision)),
            None => Command::create(key, object.to_string()),
        };
        self.store.propose(command).await.unwrap();
    }

    fn get(&self, key: &str) -> Option<Value> {
        let record = self.store.get(key).unwrap().1?;
        Some(serde_json::from_slice(&record.value).unwrap())
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&Harness) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; pod: {:#}; runtime calls: {:?}",
                self.get("/core/pods/default/web").unwrap_or_default(),
                self.rt.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const POD: &str = "/core/pods/default/web";

fn pod(key_ref: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 5,
            "initContainers": [{"name": "init", "image": "busybox", "command": ["true"]}],
            "containers": [{
                "name": "app", "image": "busybox",
                "command": ["sh", "-c", "echo $(COLOR)"],
                "env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": key_ref}}}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/cfg"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": "cfg"}}],
        },
    })
}

fn phase(h: &Harness) -> String {
    h.get(POD)
        .map(|p| p["status"]["phase"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn app_status(h: &Harness) -> Value {
    h.get(POD).unwrap_or_default()["status"]["containerStatuses"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_runs_restarts_and_goes_when_deleted() {
    let h = Harness::start().await;
    h.put(
        "/core/configmaps/default/cfg",
        json!({"metadata": {"name": "cfg", "namespace": "default", "uid": "c1"}, "data": {"COLOR": "blue"}}),
    )
    .await;
    // Bound to another node: not ours.
    let mut other = pod("COLOR");
    other["metadata"]["name"] = json!("elsewhere");
    other["metadata"]["uid"] = json!("uid-x");
    other["spec"]["nodeName"] = json!("n2");
    h.put("/core/pods/default/elsewhere", other).await;
    h.put(POD, pod("COLOR")).await;

    // The init container runs first, alone.
    h.wait_for("the init container", |h| {
        h.rt.calls().contains(&"start uid-1_init".to_string())
    })
    .await;
    h.wait_for("Pending, initializing", |h| {
        h.get(POD).unwrap()["status"]["initContainerStatuses"][0]["state"]["running"].is_object()
    })
    .await;
    assert_eq!(phase(&h), "Pending");
    assert!(!h.rt.calls().iter().any(|c| c.contains("uid-1_app")));
    h.rt.end("uid-1_init", 0, false);

    h.wait_for("Running and ready", |h| {
        phase(h) == "Running" && app_status(h)["ready"] == true
    })
    .await;
    let status = h.get(POD).unwrap()["status"].clone();
    assert_eq!(status["podIP"], "10.244.0.2");
    assert_eq!(status["hostIP"], "10.0.0.1");
    assert_eq!(status["qosClass"], "BestEffort");
    assert!(!h.rt.calls().iter().any(|c| c.contains("uid-x")));
    // The environment and the volume, as the runtime got them.
    let bundle = h.dir.path().join("pods/uid-1/bundles/app/config.json");
    let config: Value = serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], json!(["sh", "-c", "echo blue"]));
    assert!(config["process"]["env"]
        .as_array()
        .unwrap()
        .contains(&json!("COLOR=blue")));
    let volume = h.dir.path().join("pods/uid-1/volumes/config");
    assert_eq!(
        std::fs::read_to_string(volume.join("COLOR")).unwrap(),
        "blue"
    );
    assert!(config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["destination"] == "/etc/cfg" && m["source"] == json!(volume)));

    // A configMap update reaches the file.
    h.put(
        "/core/configmaps/default/cfg",
        json!({"metadata": {"name": "cfg", "namespace": "default", "uid": "c1"}, "data": {"COLOR": "green"}}),
    )
    .await;
    h.wait_for("the updated file", |_| {
        std::fs::read_to_string(volume.join("COLOR"))
            .ok()
            .as_deref()
            == Some("green")
    })
    .await;

    // It exits 1: restarted at once the first time, then a crash loop.
    h.rt.end("uid-1_app", 1, false);
    h.wait_for("the first restart", |h| {
        app_status(h)["restartCount"] == 1 && app_status(h)["state"]["running"].is_object()
    })
    .await;
    assert_eq!(app_status(&h)["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(app_status(&h)["lastState"]["terminated"]["reason"], "Error");
    h.rt.end("uid-1_app", 137, true);
    h.wait_for("CrashLoopBackOff", |h| {
        app_status(h)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    assert_eq!(
        app_status(&h)["lastState"]["terminated"]["reason"],
        "OOMKilled"
    );
    let events: Vec<Value> = h
        .store
        .list("/core/events/default/", None, 0)
        .unwrap()
        .items
        .into_iter()
        .map(|(_, r)| serde_json::from_slice(&r.value).unwrap())
        .collect();
    for reason in ["Pulled", "Created", "Started"] {
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == reason && e["involvedObject"]["name"] == "web"),
            "no {reason} event in {events:#?}"
        );
    }

    // Deleted: stopped, torn down, then the object goes.
    let mut deleting = h.get(POD).unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!(flotilla_api::meta::now_rfc3339());
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(5);
    h.put(POD, deleting).await;
    h.wait_for("the pod object to go", |h| h.get(POD).is_none())
        .await;
    assert!(h.rt.sandboxes().await.unwrap().is_empty());
    assert!(h
        .rt
        .containers()
        .await
        .unwrap()
        .iter()
        .all(|c| !c.starts_with("uid-1")));
    assert!(!h.dir.path().join("pods/uid-1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_a_waiting_reason_not_a_crash() {
    let h = Harness::start().await;
    h.put(
        "/core/configmaps/default/cfg",
        json!({"metadata": {"name": "cfg", "namespace": "default", "uid": "c1"}, "data": {"COLOR": "blue"}}),
    )
    .await;
    let mut p = pod("NOPE");
    p["spec"]["initContainers"] = json!([]);
    h.put(POD, p).await;
    h.wait_for("CreateContainerConfigError", |h| {
        app_status(h)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(
        app_status(&h)["state"]["waiting"]["message"],
        "couldn't find key NOPE in ConfigMap default/cfg"
    );
    assert_eq!(phase(&h), "Pending");

    // An image the node lacks, with pull policy Never.
    let mut p = pod("COLOR");
    p["metadata"]["uid"] = json!("uid-2");
    p["spec"]["initContainers"] = json!([]);
    p["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    p["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    h.put(POD, p).await;
    h.wait_for("ErrImageNeverPulled", |h| {
        app_status(h)["state"]["waiting"]["reason"] == "ErrImageNeverPulled"
    })
    .await;
    // The first pod of that name left nothing behind.
    assert_eq!(h.rt.sandboxes().await.unwrap(), ["uid-2"]);

    // A command that cannot start.
    let mut p = pod("COLOR");
    p["metadata"]["uid"] = json!("uid-3");
    p["spec"]["initContainers"] = json!([]);
    h.rt.fail_next(
        "start",
        "exec: \"nope\": executable file not found in $PATH",
    );
    h.put(POD, p).await;
    h.wait_for("RunContainerError", |h| {
        app_status(h)["state"]["waiting"]["reason"] == "RunContainerError"
    })
    .await;
    let message = app_status(&h)["state"]["waiting"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("executable file not found"),
        "{message}"
    );
    // The container that could not start is not left behind (it is retried after a backoff).
    assert!(h.rt.container("uid-3_app").await.unwrap().is_none());
}
