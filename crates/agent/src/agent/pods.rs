//! What the agent reads of a pod and of the replica: whether a pod is this node's, what
//! configMaps and secrets it uses, its memory rebuilt from its reported status, its hostname.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use flotilla_api::meta::parse_rfc3339;
use flotilla_runtime::PodDns;
use flotilla_store::Record;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use crate::env::Lookup;
use crate::plan::{ContainerMemory, PodMemory, Terminated};
use crate::spec::{self};

use super::{CachedPod, CONFIG_MAPS, SECRETS};

/// The pod in `record` if it is bound to `node`. Every node sees every pod's changes: the
/// binding is read first, from a slim view, and only this node's pods are decoded whole.
pub(super) fn parse_pod(node: &str, record: &Record) -> Option<CachedPod> {
    #[derive(serde::Deserialize)]
    struct Slim {
        #[serde(default)]
        spec: Option<SlimSpec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SlimSpec {
        #[serde(default)]
        node_name: Option<String>,
    }
    let slim: Slim = serde_json::from_slice(&record.value).ok()?;
    if slim.spec.and_then(|s| s.node_name).as_deref() != Some(node) {
        return None;
    }
    serde_json::from_slice::<Pod>(&record.value)
        .ok()
        .map(Arc::new)
}

pub(super) fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// `(namespace, kind, name)` of a configMap or secret key.
pub(super) fn config_ref(key: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = if let Some(r) = key.strip_prefix(CONFIG_MAPS) {
        ("configmap", r)
    } else {
        ("secret", key.strip_prefix(SECRETS)?)
    };
    let (ns, name) = rest.split_once('/')?;
    Some((ns, kind, name))
}

/// Whether `pod` uses configMap or secret `name` (env, envFrom, volumes).
pub(super) fn uses(pod: &Pod, kind: &str, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let env = spec::all_containers(pod).any(|c| {
        c.env.iter().flatten().any(|e| {
            let from = e.value_from.as_ref();
            match kind {
                "configmap" => from
                    .and_then(|f| f.config_map_key_ref.as_ref())
                    .is_some_and(|r| r.name == name),
                _ => from
                    .and_then(|f| f.secret_key_ref.as_ref())
                    .is_some_and(|r| r.name == name),
            }
        }) || c.env_from.iter().flatten().any(|f| match kind {
            "configmap" => f.config_map_ref.as_ref().is_some_and(|r| r.name == name),
            _ => f.secret_ref.as_ref().is_some_and(|r| r.name == name),
        })
    });
    env || spec.volumes.iter().flatten().any(|v| match kind {
        "configmap" => {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == name))
                })
        }
        _ => {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some(name))
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.secret.as_ref().is_some_and(|c| c.name == name))
                })
        }
    })
}

/// The replica's configMaps and secrets, read when a container or volume needs them.
pub(super) struct Replica<'a>(pub(super) &'a dyn flotilla_store::Engine);

impl Replica<'_> {
    fn data(&self, key: &str, binary: bool) -> Option<BTreeMap<String, Vec<u8>>> {
        let record = self.0.get(key).ok()?.1?;
        let object: Value = serde_json::from_slice(&record.value).ok()?;
        let mut out = BTreeMap::new();
        for (k, v) in object["data"].as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            let bytes = if binary {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_default()
            } else {
                text.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
        if !binary {
            for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                out.insert(k.clone(), bytes);
            }
        }
        Some(out)
    }
}

impl Lookup for Replica<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.data(&format!("{CONFIG_MAPS}{namespace}/{name}"), false)
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.data(&format!("{SECRETS}{namespace}/{name}"), true)
    }
}

/// The memory of a pod first seen by this agent (a restart): what its reported status says.
pub(super) fn memory_from_status(pod: &Pod) -> PodMemory {
    let mut memory = PodMemory {
        uid: uid_of(pod),
        ..PodMemory::default()
    };
    let Some(status) = &pod.status else {
        return memory;
    };
    memory.start_time = status
        .start_time
        .as_ref()
        .and_then(|t| parse_rfc3339(&t.0.to_string()));
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for s in all {
        let last = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| Terminated {
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_default(),
                started_at: t
                    .started_at
                    .as_ref()
                    .and_then(|x| parse_rfc3339(&x.0.to_string())),
                finished_at: t
                    .finished_at
                    .as_ref()
                    .and_then(|x| parse_rfc3339(&x.0.to_string())),
                container_id: t.container_id.clone().unwrap_or_default(),
            });
        let restarts = s.restart_count.max(0) as u32;
        memory.containers.insert(
            s.name.clone(),
            ContainerMemory {
                restart_count: restarts,
                restarts_in_a_row: restarts,
                last_terminated: last,
                ready: s.ready,
                started: s.started.unwrap_or(false),
                image_id: s.image_id.clone(),
                ..ContainerMemory::default()
            },
        );
    }
    memory
}

pub(super) fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// The pod's `/etc/resolv.conf` by its `dnsPolicy` and `dnsConfig`, as the kubelet writes
/// it: the cluster's DNS (`ClusterFirst`, and `ClusterFirstWithHostNet` on the host's
/// network), the host's file (`Default`, and `ClusterFirst` on the host's network: `None`
/// here), or only `dnsConfig` (`None`); `dnsConfig` adds servers and searches and
/// overrides options by name. `host` is the host's `resolv.conf`, for `Default` with a
/// `dnsConfig`.
pub fn pod_dns(pod: &Pod, host: impl FnOnce() -> String) -> Option<PodDns> {
    let spec = pod.spec.as_ref()?;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let on_host = spec.host_network == Some(true);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domain = CLUSTER_DOMAIN;
    let cluster = policy == "ClusterFirstWithHostNet" || (policy == "ClusterFirst" && !on_host);
    let mut dns = if cluster {
        PodDns {
            nameservers: vec![flotilla_api::services::DNS_IP],
            searches: vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ],
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        PodDns::default()
    } else {
        spec.dns_config.as_ref()?;
        let mut d = PodDns::default();
        for line in host().lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => d.nameservers.extend(
                    words
                        .next()
                        .and_then(|w| w.parse::<std::net::Ipv4Addr>().ok()),
                ),
                Some("search" | "domain") => d.searches = words.map(str::to_string).collect(),
                Some("options") => d.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        d
    };
    if let Some(config) = &spec.dns_config {
        dns.nameservers.extend(
            config
                .nameservers
                .iter()
                .flatten()
                .filter_map(|n| n.parse::<std::net::Ipv4Addr>().ok()),
        );
        for s in config.searches.iter().flatten() {
            if !dns.searches.contains(s) {
                dns.searches.push(s.clone());
            }
        }
        for o in config.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            let text = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            let same = |existing: &String| existing.split(':').next() == Some(name);
            match dns.options.iter().position(same) {
                Some(i) => dns.options[i] = text,
                None => dns.options.push(text),
            }
        }
    }
    dns.nameservers.truncate(3);
    Some(dns)
}

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub(super) fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_else(|| "pod".into());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
}

pub(super) fn find<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    spec::all_containers(pod).find(|c| c.name == name)
}

/// A container instance's identity for its probes: its start time.
pub(super) fn instance_of(state: &flotilla_runtime::ContainerState) -> u64 {
    state
        .started_at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(state.pid as u64, |d| {
            d.as_millis() as u64 ^ ((state.pid as u64) << 48)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn pods_resolve_through_the_cluster_unless_their_policy_says_otherwise() {
        let host = || "nameserver 192.0.2.53\nsearch example.org\noptions edns0\n".to_string();
        let d = pod_dns(&pod(json!({"containers": []})), host).unwrap();
        assert_eq!(
            d.nameservers,
            ["10.96.0.10".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            d.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
        // The host's file, as it is.
        assert_eq!(
            pod_dns(
                &pod(json!({"containers": [], "dnsPolicy": "Default"})),
                host
            ),
            None
        );
        assert_eq!(
            pod_dns(&pod(json!({"containers": [], "hostNetwork": true})), host),
            None
        );
        let d = pod_dns(
            &pod(json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            host,
        )
        .unwrap();
        assert_eq!(d.nameservers[0].to_string(), "10.96.0.10");
        // dnsConfig: servers and searches added, options overridden by name.
        let d = pod_dns(
            &pod(json!({"containers": [], "dnsConfig": {"nameservers": ["1.2.3.4"],
                "searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            host,
        )
        .unwrap();
        assert_eq!(d.nameservers.len(), 2);
        assert_eq!(d.searches.last().unwrap(), "corp.example");
        assert_eq!(d.options, ["ndots:2", "edns0"]);
        let d = pod_dns(
            &pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"]}})),
            host,
        )
        .unwrap();
        assert_eq!((d.nameservers.len(), d.searches.len()), (1, 0));
        let d = pod_dns(
            &pod(json!({"containers": [], "dnsPolicy": "Default", "dnsConfig": {"searches": ["x.y"]}})),
            host,
        )
        .unwrap();
        assert_eq!(d.nameservers[0].to_string(), "192.0.2.53");
        assert_eq!(d.searches, ["example.org", "x.y"]);
        assert_eq!(d.options, ["edns0"]);
    }
}
