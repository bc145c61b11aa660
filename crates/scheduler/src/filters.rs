//! Filters: can this pod run on this node? Each says why not in Kubernetes' words, which the
//! explanation counts over nodes (`2 Insufficient cpu`).

use std::collections::{BTreeMap, HashMap};

use flotilla_api::kinds::selector_matches;
use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodAffinityTerm, Taint, Toleration,
};

use crate::model::{ClusterState, NodeState, PodFacts};

pub const UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const TOO_MANY_PODS: &str = "Too many pods";
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (number(value), number(values.first().map(String::as_str))) {
            (Some(have), Some(bound)) => {
                if r.operator == "Gt" {
                    have > bound
                } else {
                    have < bound
                }
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether a node selector term selects the node: every expression and field holds. A term
/// with neither selects nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeState) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node.name.as_str())))
}

fn selector_selects(selector: &NodeSelector, node: &NodeState) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// `nodeSelector` and required node affinity.
pub fn node_affinity(pod: &PodFacts, node: &NodeState) -> bool {
    pod.node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
        && pod
            .required_node_affinity
            .as_ref()
            .is_none_or(|s| selector_selects(s, node))
}

/// The first taint with effect `NoSchedule` or `NoExecute` the pod does not tolerate.
pub fn untolerated<'a>(pod: &PodFacts, node: &'a NodeState) -> Option<&'a Taint> {
    node.taints.iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !pod.tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// Whether `term` (of a pod in namespace `namespace`) selects `other`.
pub fn affinity_term_selects(
    term: &PodAffinityTerm,
    namespace: &str,
    other: &PodFacts,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
) -> bool {
    let listed = term.namespaces.as_deref().unwrap_or_default();
    let in_namespace = match &term.namespace_selector {
        Some(sel) => {
            listed.contains(&other.namespace)
                || selector_matches(
                    sel,
                    namespaces.get(&other.namespace).unwrap_or(&BTreeMap::new()),
                )
        }
        None if listed.is_empty() => other.namespace == namespace,
        None => listed.contains(&other.namespace),
    };
    in_namespace
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, &other.labels))
}

/// What the pod-to-pod rules need, computed once per pod over every placed pod.
#[derive(Debug, Default)]
pub struct PodCounts {
    /// Per required affinity term: topology value → matching pods there; and whether any
    /// pod matches at all.
    pub affinity: Vec<(HashMap<String, u32>, u32)>,
    /// Per required anti-affinity term: topology value → matching pods there.
    pub anti_affinity: Vec<HashMap<String, u32>>,
    /// Topology domains (key, value) where a placed pod's anti-affinity forbids this pod.
    pub forbidden: Vec<(String, String)>,
    /// Per spread constraint: domain → matching pods, over the nodes it counts.
    pub spread: Vec<HashMap<String, u32>>,
    /// Per preferred term (affinity positive, anti-affinity negative weights): domain →
    /// weight × matching pods.
    pub preferred: Vec<(String, HashMap<String, i64>)>,
}

fn count_by_domain<'a>(
    cluster: &'a ClusterState,
    key: &str,
    selects: impl Fn(&PodFacts) -> bool,
    nodes: impl Fn(&NodeState) -> bool + 'a,
) -> (HashMap<String, u32>, u32) {
    let mut counts = HashMap::new();
    let mut total = 0;
    for node in cluster.nodes() {
        let Some(value) = node.labels.get(key) else {
            continue;
        };
        if !nodes(node) {
            continue;
        }
        let entry = counts.entry(value.clone()).or_insert(0);
        for pod in node.pods.values() {
            if selects(pod) {
                *entry += 1;
                total += 1;
            }
        }
    }
    (counts, total)
}

impl PodCounts {
    pub fn of(pod: &PodFacts, cluster: &ClusterState) -> PodCounts {
        let ns = &cluster.namespace_labels;
        let mut counts = PodCounts::default();
        if pod.needs_pod_counts() {
            for term in &pod.affinity {
                counts.affinity.push(count_by_domain(
                    cluster,
                    &term.topology_key,
                    |p| affinity_term_selects(term, &pod.namespace, p, ns),
                    |_| true,
                ));
            }
            for term in &pod.anti_affinity {
                counts.anti_affinity.push(
                    count_by_domain(
                        cluster,
                        &term.topology_key,
                        |p| affinity_term_selects(term, &pod.namespace, p, ns),
                        |_| true,
                    )
                    .0,
                );
            }
            for c in &pod.spread {
                let selects = |p: &PodFacts| {
                    p.namespace == pod.namespace
                        && c.label_selector
                            .as_ref()
                            .is_some_and(|s| selector_matches(s, &p.labels))
                };
                counts.spread.push(
                    count_by_domain(cluster, &c.topology_key, selects, |n| node_affinity(pod, n)).0,
                );
            }
            let weighted = pod
                .preferred_affinity
                .iter()
                .map(|w| (w, i64::from(w.weight)))
                .chain(
                    pod.preferred_anti_affinity
                        .iter()
                        .map(|w| (w, -i64::from(w.weight))),
                );
            for (w, weight) in weighted {
                let term = &w.pod_affinity_term;
                let (by_domain, _) = count_by_domain(
                    cluster,
                    &term.topology_key,
                    |p| affinity_term_selects(term, &pod.namespace, p, ns),
                    |_| true,
                );
                counts.preferred.push((
                    term.topology_key.clone(),
                    by_domain
                        .into_iter()
                        .map(|(k, n)| (k, weight * i64::from(n)))
                        .collect(),
                ));
            }
        }
        if cluster.has_anti_affinity_pods() {
            for (node, other) in cluster.pods() {
                for term in &other.anti_affinity {
                    if affinity_term_selects(term, &other.namespace, pod, ns) {
                        if let Some(v) = node.labels.get(&term.topology_key) {
                            counts
                                .forbidden
                                .push((term.topology_key.clone(), v.clone()));
                        }
                    }
                }
            }
        }
        counts
    }
}

/// Runs the filters in Kubernetes' order; the first that fails says why (resource fit may
/// give several reasons).
pub fn filter(pod: &PodFacts, node: &NodeState, counts: &PodCounts) -> Result<(), Vec<String>> {
    let fail = |r: &str| Err(vec![r.to_string()]);
    if node.unschedulable
        && !pod.tolerations.iter().any(|t| {
            tolerates(
                t,
                &Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                },
            )
        })
    {
        return fail(UNSCHEDULABLE);
    }
    if pod.node_name.as_ref().is_some_and(|n| *n != node.name) {
        return fail(NODE_NAME);
    }
    if let Some(taint) = untolerated(pod, node) {
        return Err(vec![format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        )]);
    }
    if !node_affinity(pod, node) {
        return fail(NODE_AFFINITY);
    }
    if pod.host_ports.iter().any(|p| node.port_taken(p)) {
        return fail(PORTS);
    }
    resources(pod, node)?;
    spread(pod, node, counts)?;
    pod_affinity(pod, node, counts)
}

fn resources(pod: &PodFacts, node: &NodeState) -> Result<(), Vec<String>> {
    let a = &node.allocatable;
    let (used, want) = (&node.requested, &pod.requests);
    let mut reasons = Vec::new();
    if node.pods.len() as u64 + 1 > a.pods {
        reasons.push(TOO_MANY_PODS.to_string());
    }
    if want.cpu_millis > 0 && used.cpu_millis + want.cpu_millis > a.cpu_millis {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > a.memory {
        reasons.push("Insufficient memory".into());
    }
    if want.ephemeral_storage > 0
        && used.ephemeral_storage + want.ephemeral_storage > a.ephemeral_storage
    {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

fn spread(pod: &PodFacts, node: &NodeState, counts: &PodCounts) -> Result<(), Vec<String>> {
    for (c, by_domain) in pod.spread.iter().zip(&counts.spread) {
        if c.when_unsatisfiable != "DoNotSchedule" {
            continue;
        }
        let Some(value) = node.labels.get(&c.topology_key) else {
            return Err(vec![SPREAD_LABEL.into()]);
        };
        let below_min_domains = c.min_domains.is_some_and(|m| (by_domain.len() as i32) < m);
        let min = if below_min_domains {
            0
        } else {
            by_domain.values().copied().min().unwrap_or(0)
        };
        let selects_itself = c
            .label_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, &pod.labels));
        let here = by_domain.get(value).copied().unwrap_or(0) + u32::from(selects_itself);
        if i64::from(here) - i64::from(min) > i64::from(c.max_skew) {
            return Err(vec![SPREAD.into()]);
        }
    }
    Ok(())
}

fn pod_affinity(pod: &PodFacts, node: &NodeState, counts: &PodCounts) -> Result<(), Vec<String>> {
    for (term, (by_domain, total)) in pod.affinity.iter().zip(&counts.affinity) {
        let here = node
            .labels
            .get(&term.topology_key)
            .and_then(|v| by_domain.get(v))
            .copied()
            .unwrap_or(0);
        // The first pod of a group that selects itself may go anywhere with the key.
        let first_of_its_kind = *total == 0
            && node.labels.contains_key(&term.topology_key)
            && affinity_term_selects(term, &pod.namespace, pod, &HashMap::new());
        if here == 0 && !first_of_its_kind {
            return Err(vec![AFFINITY.into()]);
        }
    }
    for (term, by_domain) in pod.anti_affinity.iter().zip(&counts.anti_affinity) {
        let here = node
            .labels
            .get(&term.topology_key)
            .and_then(|v| by_domain.get(v))
            .copied()
            .unwrap_or(0);
        if here > 0 {
            return Err(vec![ANTI_AFFINITY.into()]);
        }
    }
    for (key, value) in &counts.forbidden {
        if node.labels.get(key) == Some(value) {
            return Err(vec![EXISTING_ANTI_AFFINITY.into()]);
        }
    }
    Ok(())
}
