//! The scheduler's loop on the leader. Informers of pods and nodes feed one task that keeps
//! the placement cache ([`ClusterState`]): nodes, and every pod bound or being bound to them.
//! Each round it places the pending pods in priority order with the pure
//! [`flotilla_scheduler::schedule`], records each decision in the cache at once (the pod is
//! *assumed* there, so the next decision counts it even though its binding is not committed
//! yet), and commits the bindings in the background, each with its `Scheduled` event, many to
//! a Raft entry ([`crate::batch`]). A binding that fails gives the room back and the pod is
//! placed again. A pod no
//! node fits gets `PodScheduled=False` with Kubernetes' explanation and a `FailedScheduling`
//! event, and waits until a node or a pod changes (or [`RETRY_UNSCHEDULABLE`] passes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::meta::now_rfc3339;
use flotilla_scheduler::{preemption, schedule, ClusterState, NodeState, PodFacts};
use flotilla_store::{Command, Op, Record, StoreError};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::events::{event_object, Involved, Recorder};
use crate::informer::Informer;
use crate::workloads::delete_pod;
use crate::Context;

/// The scheduler pods name by default (`spec.schedulerName`); pods naming another are left to
/// it.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How long an unschedulable pod waits at most before it is tried again without any change.
pub const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);
/// How long a pod that preempted others waits for them before it may preempt again.
const PREEMPTION_PATIENCE: Duration = Duration::from_secs(60);
/// Bindings in flight at once.
const MAX_IN_FLIGHT: usize = 512;

const PODS_PREFIX: &str = "/core/pods/";
const NODES_PREFIX: &str = "/core/nodes/";

enum Msg {
    Pod(String, Option<Arc<Pod>>),
    Node(String, Option<Arc<Node>>),
    /// A binding's outcome: the pod's store key, and whether it was committed.
    Bound(String, bool),
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<Arc<T>> {
    serde_json::from_slice(&record.value).ok().map(Arc::new)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether this scheduler should place the pod.
fn wants_placement(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
        && spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
}

/// Sets `PodScheduled` on a pod's JSON; whether it changed.
fn set_scheduled(object: &mut Value, status: &str, reason: Option<&str>, message: &str) -> bool {
    let conditions = &mut object["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("an array");
    let mut condition = json!({
        "type": "PodScheduled",
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": now_rfc3339(),
    });
    if let Some(r) = reason {
        condition["reason"] = json!(r);
        condition["message"] = json!(message);
    }
    match list.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(old)
            if old["status"] == status
                && old["reason"] == condition["reason"]
                && old["message"] == condition["message"] =>
        {
            false
        }
        Some(old) => {
            if old["status"] == status {
                condition["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = condition;
            true
        }
        None => {
            list.push(condition);
            true
        }
    }
}

/// The write that binds the pod at `key` (if it is still the pod `uid` and unbound) to `node`,
/// with its `Scheduled` event; `None` when it is bound there already.
fn bind_command(
    ctx: &Context,
    key: &str,
    uid: &str,
    node: &str,
) -> Result<Option<Command>, StoreError> {
    let Some(record) = ctx.engine.get(key)?.1 else {
        return Err(StoreError::NotFound { key: key.into() });
    };
    let mut object: Value = serde_json::from_slice(&record.value).map_err(StoreError::storage)?;
    if object["metadata"]["uid"] != uid {
        return Err(StoreError::NotFound { key: key.into() });
    }
    match object["spec"]["nodeName"].as_str() {
        Some(n) if n == node => return Ok(None),
        Some(n) if !n.is_empty() => {
            return Err(StoreError::Conflict {
                key: key.into(),
                expected: record.mod_revision,
                current: record.mod_revision,
            })
        }
        _ => {}
    }
    object["spec"]["nodeName"] = json!(node);
    set_scheduled(&mut object, "True", None, "");
    let involved = Involved::of(&json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": object["metadata"].clone()}));
    let message = format!(
        "Successfully assigned {}/{} to {node}",
        involved.namespace, involved.name
    );
    let (event_key, event) = event_object(
        &involved,
        None,
        "Normal",
        "Scheduled",
        &message,
        SCHEDULER_NAME,
        None,
    );
    Ok(Some(Command::batch(vec![
        Op::Update {
            key: key.into(),
            value: object.to_string().into_bytes(),
            expected: Some(record.mod_revision),
        },
        Op::Create {
            key: event_key,
            value: event.to_string().into_bytes(),
        },
    ])))
}

/// Commits `bindings` (pod key, uid, node) in batches; whether each one was.
async fn bind_all(ctx: &Context, bindings: &[(String, String, String)]) -> Vec<bool> {
    let mut bound = vec![false; bindings.len()];
    let mut commands = Vec::new();
    let mut committed = Vec::new();
    for (i, (key, uid, node)) in bindings.iter().enumerate() {
        match bind_command(ctx, key, uid, node) {
            Ok(Some(command)) => {
                commands.push(command);
                committed.push(i);
            }
            Ok(None) => bound[i] = true,
            Err(e) => tracing::debug!(%key, %node, error = %e, "cannot bind; placing again"),
        }
    }
    let answers = crate::batch::propose_all(ctx.proposer.as_ref(), commands).await;
    for (i, answer) in committed.into_iter().zip(answers) {
        match answer {
            Ok(_) => bound[i] = true,
            Err(e) => {
                let (key, _, node) = &bindings[i];
                tracing::debug!(%key, %node, error = %e, "binding failed; placing again");
            }
        }
    }
    bound
}

/// Writes `PodScheduled=False` with `message` onto the pod (if it is still unbound and says
/// otherwise) and the `FailedScheduling` event.
async fn report_unschedulable(ctx: &Context, recorder: &Recorder, key: &str, message: &str) {
    for _ in 0..3 {
        let Ok((_, Some(record))) = ctx.engine.get(key) else {
            return;
        };
        let Ok(mut object) = serde_json::from_slice::<Value>(&record.value) else {
            return;
        };
        if object["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return;
        }
        if !set_scheduled(&mut object, "False", Some("Unschedulable"), message) {
            return;
        }
        object["status"]["phase"] = json!("Pending");
        let command = Command::update(key, object.to_string(), Some(record.mod_revision));
        match ctx.proposer.propose(command).await {
            Ok(_) => {
                let involved = Involved::of(&json!({
                    "apiVersion": "v1", "kind": "Pod", "metadata": object["metadata"].clone()}));
                recorder
                    .warning(&involved, "FailedScheduling", message)
                    .await;
                return;
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::debug!(%key, error = %e, "cannot report an unschedulable pod");
                return;
            }
        }
    }
}

/// Evicts `victims` (gracefully, as Kubernetes' preemption deletes them) so that the pod at
/// `key` fits on `node`, and records the node in its `status.nominatedNodeName`.
async fn preempt(
    ctx: &Context,
    recorder: &Recorder,
    key: &str,
    uid: &str,
    node: &str,
    victims: &[Arc<PodFacts>],
) {
    let now = ctx.clock.now();
    for v in victims {
        let victim_key = format!("{PODS_PREFIX}{}/{}", v.namespace, v.name);
        let Ok((_, Some(record))) = ctx.engine.get(&victim_key) else {
            continue;
        };
        let Ok(object) = serde_json::from_slice::<Value>(&record.value) else {
            continue;
        };
        let Some(command) = delete_pod(&victim_key, &object, record.mod_revision, now) else {
            continue;
        };
        if ctx.proposer.propose(command).await.is_ok() {
            let who = Involved::of(&json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": object["metadata"].clone()}));
            recorder
                .normal(
                    &who,
                    "Preempted",
                    &format!("Preempted by pod {uid} on node {node}"),
                )
                .await;
        }
    }
    for _ in 0..3 {
        let Ok((_, Some(record))) = ctx.engine.get(key) else {
            return;
        };
        let Ok(mut object) = serde_json::from_slice::<Value>(&record.value) else {
            return;
        };
        if object["status"]["nominatedNodeName"] == node {
            return;
        }
        object["status"]["nominatedNodeName"] = json!(node);
        let command = Command::update(key, object.to_string(), Some(record.mod_revision));
        match ctx.proposer.propose(command).await {
            Err(StoreError::Conflict { .. }) => continue,
            _ => return,
        }
    }
}

/// The loop's state between rounds.
#[derive(Default)]
struct State {
    cluster: ClusterState,
    /// Pods to place: store key → (priority, arrival order).
    pending: HashMap<String, (i32, u64)>,
    /// Pods no node fits, with their priority; tried again on a change.
    unschedulable: HashMap<String, i32>,
    /// Pods whose binding is in flight.
    assumed: HashSet<String>,
    /// Pods that evicted others to make room, with when: they do not preempt again for
    /// [`PREEMPTION_PATIENCE`] while their victims terminate.
    preempting: HashMap<String, std::time::Instant>,
    arrivals: u64,
    start: usize,
}

impl State {
    fn on_pod(&mut self, key: String, pod: Option<Arc<Pod>>) {
        let Some(pod) = pod else {
            self.pending.remove(&key);
            self.unschedulable.remove(&key);
            self.preempting.remove(&key);
            if let Some(k) = key.strip_prefix(PODS_PREFIX) {
                self.cluster.unplace(k);
            }
            // Its room is free: the waiting pods may fit now.
            self.retry_unschedulable();
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        match node {
            Some(node) => {
                self.pending.remove(&key);
                self.unschedulable.remove(&key);
                self.preempting.remove(&key);
                let facts = PodFacts::of(&pod);
                if is_terminal(&pod) {
                    if self.cluster.node_of(&facts.key()).is_some() {
                        self.cluster.unplace(&facts.key());
                        self.retry_unschedulable();
                    }
                    return;
                }
                let same = self
                    .cluster
                    .node(&node)
                    .and_then(|n| n.pods.get(&facts.key()))
                    .is_some_and(|p| p.uid == facts.uid && p.labels == facts.labels);
                if !same {
                    self.cluster.place(&node, Arc::new(facts));
                }
            }
            None if self.assumed.contains(&key) || self.unschedulable.contains_key(&key) => {}
            None if wants_placement(&pod) => {
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                if !self.pending.contains_key(&key) {
                    self.arrivals += 1;
                    self.pending.insert(key, (priority, self.arrivals));
                }
            }
            None => {
                self.pending.remove(&key);
                self.unschedulable.remove(&key);
            }
        }
    }

    fn on_node(&mut self, name: &str, node: Option<Arc<Node>>) {
        match node {
            Some(node) => self.cluster.upsert_node(NodeState::of(&node)),
            None => self.cluster.remove_node(name),
        }
        self.retry_unschedulable();
    }

    fn retry_unschedulable(&mut self) {
        for (key, priority) in std::mem::take(&mut self.unschedulable) {
            self.arrivals += 1;
            self.pending.insert(key, (priority, self.arrivals));
        }
    }

    /// The pending pods in the order they are placed: higher priority first, then oldest.
    fn take_pending(&mut self) -> Vec<String> {
        let mut keys: Vec<(String, (i32, u64))> = self.pending.drain().collect();
        keys.sort_by_key(|(_, (priority, arrival))| (-priority, *arrival));
        keys.into_iter().map(|(k, _)| k).collect()
    }
}

/// Commits `bindings` in the background (at most [`MAX_IN_FLIGHT`] at once); each outcome comes
/// back as a [`Msg::Bound`].
async fn commit(
    ctx: &Context,
    tx: &mpsc::UnboundedSender<Msg>,
    in_flight: &Arc<Semaphore>,
    bindings: Vec<(String, String, String)>,
) {
    if bindings.is_empty() {
        return;
    }
    let permits = Arc::clone(in_flight)
        .acquire_many_owned(bindings.len() as u32)
        .await
        .expect("never closed");
    let (ctx, tx) = (ctx.clone(), tx.clone());
    tokio::spawn(async move {
        let bound = bind_all(&ctx, &bindings).await;
        drop(permits);
        for ((key, _, _), ok) in bindings.into_iter().zip(bound) {
            let _ = tx.send(Msg::Bound(key, ok));
        }
    });
}

/// Runs the scheduler until `stop`.
pub async fn run_scheduler(ctx: Context, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pods = {
        let tx = tx.clone();
        Informer::builder([PODS_PREFIX], crate::informer::parse_pod)
            .on_change(move |c| {
                let _ = tx.send(Msg::Pod(
                    c.key.to_string(),
                    c.new.map(|n| Arc::clone(&n.object)),
                ));
            })
            .build()
    };
    let nodes = {
        let tx = tx.clone();
        Informer::builder([NODES_PREFIX], parse::<Node>)
            .on_change(move |c| {
                let name = c.key.strip_prefix(NODES_PREFIX).unwrap_or(c.key);
                let _ = tx.send(Msg::Node(
                    name.to_string(),
                    c.new.map(|n| Arc::clone(&n.object)),
                ));
            })
            .build()
    };
    let informers = stop.child_token();
    pods.spawn(Arc::clone(&ctx.engine), informers.clone(), "scheduler");
    nodes.spawn(Arc::clone(&ctx.engine), informers.clone(), "scheduler");
    let _stop_informers = informers.drop_guard();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(pods.synced(), nodes.synced()) } => {}
    }
    let recorder = Recorder::new(
        Arc::clone(&ctx.engine),
        Arc::clone(&ctx.proposer),
        SCHEDULER_NAME,
    );
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut state = State::default();
    let mut backstop = tokio::time::interval(RETRY_UNSCHEDULABLE);
    backstop.tick().await;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            _ = backstop.tick() => None,
            m = rx.recv() => match m { Some(m) => Some(m), None => return },
        };
        if first.is_none() {
            state.retry_unschedulable();
        }
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                Msg::Pod(key, pod) => state.on_pod(key, pod),
                Msg::Node(name, node) => state.on_node(&name, node),
                Msg::Bound(key, ok) => {
                    state.assumed.remove(&key);
                    if !ok {
                        if let Some(k) = key.strip_prefix(PODS_PREFIX) {
                            state.cluster.unplace(k);
                        }
                        let current = pods.get(&key).map(|c| Arc::clone(&c.object));
                        state.on_pod(key, current);
                    }
                }
            }
        }
        let mut messages: BTreeMap<String, String> = BTreeMap::new();
        let mut preemptions = Vec::new();
        let mut bindings = Vec::new();
        for key in state.take_pending() {
            let Some(pod) = pods.get(&key).map(|c| Arc::clone(&c.object)) else {
                continue;
            };
            if !wants_placement(&pod) {
                continue;
            }
            let facts = PodFacts::of(&pod);
            let decision = schedule(&facts, &state.cluster, state.start);
            state.start = state.start.wrapping_add(decision.evaluated.max(1));
            let Some(node) = decision.node else {
                state.unschedulable.insert(key.clone(), facts.priority);
                let patient = state
                    .preempting
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < PREEMPTION_PATIENCE);
                if !patient {
                    if let Some((node, victims)) = preemption(&facts, &state.cluster) {
                        state
                            .preempting
                            .insert(key.clone(), std::time::Instant::now());
                        preemptions.push((key.clone(), facts.uid.clone(), node, victims));
                    }
                }
                messages.insert(key, decision.message);
                continue;
            };
            let uid = facts.uid.clone();
            state.cluster.place(&node, Arc::new(facts));
            state.assumed.insert(key.clone());
            bindings.push((key, uid, node));
            if bindings.len() >= crate::batch::MAX_OPS / 2 {
                commit(&ctx, &tx, &in_flight, std::mem::take(&mut bindings)).await;
            }
        }
        commit(&ctx, &tx, &in_flight, bindings).await;
        for (key, message) in messages {
            let (ctx, recorder) = (ctx.clone(), recorder.clone());
            tokio::spawn(async move {
                report_unschedulable(&ctx, &recorder, &key, &message).await;
            });
        }
        for (key, uid, node, victims) in preemptions {
            let (ctx, recorder) = (ctx.clone(), recorder.clone());
            tokio::spawn(async move {
                preempt(&ctx, &recorder, &key, &uid, &node, &victims).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{Engine, MemoryStore, Proposer};
    use flotilla_util::SystemClock;

    fn ctx(store: &Arc<MemoryStore>) -> Context {
        Context {
            engine: Arc::clone(store) as Arc<dyn Engine>,
            proposer: Arc::clone(store) as Arc<dyn Proposer>,
            clock: Arc::new(SystemClock),
        }
    }

    async fn create(store: &MemoryStore, key: &str, object: Value) {
        store
            .propose(Command::create(key, object.to_string()))
            .await
            .unwrap();
    }

    fn node(name: &str, cpu: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(name: &str, cpu: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": "Pending"}})
    }

    fn get(store: &MemoryStore, key: &str) -> Value {
        serde_json::from_slice(&store.get(key).unwrap().1.unwrap().value).unwrap()
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn binds_pending_pods_and_explains_the_rest_until_room_appears() {
        let store = Arc::new(MemoryStore::new(10_000));
        create(&store, "/core/nodes/n1", node("n1", "2")).await;
        create(&store, "/core/nodes/n2", node("n2", "2")).await;
        for i in 0..4 {
            create(
                &store,
                &format!("/core/pods/default/p{i}"),
                pod(&format!("p{i}"), "1"),
            )
            .await;
        }
        create(&store, "/core/pods/default/big", pod("big", "3")).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_scheduler(ctx(&store), stop.clone()));
        let node_of = |name: &str| {
            get(&store, &format!("/core/pods/default/{name}"))["spec"]["nodeName"]
                .as_str()
                .map(str::to_string)
        };
        until("four bound pods", || {
            (0..4).all(|i| node_of(&format!("p{i}")).is_some())
        })
        .await;
        let mut per_node = BTreeMap::new();
        for i in 0..4 {
            *per_node
                .entry(node_of(&format!("p{i}")).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [2, 2]);
        let p0 = get(&store, "/core/pods/default/p0");
        assert_eq!(p0["status"]["conditions"][0]["type"], "PodScheduled");
        assert_eq!(p0["status"]["conditions"][0]["status"], "True");
        until("the big pod's condition", || {
            get(&store, "/core/pods/default/big")["status"]["conditions"][0]["message"]
                == "0/2 nodes are available: 2 Insufficient cpu."
        })
        .await;
        let events = store.list("/core/events/default/", None, 0).unwrap().items;
        let reasons: Vec<String> = events
            .iter()
            .map(|(_, r)| {
                let e: Value = serde_json::from_slice(&r.value).unwrap();
                format!(
                    "{} {}",
                    e["reason"].as_str().unwrap(),
                    e["involvedObject"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert!(
            reasons.contains(&"FailedScheduling big".to_string()),
            "{reasons:?}"
        );
        assert!(reasons.contains(&"Scheduled p0".to_string()), "{reasons:?}");
        // A bigger node arrives: the waiting pod goes there.
        create(&store, "/core/nodes/n3", node("n3", "4")).await;
        until("the big pod bound", || {
            node_of("big").as_deref() == Some("n3")
        })
        .await;
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn pods_of_other_schedulers_and_bound_pods_are_left_alone() {
        let store = Arc::new(MemoryStore::new(10_000));
        create(&store, "/core/nodes/n1", node("n1", "2")).await;
        let mut other = pod("other", "1");
        other["spec"]["schedulerName"] = json!("my-scheduler");
        create(&store, "/core/pods/default/other", other).await;
        let mut bound = pod("bound", "1500m");
        bound["spec"]["nodeName"] = json!("n1");
        create(&store, "/core/pods/default/bound", bound).await;
        create(&store, "/core/pods/default/next", pod("next", "1")).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_scheduler(ctx(&store), stop.clone()));
        // The bound pod's request counts: the next pod does not fit beside it.
        until("next explained", || {
            get(&store, "/core/pods/default/next")["status"]["conditions"][0]["message"]
                == "0/1 nodes are available: 1 Insufficient cpu."
        })
        .await;
        assert!(get(&store, "/core/pods/default/other")["spec"]["nodeName"].is_null());
        // Deleting the bound pod frees its room.
        store
            .propose(Command::delete("/core/pods/default/bound", None))
            .await
            .unwrap();
        until("next bound", || {
            get(&store, "/core/pods/default/next")["spec"]["nodeName"] == "n1"
        })
        .await;
        assert!(get(&store, "/core/pods/default/other")["spec"]["nodeName"].is_null());
        stop.cancel();
        task.await.unwrap();
    }
}
