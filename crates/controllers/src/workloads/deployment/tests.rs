use super::*;
use serde_json::json;

fn at(step: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + step)
}

fn deployment(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
            "annotations": {"kubernetes.io/change-cause": "first"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]}}},
    }))
    .unwrap()
}

fn rolling() -> serde_json::Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
}

/// A Deployment and its ReplicaSets, where pods appear at once and become available one step
/// after they were asked for, and go at once.
struct World {
    d: Deployment,
    rss: Vec<ReplicaSet>,
    step: u64,
    /// Pods old ReplicaSets still run (for Recreate): set by the test.
    old_pods_running: bool,
}

impl World {
    fn new(d: Deployment) -> World {
        World {
            d,
            rss: Vec::new(),
            step: 0,
            old_pods_running: false,
        }
    }

    /// One controller round, then the ReplicaSets' pods catch up. Returns the plan.
    fn round(&mut self) -> Plan {
        self.step += 1;
        let now = at(self.step);
        let refs: Vec<&ReplicaSet> = self.rss.iter().collect();
        let plan = plan(&self.d, &refs, self.old_pods_running, now);
        let mut deleted = Vec::new();
        for a in &plan.actions {
            match a {
                Action::Create(rs) => {
                    let mut rs = (**rs).clone();
                    rs.metadata.creation_timestamp = Some(Time(whole_seconds(now)));
                    rs.metadata.uid = Some(format!("rs-{}", self.step));
                    self.rss.push(rs);
                }
                Action::Update {
                    index,
                    replicas,
                    annotations,
                } => {
                    let rs = &mut self.rss[*index];
                    rs.spec.replicas = Some(*replicas);
                    rs.metadata.annotations = Some(annotations.clone());
                }
                Action::Delete { index } => deleted.push(*index),
            }
        }
        deleted.sort_unstable();
        for i in deleted.into_iter().rev() {
            self.rss.remove(i);
        }
        if let Some(r) = &plan.revision {
            self.d
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(REVISION.into(), r.clone());
        }
        if let Some(s) = &plan.status {
            self.d.status = Some(s.clone());
        }
        // The ReplicaSet controller and the agents: pods exist at once, are available from
        // the next round on.
        for rs in &mut self.rss {
            let want = replicas_of(rs);
            let st = rs.status.get_or_insert_with(Default::default);
            let was = st.replicas;
            st.available_replicas = Some(want.min(was));
            st.ready_replicas = st.available_replicas;
            st.replicas = want;
        }
        plan
    }

    fn replicas(&self) -> Vec<(String, i32)> {
        self.rss
            .iter()
            .map(|rs| (revision_of(rs).to_string(), replicas_of(rs)))
            .collect()
    }

    fn condition(&self, type_: &str) -> Option<String> {
        self.d
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_.as_deref() == Some(type_))
            .and_then(|c| c.reason.clone())
    }

    /// Rounds until nothing changes (at most 50).
    fn settle(&mut self, check: impl Fn(&World)) {
        for _ in 0..50 {
            let p = self.round();
            check(self);
            if p.actions.is_empty() && p.status.is_none() && p.revision.is_none() {
                return;
            }
        }
        panic!("did not settle: {:?}", self.replicas());
    }

    fn set_image(&mut self, image: &str) {
        let spec = &mut self.d.spec;
        spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        self.d.metadata.generation = Some(self.d.metadata.generation.unwrap() + 1);
    }
}

#[test]
fn a_new_deployment_creates_its_replica_set_at_revision_one() {
    let mut w = World::new(deployment(6, "busybox:1", rolling()));
    let p = w.round();
    let Action::Create(rs) = &p.actions[0] else {
        panic!("{p:?}")
    };
    let hash = rs.metadata.labels.as_ref().unwrap()[HASH_LABEL].clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(replicas_of(rs), 6);
    let annotations = rs.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[REVISION], "1");
    assert_eq!(annotations["kubernetes.io/change-cause"], "first");
    assert_eq!(
        rs.spec.selector.match_labels.as_ref().unwrap()[HASH_LABEL],
        hash
    );
    assert_eq!(p.revision.as_deref(), Some("1"));
    assert_eq!(
        p.events,
        [(
            "ScalingReplicaSet".to_string(),
            format!("Scaled up replica set web-{hash} to 6 from 0")
        )]
    );
    assert_eq!(
        w.condition("Progressing").as_deref(),
        Some("NewReplicaSetCreated")
    );
    w.settle(|_| {});
    let s = w.d.status.clone().unwrap();
    assert_eq!(
        (s.replicas, s.updated_replicas, s.available_replicas),
        (Some(6), Some(6), Some(6))
    );
    assert_eq!(
        w.condition("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );
    assert_eq!(
        w.condition("Available").as_deref(),
        Some("MinimumReplicasAvailable")
    );
}

#[test]
fn a_rolling_update_keeps_within_max_surge_and_max_unavailable() {
    let mut w = World::new(deployment(6, "busybox:1", rolling()));
    w.settle(|_| {});
    w.set_image("busybox:2");
    // 25 % of 6: surge 2 (rounded up), unavailable 1 (rounded down).
    w.settle(|w| {
        let total: i32 = w
            .rss
            .iter()
            .map(|rs| rs.status.as_ref().unwrap().replicas)
            .sum();
        let available: i32 = w
            .rss
            .iter()
            .map(|rs| rs.status.as_ref().unwrap().available_replicas.unwrap())
            .sum();
        assert!(total <= 8, "{total} pods: {:?}", w.replicas());
        assert!(available >= 5, "{available} available: {:?}", w.replicas());
    });
    assert_eq!(w.replicas(), [("1".into(), 0), ("2".into(), 6)]);
    assert_eq!(w.d.metadata.annotations.as_ref().unwrap()[REVISION], "2");
    assert_eq!(
        w.condition("Progressing").as_deref(),
        Some("NewReplicaSetAvailable")
    );
}

#[test]
fn undo_makes_an_old_replica_set_new_again_with_the_next_revision() {
    let mut w = World::new(deployment(2, "busybox:1", rolling()));
    w.settle(|_| {});
    w.set_image("busybox:2");
    w.settle(|_| {});
    w.set_image("busybox:1");
    w.settle(|_| {});
    // No third ReplicaSet: the first is current again, at revision 3.
    assert_eq!(w.replicas(), [("3".into(), 2), ("2".into(), 0)]);
    assert_eq!(w.d.metadata.annotations.as_ref().unwrap()[REVISION], "3");
}

#[test]
fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let mut w = World::new(deployment(3, "busybox:1", json!({"type": "Recreate"})));
    w.settle(|_| {});
    w.set_image("busybox:2");
    w.old_pods_running = true;
    let p = w.round();
    assert!(
        matches!(p.actions[..], [Action::Update { replicas: 0, .. }]),
        "{p:?}"
    );
    // The old pods are still terminating: no new ReplicaSet yet.
    let p = w.round();
    assert!(p.actions.is_empty(), "{p:?}");
    w.old_pods_running = false;
    w.settle(|_| {});
    assert_eq!(w.replicas(), [("1".into(), 0), ("2".into(), 3)]);
}

#[test]
fn scaling_alone_resizes_the_active_replica_set() {
    let mut w = World::new(deployment(3, "busybox:1", rolling()));
    w.settle(|_| {});
    w.d.spec.replicas = Some(5);
    let p = w.round();
    assert_eq!(
        p.events[0].1,
        format!(
            "Scaled up replica set {} to 5 from 3",
            w.rss[0].metadata.name.clone().unwrap()
        )
    );
    w.settle(|_| {});
    assert_eq!(w.replicas(), [("1".into(), 5)]);
    w.d.spec.replicas = Some(0);
    w.settle(|_| {});
    assert_eq!(w.replicas(), [("1".into(), 0)]);
}

#[test]
fn scaling_during_a_rollout_is_proportional() {
    let mut w = World::new(deployment(10, "busybox:1", rolling()));
    w.settle(|_| {});
    w.set_image("busybox:2");
    w.round();
    let before: i32 = w.rss.iter().map(replicas_of).sum();
    assert_eq!(before, 13, "{:?}", w.replicas());
    w.d.spec.replicas = Some(20);
    w.round();
    // 20 + 25 % surge = 25, spread over both ReplicaSets.
    let after: i32 = w.rss.iter().map(replicas_of).sum();
    assert_eq!(after, 25, "{:?}", w.replicas());
    assert!(
        w.rss.iter().all(|rs| replicas_of(rs) > 3),
        "{:?}",
        w.replicas()
    );
    w.settle(|_| {});
    assert_eq!(w.replicas(), [("1".into(), 0), ("2".into(), 20)]);
}

#[test]
fn a_paused_deployment_does_not_roll_and_resumes() {
    let mut w = World::new(deployment(2, "busybox:1", rolling()));
    w.settle(|_| {});
    w.d.spec.paused = Some(true);
    w.set_image("busybox:2");
    w.settle(|_| {});
    assert_eq!(w.rss.len(), 1);
    assert_eq!(
        w.condition("Progressing").as_deref(),
        Some("DeploymentPaused")
    );
    w.d.spec.paused = Some(false);
    w.settle(|_| {});
    assert_eq!(w.replicas(), [("1".into(), 0), ("2".into(), 2)]);
}

#[test]
fn old_replica_sets_past_the_history_limit_are_deleted() {
    let mut w = World::new(deployment(1, "busybox:1", rolling()));
    w.d.spec.revision_history_limit = Some(1);
    for image in ["busybox:1", "busybox:2", "busybox:3", "busybox:4"] {
        w.set_image(image);
        w.settle(|_| {});
    }
    assert_eq!(w.replicas(), [("3".into(), 0), ("4".into(), 1)]);
}

#[test]
fn a_rollout_that_stalls_exceeds_its_progress_deadline() {
    let mut w = World::new(deployment(1, "busybox:1", rolling()));
    w.d.spec.progress_deadline_seconds = Some(5);
    w.round();
    // The pods never become available.
    w.rss[0].status = Some(Default::default());
    let refs: Vec<&ReplicaSet> = w.rss.iter().collect();
    let p = plan(&w.d, &refs, false, at(3));
    assert!(p.recheck.is_some());
    w.d.status = p.status.or(w.d.status.clone());
    let p = plan(&w.d, &refs, false, at(60));
    let s = p.status.expect("a new condition");
    let c = s
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .unwrap();
    assert_eq!(c.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert_eq!(c.status.as_deref(), Some("False"));
}

#[test]
fn fenceposts_round_surge_up_and_unavailability_down() {
    assert_eq!(fenceposts(&deployment(6, "x", rolling())), (2, 1));
    assert_eq!(fenceposts(&deployment(1, "x", rolling())), (1, 0));
    let zero =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
    assert_eq!(fenceposts(&deployment(3, "x", zero)), (0, 1));
}
