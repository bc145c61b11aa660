//! The Job and CronJob reconciles: the planners' decisions made into writes.

use flotilla_api::kinds::{admit, FieldValidation};
use flotilla_api::meta::{new_uid, rfc3339};
use flotilla_store::{Command, StoreError};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodTemplateSpec};
use serde_json::json;

use super::job::INDEX;
use super::runner::{
    create_pods, delete_pods, propose, write_status, Caches, Written, BY_CONTROLLER,
};
use super::{cronjob, job, key_of, new_pod, owner_ref};
use crate::events::{Involved, Recorder};
use crate::queue::Next;
use crate::Context;

/// An Indexed Job's pod template for completion index `index`: the index as annotation, label
/// and `JOB_COMPLETION_INDEX`, and the hostname `JOB-INDEX`.
fn indexed(template: &PodTemplateSpec, job: &str, index: i32) -> PodTemplateSpec {
    let mut t = template.clone();
    let meta = t.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(INDEX.into(), index.to_string());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(INDEX.into(), index.to_string());
    if let Some(spec) = t.spec.as_mut() {
        spec.hostname
            .get_or_insert_with(|| format!("{job}-{index}"));
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: Some(index.to_string()),
                value_from: None,
            });
        }
    }
    t
}

pub(super) async fn reconcile_job(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = caches.jobs.get(key) else {
        return Ok(Next::Done);
    };
    let j = &cached.object;
    if j.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let uid = j.metadata.uid.clone().unwrap_or_default();
    let owned = caches.pods.by_index(BY_CONTROLLER, &uid);
    let pods: Vec<&Pod> = owned.iter().map(|c| &*c.object).collect();
    let now = ctx.clock.now();
    let plan = job::plan(j, &pods, now);
    let classes = super::priority_classes(ctx.engine.as_ref());
    let who = Involved::from_meta("batch/v1", "Job", &j.metadata);
    if plan.expired {
        propose(ctx, Command::delete(key, Some(cached.revision))).await?;
        return Ok(Next::Done);
    }
    let name = j.metadata.name.clone().unwrap_or_default();
    let namespace = j.metadata.namespace.clone().unwrap_or_default();
    let template = j.spec.clone().unwrap_or_default().template;
    let owner = owner_ref("batch/v1", "Job", &j.metadata);
    let mut written = Written::default();
    let made = plan
        .create
        .iter()
        .map(|index| match index {
            Some(i) => new_pod(
                &indexed(&template, &name, *i),
                &namespace,
                &format!("{name}-{i}"),
                owner.clone(),
                &classes,
                now,
            ),
            None => new_pod(&template, &namespace, &name, owner.clone(), &classes, now),
        })
        .collect();
    if !create_pods(ctx, recorder, &who, made, &mut written).await {
        return Ok(Next::Done);
    }
    delete_pods(ctx, recorder, &who, &owned, &plan.delete, now, &mut written).await;
    if let Some(status) = &plan.status {
        written.jobs = write_status(ctx, key, cached.revision, status).await?;
    }
    for (type_, reason, message) in &plan.events {
        recorder.record(&who, type_, reason, message).await;
    }
    caches.catch_up(&written).await;
    Ok(plan.recheck.map_or(Next::Done, Next::After))
}

pub(super) async fn reconcile_cron_job(
    ctx: &Context,
    caches: &Caches,
    recorder: &Recorder,
    key: &str,
) -> Result<Next, StoreError> {
    let Some(cached) = caches.cron_jobs.get(key) else {
        return Ok(Next::Done);
    };
    let cj = &cached.object;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Next::Done);
    }
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let owned = caches.jobs.by_index(BY_CONTROLLER, &uid);
    let jobs: Vec<&Job> = owned.iter().map(|c| &c.object).collect();
    let now = ctx.clock.now();
    let plan = cronjob::plan(cj, &jobs, now);
    let who = Involved::from_meta("batch/v1", "CronJob", &cj.metadata);
    let mut written = Written::default();
    for i in &plan.delete {
        let c = &owned[*i];
        if let Ok(r) = propose(ctx, Command::delete(&c.key, Some(c.revision))).await {
            written.jobs = written.jobs.max(r);
        }
    }
    if let Some(job) = &plan.create {
        let mut object = serde_json::to_value(job).map_err(StoreError::storage)?;
        object["apiVersion"] = json!("batch/v1");
        object["kind"] = json!("Job");
        object["metadata"]["uid"] = json!(new_uid());
        object["metadata"]["creationTimestamp"] = json!(rfc3339(now));
        object["metadata"]["generation"] = json!(1);
        let jobs = flotilla_api::find("batch", "v1", "jobs").expect("served");
        match admit(jobs, object, None, FieldValidation::Ignore) {
            Ok(admitted) => {
                let command = Command::create(
                    key_of("batch", "jobs", &job.metadata),
                    admitted.object.to_string(),
                );
                match propose(ctx, command).await {
                    Ok(r) => written.jobs = written.jobs.max(r),
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => {
                recorder
                    .warning(&who, "FailedCreate", &format!("Error creating job: {e:?}"))
                    .await;
            }
        }
    }
    for (type_, reason, message) in &plan.events {
        recorder.record(&who, type_, reason, message).await;
    }
    if let Some(status) = &plan.status {
        written.cron_jobs = write_status(ctx, key, cached.revision, status).await?;
    }
    caches.catch_up(&written).await;
    Ok(plan.recheck.map_or(Next::Done, Next::After))
}
