//! The ReplicaSet controller's planner: from a ReplicaSet and the pods it controls, how many
//! pods to create, which to delete, and its status.

use std::cmp::Reverse;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;

use super::{availability, is_active, ready_since};

/// Pods created in one round at most (Kubernetes' burst); the next round makes the rest.
pub const BURST: usize = 500;

/// What a reconcile of one ReplicaSet does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create: usize,
    /// Indexes (into the pods given) of the pods to delete.
    pub delete: Vec<usize>,
    /// The status to write, when it differs from the stored one.
    pub status: Option<ReplicaSetStatus>,
    /// Look again after this long (a pod becomes available after `minReadySeconds`).
    pub recheck: Option<Duration>,
}

/// How eager Kubernetes is to delete a pod when scaling down: unscheduled before scheduled,
/// pending before running, not ready before ready, ready for less time, more restarts, newer.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    (
        scheduled,
        phase,
        ready.is_some(),
        Reverse(ready),
        Reverse(restarts),
        Reverse(created),
    )
}

/// Plans one round for `rs` given the pods it controls (active or not).
pub fn plan(rs: &ReplicaSet, pods: &[&Pod], now: SystemTime) -> Plan {
    let spec = rs.spec.clone();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let active: Vec<usize> = (0..pods.len()).filter(|i| is_active(pods[*i])).collect();
    let mut plan = Plan::default();
    if active.len() < want {
        plan.create = (want - active.len()).min(BURST);
    } else if active.len() > want {
        let mut ranked = active.clone();
        ranked.sort_by_key(|i| deletion_rank(pods[*i]));
        plan.delete = ranked.into_iter().take(active.len() - want).collect();
    }
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (mut ready, mut available, mut labelled) = (0, 0, 0);
    for i in &active {
        let pod = pods[*i];
        if ready_since(pod).is_some() {
            ready += 1;
        }
        let (is_available, becomes) = availability(pod, min_ready, now);
        if is_available {
            available += 1;
        }
        if let Some(b) = becomes {
            plan.recheck = Some(plan.recheck.map_or(b, |r| r.min(b)));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            labelled += 1;
        }
    }
    let old = rs.status.clone().unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(labelled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: old.conditions.clone(),
        ..ReplicaSetStatus::default()
    };
    if status != old {
        plan.status = Some(status);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::fixtures::pod;
    use serde_json::json;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "rs", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn creates_the_missing_pods_up_to_the_burst() {
        let p = plan(&rs(3), &[], now());
        assert_eq!((p.create, p.delete.len()), (3, 0));
        assert_eq!(p.status.unwrap().observed_generation, Some(2));
        assert_eq!(plan(&rs(2000), &[], now()).create, BURST);
    }

    #[test]
    fn finished_and_deleted_pods_do_not_count() {
        let done = pod("done", "rs", "Succeeded", false);
        let mut leaving = pod("leaving", "rs", "Running", true);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2030-01-01T00:00:00Z".parse().unwrap(),
            ));
        let running = pod("running", "rs", "Running", true);
        let p = plan(&rs(2), &[&done, &leaving, &running], now());
        assert_eq!(p.create, 1);
        let s = p.status.unwrap();
        assert_eq!(
            (s.replicas, s.ready_replicas, s.available_replicas),
            (1, Some(1), Some(1))
        );
    }

    #[test]
    fn scale_down_deletes_the_least_useful_pods_first() {
        let ready = pod("ready", "rs", "Running", true);
        let unready = pod("unready", "rs", "Running", false);
        let pending = pod("pending", "rs", "Pending", false);
        let pods = [&ready, &unready, &pending];
        assert_eq!(plan(&rs(2), &pods, now()).delete, [2]);
        assert_eq!(plan(&rs(1), &pods, now()).delete, [2, 1]);
        assert_eq!(plan(&rs(0), &pods, now()).delete, [2, 1, 0]);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut set = rs(1);
        set.spec.min_ready_seconds = Some(30);
        let ready = pod("ready", "rs", "Running", true);
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
        let p = plan(&set, &[&ready], since + Duration::from_secs(10));
        let s = p.status.unwrap();
        assert_eq!((s.ready_replicas, s.available_replicas), (Some(1), Some(0)));
        assert_eq!(p.recheck, Some(Duration::from_secs(20)));
        let p = plan(&set, &[&ready], since + Duration::from_secs(30));
        assert_eq!(p.status.unwrap().available_replicas, Some(1));
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let mut set = rs(1);
        let ready = pod("ready", "rs", "Running", true);
        let first = plan(&set, &[&ready], now());
        set.status = first.status;
        assert_eq!(plan(&set, &[&ready], now()), Plan::default());
    }
}
