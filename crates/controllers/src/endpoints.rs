//! Endpoints and EndpointSlices on the leader: for each service with a selector, the pods it
//! selects that have an address, ready ones as addresses and the others as not ready
//! (`publishNotReadyAddresses` makes every one ready), each service port's `targetPort`
//! resolved per pod (a named port is looked up in the pod's containers). Slices also keep
//! terminating pods, marked `terminating` and not `ready`, as Kubernetes' slice controller
//! does. A pod's change re-plans only the services of its namespace that select it; the
//! write is one command per object, made only when the object would change.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use flotilla_store::{Command, Op, Record, Revision, StoreError};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::informer::Informer;
use crate::queue::{run_workers, Next, WorkQueue};
use crate::workloads::ready_since;
use crate::Context;

pub const SERVICES: &str = "/core/services/";
pub const ENDPOINTS: &str = "/core/endpoints/";
pub const SLICES: &str = "/discovery.k8s.io/endpointslices/";
const PODS: &str = "/core/pods/";
const BY_NAMESPACE: &str = "namespace";
const BY_SERVICE: &str = "service";
/// The label naming a slice's service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// Whether `service` selects `pod` (same namespace, every selector label on the pod). A
/// service without a selector selects nothing: its endpoints are the user's.
pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    pod.metadata.namespace == service.metadata.namespace
        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A selected pod as an endpoint: its address and name, whether it serves (Ready), whether it
/// is being deleted, and the service's ports resolved for it.
struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    serving: bool,
    terminating: bool,
    ports: Vec<EndpointPort>,
}

/// The number of `target` in `pod` for a service port: a number as it is, a name looked up in
/// the pod's containers' ports of the same protocol.
fn resolve(target: &IntOrString, protocol: &str, pod: &Pod) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

fn members<'a>(service: &Service, pods: &[&'a Pod]) -> Vec<Member<'a>> {
    let spec = service.spec.clone().unwrap_or_default();
    let mut out: Vec<Member<'a>> = pods
        .iter()
        .copied()
        .filter(|p| selects(service, p))
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|sp| {
                    let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                    Some(EndpointPort {
                        name: sp.name.clone(),
                        port: resolve(&target, &protocol, pod)?,
                        protocol: Some(protocol),
                        app_protocol: sp.app_protocol.clone(),
                    })
                })
                .collect();
            Some(Member {
                pod,
                ip,
                serving: ready_since(pod).is_some(),
                terminating: pod.metadata.deletion_timestamp.is_some(),
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.ip, &a.pod.metadata.name).cmp(&(&b.ip, &b.pod.metadata.name)));
    out
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// A pod's hostname within a headless service's domain: only when its `subdomain` names the
/// service, as Kubernetes' DNS spec says.
fn hostname(service: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.is_some() && spec.subdomain == service.metadata.name)
        .then(|| spec.hostname.clone())
        .flatten()
}

fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The Endpoints of `service` over the pods of its namespace: one subset per distinct set of
/// resolved ports, terminating pods left out unless `publishNotReadyAddresses`.
pub fn endpoints(service: &Service, pods: &[&Pod]) -> Endpoints {
    let publish = publish_not_ready(service);
    let has_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let mut subsets: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for m in members(service, pods) {
        if m.terminating && !publish {
            continue;
        }
        // A pod none of whose ports resolve serves none of them.
        if has_ports && m.ports.is_empty() {
            continue;
        }
        let id = serde_json::to_string(&m.ports).expect("ports serialise");
        let subset = subsets.entry(id).or_insert_with(|| EndpointSubset {
            ports: has_ports.then(|| m.ports.clone()),
            ..Default::default()
        });
        let address = EndpointAddress {
            ip: m.ip.clone(),
            hostname: hostname(service, m.pod),
            node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(m.pod)),
        };
        let list = if publish || m.serving {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            labels: service.metadata.labels.clone(),
            ..Default::default()
        },
        subsets: Some(subsets.into_values().collect()).filter(|s: &Vec<_>| !s.is_empty()),
    }
}

fn short_hash(text: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h.finish();
    (0..5)
        .map(|_| {
            let c = alphabet[(n % alphabet.len() as u64) as usize] as char;
            n /= alphabet.len() as u64;
            c
        })
        .collect()
}

/// The EndpointSlices of `service`: one per distinct set of resolved ports (named after the
/// service and that set, so a plan names the same slices again), or one empty slice when no
/// pod is selected, as Kubernetes keeps a placeholder.
pub fn slices(service: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let publish = publish_not_ready(service);
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for m in members(service, pods) {
        let id = serde_json::to_string(&m.ports).expect("ports serialise");
        let group = groups
            .entry(id)
            .or_insert_with(|| (m.ports.clone(), Vec::new()));
        group.1.push(Endpoint {
            addresses: vec![m.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (m.serving && !m.terminating)),
                serving: Some(m.serving),
                terminating: Some(m.terminating),
            }),
            hostname: hostname(service, m.pod),
            node_name: m.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(m.pod)),
            ..Default::default()
        });
    }
    if groups.is_empty() {
        groups.insert(String::new(), (Vec::new(), Vec::new()));
    }
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    groups
        .into_iter()
        .map(|(id, (ports, endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", short_hash(&id))),
                namespace: service.metadata.namespace.clone(),
                labels: Some(labels.clone()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: name.clone(),
                    uid: service.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .into_iter()
                    .map(|p| SlicePort {
                        name: p.name,
                        port: Some(p.port),
                        protocol: p.protocol,
                        app_protocol: p.app_protocol,
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// A slice's ports as (name, protocol in lower case, number), as DNS and the proxy read them.
pub fn slice_ports(slice: &EndpointSlice) -> Vec<(String, String, u16)> {
    slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            Some((p.name.clone().unwrap_or_default(), protocol, p.port? as u16))
        })
        .collect()
}

/// Every address of a slice's endpoints, with its endpoint and whether it is ready (an
/// endpoint without conditions is, as the API defines it).
pub fn slice_addresses(slice: &EndpointSlice) -> impl Iterator<Item = (&str, &Endpoint, bool)> {
    slice.endpoints.iter().flatten().flat_map(|e| {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        e.addresses.iter().map(move |a| (a.as_str(), e, ready))
    })
}

/// The write that makes the stored object at `key` (`current`: its revision and JSON) what
/// `desired` says, keeping its server-owned metadata; `None` when nothing would change.
fn write(key: String, current: Option<(Revision, &Value)>, mut desired: Value) -> Option<Op> {
    let Some((revision, stored)) = current else {
        let meta = &mut desired["metadata"];
        meta["uid"] = serde_json::json!(flotilla_api::meta::new_uid());
        meta["creationTimestamp"] = serde_json::json!(flotilla_api::meta::now_rfc3339());
        return Some(Op::Create {
            key,
            value: desired.to_string().into_bytes(),
        });
    };
    for owned in ["uid", "creationTimestamp", "annotations"] {
        if let Some(v) = stored["metadata"].get(owned) {
            desired["metadata"][owned] = v.clone();
        }
    }
    let mut unchanged = stored.clone();
    if let Some(m) = unchanged["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    (unchanged != desired).then(|| Op::Update {
        key,
        value: desired.to_string().into_bytes(),
        expected: Some(revision),
    })
}

fn typed_json<T: serde::Serialize>(kind: &str, api_version: &str, object: &T) -> Value {
    let mut v = serde_json::to_value(object).expect("objects serialise");
    v["kind"] = serde_json::json!(kind);
    v["apiVersion"] = serde_json::json!(api_version);
    v
}

struct Caches {
    services: Informer<Arc<Service>>,
    pods: Informer<Arc<Pod>>,
    endpoints: Informer<Value>,
    slices: Informer<Value>,
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<Arc<T>> {
    serde_json::from_slice(&record.value).ok().map(Arc::new)
}

/// `/core/services/ns/name` → (`ns`, `name`).
fn split(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(SERVICES)?.split_once('/')
}

async fn reconcile(ctx: &Context, c: &Caches, key: &str) -> Result<Next, StoreError> {
    let Some((namespace, name)) = split(key) else {
        return Ok(Next::Done);
    };
    let endpoints_key = format!("{ENDPOINTS}{namespace}/{name}");
    let stored_slices = c
        .slices
        .by_index(BY_SERVICE, &format!("{namespace}/{name}"));
    let mut ops = Vec::new();
    let service = c.services.get(key).map(|s| Arc::clone(&s.object));
    let selected = service.as_ref().filter(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty())
    });
    match selected {
        // Gone (or no longer selecting): its slices go; so do its Endpoints when it is gone.
        None => {
            if service.is_none() {
                if let Some(e) = c.endpoints.get(&endpoints_key) {
                    ops.push(Op::Delete {
                        key: e.key.clone(),
                        expected: Some(e.revision),
                    });
                }
            }
            for s in &stored_slices {
                ops.push(Op::Delete {
                    key: s.key.clone(),
                    expected: Some(s.revision),
                });
            }
        }
        Some(service) => {
            let in_namespace = c.pods.by_index(BY_NAMESPACE, namespace);
            let pods: Vec<&Pod> = in_namespace.iter().map(|p| &*p.object).collect();
            let desired = typed_json("Endpoints", "v1", &endpoints(service, &pods));
            let current = c.endpoints.get(&endpoints_key);
            ops.extend(write(
                endpoints_key.clone(),
                current.as_ref().map(|e| (e.revision, &e.object)),
                desired,
            ));
            let wanted = slices(service, &pods);
            let names: BTreeSet<String> = wanted
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            for s in wanted {
                let slice_key = format!(
                    "{SLICES}{namespace}/{}",
                    s.metadata.name.as_deref().unwrap_or("")
                );
                let current = c.slices.get(&slice_key);
                let desired = typed_json("EndpointSlice", "discovery.k8s.io/v1", &s);
                ops.extend(write(
                    slice_key,
                    current.as_ref().map(|e| (e.revision, &e.object)),
                    desired,
                ));
            }
            for s in &stored_slices {
                if !names.contains(s.object["metadata"]["name"].as_str().unwrap_or("")) {
                    ops.push(Op::Delete {
                        key: s.key.clone(),
                        expected: Some(s.revision),
                    });
                }
            }
        }
    }
    if ops.is_empty() {
        return Ok(Next::Done);
    }
    match ctx.proposer.propose(Command::batch(ops)).await {
        Ok(_) => Ok(Next::Done),
        // A cache was behind the store: plan again once the informers have caught up.
        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
        | Err(StoreError::NotFound { .. }) => Ok(Next::After(std::time::Duration::from_millis(50))),
        Err(e) => Err(e),
    }
}

fn namespace_index<T>(c: &crate::Cached<T>) -> Vec<String> {
    c.key
        .split('/')
        .nth(3)
        .map(str::to_string)
        .into_iter()
        .collect()
}

/// Keeps every selecting service's Endpoints and EndpointSlices until `stop`.
pub async fn run_endpoints(ctx: Context, stop: CancellationToken) {
    let queue = WorkQueue::default();
    let services = {
        let q = queue.clone();
        Informer::builder([SERVICES], parse::<Service>)
            .index(BY_NAMESPACE, namespace_index)
            .on_change(move |c| q.add(c.key.to_string()))
            .build()
    };
    let pods = {
        let (q, services) = (queue.clone(), services.clone());
        Informer::builder([PODS], crate::informer::parse_pod)
            .index(BY_NAMESPACE, namespace_index)
            .on_change(move |c| {
                let ns = namespace_index(c.new.or(c.old).expect("a change has a side"));
                for s in services.by_index(BY_NAMESPACE, ns.first().map_or("", |s| s)) {
                    let touches = |p: Option<&Arc<crate::Cached<Arc<Pod>>>>| {
                        p.is_some_and(|p| selects(&s.object, &p.object))
                    };
                    if touches(c.old) || touches(c.new) {
                        q.add(s.key.clone());
                    }
                }
            })
            .build()
    };
    // Someone else's change to a managed object brings it back.
    let owner = |q: WorkQueue, key: String| {
        let (ns, name) = key.split_at(key.find('/').unwrap_or(0));
        q.add(format!("{SERVICES}{ns}{name}"));
    };
    let endpoints = {
        let q = queue.clone();
        Informer::builder([ENDPOINTS], crate::informer::parse_json)
            .on_change(move |c| {
                if let Some(rest) = c.key.strip_prefix(ENDPOINTS) {
                    owner(q.clone(), rest.to_string());
                }
            })
            .build()
    };
    let slices = {
        let q = queue.clone();
        Informer::builder([SLICES], crate::informer::parse_json)
            .index(BY_SERVICE, |c| {
                let ns = c.object["metadata"]["namespace"].as_str().unwrap_or("");
                c.object["metadata"]["labels"][SERVICE_NAME_LABEL]
                    .as_str()
                    .filter(|_| c.object["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY)
                    .map(|s| format!("{ns}/{s}"))
                    .into_iter()
                    .collect()
            })
            .on_change(move |c| {
                let o = &c.new.or(c.old).expect("a change has a side").object;
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
                if let Some(s) = o["metadata"]["labels"][SERVICE_NAME_LABEL].as_str() {
                    owner(q.clone(), format!("{ns}/{s}"));
                }
            })
            .build()
    };
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    services.spawn(Arc::clone(&ctx.engine), informers.clone(), "endpoints");
    pods.spawn(Arc::clone(&ctx.engine), informers.clone(), "endpoints");
    endpoints.spawn(Arc::clone(&ctx.engine), informers.clone(), "endpoints");
    slices.spawn(Arc::clone(&ctx.engine), informers.clone(), "endpoints");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(services.synced(), pods.synced(), endpoints.synced(), slices.synced()) } => {}
    }
    let caches = Arc::new(Caches {
        services,
        pods,
        endpoints,
        slices,
    });
    run_workers("endpoints", queue, 1, stop, move |key| {
        let (ctx, caches) = (ctx.clone(), Arc::clone(&caches));
        async move { reconcile(&ctx, &caches, &key).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default",
            "uid": "svc-uid", "labels": {"team": "a"}}, "spec": spec}))
        .unwrap()
    }

    /// A pod of app=web at `ip`, its container's port 8080 named `http` (9090 for `alt`).
    fn pod(name: &str, ip: &str, ready: bool, port_name: &str) -> Pod {
        let mut p = crate::workloads::fixtures::pod(name, "rs", "Running", ready);
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let spec = p.spec.as_mut().unwrap();
        spec.containers[0].ports = Some(vec![serde_json::from_value(
            json!({"name": port_name, "containerPort": if port_name == "http" { 8080 } else { 9090 }}),
        )
        .unwrap()]);
        p.status.as_mut().unwrap().pod_ip = Some(ip.into());
        p
    }

    fn web() -> Service {
        service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}))
    }

    #[test]
    fn ready_pods_are_addresses_and_named_ports_resolve_per_pod() {
        let (a, b) = (
            pod("a", "10.244.1.2", true, "http"),
            pod("b", "10.244.2.2", false, "http"),
        );
        let mut c = pod("c", "10.244.1.3", true, "http");
        c.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let e = endpoints(&web(), &[&a, &b, &c]);
        let subsets = e.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        let ips = |l: &Option<Vec<EndpointAddress>>| -> Vec<String> {
            l.iter().flatten().map(|a| a.ip.clone()).collect()
        };
        assert_eq!(ips(&s.addresses), ["10.244.1.2"]);
        assert_eq!(ips(&s.not_ready_addresses), ["10.244.2.2"]);
        assert_eq!(s.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(
            s.addresses.as_ref().unwrap()[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
        assert_eq!(e.metadata.labels.unwrap()["team"], "a");
    }

    #[test]
    fn pods_whose_port_does_not_resolve_are_left_out_and_others_grouped() {
        let (a, b) = (
            pod("a", "10.244.1.2", true, "http"),
            pod("b", "10.244.2.2", true, "alt"),
        );
        assert_eq!(endpoints(&web(), &[&a, &b]).subsets.unwrap().len(), 1);
        let numbered = service(json!({"selector": {"app": "web"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 7000}]}));
        let e = endpoints(&numbered, &[&a, &b]);
        assert_eq!(e.subsets.as_ref().unwrap().len(), 1);
        assert_eq!(e.subsets.unwrap()[0].addresses.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn terminating_and_unready_pods_follow_publish_not_ready_addresses() {
        let mut a = pod("a", "10.244.1.2", true, "http");
        a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
        let b = pod("b", "10.244.2.2", false, "http");
        assert!(endpoints(&web(), &[&a]).subsets.is_none());
        let slice = &slices(&web(), &[&a, &b])[0];
        let conditions: Vec<(bool, bool, bool)> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect();
        assert_eq!(conditions, [(false, true, true), (false, false, false)]);
        let mut publish = web();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let e = endpoints(&publish, &[&a, &b]);
        assert_eq!(e.subsets.unwrap()[0].addresses.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn slices_are_named_stably_labelled_owned_and_kept_when_empty() {
        let a = pod("a", "10.244.1.2", true, "http");
        let one = slices(&web(), &[&a]);
        assert_eq!(one.len(), 1);
        let s = &one[0];
        assert_eq!(slices(&web(), &[&a])[0].metadata.name, s.metadata.name);
        assert!(s.metadata.name.as_ref().unwrap().starts_with("web-"));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(s.endpoints.as_ref().unwrap()[0].addresses, ["10.244.1.2"]);
        let empty = slices(&web(), &[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].endpoints, Some(vec![]));
    }

    #[test]
    fn headless_hostnames_need_the_matching_subdomain() {
        let mut a = pod("a", "10.244.1.2", true, "http");
        a.spec.as_mut().unwrap().hostname = Some("db-0".into());
        assert_eq!(
            endpoints(&web(), &[&a]).subsets.unwrap()[0]
                .addresses
                .as_ref()
                .unwrap()[0]
                .hostname,
            None
        );
        a.spec.as_mut().unwrap().subdomain = Some("web".into());
        let e = endpoints(&web(), &[&a]);
        assert_eq!(
            e.subsets.unwrap()[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("db-0")
        );
    }

    #[test]
    fn writes_keep_server_metadata_and_skip_no_ops() {
        let desired = json!({"metadata": {"name": "web"}, "subsets": []});
        assert!(matches!(
            write("k".into(), None, desired.clone()),
            Some(Op::Create { .. })
        ));
        let stored = json!({"metadata": {"name": "web", "uid": "u", "creationTimestamp": "t",
            "resourceVersion": "4"}, "subsets": []});
        assert_eq!(write("k".into(), Some((4, &stored)), desired.clone()), None);
        let changed = json!({"metadata": {"name": "web"}, "subsets": [{}]});
        match write("k".into(), Some((4, &stored)), changed) {
            Some(Op::Update {
                value, expected, ..
            }) => {
                let v: Value = serde_json::from_slice(&value).unwrap();
                assert_eq!(
                    (v["metadata"]["uid"].as_str(), expected),
                    (Some("u"), Some(4))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
