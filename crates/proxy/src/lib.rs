//! Service addresses on every node (DESIGN.md §4): each node programs nftables from its own
//! replica, so service traffic keeps flowing while the leader is gone. [`model`] renders a
//! service to its share of the table and the change between two renderings; this loop keeps
//! the rendering of every service, and after a change applies only the changed services'
//! differences, all in one netlink transaction ([`netlink`]). The table is built whole with
//! `nft -f` at start and rebuilt so after a failed transaction.
//! Endpoints on nodes this node's gossip reports down are left out at once, without waiting
//! for the leader (which may be the node that died) to take them out of the endpoints.

pub mod model;
pub mod netlink;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use flotilla_controllers::endpoints::{
    slice_addresses, slice_ports, SERVICES, SERVICE_NAME_LABEL, SLICES,
};
use flotilla_controllers::{ClusterMembers, Informer};
use flotilla_store::{Engine, Record};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use flotilla_runtime::nft::Nft;
use model::{Endpoint, ServicePort};
pub use model::{ProxyConfig, Rendered, ServiceView};
pub use netlink::Netlink;

/// The services every node answers itself: (namespace, name) → this node's address for them.
pub type LocalServices = BTreeMap<(String, String), SocketAddr>;

/// A service and its slices as the proxy sees them; `local` serves the service from this
/// node (DNS, the API) instead of its endpoints; endpoints on a node in `down` are not ready.
pub fn view(
    service: &Service,
    slices: &[&EndpointSlice],
    local: Option<SocketAddr>,
    down: &BTreeSet<String>,
) -> Option<ServiceView> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    let lower = |p: Option<&String>| p.map_or("tcp".to_string(), |p| p.to_ascii_lowercase());
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: lower(p.protocol.as_ref()),
            port: p.port as u16,
            node_port: p.node_port.map(|n| n as u16),
        })
        .collect();
    let mut endpoints = Vec::new();
    match local {
        Some(addr) => {
            if let std::net::IpAddr::V4(ip) = addr.ip() {
                endpoints.push(Endpoint {
                    ip,
                    node: None,
                    ready: true,
                    ports: ports
                        .iter()
                        .map(|p| ((p.name.clone(), p.protocol.clone()), addr.port()))
                        .collect(),
                });
            }
        }
        None => {
            for slice in slices {
                let slice_ports: BTreeMap<(String, String), u16> = slice_ports(slice)
                    .into_iter()
                    .map(|(name, protocol, port)| ((name, protocol), port))
                    .collect();
                for (address, e, ready) in slice_addresses(slice) {
                    if let Ok(ip) = address.parse::<Ipv4Addr>() {
                        let gone = e.node_name.as_ref().is_some_and(|n| down.contains(n));
                        endpoints.push(Endpoint {
                            ip,
                            node: e.node_name.clone(),
                            ready: ready && !gone,
                            ports: slice_ports.clone(),
                        });
                    }
                }
            }
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    Some(ServiceView {
        namespace: service.metadata.namespace.clone()?,
        name: service.metadata.name.clone()?,
        cluster_ip,
        ports,
        affinity_seconds: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800) as u32
        }),
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        endpoints,
    })
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<Arc<T>> {
    serde_json::from_slice(&record.value).ok().map(Arc::new)
}

/// `ns/name` of a service key, or of a slice's service.
fn service_of_slice(slice: &EndpointSlice) -> Option<String> {
    let ns = slice.metadata.namespace.as_deref()?;
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!("{ns}/{name}"))
}

const BY_SERVICE: &str = "service";

/// The rendered state of the table and the services changed since it was applied.
#[derive(Default)]
struct State {
    applied: BTreeMap<String, Rendered>,
    dirty: BTreeSet<String>,
    /// Rebuild the whole table (at start, and after a failed transaction).
    full: bool,
}

/// Every service with an endpoint on a node whose liveness differs between `a` and `b`.
fn touched_by(
    slices: &Informer<Arc<EndpointSlice>>,
    a: &BTreeSet<String>,
    b: &BTreeSet<String>,
) -> BTreeSet<String> {
    let flipped: BTreeSet<&String> = a.symmetric_difference(b).collect();
    if flipped.is_empty() {
        return BTreeSet::new();
    }
    slices
        .list()
        .iter()
        .filter(|c| {
            c.object
                .endpoints
                .iter()
                .flatten()
                .any(|e| e.node_name.as_ref().is_some_and(|n| flipped.contains(n)))
        })
        .filter_map(|c| service_of_slice(&c.object))
        .collect()
}

/// Keeps the node's service rules from `engine`'s replica and the nodes `members` reports
/// down, until `stop`.
pub async fn run(
    engine: Arc<dyn Engine>,
    config: ProxyConfig,
    local: LocalServices,
    mut members: watch::Receiver<ClusterMembers>,
    nft: Nft,
    stop: CancellationToken,
) {
    let state = Arc::new(Mutex::new(State {
        full: true,
        ..State::default()
    }));
    let changed = Arc::new(Notify::new());
    let mark = |state: Arc<Mutex<State>>, changed: Arc<Notify>, key: Option<String>| {
        if let Some(key) = key {
            state.lock().expect("proxy state").dirty.insert(key);
            changed.notify_one();
        }
    };
    let services = {
        let (s, c) = (Arc::clone(&state), Arc::clone(&changed));
        Informer::builder([SERVICES], parse::<Service>)
            .on_change(move |ch| {
                let key = ch.key.strip_prefix(SERVICES).map(str::to_string);
                mark(Arc::clone(&s), Arc::clone(&c), key);
            })
            .build()
    };
    let slices = {
        let (s, c) = (Arc::clone(&state), Arc::clone(&changed));
        Informer::builder([SLICES], parse::<EndpointSlice>)
            .index(BY_SERVICE, |c| {
                service_of_slice(&c.object).into_iter().collect()
            })
            .on_change(move |ch| {
                for side in [ch.old, ch.new].into_iter().flatten() {
                    mark(
                        Arc::clone(&s),
                        Arc::clone(&c),
                        service_of_slice(&side.object),
                    );
                }
            })
            .build()
    };
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    services.spawn(Arc::clone(&engine), informers.clone(), "proxy");
    slices.spawn(Arc::clone(&engine), informers.clone(), "proxy");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(services.synced(), slices.synced()) } => {}
    }
    let mut down = members.borrow_and_update().down.clone();
    let mut watching = true;
    let mut netlink: Option<Netlink> = None;
    loop {
        let (full, dirty, before) = {
            let mut s = state.lock().expect("proxy state");
            let full = std::mem::take(&mut s.full);
            let dirty: BTreeSet<String> = if full {
                services
                    .list()
                    .iter()
                    .filter_map(|c| c.key.strip_prefix(SERVICES).map(str::to_string))
                    .chain(s.applied.keys().cloned())
                    .collect()
            } else {
                std::mem::take(&mut s.dirty)
            };
            let before: BTreeMap<String, Rendered> = if full {
                BTreeMap::new()
            } else {
                dirty
                    .iter()
                    .map(|k| (k.clone(), s.applied.get(k).cloned().unwrap_or_default()))
                    .collect()
            };
            (full, dirty, before)
        };
        let mut changes = Vec::new();
        let mut after = BTreeMap::new();
        for key in &dirty {
            let rendered = services
                .get(&format!("{SERVICES}{key}"))
                .and_then(|s| {
                    let (ns, name) = key.split_once('/')?;
                    let cached = slices.by_index(BY_SERVICE, key);
                    let mine: Vec<&EndpointSlice> = cached.iter().map(|c| &*c.object).collect();
                    let here = local.get(&(ns.to_string(), name.to_string())).copied();
                    view(&s.object, &mine, here, &down)
                })
                .map(|v| model::render(&v, &config))
                .unwrap_or_default();
            let old = before.get(key).cloned().unwrap_or_default();
            model::diff(&old, &rendered, &mut changes);
            after.insert(key.clone(), rendered);
        }
        if full || !changes.is_empty() {
            let applied = if full {
                nft.apply(&(model::base() + &model::script(&changes))).await
            } else {
                let socket = match &mut netlink {
                    Some(socket) => Ok(socket),
                    None => Netlink::open().map(|s| netlink.insert(s)),
                };
                let applied = socket.and_then(|s| s.apply(&changes));
                if applied.is_err() {
                    // A fresh socket for the next change, with nothing of this one unread.
                    netlink = None;
                }
                applied.map_err(|e| format!("netlink: {e}"))
            };
            match applied {
                Ok(()) => {
                    let mut s = state.lock().expect("proxy state");
                    if full {
                        s.applied.clear();
                    }
                    for (k, r) in after {
                        if r.is_empty() {
                            s.applied.remove(&k);
                        } else {
                            s.applied.insert(k, r);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service rules not applied; rebuilding the table");
                    state.lock().expect("proxy state").full = true;
                    changed.notify_one();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            moved = members.changed(), if watching => {
                if moved.is_err() {
                    // The membership stopped with its node: what it said last stays.
                    watching = false;
                    continue;
                }
                let now = members.borrow_and_update().down.clone();
                let touched = touched_by(&slices, &down, &now);
                if !touched.is_empty() {
                    tracing::info!(down = ?now, services = touched.len(), "node liveness changed: endpoints re-rendered");
                }
                down = now;
                state.lock().expect("proxy state").dirty.extend(touched);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_on_a_node_gossip_reports_down_are_not_ready() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": true}}
            ]
        }))
        .unwrap();
        let ready = |down: &[&str]| -> Vec<String> {
            let down = down.iter().map(|s| s.to_string()).collect();
            view(&service, &[&slice], None, &down)
                .unwrap()
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.ip.to_string())
                .collect()
        };
        assert_eq!(ready(&[]), ["10.244.1.5", "10.244.2.5"]);
        assert_eq!(ready(&["n2"]), ["10.244.1.5"]);
        assert_eq!(ready(&["n1", "n2"]), Vec::<String>::new());
    }
}
