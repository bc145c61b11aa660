//! Pure placement. [`schedule`] takes a pod's facts and the cluster as the scheduler's cache
//! sees it and returns a [`Decision`]: the node to bind to, or Kubernetes' explanation of why
//! none fits (`0/3 nodes are available: 1 node(s) had untolerated taint {…}, 2 Insufficient
//! cpu.`). It runs the filters over nodes from a rotating start and, on large clusters, stops
//! after enough feasible nodes (kube-scheduler's adaptive `percentageOfNodesToScore`), then
//! scores those: resource balance, spreading a workload's pods, preferred node and pod
//! affinity, `PreferNoSchedule` taints and soft spread constraints. Nothing here does I/O.

pub mod filters;
pub mod model;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use filters::{tolerates, PodCounts};
pub use model::{
    Allocatable, ClusterState, HostPort, NodeState, PodFacts, TAINT_NOT_READY, TAINT_UNREACHABLE,
};

/// Where a pod goes, or why nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub node: Option<String>,
    /// Why no node fits (empty when one does), as `PodScheduled`'s message.
    pub message: String,
    /// How many nodes were checked, and how many of them fit.
    pub evaluated: usize,
    pub feasible: usize,
}

/// How many feasible nodes to find before scoring, as kube-scheduler does by default: every
/// node below 100, else a share that falls from 50 % with the cluster's size (5 % at least),
/// never fewer than 100.
pub fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(100)
}

/// The message of a pod no node fits, from each reason and how many nodes gave it.
pub fn explain(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{nodes} nodes are available.")
    } else {
        format!("0/{nodes} nodes are available: {}.", parts.join(", "))
    }
}

/// Places `pod`. `start` rotates where the search over nodes begins (the caller advances it)
/// so that large clusters are not always searched from the same node.
pub fn schedule(pod: &PodFacts, cluster: &ClusterState, start: usize) -> Decision {
    let nodes = cluster.nodes();
    let n = nodes.len();
    let counts = PodCounts::of(pod, cluster);
    let want = feasible_to_find(n);
    let mut feasible: Vec<&NodeState> = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut evaluated = 0;
    for i in 0..n {
        let node = &nodes[(start + i) % n];
        evaluated += 1;
        match filters::filter(pod, node, &counts) {
            Ok(()) => {
                feasible.push(node);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(why) => {
                for r in why {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Decision {
            node: None,
            message: explain(n, &reasons),
            evaluated,
            feasible: 0,
        };
    }
    let best = scores::best(pod, &feasible, &counts);
    Decision {
        node: Some(best.name.clone()),
        message: String::new(),
        evaluated,
        feasible: feasible.len(),
    }
}

/// Preemption for a pod no node fits: on the node where evicting pods of lower priority
/// makes it fit, the fewest and least important such pods (Kubernetes' choice: the lowest
/// highest victim priority, then the fewest victims). Each candidate node is tried with
/// every lower-priority pod removed; then victims are given back, most important first,
/// while the pod still fits. `None` when no eviction helps, or the pod never preempts.
pub fn preemption(pod: &PodFacts, cluster: &ClusterState) -> Option<(String, Vec<Arc<PodFacts>>)> {
    if pod.never_preempts {
        return None;
    }
    let counts = PodCounts::of(pod, cluster);
    // (highest victim priority, victims, their priorities' sum), node, victims.
    type Choice = ((i32, usize, i64), String, Vec<Arc<PodFacts>>);
    let mut best: Option<Choice> = None;
    for node in cluster.nodes() {
        let mut lower: Vec<Arc<PodFacts>> = node
            .pods
            .values()
            .filter(|p| p.priority < pod.priority && !p.terminating)
            .cloned()
            .collect();
        if lower.is_empty() {
            continue;
        }
        let mut trial = node.clone();
        for p in &lower {
            trial.remove_pod(&p.key());
        }
        if filters::filter(pod, &trial, &counts).is_err() {
            continue;
        }
        lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
        let mut victims = Vec::new();
        for p in lower {
            trial.add_pod(Arc::clone(&p));
            if filters::filter(pod, &trial, &counts).is_err() {
                trial.remove_pod(&p.key());
                victims.push(p);
            }
        }
        let rank = (
            victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN),
            victims.len(),
            victims.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
        );
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, node.name.clone(), victims));
        }
    }
    best.map(|(_, node, victims)| (node, victims))
}

mod scores {
    //! Scores, each normalised to 0–100 over the feasible nodes and weighted as
    //! kube-scheduler's defaults weigh them.

    use super::*;
    use crate::filters::{term_matches, tolerates};

    fn fraction(used: u64, total: u64) -> f64 {
        if total == 0 {
            1.0
        } else {
            (used as f64 / total as f64).min(1.0)
        }
    }

    /// Requested share of CPU and memory after placing the pod (non-zero defaults).
    fn shares(pod: &PodFacts, node: &NodeState) -> (f64, f64) {
        let want = pod.requests;
        let cpu = if want.cpu_millis == 0 {
            100
        } else {
            want.cpu_millis
        };
        let mem = if want.memory == 0 {
            200 << 20
        } else {
            want.memory
        };
        (
            fraction(
                node.requested_nonzero.cpu_millis + cpu,
                node.allocatable.cpu_millis,
            ),
            fraction(node.requested_nonzero.memory + mem, node.allocatable.memory),
        )
    }

    /// Spreads `raw` (higher is better) over 0–100: the best gets 100.
    fn normalise(raw: &[f64]) -> Vec<f64> {
        let max = raw.iter().copied().fold(f64::MIN, f64::max);
        let min = raw.iter().copied().fold(f64::MAX, f64::min);
        if max - min < 1e-9 {
            return vec![100.0; raw.len()];
        }
        raw.iter()
            .map(|r| (r - min) / (max - min) * 100.0)
            .collect()
    }

    pub(super) fn best<'a>(
        pod: &PodFacts,
        nodes: &[&'a NodeState],
        counts: &PodCounts,
    ) -> &'a NodeState {
        if nodes.len() == 1 {
            return nodes[0];
        }
        // Least allocated and balanced allocation (weight 1 each), already on 0–100.
        let mut total: Vec<f64> = nodes
            .iter()
            .map(|n| {
                let (c, m) = shares(pod, n);
                (2.0 - c - m) / 2.0 * 100.0 + (1.0 - (c - m).abs()) * 100.0
            })
            .collect();
        let mut add = |weight: f64, raw: Vec<f64>| {
            for (t, s) in total.iter_mut().zip(normalise(&raw)) {
                *t += weight * s;
            }
        };
        // Spreading the pods of one controller over nodes (weight 2).
        if let Some(owner) = &pod.owner {
            add(
                2.0,
                nodes
                    .iter()
                    .map(|n| -f64::from(n.by_owner.get(owner).copied().unwrap_or(0)))
                    .collect(),
            );
        }
        // Preferred node affinity (weight 2).
        if !pod.preferred_node_affinity.is_empty() {
            add(
                2.0,
                nodes
                    .iter()
                    .map(|n| {
                        pod.preferred_node_affinity
                            .iter()
                            .filter(|p| term_matches(&p.preference, n))
                            .map(|p| f64::from(p.weight))
                            .sum()
                    })
                    .collect(),
            );
        }
        // PreferNoSchedule taints the pod does not tolerate (weight 3).
        let tainted = |n: &NodeState| {
            n.taints
                .iter()
                .filter(|t| {
                    t.effect == "PreferNoSchedule"
                        && !pod.tolerations.iter().any(|tol| tolerates(tol, t))
                })
                .count() as f64
        };
        if nodes
            .iter()
            .any(|n| !n.taints.is_empty() && tainted(n) > 0.0)
        {
            add(3.0, nodes.iter().map(|n| -tainted(n)).collect());
        }
        // Preferred pod affinity and anti-affinity (weight 2).
        if !counts.preferred.is_empty() {
            add(
                2.0,
                nodes
                    .iter()
                    .map(|n| {
                        counts
                            .preferred
                            .iter()
                            .map(|(key, by_domain)| {
                                n.labels
                                    .get(key)
                                    .and_then(|v| by_domain.get(v))
                                    .copied()
                                    .unwrap_or(0) as f64
                            })
                            .sum()
                    })
                    .collect(),
            );
        }
        // Soft topology spread (weight 2): fewer matching pods in the node's domains.
        let soft: Vec<_> = pod
            .spread
            .iter()
            .zip(&counts.spread)
            .filter(|(c, _)| c.when_unsatisfiable == "ScheduleAnyway")
            .collect();
        if !soft.is_empty() {
            add(
                2.0,
                nodes
                    .iter()
                    .map(|n| {
                        -soft
                            .iter()
                            .map(|(c, by_domain)| {
                                n.labels
                                    .get(&c.topology_key)
                                    .and_then(|v| by_domain.get(v))
                                    .copied()
                                    .unwrap_or(0) as f64
                            })
                            .sum::<f64>()
                    })
                    .collect(),
            );
        }
        let mut best = 0;
        for (i, t) in total.iter().enumerate() {
            if *t > total[best] + 1e-9 {
                best = i;
            }
        }
        nodes[best]
    }
}

#[cfg(test)]
mod tests;
