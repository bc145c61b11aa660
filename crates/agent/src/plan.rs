//! What to do next for a pod: a pure function of its spec, what the runtime shows, what the
//! agent remembers and the time ([`next`]). The worker runs the step and asks again, until the
//! answer is to wait. The lifecycle only goes forward: sandbox → volumes → init containers in
//! order (each must exit 0) → app containers → running → termination.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use flotilla_runtime::{ContainerState, Status};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::restart::{self, Restart, RestartPolicy};

/// A container's end, as kept for `lastState` and the restart backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub container_id: String,
}

/// What the agent remembers of a container between steps (and rebuilds from the pod's status
/// after a restart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMemory {
    pub restart_count: u32,
    /// Restarts since the container last ran long enough to reset the backoff.
    pub restarts_in_a_row: u32,
    pub last_terminated: Option<Terminated>,
    /// Why it is not running (`CreateContainerConfigError`, `RunContainerError`,
    /// `ErrImageNeverPulled`, ...) and the message, until it runs.
    pub waiting: Option<(String, String)>,
    /// Not before this time (after a failure to create or start it).
    pub retry_at: Option<SystemTime>,
    /// The readiness probe's verdict (true when it has none).
    pub ready: bool,
    /// The startup probe passed (true when it has none).
    pub started: bool,
    /// The liveness probe failed: restart it.
    pub unhealthy: bool,
    /// The image id (config digest) it runs.
    pub image_id: String,
    /// The restart count whose crash-loop wait was reported (event `BackOff`).
    pub backoff_reported: Option<u32>,
    /// Its image is being fetched (event `Pulling` reported).
    pub pulling: bool,
}

/// The pod's termination, once it began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// SIGKILL for what still runs at this time.
    pub deadline: SystemTime,
    pub pre_stop_done: bool,
    pub term_sent: bool,
    pub kill_sent: bool,
}

/// What the agent remembers of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMemory {
    pub uid: String,
    pub containers: BTreeMap<String, ContainerMemory>,
    /// The volumes are in place (and their content current as of the last resync).
    pub volumes_ready: bool,
    pub volumes_error: Option<String>,
    pub termination: Option<Termination>,
    /// The sandbox's address.
    pub ip: Option<Ipv4Addr>,
    /// When the agent first started the pod (`status.startTime`).
    pub start_time: Option<SystemTime>,
    /// The pod's runtime state is gone and its object deleted.
    pub finished: bool,
}

impl PodMemory {
    pub fn container(&self, name: &str) -> ContainerMemory {
        self.containers.get(name).cloned().unwrap_or_default()
    }
}

/// What the runtime shows of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub sandbox: Option<Ipv4Addr>,
    /// By container name.
    pub containers: BTreeMap<String, ContainerState>,
}

/// The next step for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    CreateSandbox,
    PrepareVolumes,
    /// Create and start the container.
    Run {
        name: String,
    },
    /// Keep how an ended (or half-made) container went in memory, then delete it, so that it
    /// can run again.
    Remove {
        name: String,
    },
    /// Stop a running container that failed its liveness probe (it restarts by its policy).
    Restart {
        name: String,
    },
    /// The pod is being deleted: set the deadline of its grace period.
    BeginTermination,
    /// Run the preStop hooks of the running containers, at most until the deadline.
    PreStop,
    /// Send SIGTERM (or SIGKILL once the grace period is over) to what still runs.
    Signal {
        kill: bool,
    },
    /// Remove the sandbox, the containers and the volumes.
    TearDown,
    /// Delete the pod's object: it is gone from the node.
    Finish,
    /// Nothing to do until the time (or a change).
    Wait(Option<SystemTime>),
}

pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .and_then(RestartPolicy::parse)
        .unwrap_or(RestartPolicy::Always)
}

/// The grace period of a pod being deleted: the deletion's, else the spec's, else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
}

fn app_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
}

/// How an ended container's restart stands.
pub fn restart_decision(
    policy: RestartPolicy,
    state: &ContainerState,
    memory: &ContainerMemory,
    now: SystemTime,
) -> Restart {
    let Some(ended) = state.ended else {
        return Restart::Never;
    };
    let finished = state.finished_at.unwrap_or(now);
    restart::decide(
        policy,
        &restart::Ended {
            exit_code: ended.code,
            started_at: state.started_at.unwrap_or(finished),
            finished_at: finished,
        },
        memory.restarts_in_a_row,
        now,
    )
}

fn earliest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn stopped(state: &ContainerState) -> bool {
    state.status == Status::Stopped
}

/// Whether every init container has exited 0.
pub fn initialized(pod: &Pod, observed: &Observed) -> bool {
    init_containers(pod).iter().all(|c| {
        observed
            .containers
            .get(&c.name)
            .and_then(|s| s.ended)
            .is_some_and(|e| e.code == 0)
    })
}

/// The pod can never run again: a container failed for good, or all are done.
pub fn terminal(pod: &Pod, observed: &Observed, memory: &PodMemory, now: SystemTime) -> bool {
    let policy = restart_policy(pod);
    let init_failed = init_containers(pod).iter().any(|c| {
        observed
            .containers
            .get(&c.name)
            .and_then(|s| s.ended)
            .is_some_and(|e| e.code != 0)
            && policy == RestartPolicy::Never
    });
    if init_failed {
        return true;
    }
    let apps = app_containers(pod);
    !apps.is_empty()
        && apps.iter().all(|c| match observed.containers.get(&c.name) {
            Some(s) if stopped(s) && s.ended.is_some() => {
                restart_decision(policy, s, &memory.container(&c.name), now) == Restart::Never
            }
            _ => false,
        })
}

/// The next step (see the module's doc).
pub fn next(pod: &Pod, observed: &Observed, memory: &PodMemory, now: SystemTime) -> Step {
    if memory.finished {
        return Step::Wait(None);
    }
    if let Some(t) = &memory.termination {
        return terminating(pod, observed, t, now);
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Step::BeginTermination;
    }
    if observed.sandbox.is_none() {
        return Step::CreateSandbox;
    }
    if !memory.volumes_ready {
        return Step::PrepareVolumes;
    }
    let policy = restart_policy(pod);
    let mut wait: Option<SystemTime> = None;
    // Init containers, in order: each must exit 0 before the next.
    for c in init_containers(pod) {
        let mem = memory.container(&c.name);
        match observed.containers.get(&c.name) {
            Some(s) if s.ended.is_some_and(|e| e.code == 0) => continue,
            Some(s) if stopped(s) => {
                if policy == RestartPolicy::Never {
                    return Step::Wait(None);
                }
                // An init container restarts on failure whatever the pod's policy.
                match restart_decision(RestartPolicy::OnFailure, s, &mem, now) {
                    Restart::At(t) => return Step::Wait(Some(t)),
                    _ => {
                        return Step::Remove {
                            name: c.name.clone(),
                        }
                    }
                }
            }
            Some(s) if s.status == Status::Created => {
                return Step::Remove {
                    name: c.name.clone(),
                }
            }
            Some(_) => return Step::Wait(None),
            None => {
                return match mem.retry_at.filter(|t| *t > now) {
                    Some(t) => Step::Wait(Some(t)),
                    None => Step::Run {
                        name: c.name.clone(),
                    },
                }
            }
        }
    }
    for c in app_containers(pod) {
        let mem = memory.container(&c.name);
        match observed.containers.get(&c.name) {
            None => match mem.retry_at.filter(|t| *t > now) {
                Some(t) => wait = earliest(wait, t),
                None => {
                    return Step::Run {
                        name: c.name.clone(),
                    }
                }
            },
            Some(s) if s.status == Status::Created => {
                return Step::Remove {
                    name: c.name.clone(),
                }
            }
            Some(s) if stopped(s) => match restart_decision(policy, s, &mem, now) {
                Restart::Never => {}
                Restart::Now => {
                    return Step::Remove {
                        name: c.name.clone(),
                    }
                }
                Restart::At(t) => wait = earliest(wait, t),
            },
            Some(_) if mem.unhealthy => {
                return Step::Restart {
                    name: c.name.clone(),
                }
            }
            Some(_) => {}
        }
    }
    Step::Wait(wait)
}

fn terminating(pod: &Pod, observed: &Observed, t: &Termination, now: SystemTime) -> Step {
    let running = observed.containers.values().any(|s| !stopped(s));
    if running && !t.pre_stop_done {
        let has_hook = app_containers(pod).iter().any(|c| {
            c.lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .is_some()
                && observed
                    .containers
                    .get(&c.name)
                    .is_some_and(|s| s.status == Status::Running)
        });
        if has_hook {
            return Step::PreStop;
        }
    }
    if running {
        if now >= t.deadline && !t.kill_sent {
            return Step::Signal { kill: true };
        }
        if !t.term_sent {
            return Step::Signal { kill: false };
        }
        if now >= t.deadline {
            // Killed: wait for the runtime to see them go.
            return Step::Wait(Some(now + Duration::from_millis(100)));
        }
        return Step::Wait(Some(t.deadline));
    }
    if observed.sandbox.is_some() || !observed.containers.is_empty() {
        return Step::TearDown;
    }
    Step::Finish
}

/// What the planner's and the status's tests share: times and observed containers.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::{Duration, SystemTime};

    use flotilla_runtime::{ContainerState, Ended, Status};

    /// `s` seconds into a fixed time.
    pub(crate) fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + s)
    }

    /// A container of sandbox `u` as the runtime shows it, ended with `code` (OOM-killed if
    /// `oom`) when set.
    pub(crate) fn container(
        status: Status,
        code: Option<i32>,
        oom: bool,
        started: u64,
        finished: u64,
    ) -> ContainerState {
        ContainerState {
            id: "x".into(),
            status,
            pid: 1,
            sandbox: Some("u".into()),
            ended: code.map(|code| Ended {
                code,
                oom_killed: oom,
            }),
            started_at: Some(at(started)),
            finished_at: code.map(|_| at(finished)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::at;
    use super::*;
    use serde_json::json;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "a", "image": "busybox", "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}},
                    {"name": "b", "image": "busybox"},
                ],
            },
        }))
        .unwrap()
    }

    fn state(status: Status, ended: Option<i32>, started: u64, finished: u64) -> ContainerState {
        fixtures::container(status, ended, false, started, finished)
    }

    fn ready_memory() -> PodMemory {
        PodMemory {
            uid: "u".into(),
            volumes_ready: true,
            ..PodMemory::default()
        }
    }

    #[test]
    fn a_pod_goes_forward_one_step_at_a_time() {
        let p = pod("Always");
        let mut obs = Observed::default();
        let mut mem = PodMemory::default();
        assert_eq!(next(&p, &obs, &mem, at(0)), Step::CreateSandbox);
        obs.sandbox = Some(Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(next(&p, &obs, &mem, at(0)), Step::PrepareVolumes);
        mem.volumes_ready = true;
        let run = |n: &str| Step::Run { name: n.into() };
        assert_eq!(next(&p, &obs, &mem, at(0)), run("init"));
        obs.containers
            .insert("init".into(), state(Status::Running, None, 0, 0));
        assert_eq!(next(&p, &obs, &mem, at(1)), Step::Wait(None));
        obs.containers
            .insert("init".into(), state(Status::Stopped, Some(0), 0, 1));
        assert_eq!(next(&p, &obs, &mem, at(1)), run("a"));
        obs.containers
            .insert("a".into(), state(Status::Running, None, 1, 0));
        assert_eq!(next(&p, &obs, &mem, at(1)), run("b"));
        obs.containers
            .insert("b".into(), state(Status::Running, None, 1, 0));
        assert_eq!(next(&p, &obs, &mem, at(1)), Step::Wait(None));
        assert!(initialized(&p, &obs));
    }

    #[test]
    fn a_failed_init_container_retries_with_backoff_unless_never() {
        let p = pod("Always");
        let mut obs = Observed {
            sandbox: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ..Observed::default()
        };
        let mut mem = ready_memory();
        obs.containers
            .insert("init".into(), state(Status::Stopped, Some(1), 0, 1));
        assert_eq!(
            next(&p, &obs, &mem, at(1)),
            Step::Remove {
                name: "init".into()
            }
        );
        mem.containers.insert(
            "init".into(),
            ContainerMemory {
                restarts_in_a_row: 1,
                ..Default::default()
            },
        );
        assert_eq!(next(&p, &obs, &mem, at(2)), Step::Wait(Some(at(11))));
        assert!(!initialized(&p, &obs));
        let never = pod("Never");
        assert_eq!(next(&never, &obs, &mem, at(2)), Step::Wait(None));
        assert!(terminal(&never, &obs, &mem, at(2)));
    }

    #[test]
    fn ended_containers_follow_the_restart_policy() {
        let mut obs = Observed {
            sandbox: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ..Observed::default()
        };
        obs.containers
            .insert("init".into(), state(Status::Stopped, Some(0), 0, 1));
        obs.containers
            .insert("a".into(), state(Status::Stopped, Some(0), 1, 5));
        obs.containers
            .insert("b".into(), state(Status::Stopped, Some(2), 1, 5));
        let mut mem = ready_memory();
        let remove = |n: &str| Step::Remove { name: n.into() };
        assert_eq!(next(&pod("Always"), &obs, &mem, at(5)), remove("a"));
        assert_eq!(next(&pod("OnFailure"), &obs, &mem, at(5)), remove("b"));
        assert_eq!(next(&pod("Never"), &obs, &mem, at(5)), Step::Wait(None));
        assert!(terminal(&pod("Never"), &obs, &mem, at(5)));
        assert!(!terminal(&pod("OnFailure"), &obs, &mem, at(5)));
        // In a crash loop: the restart waits for the backoff.
        for c in ["a", "b"] {
            mem.containers.insert(
                c.into(),
                ContainerMemory {
                    restarts_in_a_row: 2,
                    ..Default::default()
                },
            );
        }
        assert_eq!(
            next(&pod("Always"), &obs, &mem, at(6)),
            Step::Wait(Some(at(25)))
        );
        assert_eq!(next(&pod("Always"), &obs, &mem, at(25)), remove("a"));
    }

    #[test]
    fn an_unhealthy_container_is_restarted() {
        let p = pod("Always");
        let mut obs = Observed {
            sandbox: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ..Observed::default()
        };
        obs.containers
            .insert("init".into(), state(Status::Stopped, Some(0), 0, 1));
        obs.containers
            .insert("a".into(), state(Status::Running, None, 1, 0));
        obs.containers
            .insert("b".into(), state(Status::Running, None, 1, 0));
        let mut mem = ready_memory();
        mem.containers.insert(
            "b".into(),
            ContainerMemory {
                unhealthy: true,
                ..Default::default()
            },
        );
        assert_eq!(
            next(&p, &obs, &mem, at(2)),
            Step::Restart { name: "b".into() }
        );
    }

    #[test]
    fn termination_runs_pre_stop_then_term_then_kill_then_tears_down() {
        let mut p = pod("Always");
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2030-01-01T00:00:00Z".parse().unwrap(),
        ));
        let mut obs = Observed {
            sandbox: Some(Ipv4Addr::new(10, 244, 0, 2)),
            ..Observed::default()
        };
        obs.containers
            .insert("a".into(), state(Status::Running, None, 1, 0));
        let mut mem = ready_memory();
        assert_eq!(next(&p, &obs, &mem, at(2)), Step::BeginTermination);
        let mut t = Termination {
            deadline: at(10),
            pre_stop_done: false,
            term_sent: false,
            kill_sent: false,
        };
        mem.termination = Some(t.clone());
        assert_eq!(next(&p, &obs, &mem, at(2)), Step::PreStop);
        t.pre_stop_done = true;
        mem.termination = Some(t.clone());
        assert_eq!(next(&p, &obs, &mem, at(2)), Step::Signal { kill: false });
        t.term_sent = true;
        mem.termination = Some(t.clone());
        assert_eq!(next(&p, &obs, &mem, at(2)), Step::Wait(Some(at(10))));
        assert_eq!(next(&p, &obs, &mem, at(10)), Step::Signal { kill: true });
        obs.containers
            .insert("a".into(), state(Status::Stopped, Some(137), 1, 10));
        assert_eq!(next(&p, &obs, &mem, at(10)), Step::TearDown);
        obs = Observed::default();
        assert_eq!(next(&p, &obs, &mem, at(10)), Step::Finish);
    }
}
