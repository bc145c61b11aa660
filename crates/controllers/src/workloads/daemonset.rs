//! The DaemonSet controller's planner. A DaemonSet runs one pod on every node its template
//! may run on (node selector and affinity, taints against its tolerations), nodes that join
//! later included. As in Kubernetes, each pod names its node with required node affinity
//! (`metadata.name`) and tolerates the node conditions a daemon must survive; the scheduler
//! then binds it like any pod. A new template replaces pods node by node, at most
//! `maxUnavailable` at a time (`RollingUpdate`), or only as they are deleted (`OnDelete`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_scheduler::filters::{node_affinity, untolerated};
use flotilla_scheduler::{tolerates, NodeState, PodFacts};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{availability, is_active, ready_since};

/// The label with the hash of the template a daemon pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to make a pod for.
    pub create: Vec<String>,
    /// Indexes (into the pods given) of pods to delete.
    pub delete: Vec<usize>,
    pub status: Option<DaemonSetStatus>,
    pub recheck: Option<Duration>,
}

/// The hash of a DaemonSet's current template.
pub fn template_hash(ds: &DaemonSet) -> String {
    super::deployment::template_hash(
        &ds.spec.template,
        ds.status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0),
    )
}

/// The tolerations Kubernetes gives every daemon pod (and `network-unavailable` for host
/// networking ones).
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut list = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        list.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    list.into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        })
        .collect()
}

/// The template of the daemon pod for `node`: its hash label, the daemon tolerations and
/// required affinity to that node alone.
pub fn pod_template(ds: &DaemonSet, node: &str) -> PodTemplateSpec {
    let mut t = ds.spec.template.clone();
    t.metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), template_hash(ds));
    let spec = t.spec.get_or_insert_with(Default::default);
    let host_network = spec.host_network == Some(true);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for extra in daemon_tolerations(host_network) {
        if !tolerations
            .iter()
            .any(|t| t.key == extra.key && t.effect == extra.effect)
        {
            tolerations.push(extra);
        }
    }
    let this_node = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm::default()],
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields = Some(vec![this_node.clone()]);
    }
    t
}

/// The node a daemon pod is for: where it is bound, else the node its affinity names.
pub fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Whether the DaemonSet's pods should be started on `node` (node selector and affinity, no
/// `NoSchedule` or `NoExecute` taint its pods do not tolerate) and whether those already there
/// may keep running (only an untolerated `NoExecute` taint, or the selector, sends them away),
/// as Kubernetes tells the two apart: a node that is not ready or newly tainted `NoSchedule`
/// keeps its daemon.
pub fn fit(ds: &DaemonSet, node: &NodeState) -> (bool, bool) {
    let probe = Pod {
        metadata: ds.spec.template.metadata.clone().unwrap_or_default(),
        spec: pod_template(ds, &node.name).spec,
        status: None,
    };
    let facts = PodFacts::of(&probe);
    if !node_affinity(&facts, node) {
        return (false, false);
    }
    let start = untolerated(&facts, node).is_none();
    let keep = !node.taints.iter().any(|taint| {
        taint.effect == "NoExecute" && !facts.tolerations.iter().any(|t| tolerates(t, taint))
    });
    (start, keep)
}

fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let rolling = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let n = match rolling.and_then(|r| r.max_unavailable.as_ref()) {
        Some(IntOrString::Int(n)) => (*n).max(0) as usize,
        Some(IntOrString::String(p)) => {
            let pct: f64 = p.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * desired as f64 / 100.0).ceil() as usize
        }
        None => 1,
    };
    n.max(1)
}

/// Plans one round for `ds` over `nodes`, given the pods it controls.
pub fn plan(ds: &DaemonSet, nodes: &[NodeState], pods: &[&Pod], now: SystemTime) -> Plan {
    let hash = template_hash(ds);
    let min_ready = Duration::from_secs(ds.spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let on_delete = ds
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    // Nodes whose daemon is still going away: its replacement waits (it may need the same
    // host port).
    let mut leaving: std::collections::BTreeSet<String> = Default::default();
    let mut plan = Plan::default();
    for (i, pod) in pods.iter().enumerate() {
        let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
        if failed && pod.metadata.deletion_timestamp.is_none() {
            // A failed daemon is replaced.
            plan.delete.push(i);
            leaving.extend(node_of(pod));
            continue;
        }
        if !is_active(pod) {
            if pod.metadata.deletion_timestamp.is_some() {
                leaving.extend(node_of(pod));
            }
            continue;
        }
        if let Some(n) = node_of(pod) {
            by_node.entry(n).or_default().push(i);
        }
    }
    let fits: BTreeMap<&str, (bool, bool)> = nodes
        .iter()
        .map(|n| (n.name.as_str(), fit(ds, n)))
        .collect();
    let wanted: Vec<&NodeState> = nodes
        .iter()
        .filter(|n| {
            let (start, keep) = fits[n.name.as_str()];
            start || (keep && by_node.contains_key(&n.name))
        })
        .collect();
    let is_current = |i: usize| {
        pods[i]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            == Some(&hash)
    };
    let available = |i: usize| availability(pods[i], min_ready, now).0;
    let (mut scheduled, mut ready, mut updated, mut available_count, mut misscheduled) =
        (0, 0, 0, 0, 0);
    let mut outdated = Vec::new();
    let mut unavailable = 0;
    for node in &wanted {
        let here = by_node.remove(&node.name).unwrap_or_default();
        if here.is_empty() {
            if !leaving.contains(&node.name) {
                plan.create.push(node.name.clone());
            }
            unavailable += 1;
            continue;
        }
        scheduled += 1;
        // Keep one: the current one if any, else the oldest.
        let keep = here
            .iter()
            .copied()
            .find(|i| is_current(*i))
            .unwrap_or(here[0]);
        plan.delete
            .extend(here.iter().copied().filter(|i| *i != keep));
        if ready_since(pods[keep]).is_some() {
            ready += 1;
        }
        if available(keep) {
            available_count += 1;
        } else {
            unavailable += 1;
        }
        if is_current(keep) {
            updated += 1;
        } else {
            outdated.push(keep);
        }
    }
    // Pods on nodes they no longer belong on go.
    for (_, here) in by_node {
        misscheduled += here.len() as i32;
        plan.delete.extend(here);
    }
    if !on_delete {
        // Outdated pods go while fewer than maxUnavailable are down; unavailable ones first.
        let budget = max_unavailable(ds, wanted.len()).saturating_sub(unavailable);
        outdated.sort_by_key(|i| available(*i));
        let (down, up): (Vec<usize>, Vec<usize>) =
            outdated.into_iter().partition(|i| !available(*i));
        plan.delete.extend(down);
        plan.delete.extend(up.into_iter().take(budget));
    }
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        current_number_scheduled: scheduled,
        desired_number_scheduled: wanted.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: ready,
        updated_number_scheduled: Some(updated),
        number_available: Some(available_count),
        number_unavailable: Some(wanted.len() as i32 - available_count),
        observed_generation: ds.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if status != old {
        plan.status = Some(status);
    }
    if !min_ready.is_zero() && available_count < ready {
        plan.recheck = Some(min_ready);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str, spec: serde_json::Value) -> NodeState {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        NodeState::of(&n)
    }

    fn ds(image: &str) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": image}]}}},
        }))
        .unwrap()
    }

    /// A running, ready pod of `set`'s template on `node`.
    fn daemon(set: &DaemonSet, node: &str) -> Pod {
        let t = pod_template(set, node);
        let mut pod = Pod {
            metadata: t.metadata.unwrap(),
            spec: t.spec,
            status: None,
        };
        pod.spec.as_mut().unwrap().node_name = Some(node.into());
        pod.status = serde_json::from_value(json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
        .unwrap();
        pod
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn one_pod_per_eligible_node_including_cordoned_and_new_ones() {
        let set = ds("busybox:1");
        let nodes = vec![
            node("n1", json!({})),
            node("n2", json!({"unschedulable": true})),
            node(
                "n3",
                json!({"taints": [{"key": "gpu", "effect": "NoSchedule"}]}),
            ),
        ];
        let p = plan(&set, &nodes, &[], now());
        assert_eq!(p.create, ["n1", "n2"]);
        assert_eq!(p.status.unwrap().desired_number_scheduled, 2);
        let on_n1 = daemon(&set, "n1");
        let p = plan(&set, &nodes, &[&on_n1], now());
        assert_eq!(p.create, ["n2"]);
        // A pod names its node through affinity, and tolerates what daemons tolerate.
        let t = pod_template(&set, "n9");
        let spec = t.spec.unwrap();
        let term = &spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_fields.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["n9"]
        );
        assert!(spec
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")));
    }

    #[test]
    fn a_new_template_replaces_pods_one_node_at_a_time() {
        let old = ds("busybox:1");
        let nodes = vec![
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
        ];
        let pods: Vec<Pod> = ["n1", "n2", "n3"].iter().map(|n| daemon(&old, n)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut new = ds("busybox:2");
        new.metadata.generation = Some(2);
        let p = plan(&new, &nodes, &refs, now());
        assert_eq!(p.delete.len(), 1, "maxUnavailable 1: {p:?}");
        assert!(p.create.is_empty());
        // Once that node's pod is gone, its replacement comes; nothing else goes meanwhile.
        let gone = p.delete[0];
        let rest: Vec<&Pod> = (0..3).filter(|i| *i != gone).map(|i| refs[i]).collect();
        let p2 = plan(&new, &nodes, &rest, now());
        assert_eq!(p2.create, [node_of(refs[gone]).unwrap()]);
        assert!(p2.delete.is_empty(), "{p2:?}");
    }

    #[test]
    fn a_daemon_survives_its_node_going_not_ready_or_tainted_no_schedule() {
        let set = ds("busybox:1");
        let on_n1 = daemon(&set, "n1");
        let mut down: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        }))
        .unwrap();
        let p = plan(&set, &[NodeState::of(&down)], &[&on_n1], now());
        assert!(p.delete.is_empty() && p.create.is_empty(), "{p:?}");
        // An untolerated NoExecute taint sends it away.
        down.spec.as_mut().unwrap().taints = Some(vec![serde_json::from_value(
            json!({"key": "evict", "effect": "NoExecute"}),
        )
        .unwrap()]);
        let p = plan(&set, &[NodeState::of(&down)], &[&on_n1], now());
        assert_eq!(p.delete, [0]);
    }

    #[test]
    fn pods_on_nodes_no_longer_eligible_go() {
        let mut set = ds("busybox:1");
        let on_n1 = daemon(&set, "n1");
        set.spec.template.spec.as_mut().unwrap().node_selector =
            Some([("role".to_string(), "edge".to_string())].into());
        let nodes = vec![node("n1", json!({}))];
        let p = plan(&set, &nodes, &[&on_n1], now());
        assert_eq!(p.delete, [0]);
        assert_eq!(p.status.unwrap().number_misscheduled, 1);
    }
}
