//! The table from the local replica: informers on services, endpoint slices and pods, and a
//! loop that builds a new table after each change (changes that arrive while one is built
//! are taken together into the next), so an answer follows a commit by one build.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use flotilla_controllers::endpoints::{
    slice_addresses, slice_ports, SERVICES, SERVICE_NAME_LABEL, SLICES,
};
use flotilla_controllers::Informer;
use flotilla_store::{Engine, Record};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::ZoneCell;
use crate::zone::{Builder, Endpoint, Kind, PodRecord, Port, ServiceRecord, Zone};

const PODS: &str = "/core/pods/";

/// A service and its slices as the table's input; `None` for a service DNS does not name.
pub fn service_record(service: &Service, slices: &[&EndpointSlice]) -> Option<ServiceRecord> {
    let spec = service.spec.as_ref()?;
    let kind = match spec.type_.as_deref() {
        Some("ExternalName") => Kind::ExternalName(spec.external_name.clone()?),
        _ => match spec.cluster_ip.as_deref() {
            Some("None") => Kind::Headless,
            Some(ip) => Kind::ClusterIp(ip.parse().ok()?),
            None => return None,
        },
    };
    let port = |name: Option<&String>, protocol: Option<&String>, port: i32| Port {
        name: name.cloned().unwrap_or_default(),
        protocol: protocol.map_or("tcp".into(), |p| p.to_ascii_lowercase()),
        port: port as u16,
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| port(p.name.as_ref(), p.protocol.as_ref(), p.port))
        .collect();
    let mut endpoints = Vec::new();
    for slice in slices {
        let slice_ports: Vec<Port> = slice_ports(slice)
            .into_iter()
            .map(|(name, protocol, port)| Port {
                name,
                protocol,
                port,
            })
            .collect();
        for (address, e, ready) in slice_addresses(slice) {
            if let Ok(ip) = address.parse::<IpAddr>() {
                endpoints.push(Endpoint {
                    ip,
                    hostname: e.hostname.clone(),
                    ready,
                    ports: slice_ports.clone(),
                });
            }
        }
    }
    endpoints.sort_by_key(|e| e.ip);
    Some(ServiceRecord {
        namespace: service.metadata.namespace.clone()?,
        name: service.metadata.name.clone()?,
        kind,
        ports,
        endpoints,
    })
}

/// What DNS reads of a pod, decoded without the rest of it: every pod change on every node
/// passes through here, and most (bindings, conditions) change none of it.
#[derive(serde::Deserialize)]
struct SlimPod {
    metadata: SlimMeta,
    #[serde(default)]
    spec: SlimSpec,
    #[serde(default)]
    status: SlimStatus,
}

#[derive(serde::Deserialize)]
struct SlimMeta {
    namespace: Option<String>,
}

#[derive(Default, serde::Deserialize)]
struct SlimSpec {
    #[serde(rename = "hostNetwork")]
    host_network: Option<bool>,
}

#[derive(Default, serde::Deserialize)]
struct SlimStatus {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    phase: Option<String>,
}

/// A pod's record from its stored JSON: `Some(None)` for a pod DNS does not name.
fn parse_pod_record(_key: &str, record: &Record) -> Option<Option<PodRecord>> {
    // Most changes are of pods without an address yet (created, bound): not even decoded.
    if !record.value.windows(7).any(|w| w == b"\"podIP\"") {
        return Some(None);
    }
    let pod: SlimPod = serde_json::from_slice(&record.value).ok()?;
    if pod.spec.host_network == Some(true)
        || matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return Some(None);
    }
    Some(pod.metadata.namespace.and_then(|namespace| {
        Some(PodRecord {
            namespace,
            ip: pod.status.pod_ip.as_deref()?.parse().ok()?,
        })
    }))
}

/// The zones the table answers for.
#[derive(Clone, Debug)]
pub struct Zones {
    pub domain: String,
    pub reverse: Vec<String>,
}

impl Zones {
    pub fn empty(&self) -> Zone {
        let reverse: Vec<&str> = self.reverse.iter().map(String::as_str).collect();
        Zone::empty(&self.domain, &reverse)
    }
}

/// Builds a table from the inputs.
pub fn build(zones: &Zones, serial: u32, services: &[ServiceRecord], pods: &[PodRecord]) -> Zone {
    let reverse: Vec<&str> = zones.reverse.iter().map(String::as_str).collect();
    let mut b = Builder::new(&zones.domain, &reverse, serial);
    for s in services {
        b.service(s);
    }
    for p in pods {
        b.pod(p);
    }
    b.build()
}

fn parse<T: serde::de::DeserializeOwned>(_key: &str, record: &Record) -> Option<Arc<T>> {
    serde_json::from_slice(&record.value).ok().map(Arc::new)
}

/// Keeps `cell` built from the replica until `stop`.
pub async fn run(
    engine: Arc<dyn Engine>,
    cell: Arc<ZoneCell>,
    zones: Zones,
    stop: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let n = Arc::clone(&changed);
    let services = Informer::builder([SERVICES], parse::<Service>)
        .on_change(move |_| n.notify_one())
        .build();
    let n = Arc::clone(&changed);
    let slices = Informer::builder([SLICES], parse::<EndpointSlice>)
        .on_change(move |_| n.notify_one())
        .build();
    let n = Arc::clone(&changed);
    let pods = Informer::builder([PODS], parse_pod_record)
        .on_change(move |c| {
            let record = |side: Option<&Arc<flotilla_controllers::Cached<Option<PodRecord>>>>| {
                side.and_then(|p| p.object.clone())
            };
            // Most pod changes name nothing new: no rebuild for them.
            if record(c.old) != record(c.new) {
                n.notify_one();
            }
        })
        .build();
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    services.spawn(Arc::clone(&engine), informers.clone(), "dns");
    slices.spawn(Arc::clone(&engine), informers.clone(), "dns");
    pods.spawn(Arc::clone(&engine), informers.clone(), "dns");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(services.synced(), slices.synced(), pods.synced()) } => {}
    }
    loop {
        let mut by_service: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for s in slices.list() {
            let m = &s.object.metadata;
            if let (Some(ns), Some(name)) = (
                m.namespace.clone(),
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .cloned(),
            ) {
                by_service
                    .entry((ns, name))
                    .or_default()
                    .push(Arc::clone(&s.object));
            }
        }
        let records: Vec<ServiceRecord> = services
            .list()
            .iter()
            .filter_map(|s| {
                let m = &s.object.metadata;
                let key = (m.namespace.clone()?, m.name.clone()?);
                let slices: Vec<&EndpointSlice> = by_service
                    .get(&key)
                    .map(|v| v.iter().map(|s| &**s).collect())
                    .unwrap_or_default();
                service_record(&s.object, &slices)
            })
            .collect();
        let pod_records: Vec<PodRecord> = pods
            .list()
            .iter()
            .filter_map(|p| p.object.clone())
            .collect();
        let serial = engine.applied_revision() as u32;
        let zone = build(&zones, serial, &records, &pod_records);
        cell.store(zone);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: serde_json::Value) -> Option<Option<PodRecord>> {
        let r = Record {
            create_revision: 1,
            mod_revision: 1,
            value: json.to_string().into_bytes(),
        };
        parse_pod_record("/core/pods/ns/p", &r)
    }

    #[test]
    fn pods_are_named_by_their_address_unless_finished_or_on_the_host() {
        let running = serde_json::json!({"metadata": {"namespace": "ns", "name": "p"},
            "spec": {"containers": []}, "status": {"phase": "Running", "podIP": "10.244.1.9"}});
        assert_eq!(
            record(running.clone()),
            Some(Some(PodRecord {
                namespace: "ns".into(),
                ip: "10.244.1.9".parse().unwrap()
            }))
        );
        let mut done = running.clone();
        done["status"]["phase"] = "Succeeded".into();
        assert_eq!(record(done), Some(None));
        let mut host = running.clone();
        host["spec"]["hostNetwork"] = true.into();
        assert_eq!(record(host), Some(None));
        assert_eq!(
            record(serde_json::json!({"metadata": {"namespace": "ns"}})),
            Some(None)
        );
    }
}
