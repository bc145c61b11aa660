//! How a created container ended: its shim (the init's parent) reaps it and writes
//! `ROOT/<id>/exit.json` (exit code or signal, OOM kill, CPU time), which `state` and `wait`
//! read after the commands that made the container have exited.

use std::fs;
use std::path::Path;

use flotilla_sys::ExitStatus;
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;

/// How a detached container ended, as its shim records it.
#[derive(Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    #[serde(rename = "exitCode")]
    pub code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(rename = "oomKilled")]
    pub oom_killed: bool,
    #[serde(rename = "cpuNanoseconds")]
    pub cpu_ns: u64,
}

pub(crate) const EXIT_FILE: &str = "exit.json";

pub(crate) fn record_exit(path: &Path, status: flotilla_sys::Result<ExitStatus>, cgroup: &Cgroup) {
    let (code, signal) = match status {
        Ok(ExitStatus::Exited(c)) => (c, None),
        Ok(ExitStatus::Signaled(s)) => (128 + s as i32, Some(s as i32)),
        Err(_) => (255, None),
    };
    let record = ExitRecord {
        code,
        signal,
        oom_killed: cgroup.oom_kills() > 0,
        cpu_ns: cgroup.usage().0,
    };
    let tmp = path.with_extension("tmp");
    if fs::write(&tmp, serde_json::to_vec(&record).expect("exit serialises")).is_ok() {
        let _ = fs::rename(tmp, path);
    }
}
