use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use super::*;

fn node(name: &str, cpu: &str, labels: Value, spec: Value) -> NodeState {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110", "ephemeral-storage": "10Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .unwrap();
    NodeState::of(&node)
}

fn three_nodes() -> ClusterState {
    let mut c = ClusterState::default();
    for (name, zone) in [("n1", "a"), ("n2", "b"), ("n3", "b")] {
        c.upsert_node(node(
            name,
            "2",
            json!({"topology.kubernetes.io/zone": zone}),
            json!({}),
        ));
    }
    c
}

fn pod(name: &str, labels: Value, spec: Value) -> PodFacts {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels, "uid": name,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                "uid": "rs-uid", "controller": true}]},
        "spec": spec,
    }))
    .unwrap();
    PodFacts::of(&pod)
}

/// Schedules and, when placed, records the pod as the scheduler's cache does.
fn place(c: &mut ClusterState, p: PodFacts, start: usize) -> Decision {
    let d = schedule(&p, c, start);
    if let Some(n) = &d.node {
        c.place(n, Arc::new(p));
    }
    d
}

fn per_node(c: &ClusterState) -> BTreeMap<String, usize> {
    c.nodes()
        .iter()
        .map(|n| (n.name.clone(), n.pods.len()))
        .collect()
}

#[test]
fn a_deployments_pods_spread_evenly() {
    let mut c = three_nodes();
    for i in 0..6 {
        let d = place(
            &mut c,
            pod(&format!("web-{i}"), json!({"app": "web"}), json!({})),
            i,
        );
        assert!(d.node.is_some(), "{d:?}");
    }
    assert_eq!(
        per_node(&c).values().copied().collect::<Vec<_>>(),
        [2, 2, 2]
    );
}

#[test]
fn no_matching_node_selector_is_explained() {
    let c = three_nodes();
    let d = schedule(
        &pod("p", json!({}), json!({"nodeSelector": {"disk": "ssd"}})),
        &c,
        0,
    );
    assert_eq!(d.node, None);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    );
}

#[test]
fn taints_and_requests_are_counted_per_reason() {
    let mut c = three_nodes();
    c.upsert_node(node(
        "n1",
        "2",
        json!({}),
        json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
    ));
    let big = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "3"}}}]});
    let d = schedule(&pod("p", json!({}), big.clone()), &c, 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu."
    );
    // Tolerated, the taint no longer counts; the pod is still too big.
    let mut tolerant = big;
    tolerant["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    let d = schedule(&pod("p", json!({}), tolerant), &c, 0);
    assert_eq!(d.message, "0/3 nodes are available: 3 Insufficient cpu.");
}

#[test]
fn requests_count_pods_already_bound() {
    let mut c = three_nodes();
    let one_cpu = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}]});
    for i in 0..3 {
        assert!(
            place(&mut c, pod(&format!("p{i}"), json!({}), one_cpu.clone()), i)
                .node
                .is_some()
        );
    }
    assert_eq!(
        per_node(&c).values().copied().collect::<Vec<_>>(),
        [1, 1, 1]
    );
    let d = place(&mut c, pod("p4", json!({}), one_cpu), 0);
    assert_eq!(d.message, "0/3 nodes are available: 3 Insufficient cpu.");
    // A deleted pod frees its share.
    c.unplace("default/p0");
    assert!(schedule(
        &pod(
            "p5",
            json!({}),
            json!({"containers": [{"name": "c",
        "resources": {"requests": {"cpu": "1"}}}]})
        ),
        &c,
        0
    )
    .node
    .is_some());
}

#[test]
fn required_anti_affinity_on_hostname_allows_one_per_node() {
    let mut c = three_nodes();
    let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..3 {
        assert!(place(
            &mut c,
            pod(&format!("db-{i}"), json!({"app": "db"}), spec.clone()),
            0
        )
        .node
        .is_some());
    }
    let d = place(&mut c, pod("db-3", json!({"app": "db"}), spec), 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // The rule is symmetric: a plain pod the placed ones reject cannot join them either.
    let d = schedule(&pod("plain", json!({"app": "db"}), json!({})), &c, 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
    );
}

#[test]
fn required_affinity_follows_the_selected_pod_or_lets_the_first_go_anywhere() {
    let mut c = three_nodes();
    let spec = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    // No cache pod anywhere and the pod is no cache pod: nowhere.
    let d = schedule(&pod("web", json!({"app": "web"}), spec.clone()), &c, 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
    // The first cache pod that selects itself goes anywhere; the next follows it.
    let first = place(
        &mut c,
        pod("cache-0", json!({"app": "cache"}), spec.clone()),
        1,
    );
    let next = place(&mut c, pod("web", json!({"app": "web"}), spec), 2);
    assert_eq!(first.node, next.node);
}

#[test]
fn cordoned_and_not_ready_nodes_take_no_pods() {
    let mut c = three_nodes();
    c.upsert_node(node("n1", "2", json!({}), json!({"unschedulable": true})));
    let mut n2: Node = serde_json::from_value(json!({
        "metadata": {"name": "n2"},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi"},
            "conditions": [{"type": "Ready", "status": "Unknown"}]},
    }))
    .unwrap();
    c.upsert_node(NodeState::of(&n2));
    for i in 0..4 {
        assert_eq!(
            place(&mut c, pod(&format!("p{i}"), json!({}), json!({})), i)
                .node
                .as_deref(),
            Some("n3")
        );
    }
    n2.metadata.name = Some("n3".into());
    c.upsert_node(NodeState::of(&n2));
    let d = schedule(&pod("p", json!({}), json!({})), &c, 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 1 node(s) were unschedulable, \
         2 node(s) had untolerated taint {node.kubernetes.io/unreachable: }."
    );
    // The pods placed on n3 are still counted there after its refresh.
    assert_eq!(c.node("n3").unwrap().pods.len(), 4);
}

#[test]
fn host_ports_conflict() {
    let mut c = three_nodes();
    let spec =
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    for i in 0..3 {
        assert!(
            place(&mut c, pod(&format!("p{i}"), json!({}), spec.clone()), i)
                .node
                .is_some()
        );
    }
    let d = schedule(&pod("p3", json!({}), spec), &c, 0);
    assert_eq!(
        d.message,
        "0/3 nodes are available: 3 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn topology_spread_keeps_zones_within_max_skew() {
    let mut c = three_nodes();
    let spec = json!({"topologySpreadConstraints": [{"maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let mut zones = BTreeMap::new();
    for i in 0..6 {
        let d = place(
            &mut c,
            pod(&format!("w{i}"), json!({"app": "web"}), spec.clone()),
            i,
        );
        let node = d.node.expect("placed");
        let zone = c.node(&node).unwrap().labels["topology.kubernetes.io/zone"].clone();
        *zones.entry(zone).or_insert(0) += 1;
    }
    assert_eq!(zones, BTreeMap::from([("a".into(), 3), ("b".into(), 3)]));
    // A node without the key cannot take such a pod.
    c.upsert_node(node("n4", "2", json!({}), json!({})));
    let mut only_n4 = spec;
    only_n4["nodeName"] = json!("n4");
    let d = schedule(&pod("w", json!({"app": "web"}), only_n4), &c, 0);
    assert!(d.message.contains(
        "1 node(s) didn't match pod topology spread constraints (missing required label)"
    ));
}

#[test]
fn preferences_pick_among_feasible_nodes() {
    let mut c = three_nodes();
    let spec = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}}]}}});
    assert_eq!(
        place(&mut c, pod("p", json!({}), spec), 2).node.as_deref(),
        Some("n1")
    );
    c.upsert_node(node(
        "n2",
        "2",
        json!({}),
        json!({"taints": [{"key": "old", "effect": "PreferNoSchedule"}]}),
    ));
    c.upsert_node(node(
        "n3",
        "2",
        json!({}),
        json!({"taints": [{"key": "old", "effect": "PreferNoSchedule"}]}),
    ));
    // n1 already has a pod of the same owner, yet the taints weigh more.
    assert_eq!(
        place(&mut c, pod("q", json!({}), json!({})), 1)
            .node
            .as_deref(),
        Some("n1")
    );
}

#[test]
fn tolerations_match_as_in_kubernetes() {
    use k8s_openapi::api::core::v1::{Taint, Toleration};
    let taint = Taint {
        key: "k".into(),
        value: Some("v".into()),
        effect: "NoExecute".into(),
        ..Taint::default()
    };
    let t = |v: Value| serde_json::from_value::<Toleration>(v).unwrap();
    assert!(tolerates(&t(json!({"operator": "Exists"})), &taint));
    assert!(tolerates(
        &t(json!({"key": "k", "operator": "Exists"})),
        &taint
    ));
    assert!(tolerates(&t(json!({"key": "k", "value": "v"})), &taint));
    assert!(!tolerates(&t(json!({"key": "k", "value": "w"})), &taint));
    assert!(!tolerates(
        &t(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
        &taint
    ));
    assert!(!tolerates(&t(json!({"value": "v"})), &taint));
}

#[test]
fn large_clusters_score_a_share_of_their_nodes() {
    assert_eq!(feasible_to_find(3), 3);
    assert_eq!(feasible_to_find(100), 100);
    assert_eq!(feasible_to_find(1000), 420);
    assert_eq!(feasible_to_find(5000), 500);
    let mut c = ClusterState::default();
    for i in 0..1000 {
        c.upsert_node(node(&format!("n{i}"), "2", json!({}), json!({})));
    }
    let d = schedule(&pod("p", json!({}), json!({})), &c, 7);
    assert_eq!((d.evaluated, d.feasible), (420, 420));
}

#[test]
fn preemption_evicts_the_fewest_least_important_pods() {
    let mut c = ClusterState::default();
    c.upsert_node(node("n1", "2", json!({}), json!({})));
    c.upsert_node(node("n2", "2", json!({}), json!({})));
    let sized = |cpu: &str, priority: i32| {
        json!({"priority": priority, "containers": [{"name": "c",
            "resources": {"requests": {"cpu": cpu}}}]})
    };
    // n1: two pods of priority 10; n2: one of priority 5 and one of 100.
    c.place("n1", Arc::new(pod("a", json!({}), sized("1", 10))));
    c.place("n1", Arc::new(pod("b", json!({}), sized("1", 10))));
    c.place("n2", Arc::new(pod("c", json!({}), sized("1", 5))));
    c.place("n2", Arc::new(pod("d", json!({}), sized("1", 100))));
    let urgent = pod("urgent", json!({}), sized("1", 50));
    assert_eq!(schedule(&urgent, &c, 0).node, None);
    let (node, victims) = preemption(&urgent, &c).expect("someone can go");
    assert_eq!(node, "n2");
    assert_eq!(
        victims.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    // Nothing of lower priority to evict, or a pod that never preempts: no preemption.
    assert!(preemption(&pod("low", json!({}), sized("1", 1)), &c).is_none());
    let mut polite = sized("1", 50);
    polite["preemptionPolicy"] = json!("Never");
    assert!(preemption(&pod("polite", json!({}), polite), &c).is_none());
}
