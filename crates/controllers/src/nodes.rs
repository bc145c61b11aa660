//! Node objects (the Kubernetes `core/v1` shape) and their lifecycle.
//!
//! A node registers its own object when it starts (addresses, capacity, labels) and takes a pod
//! CIDR out of `10.244.0.0/16` in the same atomic write. The leader then writes only
//! transitions: `Ready` goes `Unknown` when gossip reports the node down and back to `True`
//! when it returns; the object and its CIDR go when the node leaves the Raft membership.
//! [`plan`] is pure; [`run_node_lifecycle`] is its loop on the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use flotilla_api::meta::{rfc3339, rfc3339_millis};
use flotilla_store::{Command, Op, Record, Revision, StoreError};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::informer::{parse_json, Informer};
use crate::queue::{run_workers, Next, WorkQueue};
use crate::Context;

pub use flotilla_api::cluster::{ready_status, NODES_PREFIX};
/// Store prefix of taken pod CIDRs (`/flotilla/podcidrs/10.244.N.0` → node name).
pub const POD_CIDRS_PREFIX: &str = "/flotilla/podcidrs/";
/// Pod CIDRs are `/24`s of `10.244.0.0/16`.
pub const POD_CIDR_COUNT: u16 = 256;

pub fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

pub fn pod_cidr(n: u16) -> String {
    format!("10.244.{n}.0/24")
}

fn pod_cidr_key(cidr: &str) -> String {
    let net = cidr.split('/').next().unwrap_or(cidr);
    format!("{POD_CIDRS_PREFIX}{net}")
}

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub internal_ip: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The size of the file system holding the node's data (pods' volumes, containers' upper
    /// layers): its `ephemeral-storage`.
    pub storage_bytes: u64,
    /// Extra labels (`--label k=v`), besides the well-known ones.
    pub labels: BTreeMap<String, String>,
    /// Whether the node runs an agent (pods). Such a node says itself when it is Ready again
    /// after being unreachable, once it has stopped the pods replaced meanwhile.
    pub agent: bool,
    /// The UDP port of the node's tunnel (logs, exec), published as the Node's
    /// `daemonEndpoints.kubeletEndpoint.Port`; 0 when it has none.
    pub stream_port: u16,
}

/// The annotation of nodes that run an agent.
pub const AGENT_ANNOTATION: &str = "node.flotilla.io/agent";
/// The taint of a node gossip reports down.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// The annotation of Node objects a Flotilla node registered itself. The lifecycle manages only
/// those: a Node object written through the API (a hollow node, as kube-scheduler's
/// `scheduler_perf` and kubemark make, or a virtual kubelet's) says what its writer says.
pub const REGISTERED_ANNOTATION: &str = "node.flotilla.io/registered";

/// Whether a Node object was registered by a Flotilla node.
pub fn is_registered(node: &Value) -> bool {
    node["metadata"]["annotations"][REGISTERED_ANNOTATION] == "true"
}

/// Whether a Node object is of a node that runs an agent.
pub fn has_agent(node: &Value) -> bool {
    node["metadata"]["annotations"][AGENT_ANNOTATION] == "true"
}

/// Memory kept back from pods for the node itself (the kubelet's default hard eviction
/// threshold).
const RESERVED_MEMORY: u64 = 100 << 20;

impl NodeInfo {
    /// The host this runs on: CPUs, memory, OS and architecture.
    pub fn of_host(name: &str, internal_ip: &str, labels: BTreeMap<String, String>) -> NodeInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        NodeInfo {
            name: name.to_string(),
            internal_ip: internal_ip.to_string(),
            cpus,
            memory_bytes,
            storage_bytes: 0,
            labels,
            agent: false,
            stream_port: 0,
        }
    }

    fn daemon_endpoints(&self) -> Value {
        json!({"kubeletEndpoint": {"Port": self.stream_port}})
    }

    fn labels(&self) -> Value {
        let mut labels: BTreeMap<String, String> = BTreeMap::from([
            ("kubernetes.io/hostname".into(), self.name.clone()),
            ("kubernetes.io/os".into(), "linux".into()),
            ("kubernetes.io/arch".into(), kube_arch().into()),
        ]);
        labels.extend(self.labels.clone());
        json!(labels)
    }

    fn annotations(&self) -> Value {
        if self.agent {
            json!({REGISTERED_ANNOTATION: "true", AGENT_ANNOTATION: "true"})
        } else {
            json!({REGISTERED_ANNOTATION: "true"})
        }
    }

    fn capacity(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes / 1024),
            "ephemeral-storage": format!("{}Ki", self.storage_bytes / 1024),
            "pods": "110",
        })
    }

    /// What pods may use: the memory less what the node keeps, 90% of the storage (the
    /// kubelet's eviction thresholds).
    fn allocatable(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes.saturating_sub(RESERVED_MEMORY) / 1024),
            "ephemeral-storage": format!("{}Ki", self.storage_bytes / 10 * 9 / 1024),
            "pods": "110",
        })
    }
}

/// Kubernetes' names for architectures.
fn kube_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn ready_condition(ready: bool, now: &str) -> Value {
    let (status, reason, message) = if ready {
        ("True", "NodeReady", "the node is alive in gossip")
    } else {
        (
            "Unknown",
            "NodeStatusUnknown",
            "gossip reports the node down: it stopped answering",
        )
    };
    condition("Ready", status, reason, message, now)
}

/// A node condition.
pub fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

/// A pressure condition (`MemoryPressure`, `DiskPressure`, `PIDPressure`); the node's agent
/// keeps them current.
pub fn pressure_condition(
    kind: &str,
    under: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    json!({
        "type": kind,
        "status": if under { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

/// A new Node object with pod CIDR `cidr`, Ready.
pub fn new_node(info: &NodeInfo, cidr: &str, uid: &str, now: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": info.name,
            "uid": uid,
            "creationTimestamp": now,
            "labels": info.labels(),
            "annotations": info.annotations(),
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": info.internal_ip},
                {"type": "Hostname", "address": info.name},
            ],
            "capacity": info.capacity(),
            "allocatable": info.allocatable(),
            "conditions": [
                ready_condition(true, now),
                pressure_condition("MemoryPressure", false, "KubeletHasSufficientMemory", "the node has sufficient memory available", now),
                pressure_condition("DiskPressure", false, "KubeletHasNoDiskPressure", "the node has no disk pressure", now),
                pressure_condition("PIDPressure", false, "KubeletHasSufficientPID", "the node has sufficient PIDs available", now),
            ],
            "nodeInfo": node_info(),
            "daemonEndpoints": info.daemon_endpoints(),
        },
    })
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `status.nodeInfo`: versions, OS image, kernel, machine and boot ids.
fn node_info() -> Value {
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    json!({
        "architecture": kube_arch(),
        "operatingSystem": "linux",
        "osImage": os_image,
        "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
        "machineID": read_trimmed("/etc/machine-id"),
        "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
        "systemUUID": "",
        "kubeletVersion": concat!("v1.32.0-flotilla.", env!("CARGO_PKG_VERSION")),
        "kubeProxyVersion": "",
        "containerRuntimeVersion": concat!("flotilla://", env!("CARGO_PKG_VERSION")),
    })
}

/// The registration write for a node without an object: the lowest free pod CIDR and the
/// object, in one atomic batch (it fails if someone took that CIDR meanwhile: retry).
pub fn register_new(
    info: &NodeInfo,
    taken_cidrs: &BTreeSet<String>,
    uid: &str,
    now: &str,
) -> Option<Command> {
    let cidr = (0..POD_CIDR_COUNT)
        .map(pod_cidr)
        .find(|c| !taken_cidrs.contains(&pod_cidr_key(c)))?;
    let node = new_node(info, &cidr, uid, now);
    Some(Command::batch(vec![
        Op::Create {
            key: pod_cidr_key(&cidr),
            value: info.name.clone().into_bytes(),
        },
        Op::Create {
            key: node_key(&info.name),
            value: serde_json::to_vec(&node).expect("JSON serialises"),
        },
    ]))
}

/// The update for a node whose object exists: what it says about itself now, Ready. `None`
/// when nothing changed.
pub fn register_existing(info: &NodeInfo, current: &Record, now: &str) -> Option<Command> {
    let old: Value = serde_json::from_slice(&current.value).ok()?;
    let mut node = old.clone();
    node["metadata"]["labels"] = info.labels();
    node["status"]["addresses"] = json!([
        {"type": "InternalIP", "address": info.internal_ip},
        {"type": "Hostname", "address": info.name},
    ]);
    node["status"]["capacity"] = info.capacity();
    node["status"]["allocatable"] = info.allocatable();
    node["status"]["nodeInfo"] = node_info();
    node["status"]["daemonEndpoints"] = info.daemon_endpoints();
    match node["metadata"]["annotations"].as_object_mut() {
        Some(a) if info.agent => {
            a.insert(REGISTERED_ANNOTATION.into(), json!("true"));
            a.insert(AGENT_ANNOTATION.into(), json!("true"));
        }
        Some(a) => {
            a.insert(REGISTERED_ANNOTATION.into(), json!("true"));
            a.remove(AGENT_ANNOTATION);
        }
        None => node["metadata"]["annotations"] = info.annotations(),
    }
    // A node with an agent says it is Ready itself, once it has stopped what was replaced.
    if !info.agent {
        set_ready(&mut node, true, now);
    }
    (node != old).then(|| {
        Command::update(
            node_key(&info.name),
            serde_json::to_vec(&node).expect("JSON serialises"),
            Some(current.mod_revision),
        )
    })
}

/// Sets `Ready` as gossip sees the node; a change of status moves `lastTransitionTime`.
/// Returns whether the status changed.
fn set_ready(node: &mut Value, ready: bool, now: &str) -> bool {
    set_ready_condition(node, ready_condition(ready, now))
}

/// Puts `condition` as the node's `Ready` condition unless its status is already that one.
/// Returns whether it changed.
pub fn set_ready_condition(node: &mut Value, condition: Value) -> bool {
    if ready_status(node) == condition["status"].as_str() {
        return false;
    }
    let conditions = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut rest: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != "Ready")
        .collect();
    rest.insert(0, condition);
    node["status"]["conditions"] = Value::Array(rest);
    true
}

/// Adds (`true`) or removes the `unreachable:NoExecute` taint; whether it changed.
fn set_unreachable_taint(node: &mut Value, tainted: bool, now: &str) -> bool {
    let taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_ours = |t: &Value| t["key"] == UNREACHABLE_TAINT && t["effect"] == "NoExecute";
    let has = taints.iter().any(is_ours);
    if has == tainted {
        return false;
    }
    let mut rest: Vec<Value> = taints.into_iter().filter(|t| !is_ours(t)).collect();
    if tainted {
        rest.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": now}));
    }
    if rest.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = Value::Array(rest);
    }
    true
}

/// The lifecycle writes, from what the leader sees: Node objects (key, revision, JSON), the
/// Raft members by name, and the names gossip reports down.
pub fn plan(
    nodes: &[(String, Revision, Value)],
    members: &BTreeSet<String>,
    down: &BTreeSet<String>,
    now: SystemTime,
) -> Vec<Command> {
    let precise = rfc3339_millis(now);
    let now = &rfc3339(now);
    let mut writes = Vec::new();
    for (key, revision, node) in nodes {
        let Some(name) = node["metadata"]["name"].as_str() else {
            continue;
        };
        if !is_registered(node) {
            continue;
        }
        if !members.contains(name) {
            let mut ops = vec![Op::Delete {
                key: key.clone(),
                expected: Some(*revision),
            }];
            if let Some(cidr) = node["spec"]["podCIDR"].as_str() {
                ops.push(Op::Delete {
                    key: pod_cidr_key(cidr),
                    expected: None,
                });
            }
            writes.push(Command::batch(ops));
            continue;
        }
        let mut updated = node.clone();
        let alive = !down.contains(name);
        // Down: `Ready=Unknown` and tainted at once, in one write, so that its pods are
        // evicted when their toleration runs out. Back: untainted; `Ready` again from gossip,
        // or from its agent once that has stopped the pods replaced meanwhile.
        let tainted = set_unreachable_taint(&mut updated, !alive, &precise);
        let ready = if alive && has_agent(node) {
            false
        } else {
            set_ready(&mut updated, alive, now)
        };
        if tainted || ready {
            writes.push(Command::update(
                key.clone(),
                serde_json::to_vec(&updated).expect("JSON serialises"),
                Some(*revision),
            ));
        }
    }
    writes
}

/// The cluster as Raft and gossip see it: the members' names, and those gossip reports down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMembers {
    pub names: BTreeSet<String>,
    pub down: BTreeSet<String>,
}

/// One node's reconcile: the lifecycle writes for its object, if it is cached.
async fn reconcile(
    ctx: &Context,
    informer: &Informer<Value>,
    members: &ClusterMembers,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(node) = informer.get(key) else {
        return Ok(Next::Done);
    };
    let observed = [(node.key.clone(), node.revision, node.object.clone())];
    for command in plan(&observed, &members.names, &members.down, ctx.clock.now()) {
        match ctx.proposer.propose(command).await {
            Ok(_) => tracing::info!(%key, "node lifecycle"),
            // Someone wrote it meanwhile: the informer brings the change, and the key again.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Next::Done)
}

/// The node lifecycle on the leader, until `shutdown`: `Ready` follows gossip, and the objects
/// of nodes that left the membership go. A node is looked at when its object changes and when
/// the membership does.
pub async fn run_node_lifecycle(
    ctx: Context,
    mut members: watch::Receiver<ClusterMembers>,
    shutdown: CancellationToken,
) {
    let queue = WorkQueue::default();
    let informer = Informer::builder([NODES_PREFIX], parse_json)
        .on_change({
            let queue = queue.clone();
            move |c| queue.add(c.key)
        })
        // Node objects change seldom; the membership, which matters at once, has its own
        // watch. Not waking for every applied entry matters more.
        .batch(std::time::Duration::from_millis(100))
        .build();
    let informing = informer.spawn(Arc::clone(&ctx.engine), shutdown.clone(), "node-lifecycle");
    // Every node is looked at again when the membership changes.
    let membership_changes = tokio::spawn({
        let (queue, informer, mut members, stop) = (
            queue.clone(),
            informer.clone(),
            members.clone(),
            shutdown.clone(),
        );
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = members.changed() => if changed.is_err() { return },
                }
                for key in informer.keys() {
                    queue.add(key);
                }
            }
        }
    });
    members.mark_unchanged();
    run_workers("node-lifecycle", queue, 1, shutdown, move |key| {
        let (ctx, informer) = (ctx.clone(), informer.clone());
        let current = members.borrow().clone();
        async move { reconcile(&ctx, &informer, &current, &key).await }
    })
    .await;
    membership_changes.abort();
    let _ = informing.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_000 + n * 1500)
    }

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            internal_ip: "10.0.0.1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            storage_bytes: 100 << 30,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            agent: false,
            stream_port: 7443,
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn registration_takes_the_lowest_free_cidr_atomically() {
        let taken = names(&[
            "/flotilla/podcidrs/10.244.0.0",
            "/flotilla/podcidrs/10.244.2.0",
        ]);
        let cmd = register_new(&info("n1"), &taken, "uid", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(cmd.ops.len(), 2);
        assert_eq!(cmd.ops[0].key(), "/flotilla/podcidrs/10.244.1.0");
        let Op::Create { value, .. } = &cmd.ops[1] else {
            panic!("{cmd:?}")
        };
        let node: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!(node["metadata"]["labels"]["zone"], "a");
        assert_eq!(node["status"]["capacity"]["memory"], "4194304Ki");
        assert_eq!(ready_status(&node), Some("True"));

        let all: BTreeSet<String> = (0..POD_CIDR_COUNT)
            .map(|n| pod_cidr_key(&pod_cidr(n)))
            .collect();
        assert!(register_new(&info("n2"), &all, "uid", "t").is_none());
    }

    #[test]
    fn the_leader_writes_only_transitions() {
        let t0 = "2026-01-01T00:00:00Z";
        let node = new_node(&info("n1"), "10.244.0.0/24", "u", t0);
        let nodes = vec![(node_key("n1"), 7, node)];
        let members = names(&["n1"]);
        assert!(plan(&nodes, &members, &names(&[]), at(1)).is_empty());

        let writes = plan(&nodes, &members, &names(&["n1"]), at(1));
        assert_eq!(writes.len(), 1);
        let Op::Update {
            value, expected, ..
        } = &writes[0].ops[0]
        else {
            panic!()
        };
        assert_eq!(*expected, Some(7));
        let unknown: Value = serde_json::from_slice(value).unwrap();
        assert_eq!(ready_status(&unknown), Some("Unknown"));
        assert_eq!(
            unknown["status"]["conditions"][0]["lastTransitionTime"],
            rfc3339(at(1))
        );

        // Still down: nothing more to write.
        let nodes = vec![(node_key("n1"), 8, unknown)];
        assert!(plan(&nodes, &members, &names(&["n1"]), at(2)).is_empty());
        // Back: Ready again.
        assert_eq!(plan(&nodes, &members, &names(&[]), at(3)).len(), 1);
    }

    fn written(command: &Command) -> Value {
        let Op::Update { value, .. } = &command.ops[0] else {
            panic!("{command}")
        };
        serde_json::from_slice(value).unwrap()
    }

    #[test]
    fn a_down_node_is_tainted_and_a_node_with_an_agent_says_itself_when_it_is_back() {
        let mut agent = info("n1");
        agent.agent = true;
        let node = new_node(&agent, "10.244.0.0/24", "u", "t0");
        assert!(has_agent(&node));
        let members = names(&["n1"]);
        let down = written(
            &plan(
                &[(node_key("n1"), 7, node)],
                &members,
                &names(&["n1"]),
                at(1),
            )[0],
        );
        assert_eq!(ready_status(&down), Some("Unknown"));
        assert_eq!(
            down["spec"]["taints"],
            json!([{"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": "2027-01-15T08:00:01.500Z"}])
        );
        // Back in gossip: untainted, but not Ready until its agent says so.
        let back = written(
            &plan(
                &[(node_key("n1"), 8, down.clone())],
                &members,
                &names(&[]),
                at(2),
            )[0],
        );
        assert!(back["spec"]["taints"].is_null());
        assert_eq!(ready_status(&back), Some("Unknown"));
        // Its registration after a restart does not make it Ready either.
        let record = Record {
            value: serde_json::to_vec(&down).unwrap(),
            create_revision: 1,
            mod_revision: 8,
        };
        let again = register_existing(&agent, &record, "t3").map(|c| written(&c));
        assert!(again.is_none_or(|n| ready_status(&n) == Some("Unknown")));
    }

    #[test]
    fn a_node_no_longer_a_member_goes_with_its_cidr() {
        let node = new_node(&info("n1"), "10.244.3.0/24", "u", "t0");
        let writes = plan(
            &[(node_key("n1"), 9, node)],
            &names(&["n2"]),
            &names(&[]),
            at(1),
        );
        assert_eq!(writes.len(), 1);
        let keys: Vec<&str> = writes[0].ops.iter().map(|o| o.key()).collect();
        assert_eq!(
            keys,
            vec!["/core/nodes/n1", "/flotilla/podcidrs/10.244.3.0"]
        );
    }

    #[test]
    fn a_node_object_written_through_the_api_is_left_as_its_writer_says() {
        let hollow = json!({
            "metadata": {"name": "hollow-1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        let nodes = [(node_key("hollow-1"), 4, hollow)];
        // Neither a Raft member nor alive in gossip, and still neither deleted nor tainted.
        assert!(plan(&nodes, &names(&["n1"]), &names(&["hollow-1"]), at(1)).is_empty());
        assert!(is_registered(&new_node(
            &info("n1"),
            "10.244.3.0/24",
            "u",
            "t0"
        )));
    }

    mod lifecycle {
        use std::time::{Duration, SystemTime};

        use flotilla_store::{Engine, MemoryStore};
        use flotilla_util::{Clock, ManualClock};

        use super::*;

        fn object(store: &MemoryStore, name: &str) -> Option<Value> {
            let record = store.get(&node_key(name)).unwrap().1?;
            Some(serde_json::from_slice(&record.value).unwrap())
        }

        async fn until(what: &str, check: impl Fn() -> bool) {
            let ok = flotilla_util::wait_until(Duration::from_secs(10), || {
                let v = check().then_some(());
                async move { v }
            })
            .await;
            assert!(ok.is_some(), "timed out waiting until {what}");
        }

        #[tokio::test]
        async fn ready_follows_gossip_and_a_departed_node_goes() {
            let store = Arc::new(MemoryStore::new(10_000));
            for name in ["n1", "n2"] {
                crate::register_node(store.as_ref(), store.as_ref(), &info(name))
                    .await
                    .unwrap();
            }
            let clock =
                ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
            let ctx = Context {
                engine: Arc::clone(&store) as _,
                proposer: Arc::clone(&store) as _,
                clock: Arc::new(clock.clone()),
            };
            let (members, rx) = watch::channel(ClusterMembers {
                names: names(&["n1", "n2"]),
                down: names(&[]),
            });
            let stop = CancellationToken::new();
            let lifecycle = tokio::spawn(run_node_lifecycle(ctx, rx, stop.clone()));

            let transition = |name: &str| {
                object(&store, name)
                    .map(|n| n["status"]["conditions"][0]["lastTransitionTime"].clone())
            };
            members.send_modify(|m| m.down = names(&["n2"]));
            until("n2 is NotReady", || {
                object(&store, "n2").as_ref().and_then(ready_status) == Some("Unknown")
            })
            .await;
            assert_eq!(transition("n2"), Some(json!(rfc3339(clock.now()))));
            assert_eq!(
                object(&store, "n1").as_ref().and_then(ready_status),
                Some("True")
            );

            clock.advance(Duration::from_secs(42));
            members.send_modify(|m| m.down.clear());
            until("n2 is Ready again", || {
                object(&store, "n2").as_ref().and_then(ready_status) == Some("True")
            })
            .await;
            assert_eq!(transition("n2"), Some(json!(rfc3339(clock.now()))));

            members.send_modify(|m| m.names = names(&["n1"]));
            until("n2's object is gone", || object(&store, "n2").is_none()).await;
            let cidrs = store.list(POD_CIDRS_PREFIX, None, 0).unwrap().items;
            assert_eq!(cidrs.len(), 1, "n2's pod CIDR is released with it");
            assert!(object(&store, "n1").is_some());

            stop.cancel();
            lifecycle.await.unwrap();
        }
    }
}
