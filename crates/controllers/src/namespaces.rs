//! The namespaces every cluster has from the start: `default`, `kube-system`, `kube-public`
//! (and `kube-node-lease`, which `kubectl describe node` looks in).

use serde_json::{json, Value};

/// Store prefix of Namespace objects (cluster-scoped, core group).
pub const NAMESPACES_PREFIX: &str = "/core/namespaces/";

/// The namespaces a cluster is created with.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES_PREFIX}{name}")
}

/// A new, active Namespace object.
pub fn new_namespace(name: &str, uid: &str, now: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uid,
            "creationTimestamp": now,
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_is_active_and_labelled_with_its_name() {
        let ns = new_namespace("default", "u", "2026-12-01T00:00:00Z");
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "default"
        );
        assert_eq!(namespace_key("default"), "/core/namespaces/default");
    }
}
