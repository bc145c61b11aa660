//! The CronJob controller's planner: whether a Job is due (the latest scheduled time since the
//! last one, within `startingDeadlineSeconds`), what `concurrencyPolicy` lets happen to the
//! Jobs still running, which finished Jobs fall out of the history limits, and the status
//! (`active`, `lastScheduleTime`, `lastSuccessfulTime`).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::cron::{time_zone, Schedule};
use super::{owner_ref, whole_seconds};

/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A Job to create.
    pub create: Option<Job>,
    /// Indexes (into the Jobs given) of Jobs to delete: replaced, or past the history limits.
    pub delete: Vec<usize>,
    pub status: Option<CronJobStatus>,
    /// Events: (type, reason, message).
    pub events: Vec<(&'static str, &'static str, String)>,
    pub recheck: Option<Duration>,
}

fn finished(job: &Job) -> Option<(&'static str, SystemTime)> {
    let status = job.status.as_ref()?;
    let c = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let at = c
        .last_transition_time
        .as_ref()
        .map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0));
    Some((
        if c.type_ == "Complete" {
            "Complete"
        } else {
            "Failed"
        },
        at,
    ))
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

fn created(job: &Job) -> Option<SystemTime> {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

/// The Job a CronJob makes for the time `at`: named after the minute, as Kubernetes names it.
pub fn job_for(cj: &CronJob, at: SystemTime) -> Job {
    let template = cj.spec.job_template.clone();
    let meta = template.metadata.unwrap_or_default();
    let minutes = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60);
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), flotilla_api::meta::rfc3339(at));
    Job {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{minutes}",
                cj.metadata.name.as_deref().unwrap_or("")
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Plans one round for `cj` given the Jobs it controls.
pub fn plan(cj: &CronJob, jobs: &[&Job], now: SystemTime) -> Plan {
    let spec = &cj.spec;
    let old = cj.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut plan = Plan::default();

    let active: Vec<usize> = (0..jobs.len())
        .filter(|i| finished(jobs[*i]).is_none())
        .collect();
    // History: the oldest finished Jobs beyond the limits go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<(SystemTime, usize)> = (0..jobs.len())
            .filter_map(|i| {
                finished(jobs[i])
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, at)| (at, i))
            })
            .collect();
        done.sort();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        plan.delete
            .extend(done.iter().take(excess).map(|(_, i)| *i));
    }
    let last_success = (0..jobs.len())
        .filter_map(|i| {
            finished(jobs[i])
                .filter(|(k, _)| *k == "Complete")
                .map(|(_, at)| at)
        })
        .max();
    if let Some(at) = last_success {
        let t = Time(whole_seconds(at));
        if old.last_successful_time.as_ref().is_none_or(|o| o.0 < t.0) {
            status.last_successful_time = Some(t);
        }
    }

    let schedule = Schedule::parse(&spec.schedule);
    let tz = time_zone(spec.time_zone.as_deref());
    let (schedule, tz) = match (schedule, tz) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) => {
            plan.events.push((
                "Warning",
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return finish(plan, status, &old, jobs, &active);
        }
        (_, Err(e)) => {
            plan.events.push(("Warning", "UnknownTimeZone", e));
            return finish(plan, status, &old, jobs, &active);
        }
    };
    if spec.suspend == Some(true) {
        return finish(plan, status, &old, jobs, &active);
    }
    let mut earliest = old
        .last_schedule_time
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .or_else(|| {
            cj.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| SystemTime::from(t.0))
        })
        .unwrap_or(now);
    if let Some(d) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - Duration::from_secs(d.max(0) as u64));
    }
    if let Some(at) = schedule.last_between(earliest, now, &tz) {
        let job = job_for(cj, at);
        let exists = jobs.iter().any(|j| j.metadata.name == job.metadata.name);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if !exists && (policy != "Forbid" || active.is_empty()) {
            if policy == "Replace" {
                for i in &active {
                    plan.delete.push(*i);
                    let name = jobs[*i].metadata.name.clone().unwrap_or_default();
                    plan.events
                        .push(("Normal", "SuccessfulDelete", format!("Deleted job {name}")));
                }
            }
            let name = job.metadata.name.clone().unwrap_or_default();
            plan.events
                .push(("Normal", "SuccessfulCreate", format!("Created job {name}")));
            plan.create = Some(job);
            status.last_schedule_time = Some(Time(whole_seconds(at)));
        } else if !exists {
            // The run is not skipped: it starts when the active Job ends (within the
            // starting deadline), as the schedule time stays where it was.
            plan.events.push(("Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid".into()));
        }
    }
    plan.recheck = schedule
        .next_after(now, &tz)
        .and_then(|next| next.duration_since(now).ok());
    finish(plan, status, &old, jobs, &active)
}

fn finish(
    mut plan: Plan,
    mut status: CronJobStatus,
    old: &CronJobStatus,
    jobs: &[&Job],
    active: &[usize],
) -> Plan {
    let mut running: Vec<&Job> = active
        .iter()
        .filter(|i| !plan.delete.contains(i))
        .map(|i| jobs[*i])
        .collect();
    running.sort_by_key(|j| created(j));
    let refs: Vec<ObjectReference> = running.into_iter().map(reference).collect();
    status.active = (!refs.is_empty()).then_some(refs);
    if status != *old {
        plan.status = Some(status);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> SystemTime {
        let ts: jiff::Timestamp = text.parse().unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts.as_second() as u64)
    }

    fn cronjob(policy: &str) -> CronJob {
        serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "default", "uid": "cj",
                "creationTimestamp": "2027-01-15T08:00:10Z"},
            "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": policy,
                "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}}}},
        }))
        .unwrap()
    }

    fn job(name: &str, finished: Option<&str>) -> Job {
        let conditions = match finished {
            Some(t) => json!([{"type": "Complete", "status": "True", "lastTransitionTime": t}]),
            None => json!([]),
        };
        serde_json::from_value(json!({"metadata": {"name": name, "uid": name,
            "creationTimestamp": "2027-01-15T08:01:00Z"},
            "status": {"conditions": conditions}}))
        .unwrap()
    }

    #[test]
    fn a_due_schedule_creates_its_job_once() {
        let cj = cronjob("Allow");
        let now = at("2027-01-15T08:01:05Z");
        let p = plan(&cj, &[], now);
        let due = p.create.expect("a job is due");
        assert_eq!(due.metadata.name.as_deref(), Some("tick-30000001"));
        assert_eq!(due.metadata.owner_references.unwrap()[0].kind, "CronJob");
        assert_eq!(p.recheck, Some(Duration::from_secs(55)));
        let status = p.status.unwrap();
        assert_eq!(
            status.last_schedule_time.unwrap().0.as_second(),
            1_800_000_060
        );
        // Already made: not again.
        let mut cj = cj;
        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(whole_seconds(at("2027-01-15T08:01:00Z")))),
            ..Default::default()
        });
        let made = job("tick-30000001", None);
        assert!(plan(&cj, &[&made], now).create.is_none());
    }

    #[test]
    fn concurrency_policies() {
        let now = at("2027-01-15T08:02:05Z");
        let running = job("tick-30000001", None);
        assert!(plan(&cronjob("Forbid"), &[&running], now).create.is_none());
        let p = plan(&cronjob("Replace"), &[&running], now);
        assert!(p.create.is_some());
        assert_eq!(p.delete, [0]);
        let p = plan(&cronjob("Allow"), &[&running], now);
        assert!(p.create.is_some() && p.delete.is_empty());
        assert_eq!(p.status.unwrap().active.unwrap().len(), 1);
    }

    #[test]
    fn history_limits_and_suspension() {
        let a = job("a", Some("2027-01-15T08:01:10Z"));
        let b = job("b", Some("2027-01-15T08:02:10Z"));
        let mut cj = cronjob("Allow");
        cj.spec.suspend = Some(true);
        let p = plan(&cj, &[&b, &a], at("2027-01-15T08:03:05Z"));
        assert!(p.create.is_none());
        assert_eq!(p.delete, [1], "the older successful job goes");
        assert!(p.status.unwrap().last_successful_time.is_some());
    }

    #[test]
    fn a_missed_start_past_the_deadline_is_skipped() {
        let mut cj = cronjob("Allow");
        cj.spec.schedule = "0 * * * *".into();
        cj.spec.starting_deadline_seconds = Some(30);
        // 08:00 was missed by more than 30 s.
        assert!(plan(&cj, &[], at("2027-01-15T08:10:00Z")).create.is_none());
        assert!(plan(&cj, &[], at("2027-01-15T09:00:20Z")).create.is_some());
    }
}
