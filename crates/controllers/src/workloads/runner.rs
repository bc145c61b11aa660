//! The workload controllers' loops on the leader. One set of informers (pods, ReplicaSets,
//! Deployments, DaemonSets, Jobs, CronJobs, nodes), each indexed by controller uid, feeds a
//! work queue per controller: a pod's change queues its ReplicaSet, DaemonSet or Job, a
//! ReplicaSet's change queues itself and its Deployment, a Job's itself and its CronJob, a
//! node's every DaemonSet. A
//! reconcile runs the pure planner over the cache and makes its writes as an API client
//! would; then it waits until the informers have seen those writes, so that the next round
//! never plans on a cache older than what it has already done.

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Command, Op, Revision, StoreError};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::controller_of;
use crate::events::{Involved, Recorder};
use crate::informer::{Cached, Informer};
use crate::queue::{run_workers, WorkQueue};
use crate::Context;

const PODS: &str = "/core/pods/";
const REPLICA_SETS: &str = "/apps/replicasets/";
const DEPLOYMENTS: &str = "/apps/deployments/";
const DAEMON_SETS: &str = "/apps/daemonsets/";
const NODES: &str = "/core/nodes/";
const JOBS: &str = "/batch/jobs/";
const CRON_JOBS: &str = "/batch/cronjobs/";
/// The index of objects by the uid of their controller.
pub(super) const BY_CONTROLLER: &str = "controller";
/// How long a reconcile waits for the informers to see its own writes.
const CATCH_UP: Duration = Duration::from_secs(5);

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &flotilla_store::Record) -> Option<T> {
    serde_json::from_slice(&record.value).ok()
}

fn controller_uid<T>(
    meta: impl Fn(&T) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> impl Fn(&Cached<T>) -> Vec<String> {
    move |c| {
        controller_of(meta(&c.object))
            .map(|o| vec![o.uid.clone()])
            .unwrap_or_default()
    }
}

/// The informers the workload controllers share.
#[derive(Clone)]
pub(super) struct Caches {
    pub pods: Informer<Arc<Pod>>,
    pub replica_sets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub daemon_sets: Informer<DaemonSet>,
    pub nodes: Informer<Node>,
    pub jobs: Informer<Job>,
    pub cron_jobs: Informer<CronJob>,
}

/// The last revision a reconcile wrote, per informer that will see it.
#[derive(Default)]
pub(super) struct Written {
    pub pods: Revision,
    pub replica_sets: Revision,
    pub deployments: Revision,
    pub daemon_sets: Revision,
    pub jobs: Revision,
    pub cron_jobs: Revision,
}

impl Caches {
    /// Waits until each informer has seen what was written under its prefix (or gives up after
    /// [`CATCH_UP`]). An informer moves only with changes under its own prefix, so each waits
    /// only for its own.
    pub async fn catch_up(&self, written: &Written) {
        let all = async {
            if written.pods > 0 {
                self.pods.wait_for(written.pods).await;
            }
            if written.replica_sets > 0 {
                self.replica_sets.wait_for(written.replica_sets).await;
            }
            if written.deployments > 0 {
                self.deployments.wait_for(written.deployments).await;
            }
            if written.daemon_sets > 0 {
                self.daemon_sets.wait_for(written.daemon_sets).await;
            }
            if written.jobs > 0 {
                self.jobs.wait_for(written.jobs).await;
            }
            if written.cron_jobs > 0 {
                self.cron_jobs.wait_for(written.cron_jobs).await;
            }
        };
        let _ = tokio::time::timeout(CATCH_UP, all).await;
    }
}

/// Reads the object at `key` as stored; an error when it moved past `revision` (the
/// reconcile is then retried on the newer object).
pub(super) fn stored(ctx: &Context, key: &str, revision: Revision) -> Result<Value, StoreError> {
    let record = ctx
        .engine
        .get(key)?
        .1
        .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
    if record.mod_revision != revision {
        return Err(StoreError::Conflict {
            key: key.into(),
            expected: revision,
            current: record.mod_revision,
        });
    }
    serde_json::from_slice(&record.value).map_err(StoreError::storage)
}

pub(super) async fn propose(ctx: &Context, command: Command) -> Result<Revision, StoreError> {
    ctx.proposer.propose(command).await
}

/// Makes the pods (`made`: store key and object, or why they could not be made), each with its
/// `SuccessfulCreate` event, in batches ([`crate::batch`]), or one `FailedCreate`. Whether they
/// could be made.
pub(super) async fn create_pods(
    ctx: &Context,
    recorder: &Recorder,
    who: &Involved,
    made: Result<Vec<(String, Value)>, String>,
    written: &mut Written,
) -> bool {
    let made = match made {
        Ok(m) => m,
        Err(why) => {
            recorder
                .warning(who, "FailedCreate", &format!("Error creating: {why}"))
                .await;
            return false;
        }
    };
    let writes = made
        .into_iter()
        .map(|(key, pod)| {
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let event = recorder.create_op(
                who,
                "Normal",
                "SuccessfulCreate",
                &format!("Created pod: {name}"),
            );
            let create = Op::Create {
                key,
                value: pod.to_string().into_bytes(),
            };
            Command::batch([create].into_iter().chain(event).collect())
        })
        .collect();
    for result in crate::batch::propose_all(ctx.proposer.as_ref(), writes).await {
        match result {
            Ok(r) => written.pods = written.pods.max(r),
            Err(e) => {
                recorder
                    .warning(who, "FailedCreate", &format!("Error creating: {e}"))
                    .await;
            }
        }
    }
    true
}

/// Deletes the pods at `indexes` of `owned` as a client would (gracefully), each with its
/// `SuccessfulDelete` event, in batches; a pod that changed since it was read is left for the
/// next round.
pub(super) async fn delete_pods(
    ctx: &Context,
    recorder: &Recorder,
    who: &Involved,
    owned: &[Arc<Cached<Arc<Pod>>>],
    indexes: &[usize],
    now: std::time::SystemTime,
    written: &mut Written,
) {
    let writes = indexes
        .iter()
        .filter_map(|i| {
            let c = &owned[*i];
            let mut command = stored(ctx, &c.key, c.revision)
                .ok()
                .and_then(|pod| super::delete_pod(&c.key, &pod, c.revision, now))?;
            let pod = c.object.metadata.name.as_deref().unwrap_or("");
            command.ops.extend(recorder.create_op(
                who,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {pod}"),
            ));
            Some(command)
        })
        .collect();
    let answers = crate::batch::propose_all(ctx.proposer.as_ref(), writes).await;
    for r in answers.into_iter().flatten() {
        written.pods = written.pods.max(r);
    }
}

/// Writes `status` onto the object at `key` as read at `revision`; the revision written.
pub(super) async fn write_status(
    ctx: &Context,
    key: &str,
    revision: Revision,
    status: &impl serde::Serialize,
) -> Result<Revision, StoreError> {
    let mut object = stored(ctx, key, revision)?;
    object["status"] = serde_json::to_value(status).map_err(StoreError::storage)?;
    propose(
        ctx,
        Command::update(key, object.to_string(), Some(revision)),
    )
    .await
}

/// The controller's key for an owner reference of `kind` in `namespace`.
fn owner_key(prefix: &str, namespace: Option<&String>, name: &str) -> String {
    format!(
        "{prefix}{}/{name}",
        namespace.map_or("default", |n| n.as_str())
    )
}

/// Runs the workload controllers until `stop`.
pub async fn run_workloads(ctx: Context, stop: CancellationToken) {
    let rs_queue = WorkQueue::default();
    let deploy_queue = WorkQueue::default();
    let job_queue = WorkQueue::default();
    let cron_queue = WorkQueue::default();
    let ds_queue = WorkQueue::default();
    let pods = {
        let (rq, jq, dq) = (rs_queue.clone(), job_queue.clone(), ds_queue.clone());
        Informer::builder([PODS], crate::informer::parse_pod)
            .index(BY_CONTROLLER, controller_uid(|p: &Arc<Pod>| &p.metadata))
            .on_change(move |c| {
                let Some(pod) = c.new.or(c.old).map(|p| &p.object) else {
                    return;
                };
                let ns = pod.metadata.namespace.as_ref();
                match controller_of(&pod.metadata) {
                    Some(o) if o.kind == "ReplicaSet" => {
                        rq.add(owner_key(REPLICA_SETS, ns, &o.name))
                    }
                    Some(o) if o.kind == "Job" => jq.add(owner_key(JOBS, ns, &o.name)),
                    Some(o) if o.kind == "DaemonSet" => dq.add(owner_key(DAEMON_SETS, ns, &o.name)),
                    _ => {}
                }
            })
            .build()
    };
    let replica_sets = {
        let (q, dq) = (rs_queue.clone(), deploy_queue.clone());
        Informer::builder([REPLICA_SETS], parse::<ReplicaSet>)
            .index(BY_CONTROLLER, controller_uid(|r: &ReplicaSet| &r.metadata))
            .on_change(move |c| {
                q.add(c.key);
                if let Some(rs) = c.new.or(c.old).map(|r| &r.object) {
                    if let Some(o) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")
                    {
                        dq.add(owner_key(
                            DEPLOYMENTS,
                            rs.metadata.namespace.as_ref(),
                            &o.name,
                        ));
                    }
                }
            })
            .build()
    };
    let deployments = {
        let dq = deploy_queue.clone();
        Informer::builder([DEPLOYMENTS], parse::<Deployment>)
            .on_change(move |c| dq.add(c.key))
            .build()
    };
    let daemon_sets = {
        let dq = ds_queue.clone();
        Informer::builder([DAEMON_SETS], parse::<DaemonSet>)
            .on_change(move |c| dq.add(c.key))
            .build()
    };
    let nodes = {
        let (dq, sets) = (ds_queue.clone(), daemon_sets.clone());
        Informer::builder([NODES], parse::<Node>)
            .on_change(move |_| {
                for key in sets.keys() {
                    dq.add(key);
                }
            })
            .build()
    };
    let jobs = {
        let (jq, cq) = (job_queue.clone(), cron_queue.clone());
        Informer::builder([JOBS], parse::<Job>)
            .index(BY_CONTROLLER, controller_uid(|j: &Job| &j.metadata))
            .on_change(move |c| {
                jq.add(c.key);
                if let Some(job) = c.new.or(c.old).map(|j| &j.object) {
                    if let Some(o) = controller_of(&job.metadata).filter(|o| o.kind == "CronJob") {
                        cq.add(owner_key(
                            CRON_JOBS,
                            job.metadata.namespace.as_ref(),
                            &o.name,
                        ));
                    }
                }
            })
            .build()
    };
    let cron_jobs = {
        let cq = cron_queue.clone();
        Informer::builder([CRON_JOBS], parse::<CronJob>)
            .on_change(move |c| cq.add(c.key))
            .build()
    };
    let caches = Caches {
        pods,
        replica_sets,
        deployments,
        daemon_sets,
        nodes,
        jobs,
        cron_jobs,
    };
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    let engine = &ctx.engine;
    caches
        .pods
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .replica_sets
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .deployments
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .daemon_sets
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .nodes
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .jobs
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    caches
        .cron_jobs
        .spawn(Arc::clone(engine), informers.clone(), "workloads");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async {
            tokio::join!(
                caches.pods.synced(),
                caches.replica_sets.synced(),
                caches.deployments.synced(),
                caches.daemon_sets.synced(),
                caches.nodes.synced(),
                caches.jobs.synced(),
                caches.cron_jobs.synced(),
            )
        } => {}
    }
    let recorder = |component| {
        Recorder::new(
            Arc::clone(&ctx.engine),
            Arc::clone(&ctx.proposer),
            component,
        )
    };
    macro_rules! workers {
        ($name:literal, $queue:expr, $n:expr, $component:literal, $reconcile:path) => {{
            let (ctx, caches, recorder) = (ctx.clone(), caches.clone(), recorder($component));
            run_workers($name, $queue, $n, stop.clone(), move |key| {
                let (ctx, caches, recorder) = (ctx.clone(), caches.clone(), recorder.clone());
                async move { $reconcile(&ctx, &caches, &recorder, &key).await }
            })
        }};
    }
    tokio::join!(
        workers!(
            "replicaset",
            rs_queue,
            4,
            "replicaset-controller",
            super::apps_sync::reconcile_replica_set
        ),
        workers!(
            "deployment",
            deploy_queue,
            2,
            "deployment-controller",
            super::apps_sync::reconcile_deployment
        ),
        workers!(
            "daemonset",
            ds_queue,
            2,
            "daemonset-controller",
            super::apps_sync::reconcile_daemon_set
        ),
        workers!(
            "job",
            job_queue,
            4,
            "job-controller",
            super::batch_sync::reconcile_job
        ),
        workers!(
            "cronjob",
            cron_queue,
            1,
            "cronjob-controller",
            super::batch_sync::reconcile_cron_job
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::deployment;
    use flotilla_api::kinds::{admit, FieldValidation};
    use flotilla_api::meta::rfc3339;
    use flotilla_store::{Engine, MemoryStore, Proposer};
    use flotilla_util::SystemClock;
    use serde_json::json;

    fn ctx(store: &Arc<MemoryStore>) -> Context {
        Context {
            engine: Arc::clone(store) as Arc<dyn flotilla_store::Engine>,
            proposer: Arc::clone(store) as Arc<dyn Proposer>,
            clock: Arc::new(SystemClock),
        }
    }

    fn list(store: &MemoryStore, prefix: &str) -> Vec<(String, Revision, Value)> {
        store
            .list(prefix, None, 0)
            .unwrap()
            .items
            .into_iter()
            .map(|(k, r)| (k, r.mod_revision, serde_json::from_slice(&r.value).unwrap()))
            .collect()
    }

    /// Stands in for the scheduler and the agents: pods become Running and Ready, and pods
    /// being deleted go.
    async fn kubelets(store: Arc<MemoryStore>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            for (key, revision, mut pod) in list(&store, PODS) {
                let command = if !pod["metadata"]["deletionTimestamp"].is_null() {
                    Command::delete(&key, Some(revision))
                } else if pod["status"]["phase"] != "Running" {
                    pod["spec"]["nodeName"] = json!("n1");
                    pod["status"] = json!({"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(std::time::SystemTime::now())}]});
                    Command::update(&key, pod.to_string(), Some(revision))
                } else {
                    continue;
                };
                let _ = store.propose(command).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..1000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_deployment_runs_its_pods_and_rolls_to_a_new_template() {
        let store = Arc::new(MemoryStore::new(100_000));
        let deployments = flotilla_api::find("apps", "v1", "deployments").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "busybox:1"}]}}}});
        let d = admit(deployments, d, None, FieldValidation::Strict)
            .unwrap()
            .object;
        let key = "/apps/deployments/default/web";
        store
            .propose(Command::create(key, d.to_string()))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_workloads(ctx(&store), stop.clone()));
        tokio::spawn(kubelets(Arc::clone(&store), stop.clone()));
        let status = |field: &str| {
            list(&store, key)[0].2["status"][field]
                .as_i64()
                .unwrap_or(-1)
        };
        until("4 available", || status("availableReplicas") == 4).await;
        let pods = list(&store, PODS);
        assert_eq!(pods.len(), 4);
        let rs = list(&store, REPLICA_SETS);
        assert_eq!(rs.len(), 1);
        let rs_name = rs[0].2["metadata"]["name"].as_str().unwrap().to_string();
        assert!(pods
            .iter()
            .all(|(_, _, p)| p["metadata"]["ownerReferences"][0]["name"] == rs_name.as_str()));
        assert!(
            pods.iter()
                .all(|(_, _, p)| p["spec"]["restartPolicy"] == "Always"),
            "pods are admitted with defaults"
        );
        // A new template rolls.
        let (_, revision, mut d) = list(&store, key).remove(0);
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        d["metadata"]["generation"] = json!(2);
        store
            .propose(Command::update(key, d.to_string(), Some(revision)))
            .await
            .unwrap();
        until("the rollout", || {
            let d = &list(&store, key)[0].2;
            d["status"]["updatedReplicas"] == 4
                && d["status"]["replicas"] == 4
                && d["status"]["availableReplicas"] == 4
                && d["status"]["observedGeneration"] == 2
        })
        .await;
        let d = &list(&store, key)[0].2;
        assert_eq!(d["metadata"]["annotations"][deployment::REVISION], "2");
        until("the old pods gone", || list(&store, PODS).len() == 4).await;
        let images: Vec<String> = list(&store, PODS)
            .iter()
            .map(|(_, _, p)| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(images, ["busybox:2"; 4]);
        let events: Vec<String> = list(&store, "/core/events/")
            .iter()
            .map(|(_, _, e)| e["reason"].as_str().unwrap().to_string())
            .collect();
        for reason in ["ScalingReplicaSet", "SuccessfulCreate", "SuccessfulDelete"] {
            assert!(
                events.iter().any(|e| e == reason),
                "no {reason} in {events:?}"
            );
        }
        stop.cancel();
        task.await.unwrap();
    }
}
