//! The resources Flotilla serves: what discovery lists (`/api/v1`, `/apis/<group>/<version>`),
//! what the router accepts, and where each object lives in the store.
//!
//! Store keys follow DESIGN.md: `/{group}/{resource}/{namespace}/{name}`, the core group written
//! `core`, cluster-scoped objects without the namespace segment.

/// One resource type of one group-version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment and store segment (`deployments`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    /// kubectl needs these to resolve `po`, `deploy`, `svc`.
    pub short_names: &'static [&'static str],
    /// `all` makes `kubectl get all` include the resource.
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Subresources served under `<plural>/<name>/<subresource>`.
    pub subresources: &'static [&'static str],
}

/// The verbs of an ordinary resource.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces cannot be deleted as a collection.
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Resource {
    Resource {
        group: "",
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories,
        verbs: ALL_VERBS,
        subresources,
    }
}

const fn grouped(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced: true,
        short_names,
        categories: ALL,
        verbs: ALL_VERBS,
        subresources,
    }
}

/// Every resource served, in discovery order.
pub const RESOURCES: &[Resource] = &[
    Resource {
        verbs: NAMESPACE_VERBS,
        ..core(
            "Namespace",
            "namespaces",
            "namespace",
            false,
            &["ns"],
            NONE,
            &["status"],
        )
    },
    core(
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        &[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "attach",
            "portforward",
        ],
    ),
    core(
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL,
        &["status"],
    ),
    core(
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
    ),
    core(
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        NONE,
        NONE,
    ),
    core("Secret", "secrets", "secret", true, NONE, NONE, NONE),
    core("Node", "nodes", "node", false, &["no"], NONE, &["status"]),
    core("Event", "events", "event", true, &["ev"], NONE, NONE),
    core(
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        NONE,
    ),
    grouped(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        &["scale", "status"],
    ),
    grouped(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        &["scale", "status"],
    ),
    grouped(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        &["status"],
    ),
    grouped("batch", "Job", "jobs", "job", NONE, &["status"]),
    grouped(
        "batch",
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        &["status"],
    ),
    Resource {
        namespaced: false,
        categories: NONE,
        ..grouped(
            "scheduling.k8s.io",
            "PriorityClass",
            "priorityclasses",
            "priorityclass",
            &["pc"],
            NONE,
        )
    },
    Resource {
        categories: NONE,
        ..grouped(
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices",
            "endpointslice",
            NONE,
            NONE,
        )
    },
    Resource {
        categories: NONE,
        ..grouped(
            "policy",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            &["pdb"],
            &["status"],
        )
    },
];

impl Resource {
    /// `v1` for the core group, else `group/version`, as in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group's segment in store keys.
    fn store_group(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }
}

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of objects with `apiVersion` and `kind` (as in an owner reference).
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Where one object lives in the store. `namespace` is ignored for cluster-scoped resources.
pub fn store_key(resource: &Resource, namespace: &str, name: &str) -> String {
    if resource.namespaced {
        format!(
            "/{}/{}/{namespace}/{name}",
            resource.store_group(),
            resource.plural
        )
    } else {
        format!("/{}/{}/{name}", resource.store_group(), resource.plural)
    }
}

/// The prefix under which a list finds its objects: one namespace's, or every namespace's
/// with `None` (and always all of a cluster-scoped resource).
pub fn store_prefix(resource: &Resource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced => {
            format!("/{}/{}/{ns}/", resource.store_group(), resource.plural)
        }
        _ => format!("/{}/{}/", resource.store_group(), resource.plural),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_design() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(store_key(pods, "default", "web"), "/core/pods/default/web");
        assert_eq!(store_prefix(pods, Some("default")), "/core/pods/default/");
        assert_eq!(store_prefix(pods, None), "/core/pods/");
        let nodes = find("", "v1", "nodes").unwrap();
        // The key node registration already writes.
        assert_eq!(store_key(nodes, "ignored", "n1"), "/core/nodes/n1");
        assert_eq!(store_prefix(nodes, Some("default")), "/core/nodes/");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(store_key(deploy, "ns", "d"), "/apps/deployments/ns/d");
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(pods.api_version(), "v1");
        assert_eq!(find_kind("apps/v1", "Deployment"), Some(deploy));
        assert_eq!(find_kind("v1", "Deployment"), None);
    }

    #[test]
    fn a_namespace_prefix_never_covers_another_namespace() {
        // "/core/pods/a/" must not be a prefix of "/core/pods/ab/x".
        let pods = find("", "v1", "pods").unwrap();
        let prefix = store_prefix(pods, Some("a"));
        assert!(!store_key(pods, "ab", "x").starts_with(&prefix));
        assert!(store_key(pods, "a", "x").starts_with(&prefix));
    }

    #[test]
    fn the_table_is_consistent() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RESOURCES {
            assert!(
                seen.insert((r.group, r.version, r.plural)),
                "{} twice",
                r.plural
            );
            assert!(r.verbs.contains(&"get") && r.verbs.contains(&"watch"));
            assert_eq!(r.plural, r.plural.to_lowercase());
            assert_eq!(r.singular, r.kind.to_lowercase());
        }
        let short: Vec<&str> = RESOURCES
            .iter()
            .flat_map(|r| r.short_names)
            .copied()
            .collect();
        for name in ["po", "deploy", "svc", "ns", "cm", "rs", "ds", "no"] {
            assert!(short.contains(&name), "no short name {name}");
        }
        let all: Vec<&str> = RESOURCES
            .iter()
            .filter(|r| r.categories.contains(&"all"))
            .map(|r| r.plural)
            .collect();
        for plural in [
            "pods",
            "services",
            "deployments",
            "replicasets",
            "daemonsets",
        ] {
            assert!(all.contains(&plural), "{plural} missing from `get all`");
        }
    }
}
