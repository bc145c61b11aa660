//! `NoExecute` taints on the leader: a pod on a node with such a taint it does not tolerate is
//! evicted at once; one that tolerates it for `tolerationSeconds` is evicted when that has run
//! out since the taint was added; a taint removed before then evicts nothing. With the
//! default toleration of an unreachable node (1 s, see `set_default_toleration_seconds`) the
//! pods of a dead node are replaced within seconds of gossip declaring it down. A node that
//! gossip reports alive again evicts nothing more, even before the node lifecycle has removed
//! its taint: a short cut restarts nothing. The pods of a node gossip reports down are marked
//! not `Ready` at once, as Kubernetes' node lifecycle marks them, so that they leave services'
//! endpoints while they wait for their eviction (or for good, if they tolerate the taint); the
//! node's agent reports them `Ready` again when it is back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_api::meta::rfc3339;
use flotilla_scheduler::tolerates;
use flotilla_store::{Command, Record, StoreError};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::{Involved, Recorder};
use crate::informer::Informer;
use crate::nodes::{ClusterMembers, UNREACHABLE_TAINT};
use crate::queue::{run_workers, Next, WorkQueue};
use crate::workloads::{delete_pod, ready_since};
use crate::Context;

const NODES: &str = "/core/nodes/";
const PODS: &str = "/core/pods/";
const BY_NODE: &str = "node";

/// When a pod with `tolerations` is to be evicted from a node with `taints` (only `NoExecute`
/// ones count): `None` never, else the time.
/// A taint without `timeAdded` counts from when this leader first saw it (`first_seen`).
pub fn eviction_due(
    tolerations: &[Toleration],
    taints: &[Taint],
    first_seen: impl Fn(&Taint) -> SystemTime,
    now: SystemTime,
) -> Option<SystemTime> {
    let mut due: Option<SystemTime> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let at = if matching.is_empty() {
            Some(now)
        } else if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            None
        } else {
            let seconds = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0) as u64;
            let added = taint
                .time_added
                .as_ref()
                .map_or_else(|| first_seen(taint), |t| SystemTime::from(t.0));
            Some(added + Duration::from_secs(seconds))
        };
        if let Some(at) = at {
            due = Some(due.map_or(at, |d| d.min(at)));
        }
    }
    due
}

/// The pod (as stored) with its `Ready` condition turned `False` at `now`, if it was `True`;
/// the other conditions stay as its agent last wrote them, as in Kubernetes.
pub fn not_ready(pod: &Value, now: &str) -> Option<Value> {
    let at = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .position(|c| c["type"] == "Ready" && c["status"] == "True")?;
    let mut updated = pod.clone();
    let condition = &mut updated["status"]["conditions"][at];
    condition["status"] = json!("False");
    condition["lastTransitionTime"] = json!(now);
    Some(updated)
}

/// Marks the `Ready` pods of the node `name`, which gossip reports down, not `Ready`.
async fn mark_not_ready(
    ctx: &Context,
    pods: &Informer<Arc<Pod>>,
    recorder: &Recorder,
    name: &str,
) -> Result<(), StoreError> {
    let now = rfc3339(ctx.clock.now());
    for pod in pods.by_index(BY_NODE, name) {
        if pod.object.metadata.deletion_timestamp.is_some() || ready_since(&pod.object).is_none() {
            continue;
        }
        let Ok((_, Some(record))) = ctx.engine.get(&pod.key) else {
            continue;
        };
        if record.mod_revision != pod.revision {
            continue;
        }
        let Some(updated) = serde_json::from_slice::<Value>(&record.value)
            .ok()
            .and_then(|object| not_ready(&object, &now))
        else {
            continue;
        };
        let command = Command::update(&pod.key, updated.to_string(), Some(pod.revision));
        match ctx.proposer.propose(command).await {
            Ok(_) => {
                recorder
                    .warning(
                        &Involved::from_meta("v1", "Pod", &pod.object.metadata),
                        "NodeNotReady",
                        "Node is not ready",
                    )
                    .await;
                tracing::info!(pod = %pod.key, node = name, "not ready: its node is down");
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<T> {
    serde_json::from_slice(&record.value).ok()
}

/// When this leader first saw each taint without `timeAdded`: (node, key, effect) → time.
type FirstSeen = Mutex<HashMap<(String, String, String), SystemTime>>;

async fn reconcile(
    ctx: &Context,
    nodes: &Informer<Node>,
    pods: &Informer<Arc<Pod>>,
    members: &ClusterMembers,
    seen: &FirstSeen,
    recorder: &Recorder,
    name: &str,
) -> Result<Next, StoreError> {
    let Some(node) = nodes.get(&format!("{NODES}{name}")) else {
        return Ok(Next::Done);
    };
    // Gossip has it alive again: its unreachable taint is about to go.
    let back = !members.down.contains(name);
    if !back {
        mark_not_ready(ctx, pods, recorder, name).await?;
    }
    let taints: Vec<Taint> = node
        .object
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute" && !(back && t.key == UNREACHABLE_TAINT))
        .collect();
    let now = ctx.clock.now();
    let first_seen = {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(n, k, e), _| {
            n != name || taints.iter().any(|t| t.key == *k && t.effect == *e)
        });
        for t in taints.iter().filter(|t| t.time_added.is_none()) {
            seen.entry((name.to_string(), t.key.clone(), t.effect.clone()))
                .or_insert(now);
        }
        seen.clone()
    };
    if taints.is_empty() {
        return Ok(Next::Done);
    }
    let since = |t: &Taint| {
        first_seen
            .get(&(name.to_string(), t.key.clone(), t.effect.clone()))
            .copied()
            .unwrap_or(now)
    };
    let mut next: Option<Duration> = None;
    for pod in pods.by_index(BY_NODE, name) {
        let finished = matches!(
            pod.object.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if pod.object.metadata.deletion_timestamp.is_some() || finished {
            continue;
        }
        let tolerations = pod
            .object
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let Some(due) = eviction_due(&tolerations, &taints, since, now) else {
            continue;
        };
        if let Ok(left) = due.duration_since(now) {
            if !left.is_zero() {
                next = Some(next.map_or(left, |n| n.min(left)));
                continue;
            }
        }
        let Ok((_, Some(record))) = ctx.engine.get(&pod.key) else {
            continue;
        };
        if record.mod_revision != pod.revision {
            // Changed meanwhile: its change brings this node back.
            continue;
        }
        let Ok(object) = serde_json::from_slice(&record.value) else {
            continue;
        };
        if let Some(command) = delete_pod(&pod.key, &object, pod.revision, now) {
            match ctx.proposer.propose(command).await {
                Ok(_) => {
                    let who = Involved::from_meta("v1", "Pod", &pod.object.metadata);
                    let message =
                        format!("Marking for deletion Pod {}/{}", who.namespace, who.name);
                    recorder
                        .normal(&who, "TaintManagerEviction", &message)
                        .await;
                    tracing::info!(pod = %pod.key, node = name, "evicted from a NoExecute taint");
                }
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(next.map_or(Next::Done, Next::After))
}

/// Runs the eviction of pods from `NoExecute`-tainted nodes until `stop`; `members` is the
/// membership as gossip sees it.
pub async fn run_taint_eviction(
    ctx: Context,
    members: watch::Receiver<ClusterMembers>,
    stop: CancellationToken,
) {
    let queue = WorkQueue::default();
    let nodes = {
        let q = queue.clone();
        Informer::builder([NODES], parse::<Node>)
            .on_change(move |c| q.add(c.key.strip_prefix(NODES).unwrap_or(c.key)))
            .build()
    };
    let pods = {
        let (q, nodes) = (queue.clone(), nodes.clone());
        Informer::builder([PODS], crate::informer::parse_pod)
            .index(BY_NODE, |c| {
                c.object
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty())
                    .into_iter()
                    .collect()
            })
            .on_change(move |c| {
                // A pod placed on a tainted node is looked at with that node.
                let node = c
                    .new
                    .and_then(|p| p.object.spec.as_ref()?.node_name.clone())
                    .filter(|n| !n.is_empty());
                if let Some(n) = node {
                    let tainted = nodes.get(&format!("{NODES}{n}")).is_some_and(|node| {
                        node.object
                            .spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|t| t.iter().any(|t| t.effect == "NoExecute"))
                    });
                    if tainted {
                        q.add(n);
                    }
                }
            })
            .build()
    };
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    nodes.spawn(Arc::clone(&ctx.engine), informers.clone(), "taint-eviction");
    pods.spawn(Arc::clone(&ctx.engine), informers.clone(), "taint-eviction");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(nodes.synced(), pods.synced()) } => {}
    }
    let recorder = Recorder::new(
        Arc::clone(&ctx.engine),
        Arc::clone(&ctx.proposer),
        "taint-eviction-controller",
    );
    let seen: Arc<FirstSeen> = Arc::default();
    // A change of membership looks at every node again.
    let membership = tokio::spawn({
        let (queue, nodes, mut members, stop) =
            (queue.clone(), nodes.clone(), members.clone(), stop.clone());
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = members.changed() => if changed.is_err() { return },
                }
                for key in nodes.keys() {
                    queue.add(key.strip_prefix(NODES).unwrap_or(&key).to_string());
                }
            }
        }
    });
    run_workers("taint-eviction", queue, 2, stop, move |name| {
        let (ctx, nodes, pods, recorder) =
            (ctx.clone(), nodes.clone(), pods.clone(), recorder.clone());
        let current = members.borrow().clone();
        let seen = Arc::clone(&seen);
        async move { reconcile(&ctx, &nodes, &pods, &current, &seen, &recorder, &name).await }
    })
    .await;
    membership.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn taint(added: &str) -> Taint {
        serde_json::from_value(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": added})).unwrap()
    }

    fn tolerations(v: serde_json::Value) -> Vec<Toleration> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_ready_pod_is_marked_not_ready_and_nothing_else_changes() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": [
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2027-01-15T07:00:00Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2027-01-15T07:00:00Z"}]}});
        let marked = not_ready(&pod, "2027-01-15T08:00:00Z").unwrap();
        assert_eq!(
            marked["status"]["conditions"][1],
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "2027-01-15T08:00:00Z"})
        );
        assert_eq!(
            marked["status"]["conditions"][0],
            pod["status"]["conditions"][0]
        );
        assert_eq!(marked["status"]["phase"], "Running");
        // Already not ready, or no conditions at all: nothing to write.
        assert_eq!(not_ready(&marked, "2027-01-15T09:00:00Z"), None);
        assert_eq!(
            not_ready(&json!({"metadata": {"name": "p"}}), "2027-01-15T09:00:00Z"),
            None
        );
    }

    #[test]
    fn eviction_waits_for_the_toleration() {
        let added = "2027-01-15T08:00:00Z";
        let t0 = 1_800_000_000;
        let taints = [taint(added)];
        // No toleration: at once.
        assert_eq!(
            eviction_due(&[], &taints, |_| at(t0), at(t0 + 5)),
            Some(at(t0 + 5))
        );
        // The default: one second after the taint.
        let one = tolerations(
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 1}]),
        );
        assert_eq!(
            eviction_due(&one, &taints, |_| at(t0), at(t0)),
            Some(at(t0 + 1))
        );
        // Forever.
        let forever = tolerations(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_due(&forever, &taints, |_| at(t0), at(t0)), None);
        // A taint without timeAdded counts from when it was first seen.
        let bare: Taint =
            serde_json::from_value(json!({"key": "k", "effect": "NoExecute"})).unwrap();
        let k60 = tolerations(json!([{"key": "k", "operator": "Exists", "tolerationSeconds": 60}]));
        assert_eq!(
            eviction_due(&k60, &[bare], |_| at(t0), at(t0 + 30)),
            Some(at(t0 + 60))
        );
        // NoSchedule taints never evict.
        let soft: Taint =
            serde_json::from_value(json!({"key": "k", "effect": "NoSchedule"})).unwrap();
        assert_eq!(eviction_due(&[], &[soft], |_| at(t0), at(t0)), None);
    }
}
