//! Facts about a Flotilla cluster that several crates share: how many voters it keeps, where
//! Node objects live and how to read their readiness.

use serde_json::Value;

/// Store prefix of Node objects (cluster-scoped, core group).
pub const NODES_PREFIX: &str = "/core/nodes/";

/// How many voters a cluster of `members` healthy nodes keeps: the largest odd number not
/// above it, at most 5.
pub fn target_voters(members: usize) -> usize {
    match members {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    }
}

/// A Node object's `Ready` condition status (`True`, `False`, `Unknown`), if any.
pub fn ready_status(node: &Value) -> Option<&str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}
