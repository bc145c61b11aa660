//! The ReplicaSet, Deployment and DaemonSet reconciles: the planners' decisions made into
//! writes.

use std::time::Duration;

use flotilla_api::kinds::{admit, FieldValidation};
use flotilla_api::meta::{new_uid, rfc3339};
use flotilla_store::{Command, StoreError};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::runner::{
    create_pods, delete_pods, propose, stored, write_status, Caches, Written, BY_CONTROLLER,
};
use super::{daemonset, deployment, key_of, new_pod, owner_ref, replicaset};
use crate::events::{Involved, Recorder};
use crate::queue::Next;
use crate::Context;

pub(super) async fn reconcile_replica_set(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = caches.replica_sets.get(key) else {
        return Ok(Next::Done);
    };
    let rs = &cached.object;
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let owned = caches.pods.by_index(BY_CONTROLLER, &uid);
    let pods: Vec<&Pod> = owned.iter().map(|c| &*c.object).collect();
    let now = ctx.clock.now();
    let plan = replicaset::plan(rs, &pods, now);
    let classes = super::priority_classes(ctx.engine.as_ref());
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let who = Involved::from_meta("apps/v1", "ReplicaSet", &rs.metadata);
    let mut written = Written::default();
    if plan.create > 0 {
        let template = rs.spec.template.clone().unwrap_or_default();
        let owner = owner_ref("apps/v1", "ReplicaSet", &rs.metadata);
        let made = (0..plan.create)
            .map(|_| new_pod(&template, &namespace, &name, owner.clone(), &classes, now))
            .collect();
        if !create_pods(ctx, recorder, &who, made, &mut written).await {
            return Ok(Next::Done);
        }
    }
    delete_pods(ctx, recorder, &who, &owned, &plan.delete, now, &mut written).await;
    if let Some(status) = &plan.status {
        written.replica_sets = write_status(ctx, key, cached.revision, status).await?;
    }
    caches.catch_up(&written).await;
    Ok(if plan.create == replicaset::BURST {
        Next::After(Duration::ZERO)
    } else {
        plan.recheck.map_or(Next::Done, Next::After)
    })
}

pub(super) async fn reconcile_deployment(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = caches.deployments.get(key) else {
        return Ok(Next::Done);
    };
    let d = &cached.object;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let owned = caches.replica_sets.by_index(BY_CONTROLLER, &uid);
    let rss: Vec<&ReplicaSet> = owned.iter().map(|c| &c.object).collect();
    let old_pods_running = rss
        .iter()
        .filter(|rs| !deployment::is_current(d, rs))
        .any(|rs| {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            caches.pods.by_index(BY_CONTROLLER, &uid).iter().any(|p| {
                !matches!(
                    p.object.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
        });
    let now = ctx.clock.now();
    let plan = deployment::plan(d, &rss, old_pods_running, now);
    let who = Involved::from_meta("apps/v1", "Deployment", &d.metadata);
    let replica_sets = flotilla_api::find("apps", "v1", "replicasets").expect("served");
    let mut written = Written::default();
    for action in &plan.actions {
        let command = match action {
            deployment::Action::Create(rs) => {
                let mut object = serde_json::to_value(rs).map_err(StoreError::storage)?;
                object["metadata"]["uid"] = json!(new_uid());
                object["metadata"]["creationTimestamp"] = json!(rfc3339(now));
                object["metadata"]["generation"] = json!(1);
                let object = match admit(replica_sets, object, None, FieldValidation::Ignore) {
                    Ok(a) => a.object,
                    Err(e) => {
                        recorder
                            .warning(&who, "ReplicaSetCreateError", &format!("{e:?}"))
                            .await;
                        return Ok(Next::Done);
                    }
                };
                Command::create(
                    key_of("apps", "replicasets", &rs.metadata),
                    object.to_string(),
                )
            }
            deployment::Action::Update {
                index,
                replicas,
                annotations,
            } => {
                let c = &owned[*index];
                let mut object = stored(ctx, &c.key, c.revision)?;
                if object["spec"]["replicas"] != json!(replicas) {
                    let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
                object["spec"]["replicas"] = json!(replicas);
                object["metadata"]["annotations"] = json!(annotations);
                Command::update(&c.key, object.to_string(), Some(c.revision))
            }
            deployment::Action::Delete { index } => {
                let c = &owned[*index];
                Command::delete(&c.key, Some(c.revision))
            }
        };
        match propose(ctx, command).await {
            Ok(r) => written.replica_sets = written.replica_sets.max(r),
            // The new ReplicaSet's name is taken by one this Deployment does not own (left
            // by `--cascade=orphan`): the next hash, as Kubernetes counts a collision.
            Err(StoreError::AlreadyExists { .. })
                if matches!(action, deployment::Action::Create(_)) =>
            {
                let mut object = stored(ctx, key, cached.revision)?;
                let collisions = object["status"]["collisionCount"].as_i64().unwrap_or(0);
                object["status"]["collisionCount"] = json!(collisions + 1);
                let command = Command::update(key, object.to_string(), Some(cached.revision));
                propose(ctx, command).await?;
                return Ok(Next::Done);
            }
            Err(e) => return Err(e),
        }
    }
    for (reason, message) in &plan.events {
        recorder.normal(&who, reason, message).await;
    }
    if plan.status.is_some() || plan.revision.is_some() {
        let mut object = stored(ctx, key, cached.revision)?;
        if let Some(r) = &plan.revision {
            object["metadata"]["annotations"][deployment::REVISION] = json!(r);
        }
        if let Some(s) = &plan.status {
            object["status"] = serde_json::to_value(s).map_err(StoreError::storage)?;
        }
        let command = Command::update(key, object.to_string(), Some(cached.revision));
        written.deployments = propose(ctx, command).await?;
    }
    caches.catch_up(&written).await;
    Ok(plan.recheck.map_or(Next::Done, Next::After))
}

pub(super) async fn reconcile_daemon_set(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = caches.daemon_sets.get(key) else {
        return Ok(Next::Done);
    };
    let ds = &cached.object;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let owned = caches.pods.by_index(BY_CONTROLLER, &uid);
    let pods: Vec<&Pod> = owned.iter().map(|c| &*c.object).collect();
    let nodes: Vec<flotilla_scheduler::NodeState> = caches
        .nodes
        .list()
        .iter()
        .map(|n| flotilla_scheduler::NodeState::of(&n.object))
        .collect();
    let now = ctx.clock.now();
    let plan = daemonset::plan(ds, &nodes, &pods, now);
    let classes = super::priority_classes(ctx.engine.as_ref());
    let who = Involved::from_meta("apps/v1", "DaemonSet", &ds.metadata);
    let name = ds.metadata.name.clone().unwrap_or_default();
    let namespace = ds.metadata.namespace.clone().unwrap_or_default();
    let owner = owner_ref("apps/v1", "DaemonSet", &ds.metadata);
    let mut written = Written::default();
    let made = plan
        .create
        .iter()
        .map(|node| {
            let template = daemonset::pod_template(ds, node);
            new_pod(&template, &namespace, &name, owner.clone(), &classes, now)
        })
        .collect();
    if !create_pods(ctx, recorder, &who, made, &mut written).await {
        return Ok(Next::Done);
    }
    delete_pods(ctx, recorder, &who, &owned, &plan.delete, now, &mut written).await;
    if let Some(status) = &plan.status {
        written.daemon_sets = write_status(ctx, key, cached.revision, status).await?;
    }
    caches.catch_up(&written).await;
    Ok(plan.recheck.map_or(Next::Done, Next::After))
}
