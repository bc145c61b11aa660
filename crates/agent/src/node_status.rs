//! The node's pressure conditions (`MemoryPressure`, `DiskPressure`, `PIDPressure`), sampled
//! every few seconds and written onto the Node object only when one flips, with the kubelet's
//! default thresholds: under 100 MiB of memory available, under 10% of the data dir's file
//! system free, over 90% of `pid_max` in use.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_api::meta::now_rfc3339;
use flotilla_controllers::nodes::node_key;
use flotilla_controllers::Context;
use flotilla_store::{Command, StoreError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// What the node has left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub memory_available: u64,
    pub disk_total: u64,
    pub disk_available: u64,
    pub processes: u64,
    pub pid_max: u64,
}

pub const MEMORY_THRESHOLD: u64 = 100 << 20;

/// Each condition: (type, under pressure, reason, message).
pub fn conditions(s: &Sample) -> [(&'static str, bool, &'static str, String); 3] {
    let memory = s.memory_available < MEMORY_THRESHOLD;
    let disk = s.disk_total > 0 && s.disk_available * 10 < s.disk_total;
    let pid = s.pid_max > 0 && s.processes * 10 > s.pid_max * 9;
    [
        (
            "MemoryPressure",
            memory,
            if memory {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            format!("{} MiB of memory available", s.memory_available >> 20),
        ),
        (
            "DiskPressure",
            disk,
            if disk {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            format!(
                "{} of {} MiB free on the data dir's file system",
                s.disk_available >> 20,
                s.disk_total >> 20
            ),
        ),
        (
            "PIDPressure",
            pid,
            if pid {
                "KubeletHasInsufficientPID"
            } else {
                "KubeletHasSufficientPID"
            },
            format!("{} of {} PIDs in use", s.processes, s.pid_max),
        ),
    ]
}

/// Sets the pressure conditions on `node`; returns whether a status flipped (messages and
/// heartbeats alone are not worth a write).
pub fn apply(node: &mut Value, sample: &Sample, now: &str) -> bool {
    let mut flipped = false;
    let list = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = list
        .iter()
        .filter(|c| {
            !["MemoryPressure", "DiskPressure", "PIDPressure"]
                .contains(&c["type"].as_str().unwrap_or(""))
        })
        .cloned()
        .collect();
    for (kind, under, reason, message) in conditions(sample) {
        let status = if under { "True" } else { "False" };
        let old = list.iter().find(|c| c["type"] == kind);
        let since = match old {
            Some(o) if o["status"] == status => o["lastTransitionTime"].clone(),
            _ => {
                flipped = true;
                json!(now)
            }
        };
        out.push(json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }));
    }
    node["status"]["conditions"] = Value::Array(out);
    flipped
}

/// This host now, for a node whose data is under `data_dir`.
pub fn sample(data_dir: &std::path::Path) -> Sample {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_available = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024);
    let (disk_total, disk_available) = flotilla_sys::fs::capacity(data_dir).unwrap_or((0, 0));
    let processes = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|rt| rt.split('/').nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    Sample {
        memory_available,
        disk_total,
        disk_available,
        processes,
        pid_max,
    }
}

/// Samples every `every` and writes the Node's conditions when one flips (and its images
/// when they change), until `stop`.
pub async fn run(
    ctx: Context,
    node: String,
    data_dir: PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    let key = node_key(&node);
    loop {
        let data = data_dir.clone();
        let (s, images) = tokio::task::spawn_blocking(move || {
            (
                sample(&data),
                crate::images::status_images(&data.join("images")),
            )
        })
        .await
        .unwrap_or_default();
        if let Err(e) = write(&ctx, &key, &s, &images).await {
            tracing::debug!(error = %e, "cannot write the node's conditions yet");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Writes the conditions when one flipped, and the image list when it changed.
async fn write(ctx: &Context, key: &str, s: &Sample, images: &Value) -> Result<(), StoreError> {
    for _ in 0..5 {
        let Some(record) = ctx.engine.get(key)?.1 else {
            return Ok(());
        };
        let mut object: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
        let images_changed = object["status"]["images"] != *images;
        if images_changed {
            object["status"]["images"] = images.clone();
        }
        if !apply(&mut object, s, &now_rfc3339()) && !images_changed {
            return Ok(());
        }
        let command = Command::update(
            key,
            serde_json::to_vec(&object).expect("JSON serialises"),
            Some(record.mod_revision),
        );
        match ctx.proposer.propose(command).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_conditions_and_keep_transition_times() {
        let ok = Sample {
            memory_available: 1 << 30,
            disk_total: 100 << 30,
            disk_available: 50 << 30,
            processes: 300,
            pid_max: 4_194_304,
        };
        let mut node = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(apply(&mut node, &ok, "t0"), "new conditions are a flip");
        let conds = node["status"]["conditions"].as_array().unwrap().clone();
        assert_eq!(conds.len(), 4);
        assert_eq!(conds[0]["type"], "Ready");
        assert!(conds[1..].iter().all(|c| c["status"] == "False"));
        // The same again: no flip, transition times kept.
        assert!(!apply(&mut node, &ok, "t1"));
        assert_eq!(node["status"]["conditions"][1]["lastTransitionTime"], "t0");
        // Low memory and a full disk.
        let bad = Sample {
            memory_available: 50 << 20,
            disk_available: 5 << 30,
            ..ok
        };
        assert!(apply(&mut node, &bad, "t2"));
        let c = &node["status"]["conditions"];
        assert_eq!(c[1]["status"], "True");
        assert_eq!(c[1]["reason"], "KubeletHasInsufficientMemory");
        assert_eq!(c[2]["status"], "True");
        assert_eq!(c[3]["status"], "False");
        assert_eq!(c[1]["lastTransitionTime"], "t2");
        assert_eq!(c[3]["lastTransitionTime"], "t0");
    }
}
