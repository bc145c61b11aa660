//! What the scheduler knows: the facts of a pod that placement needs, read once from the pod,
//! and each node with the pods bound (or about to be bound) to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_api::quantity::{parse_cpu_millis, parse_quantity, Requests};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeSelector, Pod, PodAffinityTerm, PreferredSchedulingTerm, Taint, Toleration,
    TopologySpreadConstraint, WeightedPodAffinityTerm,
};

/// A host port a pod takes: protocol, address (`0.0.0.0` for all) and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// What placement needs to know of a pod.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The uid of the controller that owns it (a ReplicaSet, a Job): its siblings are spread.
    pub owner: Option<String>,
    pub requests: Requests,
    pub host_ports: Vec<HostPort>,
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    pub tolerations: Vec<Toleration>,
    pub affinity: Vec<PodAffinityTerm>,
    pub anti_affinity: Vec<PodAffinityTerm>,
    pub preferred_affinity: Vec<WeightedPodAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedPodAffinityTerm>,
    pub spread: Vec<TopologySpreadConstraint>,
    pub priority: i32,
    /// `preemptionPolicy: Never`: it waits rather than evict anyone.
    pub never_preempts: bool,
    /// Being deleted: its room is going, and it is nobody's victim.
    pub terminating: bool,
    /// `spec.nodeName` when the pod names its node itself.
    pub node_name: Option<String>,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> PodFacts {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let mut host_ports = Vec::new();
        let host_network = spec.host_network == Some(true);
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                let port = p
                    .host_port
                    .filter(|p| *p > 0)
                    .or(host_network.then_some(p.container_port));
                if let Some(port) = port {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        port,
                    });
                }
            }
        }
        let Affinity {
            node_affinity,
            pod_affinity,
            pod_anti_affinity,
        } = spec.affinity.clone().unwrap_or_default();
        let node_affinity = node_affinity.unwrap_or_default();
        let pod_affinity = pod_affinity.unwrap_or_default();
        let pod_anti_affinity = pod_anti_affinity.unwrap_or_default();
        PodFacts {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            requests: Requests::of_pod(&spec),
            host_ports,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: node_affinity
                .required_during_scheduling_ignored_during_execution,
            preferred_node_affinity: node_affinity
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            affinity: pod_affinity
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            anti_affinity: pod_anti_affinity
                .required_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_affinity: pod_affinity
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            preferred_anti_affinity: pod_anti_affinity
                .preferred_during_scheduling_ignored_during_execution
                .unwrap_or_default(),
            spread: spec.topology_spread_constraints.clone().unwrap_or_default(),
            priority: spec.priority.unwrap_or(0),
            never_preempts: spec.preemption_policy.as_deref() == Some("Never"),
            terminating: meta.deletion_timestamp.is_some(),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether placement must look at other pods (affinity, anti-affinity, spread
    /// constraints): only then does it count pods by topology domain.
    pub fn needs_pod_counts(&self) -> bool {
        !(self.affinity.is_empty()
            && self.anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
            && self.spread.is_empty())
    }
}

/// What a node offers pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
    pub pods: u64,
}

/// A node as placement sees it, with the pods bound to it.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its taints, with `not-ready`/`unreachable` added while it is not Ready (as Kubernetes'
    /// node lifecycle controller taints such nodes).
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Allocatable,
    /// The sum of the requests of its pods.
    pub requested: Requests,
    /// The same with Kubernetes' non-zero defaults (100m, 200Mi) for pods that request
    /// nothing: what the balance scores use, so that such pods spread too.
    pub requested_nonzero: Requests,
    pub pods: BTreeMap<String, Arc<PodFacts>>,
    /// Its pods by owning controller uid.
    pub by_owner: HashMap<String, u32>,
}

/// The well-known taint of a node that is not ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The well-known taint of a node whose agent does not answer.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn nonzero(r: Requests) -> Requests {
    Requests {
        cpu_millis: if r.cpu_millis == 0 { 100 } else { r.cpu_millis },
        memory: if r.memory == 0 { 200 << 20 } else { r.memory },
        ephemeral_storage: r.ephemeral_storage,
    }
}

fn sub(a: Requests, b: Requests) -> Requests {
    Requests {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        memory: a.memory.saturating_sub(b.memory),
        ephemeral_storage: a.ephemeral_storage.saturating_sub(b.ephemeral_storage),
    }
}

fn add(a: Requests, b: Requests) -> Requests {
    Requests {
        cpu_millis: a.cpu_millis + b.cpu_millis,
        memory: a.memory + b.memory,
        ephemeral_storage: a.ephemeral_storage + b.ephemeral_storage,
    }
}

impl NodeState {
    /// The node's placement facts from its object (no pods yet).
    pub fn of(node: &Node) -> NodeState {
        let spec = node.spec.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let alloc = status
            .allocatable
            .clone()
            .or(status.capacity.clone())
            .unwrap_or_default();
        let get = |k: &str| alloc.get(k).map(|q| q.0.as_str());
        let mut taints = spec.taints.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str());
        let implied = match ready {
            Some("True") => None,
            Some("False") => Some(TAINT_NOT_READY),
            _ => Some(TAINT_UNREACHABLE),
        };
        if let Some(key) = implied {
            if !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
            {
                taints.push(Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                });
            }
        }
        NodeState {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            unschedulable: spec.unschedulable == Some(true),
            allocatable: Allocatable {
                cpu_millis: get("cpu").and_then(parse_cpu_millis).unwrap_or(0),
                memory: get("memory").and_then(parse_quantity).unwrap_or(0),
                ephemeral_storage: get("ephemeral-storage")
                    .and_then(parse_quantity)
                    .unwrap_or(0),
                pods: get("pods").and_then(parse_quantity).unwrap_or(110),
            },
            ..NodeState::default()
        }
    }

    pub fn add_pod(&mut self, pod: Arc<PodFacts>) {
        if let Some(old) = self.pods.insert(pod.key(), Arc::clone(&pod)) {
            self.forget(&old);
        }
        self.requested = add(self.requested, pod.requests);
        self.requested_nonzero = add(self.requested_nonzero, nonzero(pod.requests));
        if let Some(owner) = &pod.owner {
            *self.by_owner.entry(owner.clone()).or_default() += 1;
        }
    }

    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodFacts>> {
        let old = self.pods.remove(key)?;
        self.forget(&old);
        Some(old)
    }

    fn forget(&mut self, pod: &PodFacts) {
        self.requested = sub(self.requested, pod.requests);
        self.requested_nonzero = sub(self.requested_nonzero, nonzero(pod.requests));
        if let Some(owner) = &pod.owner {
            if let Some(n) = self.by_owner.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.by_owner.remove(owner);
                }
            }
        }
    }

    /// Takes the place of the node's facts with `fresh` (a changed Node object), keeping its
    /// pods.
    pub fn refresh(&mut self, fresh: NodeState) {
        let pods = std::mem::take(&mut self.pods);
        let (requested, nonzero, by_owner) = (
            self.requested,
            self.requested_nonzero,
            std::mem::take(&mut self.by_owner),
        );
        *self = fresh;
        self.pods = pods;
        self.requested = requested;
        self.requested_nonzero = nonzero;
        self.by_owner = by_owner;
    }

    pub(crate) fn port_taken(&self, port: &HostPort) -> bool {
        self.pods
            .values()
            .any(|p| p.host_ports.iter().any(|h| h.conflicts(port)))
    }
}

/// Every node and the pods bound to them: the scheduler's cache. Pods whose node is not (yet)
/// known are kept aside and join it when it appears.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    nodes: Vec<NodeState>,
    index: HashMap<String, usize>,
    /// Pod key → its node's name.
    placed: HashMap<String, String>,
    /// Pods bound to nodes that are not in the cache, by node name.
    orphans: HashMap<String, BTreeMap<String, Arc<PodFacts>>>,
    /// How many placed pods have required anti-affinity terms (which every placement must
    /// then respect, as they are symmetric).
    anti_affinity_pods: usize,
    /// Namespaces' labels, for affinity terms with a `namespaceSelector`.
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
}

impl ClusterState {
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Adds a node, or refreshes it keeping its pods.
    pub fn upsert_node(&mut self, fresh: NodeState) {
        match self.index.get(&fresh.name) {
            Some(i) => self.nodes[*i].refresh(fresh),
            None => {
                let name = fresh.name.clone();
                self.index.insert(name.clone(), self.nodes.len());
                self.nodes.push(fresh);
                let node = self.nodes.last_mut().expect("just pushed");
                for (_, pod) in self.orphans.remove(&name).unwrap_or_default() {
                    node.add_pod(pod);
                }
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let node = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        // Its pods wait for it to come back (or to be deleted).
        self.orphans.insert(node.name.clone(), node.pods);
    }

    /// Records `pod` on `node` (moving it if it was elsewhere).
    pub fn place(&mut self, node: &str, pod: Arc<PodFacts>) {
        let key = pod.key();
        self.unplace(&key);
        self.placed.insert(key.clone(), node.to_string());
        if !pod.anti_affinity.is_empty() {
            self.anti_affinity_pods += 1;
        }
        match self.index.get(node) {
            Some(i) => self.nodes[*i].add_pod(pod),
            None => {
                self.orphans
                    .entry(node.to_string())
                    .or_default()
                    .insert(key, pod);
            }
        }
    }

    /// Forgets a pod (deleted, or finished so that it no longer takes room).
    pub fn unplace(&mut self, key: &str) {
        let Some(node) = self.placed.remove(key) else {
            return;
        };
        let old = match self.index.get(&node) {
            Some(i) => self.nodes[*i].remove_pod(key),
            None => self.orphans.get_mut(&node).and_then(|o| o.remove(key)),
        };
        if old.is_some_and(|p| !p.anti_affinity.is_empty()) {
            self.anti_affinity_pods -= 1;
        }
    }

    /// Where a pod is placed, if it is.
    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(String::as_str)
    }

    /// Whether any placed pod has required anti-affinity terms.
    pub fn has_anti_affinity_pods(&self) -> bool {
        self.anti_affinity_pods > 0
    }

    /// Every placed pod with its node.
    pub fn pods(&self) -> impl Iterator<Item = (&NodeState, &Arc<PodFacts>)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.values().map(move |p| (n, p)))
    }
}
