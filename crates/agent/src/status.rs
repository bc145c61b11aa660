//! A pod's status as the agent reports it: phase, conditions, container statuses, addresses,
//! start time and QoS class. A pure function of the spec, what the runtime shows, what the
//! agent remembers, the time, and the status reported before (transition times move only on a
//! change).

use std::time::SystemTime;

use flotilla_api::meta::rfc3339;
use flotilla_runtime::Status;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::plan::{
    initialized, restart_decision, restart_policy, terminal, ContainerMemory, Observed, PodMemory,
};
use crate::restart::{terminated_reason, Restart, RESTART_BACKOFF};
use crate::spec::container_id;

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(rfc3339(t)))
}

fn runtime_id(uid: &str, name: &str) -> String {
    format!("flotilla://{}", container_id(uid, name))
}

fn terminated(
    uid: &str,
    name: &str,
    state: &flotilla_runtime::ContainerState,
    now: SystemTime,
) -> Value {
    let ended = state.ended.expect("an ended container");
    json!({
        "exitCode": ended.code,
        "reason": terminated_reason(ended.code, ended.oom_killed),
        "startedAt": time(state.started_at),
        "finishedAt": time(Some(state.finished_at.unwrap_or(now))),
        "containerID": runtime_id(uid, name),
    })
}

fn last_state(mem: &ContainerMemory) -> Value {
    match &mem.last_terminated {
        Some(t) => json!({"terminated": {
            "exitCode": t.exit_code,
            "reason": t.reason,
            "startedAt": time(t.started_at),
            "finishedAt": time(t.finished_at),
            "containerID": t.container_id,
        }}),
        None => json!({}),
    }
}

/// One entry of `containerStatuses` or `initContainerStatuses`.
fn container_status(
    pod: &Pod,
    c: &Container,
    init: bool,
    observed: &Observed,
    memory: &PodMemory,
    now: SystemTime,
    waiting_default: &str,
) -> (Value, bool) {
    let uid = memory.uid.as_str();
    let mem = memory.container(&c.name);
    let policy = if init {
        crate::restart::RestartPolicy::OnFailure
    } else {
        restart_policy(pod)
    };
    let mut last = last_state(&mem);
    let mut ready = false;
    let mut started = false;
    let state = match observed.containers.get(&c.name) {
        Some(s) if s.status == Status::Running => {
            started = mem.started;
            ready = mem.ready && mem.started && !init;
            json!({"running": {"startedAt": time(s.started_at)}})
        }
        Some(s) if s.status == Status::Stopped && s.ended.is_some() => {
            let pod_policy_never = restart_policy(pod) == crate::restart::RestartPolicy::Never;
            match restart_decision(policy, s, &mem, now) {
                Restart::At(due) if !(init && pod_policy_never) => {
                    last = json!({"terminated": terminated(uid, &c.name, s, now)});
                    let wait = due
                        .duration_since(s.finished_at.unwrap_or(now))
                        .unwrap_or(RESTART_BACKOFF.delay(mem.restarts_in_a_row));
                    json!({"waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": format!(
                            "back-off {} restarting failed container={} pod={}_{}({uid})",
                            humantime_secs(wait),
                            c.name,
                            pod.metadata.name.as_deref().unwrap_or(""),
                            pod.metadata.namespace.as_deref().unwrap_or(""),
                        ),
                    }})
                }
                _ => json!({"terminated": terminated(uid, &c.name, s, now)}),
            }
        }
        _ => match &mem.waiting {
            Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
            None => json!({"waiting": {"reason": waiting_default}}),
        },
    };
    let mut status = json!({
        "name": c.name,
        "state": state,
        "lastState": last,
        "ready": ready,
        "restartCount": mem.restart_count,
        "image": c.image.clone().unwrap_or_default(),
        "imageID": mem.image_id,
        "started": started,
    });
    if observed.containers.contains_key(&c.name) {
        status["containerID"] = json!(runtime_id(uid, &c.name));
    }
    (status, ready)
}

fn humantime_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s % 60 == 0 {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A condition, with the transition time of the previous status when its value is the same.
fn condition(
    previous: &Value,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    now: SystemTime,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let old = previous["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    let since = match old {
        Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
        _ => json!(rfc3339(now)),
    };
    let mut c = json!({
        "type": kind,
        "status": status,
        "lastProbeTime": null,
        "lastTransitionTime": since,
    });
    if let (false, Some(r)) = (ok, reason) {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's status.
pub fn pod_status(
    pod: &Pod,
    observed: &Observed,
    memory: &PodMemory,
    host_ip: &str,
    now: SystemTime,
) -> Value {
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let spec = pod.spec.as_ref();
    let inits: &[Container] = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let apps: &[Container] = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let is_initialized = initialized(pod, observed);

    let init_statuses: Vec<Value> = inits
        .iter()
        .map(|c| container_status(pod, c, true, observed, memory, now, "PodInitializing").0)
        .collect();
    let default = if is_initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let mut all_ready = !apps.is_empty();
    let statuses: Vec<Value> = apps
        .iter()
        .map(|c| {
            let (s, ready) = container_status(pod, c, false, observed, memory, now, default);
            all_ready &= ready;
            s
        })
        .collect();

    let done = terminal(pod, observed, memory, now);
    let phase = if done {
        let init_failed = !is_initialized;
        let any_failed = init_failed
            || apps.iter().any(|c| {
                observed
                    .containers
                    .get(&c.name)
                    .and_then(|s| s.ended)
                    .is_some_and(|e| e.code != 0)
            });
        if any_failed {
            "Failed"
        } else {
            "Succeeded"
        }
    } else if is_initialized
        && apps.iter().all(|c| {
            observed
                .containers
                .get(&c.name)
                .is_some_and(|s| s.status != Status::Created)
                || memory.container(&c.name).restart_count > 0
        })
    {
        "Running"
    } else {
        "Pending"
    };
    let ready = all_ready && !done;
    let not_ready_reason = if done {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    let mut conditions = vec![
        condition(
            &previous,
            "PodReadyToStartContainers",
            observed.sandbox.is_some(),
            None,
            now,
        ),
        condition(
            &previous,
            "Initialized",
            is_initialized,
            Some("ContainersNotInitialized"),
            now,
        ),
        condition(&previous, "Ready", ready, not_ready_reason, now),
        condition(&previous, "ContainersReady", ready, not_ready_reason, now),
        condition(&previous, "PodScheduled", true, None, now),
    ];
    if done && is_initialized {
        // A pod that ran to the end was initialized.
        conditions[1] = condition(&previous, "Initialized", true, None, now);
    }
    let start_time = previous["startTime"]
        .as_str()
        .map(|s| json!(s))
        .unwrap_or_else(|| time(memory.start_time.or(Some(now))));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": statuses,
        "qosClass": crate::resources::qos_class(pod),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(ip) = memory.ip.or(observed.sandbox) {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::at;
    use crate::plan::{ContainerMemory, Terminated};
    use flotilla_runtime::ContainerState;
    use std::net::Ipv4Addr;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "busybox",
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
            },
        }))
        .unwrap()
    }

    fn state(status: Status, code: Option<i32>, oom: bool) -> ContainerState {
        crate::plan::fixtures::container(status, code, oom, 1, 3)
    }

    fn memory() -> PodMemory {
        PodMemory {
            uid: "u".into(),
            volumes_ready: true,
            ..PodMemory::default()
        }
    }

    fn observed(app: Option<ContainerState>) -> Observed {
        let mut o = Observed {
            sandbox: Some(Ipv4Addr::new(10, 244, 1, 5)),
            ..Observed::default()
        };
        o.containers
            .insert("init".into(), state(Status::Stopped, Some(0), false));
        if let Some(a) = app {
            o.containers.insert("app".into(), a);
        }
        o
    }

    fn cond<'a>(s: &'a Value, kind: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()
    }

    #[test]
    fn a_running_ready_pod() {
        let mut mem = memory();
        mem.containers.insert(
            "app".into(),
            ContainerMemory {
                ready: true,
                started: true,
                image_id: "sha256:abc".into(),
                ..Default::default()
            },
        );
        let s = pod_status(
            &pod("Always"),
            &observed(Some(state(Status::Running, None, false))),
            &mem,
            "10.0.0.1",
            at(5),
        );
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.1.5");
        assert_eq!(s["hostIP"], "10.0.0.1");
        // The init container asks for nothing, so the pod is not Guaranteed.
        assert_eq!(s["qosClass"], "Burstable");
        assert_eq!(cond(&s, "Ready")["status"], "True");
        assert_eq!(cond(&s, "Initialized")["status"], "True");
        let app = &s["containerStatuses"][0];
        assert_eq!(app["ready"], true);
        assert_eq!(app["imageID"], "sha256:abc");
        assert!(app["state"]["running"]["startedAt"].is_string());
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }

    #[test]
    fn crash_loop_and_oom_and_completion() {
        let mut mem = memory();
        mem.containers.insert(
            "app".into(),
            ContainerMemory {
                restart_count: 2,
                restarts_in_a_row: 2,
                last_terminated: Some(Terminated {
                    exit_code: 1,
                    reason: "Error".into(),
                    started_at: Some(at(0)),
                    finished_at: Some(at(1)),
                    container_id: "flotilla://u_app".into(),
                }),
                ..Default::default()
            },
        );
        let s = pod_status(
            &pod("Always"),
            &observed(Some(state(Status::Stopped, Some(1), false))),
            &mem,
            "10.0.0.1",
            at(5),
        );
        let app = &s["containerStatuses"][0];
        assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert!(app["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 20s restarting failed container=app"));
        assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(app["restartCount"], 2);
        assert_eq!(s["phase"], "Running");
        assert_eq!(cond(&s, "Ready")["status"], "False");

        let s = pod_status(
            &pod("Never"),
            &observed(Some(state(Status::Stopped, Some(137), true))),
            &memory(),
            "10.0.0.1",
            at(5),
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "OOMKilled"
        );
        assert_eq!(s["phase"], "Failed");
        let s = pod_status(
            &pod("OnFailure"),
            &observed(Some(state(Status::Stopped, Some(0), false))),
            &memory(),
            "10.0.0.1",
            at(5),
        );
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(cond(&s, "Ready")["reason"], "PodCompleted");
    }

    #[test]
    fn waiting_reasons_and_stable_transition_times() {
        let mut p = pod("Always");
        let mut mem = memory();
        mem.containers.insert(
            "app".into(),
            ContainerMemory {
                waiting: Some((
                    "CreateContainerConfigError".into(),
                    "couldn't find key K in ConfigMap default/c".into(),
                )),
                ..Default::default()
            },
        );
        let first = pod_status(&p, &observed(None), &mem, "10.0.0.1", at(5));
        assert_eq!(first["phase"], "Pending");
        assert_eq!(
            first["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CreateContainerConfigError"
        );
        p.status = Some(serde_json::from_value(first.clone()).unwrap());
        let again = pod_status(&p, &observed(None), &mem, "10.0.0.1", at(50));
        assert_eq!(again, first, "nothing changed, so neither did the status");
    }
}
