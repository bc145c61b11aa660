//! The workload controllers (ReplicaSet, Deployment, …) and what they share: pods made from
//! templates, their owner references, readiness and availability, and the writes a controller
//! makes as a client would (admitted like an API write, pods deleted gracefully).

mod apps_sync;
mod batch_sync;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod job;
pub mod replicaset;
pub mod runner;

use std::time::{Duration, SystemTime};

use flotilla_api::deletion::{plan as deletion_plan, DeleteOptions, Deletion};
use flotilla_api::kinds::{admit, FieldValidation};
use flotilla_api::meta::{new_uid, random_suffix, rfc3339};
use flotilla_store::{Command, Revision};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{json, Value};

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Whether `meta`'s controller is the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|o| o.uid == uid)
}

/// The controller reference to an owner.
pub fn owner_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod counts toward its controller's replicas: neither finished nor being deleted.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Since when the pod has been Ready, if it is.
pub fn ready_since(pod: &Pod) -> Option<SystemTime> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0)),
    )
}

/// Whether a pod is available: Ready for at least `min_ready` by `now`. When it is Ready but
/// not yet available, also when it will be.
pub fn availability(pod: &Pod, min_ready: Duration, now: SystemTime) -> (bool, Option<Duration>) {
    match ready_since(pod) {
        None => (false, None),
        Some(_) if min_ready.is_zero() => (true, None),
        Some(since) => {
            let at = since + min_ready;
            match at.duration_since(now) {
                Ok(left) if !left.is_zero() => (false, Some(left)),
                _ => (true, None),
            }
        }
    }
}

fn pods_resource() -> &'static flotilla_api::Resource {
    flotilla_api::find("", "v1", "pods").expect("pods are served")
}

/// A new pod from `template` in `namespace`, named `prefix-xxxxx`, owned by `owner`, with
/// `labels` added: admitted (defaulted and validated) as the API would admit it.
pub fn new_pod(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: OwnerReference,
    classes: &[Value],
    now: SystemTime,
) -> Result<(String, Value), String> {
    let name = format!("{prefix}-{}", random_suffix(5));
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.clone());
    meta.generate_name = Some(format!("{prefix}-"));
    meta.namespace = Some(namespace.into());
    meta.uid = Some(new_uid());
    meta.owner_references = Some(vec![owner]);
    meta.creation_timestamp = None;
    meta.resource_version = None;
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.spec.clone().unwrap_or_default(),
        "status": {"phase": "Pending"},
    });
    object["metadata"]["creationTimestamp"] = json!(rfc3339(now));
    object["metadata"]["generation"] = json!(1);
    let class = object["spec"]["priorityClassName"]
        .as_str()
        .map(str::to_string);
    if let Some((value, policy)) = flotilla_api::kinds::priority_of(class.as_deref(), classes)? {
        object["spec"]["priority"] = json!(value);
        object["spec"]["preemptionPolicy"] = json!(policy);
    }
    let admitted =
        admit(pods_resource(), object, None, FieldValidation::Ignore).map_err(|e| match e {
            flotilla_api::kinds::Rejection::Decode(m) => m,
            flotilla_api::kinds::Rejection::Invalid(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    Ok((format!("/core/pods/{namespace}/{name}"), admitted.object))
}

/// Every PriorityClass in the local replica, for the pods a controller makes.
pub fn priority_classes(engine: &dyn flotilla_store::Engine) -> Vec<Value> {
    engine
        .list("/scheduling.k8s.io/priorityclasses/", None, 0)
        .map(|l| {
            l.items
                .iter()
                .filter_map(|(_, r)| serde_json::from_slice(&r.value).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The write that deletes a pod as `kubectl delete` would (gracefully once it is scheduled),
/// if the pod read at `revision` is not being deleted already.
pub fn delete_pod(key: &str, pod: &Value, revision: Revision, now: SystemTime) -> Option<Command> {
    match deletion_plan(pods_resource(), pod, &DeleteOptions::default(), now) {
        Deletion::Remove => Some(Command::delete(key, Some(revision))),
        Deletion::Mark(marked) => Some(Command::update(key, marked.to_string(), Some(revision))),
        Deletion::Unchanged => None,
    }
}

/// `t` in whole seconds, as Kubernetes writes times.
pub fn whole_seconds(t: SystemTime) -> jiff::Timestamp {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jiff::Timestamp::from_second(secs as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The store key of a namespaced object of `plural` in `group` (`core` for the core group).
pub fn key_of(group: &str, plural: &str, meta: &ObjectMeta) -> String {
    format!(
        "/{group}/{plural}/{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Pods in the states the planners tell apart.

    use super::*;

    pub fn pod(name: &str, owner_uid: &str, phase: &str, ready: bool) -> Pod {
        let mut conditions = vec![];
        if ready {
            conditions.push(json!({"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "owner", "uid": owner_uid, "controller": true}]},
            "spec": {"nodeName": if phase == "Pending" { "" } else { "n1" },
                "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase, "conditions": conditions},
        }))
        .unwrap()
    }
}
