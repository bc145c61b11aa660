//! When a container that ended is started again, as the kubelet decides it: by the pod's
//! restart policy, with an exponential backoff between restarts (10 s doubling, capped at
//! 5 minutes) that starts over once a container has run for 10 minutes. A container waiting
//! out its backoff is in `CrashLoopBackOff`.

use std::time::{Duration, SystemTime};

use flotilla_util::Backoff;

/// The pod's `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Kubernetes' names; `None` for anything else (admission refuses it before).
    pub fn parse(name: &str) -> Option<RestartPolicy> {
        match name {
            "Always" => Some(RestartPolicy::Always),
            "OnFailure" => Some(RestartPolicy::OnFailure),
            "Never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }
}

/// The kubelet's container restart backoff.
pub const RESTART_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_secs(10), Duration::from_secs(300));

/// A container that ran this long before it ended starts its backoff over.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How a container ended, as the runtime observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: i32,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

/// What to do with a container that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// It stays as it ended (the policy says so): `Completed` or `Error`.
    Never,
    /// Start it again now.
    Now,
    /// Start it again at this time; until then it is in `CrashLoopBackOff`.
    At(SystemTime),
}

/// The decision for a container that `ended` and has been restarted `restarts` times in a row
/// without running for [`BACKOFF_RESET`].
pub fn decide(
    policy: RestartPolicy,
    ended: &Ended,
    restarts_in_a_row: u32,
    now: SystemTime,
) -> Restart {
    let wanted = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => ended.exit_code != 0,
        RestartPolicy::Never => false,
    };
    if !wanted {
        return Restart::Never;
    }
    let ran_for = ended
        .finished_at
        .duration_since(ended.started_at)
        .unwrap_or_default();
    // The first restart, and the first after a long run, wait as much as the second would
    // not: the kubelet restarts at once and only then starts backing off.
    if restarts_in_a_row == 0 || ran_for >= BACKOFF_RESET {
        return Restart::Now;
    }
    let due = ended.finished_at + RESTART_BACKOFF.delay(restarts_in_a_row);
    if due <= now {
        Restart::Now
    } else {
        Restart::At(due)
    }
}

/// The reason a container that ended and stays so reports (`state.terminated.reason`).
pub fn terminated_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
    }

    fn ended(code: i32, started: u64, finished: u64) -> Ended {
        Ended {
            exit_code: code,
            started_at: at(started),
            finished_at: at(finished),
        }
    }

    #[test]
    fn the_policy_decides_whether_at_all() {
        let ok = ended(0, 0, 1);
        let failed = ended(1, 0, 1);
        assert_eq!(decide(RestartPolicy::Always, &ok, 0, at(1)), Restart::Now);
        assert_eq!(
            decide(RestartPolicy::OnFailure, &ok, 0, at(1)),
            Restart::Never
        );
        assert_eq!(
            decide(RestartPolicy::OnFailure, &failed, 0, at(1)),
            Restart::Now
        );
        assert_eq!(
            decide(RestartPolicy::Never, &failed, 0, at(1)),
            Restart::Never
        );
        assert_eq!(
            RestartPolicy::parse("OnFailure"),
            Some(RestartPolicy::OnFailure)
        );
        assert_eq!(RestartPolicy::parse("sometimes"), None);
    }

    #[test]
    fn a_crash_loop_backs_off_10s_doubling_to_5_minutes() {
        // A container that dies a second after each start: the waits after each death.
        let waits: Vec<Option<u64>> = (0..8)
            .map(
                |n| match decide(RestartPolicy::Always, &ended(1, 100, 101), n, at(101)) {
                    Restart::Now => None,
                    Restart::At(due) => Some(due.duration_since(at(101)).unwrap().as_secs()),
                    Restart::Never => panic!("Always restarts"),
                },
            )
            .collect();
        assert_eq!(
            waits,
            [
                None,
                Some(10),
                Some(20),
                Some(40),
                Some(80),
                Some(160),
                Some(300),
                Some(300)
            ]
        );
        // Once the wait is over, it is started.
        assert_eq!(
            decide(RestartPolicy::Always, &ended(1, 100, 101), 2, at(121)),
            Restart::Now
        );
    }

    #[test]
    fn ten_minutes_of_running_start_the_backoff_over() {
        let long_run = ended(1, 0, 600);
        assert_eq!(
            decide(RestartPolicy::Always, &long_run, 6, at(600)),
            Restart::Now
        );
        let short_run = ended(1, 0, 599);
        assert!(matches!(
            decide(RestartPolicy::Always, &short_run, 6, at(599)),
            Restart::At(_)
        ));
    }

    #[test]
    fn reasons_as_kubernetes_names_them() {
        assert_eq!(terminated_reason(0, false), "Completed");
        assert_eq!(terminated_reason(1, false), "Error");
        assert_eq!(terminated_reason(137, true), "OOMKilled");
    }
}
