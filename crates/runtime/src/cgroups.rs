//! cgroups for a container: memory, CPU and pids limits on cgroup v1, v2 or the hybrid layout
//! (v1 controllers under `/sys/fs/cgroup/<controller>`, a v2 tree at `/sys/fs/cgroup/unified`),
//! detected from the mounted file systems, never assumed. Each container gets a directory
//! `flotilla/<id>` in every controller it uses.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cgroup file systems of this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// One v2 tree (the root has `cgroup.controllers` with memory, cpu and pids).
    Unified(PathBuf),
    /// v1 controllers, each its own tree under the root.
    V1(PathBuf),
}

/// The limits a container asks for (from the OCI spec's `linux.resources`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    /// CPU shares (v1; converted to a v2 weight).
    pub cpu_shares: Option<u64>,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub pids: Option<i64>,
}

/// The cgroups of one container: one directory per controller (v1) or one (v2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub layout: Layout,
    /// `flotilla/<id>`.
    pub relative: PathBuf,
}

/// The v1 controllers a container gets a directory in (no cpuset: no cpuset limits yet).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];

/// Finds the layout under `root` (`/sys/fs/cgroup` on a real host).
pub fn detect(root: &Path) -> io::Result<Layout> {
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if ["memory", "cpu", "pids"]
        .iter()
        .all(|c| controllers.split_whitespace().any(|x| x == *c))
    {
        return Ok(Layout::Unified(root.to_path_buf()));
    }
    if root.join("memory").join("memory.limit_in_bytes").exists() {
        return Ok(Layout::V1(root.to_path_buf()));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no cgroup controllers for memory, cpu and pids under {} (neither v2 with them enabled nor v1)",
            root.display()
        ),
    ))
}

fn write(path: &Path, value: impl std::fmt::Display) -> io::Result<()> {
    fs::write(path, value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A v2 weight (1–10000) from v1 shares (2–262144), as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl Cgroup {
    pub fn new(layout: Layout, id: &str) -> Cgroup {
        Cgroup {
            layout,
            relative: Path::new("flotilla").join(id),
        }
    }

    /// Every directory of this cgroup.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::Unified(root) => vec![root.join(&self.relative)],
            Layout::V1(root) => V1_CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(&self.relative))
                .collect(),
        }
    }

    fn v1(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(root) => Some(root.join(controller).join(&self.relative)),
            Layout::Unified(_) => None,
        }
    }

    /// Creates the directories and writes the limits.
    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        match &self.layout {
            Layout::Unified(root) => {
                // Controllers must be enabled in every ancestor for the leaf to have them.
                let parent = root.join("flotilla");
                fs::create_dir_all(&parent)?;
                for dir in [root.as_path(), parent.as_path()] {
                    let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
                }
                let dir = root.join(&self.relative);
                fs::create_dir_all(&dir)?;
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.max"), m)?;
                    let _ = write(&dir.join("memory.swap.max"), 0);
                }
                if let Some(s) = limits.cpu_shares {
                    write(&dir.join("cpu.weight"), shares_to_weight(s))?;
                }
                if let Some(q) = limits.cpu_quota_us.filter(|q| *q > 0) {
                    let period = limits.cpu_period_us.unwrap_or(100_000);
                    write(&dir.join("cpu.max"), format!("{q} {period}"))?;
                }
                if let Some(p) = limits.pids.filter(|p| *p > 0) {
                    write(&dir.join("pids.max"), p)?;
                }
            }
            Layout::V1(root) => {
                for c in V1_CONTROLLERS {
                    fs::create_dir_all(root.join(c).join(&self.relative))?;
                }
                let memory = self.v1("memory").expect("v1");
                if let Some(m) = limits.memory_bytes {
                    write(&memory.join("memory.limit_in_bytes"), m)?;
                    let swap = memory.join("memory.memsw.limit_in_bytes");
                    if swap.exists() {
                        let _ = write(&swap, m);
                    }
                }
                let cpu = self.v1("cpu").expect("v1");
                if let Some(s) = limits.cpu_shares {
                    write(&cpu.join("cpu.shares"), s)?;
                }
                if let Some(q) = limits.cpu_quota_us.filter(|q| *q > 0) {
                    write(
                        &cpu.join("cpu.cfs_period_us"),
                        limits.cpu_period_us.unwrap_or(100_000),
                    )?;
                    write(&cpu.join("cpu.cfs_quota_us"), q)?;
                }
                if let Some(p) = limits.pids.filter(|p| *p > 0) {
                    write(&self.v1("pids").expect("v1").join("pids.max"), p)?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` into every controller of this cgroup.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), pid)?;
        }
        Ok(())
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match &self.layout {
            Layout::Unified(root) => root.join(&self.relative),
            Layout::V1(_) => self.v1("pids").expect("v1"),
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let text = match &self.layout {
            Layout::Unified(root) => {
                fs::read_to_string(root.join(&self.relative).join("memory.events"))
            }
            Layout::V1(_) => {
                fs::read_to_string(self.v1("memory").expect("v1").join("memory.oom_control"))
            }
        };
        text.unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used, in nanoseconds, and memory in use, in bytes.
    pub fn usage(&self) -> (u64, u64) {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        match &self.layout {
            Layout::Unified(root) => {
                let dir = root.join(&self.relative);
                let cpu = read(dir.join("cpu.stat"))
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1000;
                let mem = read(dir.join("memory.current")).trim().parse().unwrap_or(0);
                (cpu, mem)
            }
            Layout::V1(root) => {
                let cpu = read(
                    root.join("cpuacct")
                        .join(&self.relative)
                        .join("cpuacct.usage"),
                )
                .trim()
                .parse()
                .unwrap_or(0);
                let mem = read(self.v1("memory").expect("v1").join("memory.usage_in_bytes"))
                    .trim()
                    .parse()
                    .unwrap_or(0);
                (cpu, mem)
            }
        }
    }

    /// Removes the directories (the cgroup must be empty).
    pub fn remove(&self) -> io::Result<()> {
        for dir in self.dirs() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_detected_from_the_files() {
        let v2 = tempfile::tempdir().unwrap();
        fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(
            detect(v2.path()).unwrap(),
            Layout::Unified(v2.path().to_path_buf())
        );
        let hybrid = tempfile::tempdir().unwrap();
        fs::create_dir_all(hybrid.path().join("memory")).unwrap();
        fs::write(hybrid.path().join("memory/memory.limit_in_bytes"), "max").unwrap();
        // A v2 tree with only hugetlb (as on these machines' `unified`) is not enough.
        fs::write(hybrid.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(
            detect(hybrid.path()).unwrap(),
            Layout::V1(hybrid.path().to_path_buf())
        );
        let none = tempfile::tempdir().unwrap();
        assert!(detect(none.path())
            .unwrap_err()
            .to_string()
            .contains("no cgroup controllers"));
    }

    #[test]
    fn v2_limits_are_written_where_the_kernel_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(Layout::Unified(root.path().to_path_buf()), "c1");
        cg.create(&Limits {
            memory_bytes: Some(64 << 20),
            cpu_shares: Some(1024),
            cpu_quota_us: Some(50_000),
            cpu_period_us: None,
            pids: Some(32),
        })
        .unwrap();
        let dir = root.path().join("flotilla/c1");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "32");
        assert_eq!(fs::read_to_string(dir.join("cpu.weight")).unwrap(), "39");
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
