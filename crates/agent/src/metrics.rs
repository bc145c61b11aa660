//! Resource usage for `kubectl top`, which Kubernetes gets from metrics-server scraping
//! kubelets: every few seconds the node reads each running container's cgroup (CPU time and
//! memory in use) and the host's counters, and keeps the CPU rates over the last interval. The
//! API servers ask for the latest sample through the tunnel ([`flotilla_tunnel::Request::Metrics`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_runtime::container::{Runtime, Status};
use flotilla_tunnel::{NodeUsage, Usage};
use tokio_util::sync::CancellationToken;

/// Counters at one instant: CPU time (ns) and memory in use (bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub node: (u64, u64),
    pub containers: BTreeMap<String, (u64, u64)>,
}

/// Usage from two readings `seconds` apart: CPU as the rate between them, memory as now.
/// A container not in the first reading (just started) is left out until the next one.
pub fn rates(before: &Counters, now: &Counters, seconds: f64, timestamp: String) -> NodeUsage {
    let rate = |a: u64, b: u64| {
        if seconds <= 0.0 {
            0
        } else {
            (b.saturating_sub(a) as f64 / seconds) as u64
        }
    };
    NodeUsage {
        timestamp,
        window_seconds: seconds,
        node: Usage {
            cpu_nanocores: rate(before.node.0, now.node.0),
            memory_bytes: now.node.1,
        },
        containers: now
            .containers
            .iter()
            .filter_map(|(id, (cpu, mem))| {
                let (old, _) = before.containers.get(id)?;
                Some((
                    id.clone(),
                    Usage {
                        cpu_nanocores: rate(*old, *cpu),
                        memory_bytes: *mem,
                    },
                ))
            })
            .collect(),
    }
}

/// The host's busy CPU time (ns) from `/proc/stat` and memory in use (total less available)
/// from `/proc/meminfo`.
fn host() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux: a tick is 10 ms.
    (
        busy * 10_000_000,
        kb("MemTotal:").saturating_sub(kb("MemAvailable:")) * 1024,
    )
}

/// Reads the counters of the running containers under the runtime's `root`.
pub fn read(root: &Path) -> Counters {
    let rt = Runtime::new(root);
    let containers = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.starts_with('.') {
                return None;
            }
            match rt.state(&id) {
                Ok((state, Status::Running)) => Some((id, state.cgroup.usage())),
                _ => None,
            }
        })
        .collect();
    Counters {
        node: host(),
        containers,
    }
}

/// The latest usage, kept up to date by [`Sampler::run`].
#[derive(Default)]
pub struct Sampler {
    latest: Mutex<Option<NodeUsage>>,
}

impl Sampler {
    pub fn latest(&self) -> Option<NodeUsage> {
        self.latest.lock().expect("not poisoned").clone()
    }

    /// Samples the containers under `root` every `every` until `stop`.
    pub async fn run(self: Arc<Self>, root: PathBuf, every: Duration, stop: CancellationToken) {
        let mut before: Option<(Instant, Counters)> = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let root = root.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || read(&root)).await else {
                continue;
            };
            let at = Instant::now();
            if let Some((then, old)) = &before {
                let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                let usage = rates(old, &now, (at - *then).as_secs_f64(), stamp);
                *self.latest.lock().expect("not poisoned") = Some(usage);
            }
            before = Some((at, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_rate_between_readings_and_memory_the_latest() {
        let before = Counters {
            node: (10_000_000_000, 1 << 30),
            containers: BTreeMap::from([("u_a".to_string(), (1_000_000_000, 5 << 20))]),
        };
        let now = Counters {
            node: (12_000_000_000, 2 << 30),
            containers: BTreeMap::from([
                ("u_a".to_string(), (1_500_000_000, 6 << 20)),
                ("u_new".to_string(), (7, 1)),
            ]),
        };
        let usage = rates(&before, &now, 2.0, "t".into());
        assert_eq!(usage.node.cpu_nanocores, 1_000_000_000, "2 s of CPU in 2 s");
        assert_eq!(usage.node.memory_bytes, 2 << 30);
        assert_eq!(
            usage.containers,
            BTreeMap::from([(
                "u_a".to_string(),
                Usage {
                    cpu_nanocores: 250_000_000,
                    memory_bytes: 6 << 20
                }
            )]),
            "a container seen once has no rate yet"
        );
    }
}
