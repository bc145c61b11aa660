//! PodDisruptionBudgets on the leader: each budget's status from the pods it selects, which the
//! eviction subresource reads (and decrements) to allow an eviction or refuse it with a 429.
//! `expectedPods` is the replica count of the controllers of the selected pods (a ReplicaSet's,
//! or its Deployment's), else the number of pods; `desiredHealthy` comes from `minAvailable`
//! or `maxUnavailable` (percentages rounded up, as Kubernetes does); `disruptionsAllowed` is
//! what the healthy (Ready, not being deleted) pods have above that.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_api::kinds::selector_matches;
use flotilla_store::{Command, Record, StoreError};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::informer::Informer;
use crate::queue::{run_workers, Next, WorkQueue};
use crate::workloads::{controller_of, ready_since, whole_seconds};
use crate::Context;

const BUDGETS: &str = "/policy/poddisruptionbudgets/";
const PODS: &str = "/core/pods/";
const BY_NAMESPACE: &str = "namespace";

/// A count or percentage of `total`, rounded up.
pub fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(p) => {
            let pct: f64 = p.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(total) / 100.0).ceil() as i32
        }
    }
}

/// The status of `budget` over the pods of its namespace; `scale` gives the replica count of a
/// pod's controller (kind, name), if it has one.
pub fn status(
    budget: &PodDisruptionBudget,
    pods: &[&Pod],
    scale: impl Fn(&str, &str) -> Option<i32>,
    now: std::time::SystemTime,
) -> PodDisruptionBudgetStatus {
    let spec = budget.spec.clone().unwrap_or_default();
    let selected: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            spec.selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, &labels))
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let healthy = selected
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && ready_since(p).is_some())
        .count() as i32;
    // Expected: each controller's replicas, once per controller; pods without one count
    // themselves.
    let mut controllers: BTreeMap<(String, String), i32> = BTreeMap::new();
    let mut unowned = 0;
    for p in &selected {
        match controller_of(&p.metadata)
            .and_then(|o| Some(((o.kind.clone(), o.name.clone()), scale(&o.kind, &o.name)?)))
        {
            Some((key, n)) => {
                controllers.insert(key, n);
            }
            None => unowned += 1,
        }
    }
    let expected = controllers.values().sum::<i32>() + unowned;
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => expected,
    };
    let allowed = (healthy - desired).max(0);
    let old = budget.status.clone().unwrap_or_default();
    let (reason, message, value) = if allowed > 0 {
        ("SufficientPods", "", "True")
    } else {
        ("InsufficientPods", "", "False")
    };
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let keep = conditions
        .iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .filter(|c| c.status == value && c.reason == reason)
        .cloned();
    conditions.retain(|c| c.type_ != "DisruptionAllowed");
    conditions.push(keep.unwrap_or(Condition {
        type_: "DisruptionAllowed".into(),
        status: value.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(whole_seconds(now)),
        observed_generation: budget.metadata.generation,
    }));
    PodDisruptionBudgetStatus {
        current_healthy: Some(healthy),
        desired_healthy: Some(desired),
        disruptions_allowed: Some(allowed),
        expected_pods: Some(expected),
        observed_generation: budget.metadata.generation,
        conditions: Some(conditions),
        disrupted_pods: None,
    }
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<T> {
    serde_json::from_slice(&record.value).ok()
}

/// The replica count of a pod's controller, read from the local replica: a ReplicaSet's,
/// or its Deployment's when one owns it.
fn scale_of(ctx: &Context, namespace: &str, kind: &str, name: &str) -> Option<i32> {
    let read = |key: String| -> Option<Value> {
        let record = ctx.engine.get(&key).ok()?.1?;
        serde_json::from_slice(&record.value).ok()
    };
    let plural = match kind {
        "ReplicaSet" => "replicasets",
        "Deployment" => "deployments",
        _ => return None,
    };
    let object = read(format!("/apps/{plural}/{namespace}/{name}"))?;
    if kind == "ReplicaSet" {
        let owner = object["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| {
                o.iter()
                    .find(|o| o["controller"] == true && o["kind"] == "Deployment")
            })
            .and_then(|o| o["name"].as_str().map(str::to_string));
        if let Some(d) = owner {
            return scale_of(ctx, namespace, "Deployment", &d);
        }
    }
    object["spec"]["replicas"].as_i64().map(|n| n as i32)
}

async fn reconcile(
    ctx: &Context,
    budgets: &Informer<PodDisruptionBudget>,
    pods: &Informer<Arc<Pod>>,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = budgets.get(key) else {
        return Ok(Next::Done);
    };
    let budget = &cached.object;
    let namespace = budget.metadata.namespace.clone().unwrap_or_default();
    let in_namespace = pods.by_index(BY_NAMESPACE, &namespace);
    let list: Vec<&Pod> = in_namespace.iter().map(|c| &*c.object).collect();
    let fresh = status(
        budget,
        &list,
        |kind, name| scale_of(ctx, &namespace, kind, name),
        ctx.clock.now(),
    );
    if Some(&fresh) == budget.status.as_ref() {
        return Ok(Next::Done);
    }
    let Some(record) = ctx.engine.get(key)?.1 else {
        return Ok(Next::Done);
    };
    if record.mod_revision != cached.revision {
        // Changed meanwhile (an eviction took one): the informer brings it back.
        return Ok(Next::Done);
    }
    let mut object: Value = serde_json::from_slice(&record.value).map_err(StoreError::storage)?;
    object["status"] = serde_json::to_value(&fresh).map_err(StoreError::storage)?;
    let command = Command::update(key, object.to_string(), Some(cached.revision));
    match ctx.proposer.propose(command).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(Next::Done),
        Err(e) => Err(e),
    }
}

/// Keeps every budget's status until `stop`.
pub async fn run_disruption(ctx: Context, stop: CancellationToken) {
    let queue = WorkQueue::default();
    let budgets = {
        let q = queue.clone();
        Informer::builder([BUDGETS], parse::<PodDisruptionBudget>)
            .index(BY_NAMESPACE, |c| {
                c.object.metadata.namespace.clone().into_iter().collect()
            })
            .on_change(move |c| q.add(c.key))
            .build()
    };
    let pods = {
        let (q, budgets) = (queue.clone(), budgets.clone());
        Informer::builder([PODS], crate::informer::parse_pod)
            .index(BY_NAMESPACE, |c| {
                c.object.metadata.namespace.clone().into_iter().collect()
            })
            .on_change(move |c| {
                let ns = c
                    .new
                    .or(c.old)
                    .and_then(|p| p.object.metadata.namespace.clone())
                    .unwrap_or_default();
                for b in budgets.by_index(BY_NAMESPACE, &ns) {
                    q.add(b.key.clone());
                }
            })
            .build()
    };
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    budgets.spawn(Arc::clone(&ctx.engine), informers.clone(), "disruption");
    pods.spawn(Arc::clone(&ctx.engine), informers.clone(), "disruption");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(budgets.synced(), pods.synced()) } => {}
    }
    run_workers("disruption", queue, 1, stop, move |key| {
        let (ctx, budgets, pods) = (ctx.clone(), budgets.clone(), pods.clone());
        async move { reconcile(&ctx, &budgets, &pods, &key).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::fixtures::pod;
    use serde_json::json;

    fn budget(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(
            json!({"metadata": {"name": "b", "namespace": "default", "generation": 1},
            "spec": spec}),
        )
        .unwrap()
    }

    fn labelled(name: &str, ready: bool) -> Pod {
        let mut p = pod(name, "rs", "Running", ready);
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p
    }

    #[test]
    fn allowed_disruptions_follow_min_available_and_max_unavailable() {
        let pods: Vec<Pod> = vec![
            labelled("a", true),
            labelled("b", true),
            labelled("c", false),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let now = std::time::SystemTime::UNIX_EPOCH;
        let three = |_: &str, _: &str| Some(3);
        let s = status(
            &budget(json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}})),
            &refs,
            three,
            now,
        );
        assert_eq!(
            (
                s.expected_pods,
                s.current_healthy,
                s.desired_healthy,
                s.disruptions_allowed
            ),
            (Some(3), Some(2), Some(1), Some(1))
        );
        let s = status(
            &budget(json!({"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}})),
            &refs,
            three,
            now,
        );
        assert_eq!(
            (s.desired_healthy, s.disruptions_allowed),
            (Some(3), Some(0))
        );
        let s = status(
            &budget(json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})),
            &refs,
            three,
            now,
        );
        assert_eq!(
            (s.desired_healthy, s.disruptions_allowed),
            (Some(2), Some(0))
        );
        assert_eq!(s.conditions.unwrap()[0].reason, "InsufficientPods");
    }
}
