//! `/version` and legacy discovery (`/api`, `/apis`, one `APIResourceList` per group-version),
//! all from the resource table of `flotilla-api`. kubectl 1.32 needs `shortNames` for `po`,
//! `categories` for `get all`, and subresources listed as `pods/eviction`.

use std::collections::BTreeMap;

use flotilla_api::{Resource, RESOURCES};
use serde_json::{json, Value};

/// The Kubernetes version the API behaves as. kubectl's dispatcher on these machines picks the
/// kubectl binary by the minor version, so it must be at least 32.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, arch()),
    })
}

/// The architecture as Go names it (`amd64`, `arm64`).
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Resources that are requests, not stored objects: `kubectl auth whoami` and `auth can-i`.
pub const REVIEWS: &[Resource] = &[
    review(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
    ),
];

const fn review(group: &'static str, kind: &'static str, plural: &'static str) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular: "",
        namespaced: false,
        short_names: &[],
        categories: &[],
        verbs: &["create"],
        subresources: &[],
    }
}

/// `metrics.k8s.io/v1beta1`, read-only, built from the nodes' samples (see `usage.rs`).
pub const METRICS: &[Resource] = &[
    metrics("PodMetrics", "pods", true),
    metrics("NodeMetrics", "nodes", false),
];

const fn metrics(kind: &'static str, plural: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: crate::usage::GROUP,
        version: crate::usage::VERSION,
        kind,
        plural,
        singular: "",
        namespaced,
        short_names: &[],
        categories: &[],
        verbs: &["get", "list"],
        subresources: &[],
    }
}

/// Every resource discovery lists.
fn served() -> impl Iterator<Item = &'static Resource> {
    RESOURCES.iter().chain(REVIEWS.iter()).chain(METRICS.iter())
}

/// The named groups and their versions, in table order.
fn groups() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut groups: BTreeMap<&'static str, Vec<&'static str>> = BTreeMap::new();
    for r in served().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(r.group).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    groups
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({
                "name": name,
                "versions": versions,
                "preferredVersion": versions[0],
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>` (one group), if it exists.
pub fn group(name: &str) -> Option<Value> {
    let versions = groups().remove(name)?;
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions,
        "preferredVersion": versions[0],
    }))
}

fn entry(r: &Resource) -> Value {
    let mut v = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    v
}

/// The entry of subresource `sub` of `r`, with the verbs and kind Kubernetes gives it.
fn subresource(r: &Resource, sub: &str) -> Value {
    let (kind, verbs, group_version): (&str, &[&str], Option<(&str, &str)>) = match sub {
        "status" => (r.kind, &["get", "patch", "update"], None),
        "scale" => (
            "Scale",
            &["get", "patch", "update"],
            Some(("autoscaling", "v1")),
        ),
        "eviction" => ("Eviction", &["create"], Some(("policy", "v1"))),
        "log" => ("Pod", &["get"], None),
        "exec" => ("PodExecOptions", &["create", "get"], None),
        "attach" => ("PodAttachOptions", &["create", "get"], None),
        "portforward" => ("PodPortForwardOptions", &["create", "get"], None),
        _ => (r.kind, &["get"], None),
    };
    let mut v = json!({
        "name": format!("{}/{sub}", r.plural),
        "singularName": "",
        "namespaced": r.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if let Some((group, version)) = group_version {
        v["group"] = json!(group);
        v["version"] = json!(version);
    }
    v
}

/// `GET /api/v1` or `/apis/<group>/<version>`, if that group-version is served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = served()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let group_version = served[0].api_version();
    let mut resources = Vec::new();
    for r in served {
        resources.push(entry(r));
        resources.extend(r.subresources.iter().map(|s| subresource(r, s)));
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_discovery_lists_pods_with_what_kubectl_needs() {
        let list = resource_list("", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        let resources = list["resources"].as_array().unwrap();
        let pods = resources.iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["namespaced"], true);
        let eviction = resources
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
        let ns = resources
            .iter()
            .find(|r| r["name"] == "namespaces")
            .unwrap();
        assert_eq!(ns["namespaced"], false);
    }

    #[test]
    fn groups_are_listed_with_their_versions() {
        let list = group_list();
        let names: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "authentication.k8s.io",
                "authorization.k8s.io",
                "batch",
                "discovery.k8s.io",
                "metrics.k8s.io",
                "policy",
                "scheduling.k8s.io"
            ]
        );
        assert_eq!(
            list["groups"][0]["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert!(resource_list("apps", "v1").is_some());
        assert!(resource_list("apps", "v2").is_none());
        assert!(group("apps").is_some());
        assert!(group("nope").is_none());
        assert_eq!(version()["minor"], "32");
    }
}
