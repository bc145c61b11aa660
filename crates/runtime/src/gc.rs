//! Image garbage collection by disk usage, as the kubelet does it: when the image store's
//! file system is fuller than the high threshold, images no container uses are removed,
//! least recently used first, until it is below the low threshold. An image used (or
//! fetched) less than the minimum age ago stays, so that a pod about to start keeps it.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, SystemTime};

use crate::images::ImageStore;
use crate::RuntimeError;

/// When and how much to collect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Collect when the file system is at least this full (percent).
    pub high_percent: u8,
    /// Until it is below this (percent).
    pub low_percent: u8,
    /// Keep images used more recently than this.
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// An image the collector may remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub manifest: String,
    pub size: u64,
    pub last_used: SystemTime,
}

/// The names to remove, oldest use first, to bring `used` of `total` bytes below the low
/// threshold; nothing while below the high one. `in_use`: manifests containers run.
pub fn plan(
    candidates: &[Candidate],
    in_use: &BTreeSet<String>,
    used: u64,
    total: u64,
    policy: GcPolicy,
    now: SystemTime,
) -> Vec<String> {
    if total == 0 || (used as u128) * 100 < (policy.high_percent as u128) * (total as u128) {
        return Vec::new();
    }
    let goal = (policy.low_percent as u128 * total as u128 / 100) as u64;
    let mut to_free = used.saturating_sub(goal);
    let mut removable: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !in_use.contains(&c.manifest))
        .filter(|c| now.duration_since(c.last_used).unwrap_or_default() >= policy.min_age)
        .collect();
    removable.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.name.cmp(&b.name)));
    let mut out = Vec::new();
    for c in removable {
        if to_free == 0 {
            break;
        }
        out.push(c.name.clone());
        to_free = to_free.saturating_sub(c.size);
    }
    out
}

impl ImageStore {
    fn used_marker(&self, manifest: &str) -> std::path::PathBuf {
        self.root
            .join("used")
            .join(manifest.trim_start_matches("sha256:"))
    }

    /// Records that `manifest` is used now (a container's root mounted, the image fetched).
    pub fn mark_used(&self, manifest: &str) {
        let path = self.used_marker(manifest);
        let _ = fs::create_dir_all(path.parent().expect("used dir"));
        let _ = fs::File::create(path);
    }

    /// The manifests containers' roots hold (leases).
    pub fn leased(&self) -> BTreeSet<String> {
        fs::read_dir(self.root.join("leases"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Every named image, with its size and last use.
    pub fn candidates(&self) -> Result<Vec<Candidate>, RuntimeError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|i| Candidate {
                last_used: fs::metadata(self.used_marker(&i.manifest))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                name: i.name,
                manifest: i.manifest,
                size: i.size,
            })
            .collect())
    }

    /// Removes what [`plan`] says for a file system of `total` bytes with `available` free;
    /// returns the names removed.
    pub fn collect_garbage(
        &self,
        policy: GcPolicy,
        (total, available): (u64, u64),
        now: SystemTime,
    ) -> Result<Vec<String>, RuntimeError> {
        let names = plan(
            &self.candidates()?,
            &self.leased(),
            total.saturating_sub(available),
            total,
            policy,
            now,
        );
        for name in &names {
            self.remove(name)?;
        }
        let kept: BTreeSet<String> = self.refs().into_values().collect();
        for entry in fs::read_dir(self.root.join("used"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let manifest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !kept.contains(&manifest) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, size: u64, age_s: u64, now: SystemTime) -> Candidate {
        Candidate {
            name: name.into(),
            manifest: format!("m-{name}"),
            size,
            last_used: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn oldest_unused_images_go_first_until_below_the_low_threshold() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let policy = GcPolicy::default();
        let images = [
            c("old", 10, 3600, now),
            c("older", 10, 7200, now),
            c("running", 50, 9000, now),
            c("fresh", 30, 10, now),
            c("mid", 10, 600, now),
        ];
        let in_use: BTreeSet<String> = ["m-running".to_string()].into();
        // 84 % full: below the high threshold, nothing.
        assert!(plan(&images, &in_use, 84, 100, policy, now).is_empty());
        // 90 % full: 10 bytes to free to reach 80 %: the least recently used unused one.
        assert_eq!(plan(&images, &in_use, 90, 100, policy, now), ["older"]);
        // 100 % full: 20 bytes: two, never the running one or the fresh one.
        assert_eq!(
            plan(&images, &in_use, 100, 100, policy, now),
            ["older", "old"]
        );
        // Even at 100 % with a low threshold of 0, running and fresh images stay.
        let all = GcPolicy {
            low_percent: 0,
            ..policy
        };
        assert_eq!(
            plan(&images, &in_use, 100, 100, all, now),
            ["older", "old", "mid"]
        );
    }
}
