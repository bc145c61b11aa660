//! The Job controller's planner: from a Job and its pods, the pods to create (with their
//! completion index when `completionMode: Indexed`), the pods to delete, the status and the
//! `Complete`/`Failed` conditions, and whether a finished Job's time to live is up.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{ready_since, whole_seconds};

/// The annotation and label that carry an Indexed Job's pod index.
pub const INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// A failed pod is replaced after 10 s, doubling with each failure up to 6 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create: their completion index, if the Job is Indexed.
    pub create: Vec<Option<i32>>,
    /// Indexes (into the pods given) of pods to delete.
    pub delete: Vec<usize>,
    pub status: Option<JobStatus>,
    /// The finished Job's time to live is up: delete it.
    pub expired: bool,
    /// Events to record: (type, reason, message).
    pub events: Vec<(&'static str, &'static str, String)>,
    pub recheck: Option<Duration>,
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The index of an Indexed Job's pod.
pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(INDEX)?.parse().ok()
}

/// When a finished pod finished (its last container's end), else when it was created.
fn finished_at(pod: &Pod) -> Option<SystemTime> {
    let ended = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| SystemTime::from(t.0))
        .max();
    ended.or_else(|| {
        pod.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0))
    })
}

fn condition_is(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn finished_condition(status: &JobStatus) -> Option<&JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: SystemTime) -> JobCondition {
    let t = Time(whole_seconds(now));
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

/// The indexes `status.completedIndexes` lists (`0-2,4`).
pub fn parse_ranges(text: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<i32>().ok()),
        }
    }
    out
}

/// `0-2,4` for indexes 0, 1, 2, 4, as `status.completedIndexes` writes them.
pub fn index_ranges(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Plans one round for `job` given the pods it controls.
pub fn plan(job: &Job, pods: &[&Pod], now: SystemTime) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut plan = Plan::default();
    let mut status = old.clone();

    if let Some(done) = finished_condition(&old) {
        // Finished: the pods left running go; the Job waits for its time to live.
        plan.delete = (0..pods.len())
            .filter(|i| {
                pods[*i].metadata.deletion_timestamp.is_none()
                    && !matches!(phase(pods[*i]), "Succeeded" | "Failed")
            })
            .collect();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let since = old
                .completion_time
                .as_ref()
                .or(done.last_transition_time.as_ref())
                .map_or(now, |t| SystemTime::from(t.0));
            let due = since + Duration::from_secs(ttl.max(0) as u64);
            match due.duration_since(now) {
                Ok(left) if !left.is_zero() => plan.recheck = Some(left),
                _ => plan.expired = true,
            }
        }
        return plan;
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let active: Vec<usize> = (0..pods.len())
        .filter(|i| {
            pods[*i].metadata.deletion_timestamp.is_none()
                && !matches!(phase(pods[*i]), "Succeeded" | "Failed")
        })
        .collect();
    let succeeded: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Succeeded")
        .collect();
    let failed_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Failed")
        .collect();
    let restarts: i32 = if on_failure {
        active
            .iter()
            .flat_map(|i| pods[*i].status.as_ref()?.container_statuses.clone())
            .flatten()
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    // Counts never go down: a finished pod removed (its node gone, a deletion) still counts,
    // as the stored status remembers it.
    let mut done_indexes: BTreeSet<i32> = succeeded.iter().filter_map(|p| index_of(p)).collect();
    done_indexes.extend(parse_ranges(old.completed_indexes.as_deref().unwrap_or("")));
    let succeeded_count = if indexed {
        done_indexes.len() as i32
    } else {
        (succeeded.len() as i32).max(old.succeeded.unwrap_or(0))
    };
    let failed_count = (failed_pods.len() as i32).max(old.failed.unwrap_or(0));
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    // Never: failed pods past the limit; OnFailure: container restarts reaching it.
    let past_backoff_limit = failed_count > backoff_limit
        || (on_failure
            && if backoff_limit == 0 {
                restarts > 0
            } else {
                restarts >= backoff_limit
            });

    if status.start_time.is_none() && spec.suspend != Some(true) {
        status.start_time = Some(Time(whole_seconds(now)));
    }
    status.active = Some(active.len() as i32);
    status.ready = Some(
        active
            .iter()
            .filter(|i| ready_since(pods[**i]).is_some())
            .count() as i32,
    );
    status.succeeded = Some(succeeded_count);
    status.failed = Some(failed_count);
    if indexed {
        let ranges = index_ranges(&done_indexes);
        status.completed_indexes = (!ranges.is_empty()).then_some(ranges);
    }

    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let deadline_passed = spec.active_deadline_seconds.and_then(|d| {
        let start = status.start_time.as_ref().map(|t| SystemTime::from(t.0))?;
        let due = start + Duration::from_secs(d.max(0) as u64);
        match due.duration_since(now) {
            Ok(left) if !left.is_zero() => {
                plan.recheck = Some(left);
                None
            }
            _ => Some(()),
        }
    });
    let complete = match completions {
        Some(c) => succeeded_count >= c,
        None => succeeded_count > 0 && active.is_empty(),
    };
    let mut conditions = status.conditions.clone().unwrap_or_default();
    if complete {
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        status.completion_time = Some(Time(whole_seconds(now)));
        plan.events
            .push(("Normal", "Completed", "Job completed".into()));
        plan.delete = active.clone();
    } else if past_backoff_limit || deadline_passed.is_some() {
        let (reason, message) = if deadline_passed.is_some() {
            (
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        } else {
            (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        };
        conditions.push(condition("FailureTarget", reason, message, now));
        conditions.push(condition("Failed", reason, message, now));
        plan.events.push(("Warning", reason, message.into()));
        plan.delete = active.clone();
    } else if spec.suspend == Some(true) {
        plan.delete = active.clone();
    } else {
        // How many should run now. Without `completions` (a work queue), once one pod has
        // succeeded no new one starts and the running ones finish their work.
        let remaining = match completions {
            Some(c) => (c - succeeded_count).max(0),
            None if succeeded_count > 0 => active.len() as i32,
            None => parallelism,
        };
        let want = parallelism.min(remaining) as usize;
        // A failed pod is replaced only after its backoff.
        let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
        let wait = last_failure.and_then(|at| {
            let exp = (failed_pods.len() as u32).saturating_sub(1).min(6);
            let delay = (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX);
            (at + delay)
                .duration_since(now)
                .ok()
                .filter(|d| !d.is_zero())
        });
        if active.len() < want {
            match wait {
                Some(left) => plan.recheck = Some(plan.recheck.map_or(left, |r| r.min(left))),
                None if indexed => {
                    let running: BTreeSet<i32> =
                        active.iter().filter_map(|i| index_of(pods[*i])).collect();
                    let missing = (0..completions.unwrap_or(1))
                        .filter(|i| !done_indexes.contains(i) && !running.contains(i))
                        .take(want - active.len());
                    plan.create = missing.map(Some).collect();
                }
                None => plan.create = vec![None; want - active.len()],
            }
        } else if active.len() > want {
            let mut extra = active.clone();
            extra.sort_by_key(|i| {
                std::cmp::Reverse(
                    pods[*i]
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| SystemTime::from(t.0)),
                )
            });
            plan.delete = extra.into_iter().take(active.len() - want).collect();
        }
    }
    if !conditions.is_empty() {
        status.conditions = Some(conditions);
    }
    if condition_is(&status, "Complete") || condition_is(&status, "Failed") {
        status.active = Some(0);
        status.ready = Some(0);
    }
    if status != old {
        plan.status = Some(status);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn job(spec: serde_json::Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}});
        serde_json::from_value(json!({"metadata": {"name": "j", "uid": "j-uid"}, "spec": spec}))
            .unwrap()
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, finished: u64) -> Pod {
        let mut p = json!({"metadata": {"name": name, "creationTimestamp": "2027-01-15T08:00:00Z",
            "annotations": {}},
            "status": {"phase": phase, "containerStatuses": [{"name": "c", "image": "busybox",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0,
                    "finishedAt": flotilla_api::meta::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(finished))}}}]}});
        if let Some(i) = index {
            p["metadata"]["annotations"][INDEX] = json!(i.to_string());
        }
        serde_json::from_value(p).unwrap()
    }

    fn reasons(p: &Plan) -> Vec<String> {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .iter()
            .map(|c| c.type_.clone())
            .collect()
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(json!({"completions": 5, "parallelism": 2, "backoffLimit": 6}));
        assert_eq!(plan(&j, &[], now()).create, [None, None]);
        let done: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("p{i}"), "Succeeded", None, 0))
            .collect();
        let running = pod("r", "Running", None, 0);
        let mut pods: Vec<&Pod> = done.iter().collect();
        pods.push(&running);
        // One left to do and one running: nothing more.
        let p = plan(&j, &pods, now());
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.status.as_ref().unwrap().succeeded, Some(4));
        let last = pod("p4", "Succeeded", None, 0);
        pods.pop();
        pods.push(&last);
        let p = plan(&j, &pods, now());
        assert_eq!(reasons(&p), ["SuccessCriteriaMet", "Complete"]);
        assert!(p.status.unwrap().completion_time.is_some());
    }

    #[test]
    fn failures_back_off_then_fail_the_job_past_its_limit() {
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 1}));
        let t = 1_800_000_000;
        let first = pod("f1", "Failed", None, t - 3);
        // 3 s after the first failure: the replacement waits for its 10 s backoff.
        let p = plan(&j, &[&first], now());
        assert!(p.create.is_empty());
        assert_eq!(p.recheck, Some(Duration::from_secs(7)));
        let p = plan(&j, &[&first], now() + Duration::from_secs(7));
        assert_eq!(p.create, [None]);
        let second = pod("f2", "Failed", None, t + 20);
        let p = plan(&j, &[&first, &second], now() + Duration::from_secs(21));
        assert_eq!(reasons(&p), ["FailureTarget", "Failed"]);
        let c = &p.status.unwrap().conditions.unwrap()[1];
        assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}));
        assert_eq!(plan(&j, &[], now()).create, [Some(0), Some(1)]);
        let zero = pod("a", "Succeeded", Some(0), 0);
        let two = pod("b", "Running", Some(2), 0);
        let p = plan(&j, &[&zero, &two], now());
        assert_eq!(p.create, [Some(1)]);
        assert_eq!(p.status.unwrap().completed_indexes.as_deref(), Some("0"));
        assert_eq!(
            index_ranges(&BTreeSet::from([0, 1, 2, 4, 6, 7])),
            "0-2,4,6-7"
        );
    }

    #[test]
    fn a_work_queue_job_lets_its_workers_finish_and_counts_never_drop() {
        let j = job(json!({"parallelism": 3}));
        let done = pod("a", "Succeeded", None, 0);
        let b = pod("b", "Running", None, 0);
        let c = pod("c", "Running", None, 0);
        let p = plan(&j, &[&done, &b, &c], now());
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        assert!(reasons(&p).is_empty(), "not complete while workers run");
        // The succeeded pod is gone (its node died): the count stays.
        let mut j = j;
        j.status = p.status;
        let p = plan(&j, &[&b, &c], now());
        assert_eq!(p.status.map_or(Some(1), |s| s.succeeded), Some(1));
    }

    #[test]
    fn a_deadline_fails_the_job_and_stops_its_pods() {
        let mut j = job(json!({"completions": 1, "parallelism": 1, "activeDeadlineSeconds": 30}));
        let running = pod("r", "Running", None, 0);
        let first = plan(&j, &[&running], now());
        assert_eq!(first.recheck, Some(Duration::from_secs(30)));
        j.status = first.status;
        let p = plan(&j, &[&running], now() + Duration::from_secs(31));
        assert_eq!(p.delete, [0]);
        let s = p.status.unwrap();
        assert_eq!(
            s.conditions.unwrap()[1].reason.as_deref(),
            Some("DeadlineExceeded")
        );
    }

    #[test]
    fn a_finished_job_expires_after_its_ttl() {
        let mut j = job(json!({"completions": 1, "parallelism": 1, "ttlSecondsAfterFinished": 60}));
        let done = pod("d", "Succeeded", None, 0);
        j.status = plan(&j, &[&done], now()).status;
        let p = plan(&j, &[&done], now() + Duration::from_secs(10));
        assert!(!p.expired);
        assert_eq!(p.recheck, Some(Duration::from_secs(50)));
        assert!(plan(&j, &[&done], now() + Duration::from_secs(60)).expired);
    }
}
