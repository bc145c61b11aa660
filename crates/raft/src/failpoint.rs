//! Failpoints: faults a test switches on through `FLOTILLA_FAILPOINTS` (comma-separated
//! `name` or `name=argument`), as etcd's gofail does, to reach a failure that timing alone
//! would rarely give. Each fires once per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The follower's forwarder loses the leader's answer to the first forwarded batch that writes
/// a key starting with the argument, after the leader applied it (a connection reset at the
/// worst moment).
pub(crate) const FORWARD_REPLY_LOST: &str = "forward-reply-lost";

struct Armed {
    /// (name, argument).
    points: Vec<(String, String)>,
    fired: Vec<AtomicBool>,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let points: Vec<(String, String)> = std::env::var("FLOTILLA_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|p| match p.split_once('=') {
                Some((name, arg)) => (name.to_string(), arg.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        if !points.is_empty() {
            tracing::warn!(?points, "failpoints armed (FLOTILLA_FAILPOINTS)");
        }
        let fired = points.iter().map(|_| AtomicBool::new(false)).collect();
        Armed { points, fired }
    })
}

/// Whether failpoint `name` fires now: armed, `applies` to its argument, and not fired before
/// in this process.
pub(crate) fn fire(name: &str, applies: impl Fn(&str) -> bool) -> bool {
    let a = armed();
    a.points
        .iter()
        .position(|(n, arg)| n == name && applies(arg))
        .is_some_and(|i| !a.fired[i].swap(true, Ordering::Relaxed))
}

/// Whether failpoint `name` is armed at all (to skip preparing its check).
pub(crate) fn is_armed(name: &str) -> bool {
    armed().points.iter().any(|(n, _)| n == name)
}
