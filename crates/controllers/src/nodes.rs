//! Node objects (the Kubernetes `core/v1` shape) and their lifecycle.
//!
//! A node registers its own object when it starts (addresses, capacity, labels) and takes a pod
//! CIDR out of `10.244.0.0/16` in the same atomic write. The leader then writes only
//! transitions: `Ready` goes `Unknown` when gossip reports the node down and back to `True`
//! when it returns; the object and its CIDR go when the node leaves the Raft membership.
//! [`plan`] is pure.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_store::{Command, Op, Record, Revision};
use serde_json::{json, Value};

/// Store prefix of Node objects (cluster-scoped, core group).
pub const NODES_PREFIX: &str = "/core/nodes/";
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
    /// Extra labels (`--label k=v`), besides the well-known ones.
    pub labels: BTreeMap<String, String>,
}

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
            labels,
        }
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

    fn resources(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_bytes / 1024),
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
    json!({
        "type": "Ready",
        "status": status,
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
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": info.internal_ip},
                {"type": "Hostname", "address": info.name},
            ],
            "capacity": info.resources(),
            "allocatable": info.resources(),
            "conditions": [ready_condition(true, now)],
            "nodeInfo": {
                "architecture": kube_arch(),
                "operatingSystem": "linux",
                "kubeletVersion": concat!("v1.32.0-flotilla.", env!("CARGO_PKG_VERSION")),
                "containerRuntimeVersion": "flotilla://0.1",
            },
        },
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
    node["status"]["capacity"] = info.resources();
    node["status"]["allocatable"] = info.resources();
    set_ready(&mut node, true, now);
    (node != old).then(|| {
        Command::update(
            node_key(&info.name),
            serde_json::to_vec(&node).expect("JSON serialises"),
            Some(current.mod_revision),
        )
    })
}

/// The `Ready` condition's status (`True`, `False`, `Unknown`), if any.
pub fn ready_status(node: &Value) -> Option<&str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

/// Sets `Ready`; a change of status moves `lastTransitionTime`. Returns whether the status
/// changed.
fn set_ready(node: &mut Value, ready: bool, now: &str) -> bool {
    let want = if ready { "True" } else { "Unknown" };
    if ready_status(node) == Some(want) {
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
    rest.insert(0, ready_condition(ready, now));
    node["status"]["conditions"] = Value::Array(rest);
    true
}

/// The lifecycle writes, from what the leader sees: Node objects (key, revision, JSON), the
/// Raft members by name, and the names gossip reports down.
pub fn plan(
    nodes: &[(String, Revision, Value)],
    members: &BTreeSet<String>,
    down: &BTreeSet<String>,
    now: &str,
) -> Vec<Command> {
    let mut writes = Vec::new();
    for (key, revision, node) in nodes {
        let Some(name) = node["metadata"]["name"].as_str() else {
            continue;
        };
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
        if set_ready(&mut updated, !down.contains(name), now) {
            writes.push(Command::update(
                key.clone(),
                serde_json::to_vec(&updated).expect("JSON serialises"),
                Some(*revision),
            ));
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            internal_ip: "10.0.0.1".into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            labels: BTreeMap::from([("zone".into(), "a".into())]),
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
        assert!(plan(&nodes, &members, &names(&[]), "t1").is_empty());

        let writes = plan(&nodes, &members, &names(&["n1"]), "t1");
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
            "t1"
        );

        // Still down: nothing more to write.
        let nodes = vec![(node_key("n1"), 8, unknown)];
        assert!(plan(&nodes, &members, &names(&["n1"]), "t2").is_empty());
        // Back: Ready again.
        assert_eq!(plan(&nodes, &members, &names(&[]), "t3").len(), 1);
    }

    #[test]
    fn a_node_no_longer_a_member_goes_with_its_cidr() {
        let node = new_node(&info("n1"), "10.244.3.0/24", "u", "t0");
        let writes = plan(
            &[(node_key("n1"), 9, node)],
            &names(&["n2"]),
            &names(&[]),
            "t1",
        );
        assert_eq!(writes.len(), 1);
        let keys: Vec<&str> = writes[0].ops.iter().map(|o| o.key()).collect();
        assert_eq!(
            keys,
            vec!["/core/nodes/n1", "/flotilla/podcidrs/10.244.3.0"]
        );
    }
}
