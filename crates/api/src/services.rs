//! Service addresses: cluster IPs from `10.96.0.0/16` and node ports 30000–32767. Each one a
//! service holds is a store key (`/flotilla/clusterips/10.96.3.7`, `/flotilla/nodeports/30080`)
//! whose value names the service; the API server creates those keys in the same Raft command
//! as the service, so two services can never get the same address, whichever nodes they were
//! created through: the second command finds the key taken and is refused as a whole.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use rand::Rng;
use serde_json::{json, Value};

use crate::validation::FieldError;

/// Store prefix of held cluster IPs (value: [`holder`] of the service).
pub const CLUSTER_IPS_PREFIX: &str = "/flotilla/clusterips/";
/// Store prefix of held node ports (value: [`holder`] of the service).
pub const NODE_PORTS_PREFIX: &str = "/flotilla/nodeports/";
/// The service network, `10.96.0.0/16`.
pub const SERVICE_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
pub const SERVICE_PREFIX_LEN: u8 = 16;
/// The `default/kubernetes` service: the nodes' API servers.
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The `kube-system/kube-dns` service: every node's own DNS server.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Node ports, as Kubernetes' default `--service-node-port-range`.
pub const NODE_PORTS: RangeInclusive<i32> = 30000..=32767;
/// Picked addresses come from above the first 256, which are left for requested ones (as
/// Kubernetes' allocator keeps a low band for static addresses).
const STATIC_BAND: u32 = 256;

pub fn cluster_ip_key(ip: Ipv4Addr) -> String {
    format!("{CLUSTER_IPS_PREFIX}{ip}")
}

pub fn node_port_key(port: i32) -> String {
    format!("{NODE_PORTS_PREFIX}{port}")
}

/// The value of a key `service` holds: its namespace, name and uid.
pub fn holder(service: &Value) -> Vec<u8> {
    let m = &service["metadata"];
    json!({"namespace": m["namespace"], "name": m["name"], "uid": m["uid"]})
        .to_string()
        .into_bytes()
}

/// The namespace, name and uid in a held key's value.
pub fn held_by(value: &[u8]) -> Option<(String, String, String)> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let s = |k: &str| v[k].as_str().map(str::to_string);
    Some((s("namespace")?, s("name")?, s("uid")?))
}

/// Who holds a key, as the store says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Free,
    /// The service being written (same uid).
    This,
    Other,
}

/// The keys a stored service holds: its cluster IP (not for headless services) and its node
/// ports.
pub fn held(service: &Value) -> BTreeSet<String> {
    let spec = &service["spec"];
    let mut keys = BTreeSet::new();
    if let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse().ok()) {
        if in_network(ip) {
            keys.insert(cluster_ip_key(ip));
        }
    }
    for p in spec["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_i64().filter(|n| *n != 0) {
            keys.insert(node_port_key(n as i32));
        }
    }
    keys
}

/// The keys a write must create and delete besides the service itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub take: Vec<String>,
    pub release: Vec<String>,
}

fn in_network(ip: Ipv4Addr) -> bool {
    let offset = u32::from(ip).wrapping_sub(u32::from(SERVICE_NETWORK));
    offset > 0 && offset < (1 << (32 - SERVICE_PREFIX_LEN)) - 1
}

fn wants_node_ports(kind: &str) -> bool {
    kind == "NodePort" || kind == "LoadBalancer"
}

/// Fills in the admitted `service`'s cluster IP and node ports (keeping what the client asked
/// for, refused with the field's path if it is outside its range or held by another service)
/// and says which keys the write takes and releases, against `old` (an update) and who holds
/// each key now (`holder`).
pub fn allocate(
    service: &mut Value,
    old: Option<&Value>,
    holder: &dyn Fn(&str) -> Holder,
    rng: &mut impl Rng,
) -> Result<Allocation, Vec<FieldError>> {
    let mut errors = Vec::new();
    let kind = service["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let spec = &mut service["spec"];
    if kind == "ExternalName" {
        if let Some(s) = spec.as_object_mut() {
            for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                s.remove(field);
            }
        }
    } else if let Some(ip) = cluster_ip(spec, holder, rng, &mut errors) {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        if ip != "None" {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
    let mut chosen: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut numbers: BTreeSet<i64> = BTreeSet::new();
    for (i, p) in spec["ports"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !wants_node_ports(&kind) {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
            continue;
        }
        let at = format!("spec.ports[{i}].nodePort");
        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
        let port = match p["nodePort"].as_i64().filter(|n| *n != 0) {
            Some(n) => {
                if !NODE_PORTS.contains(&(n as i32)) {
                    errors.push(FieldError::invalid_number(&at, n, &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORTS.start(), NODE_PORTS.end()
                    )));
                    continue;
                }
                // The same node port twice is for two protocols of one port, as in Kubernetes.
                if !chosen.insert((n, protocol)) {
                    errors.push(FieldError::duplicate(&at, &n.to_string()));
                    continue;
                }
                if !numbers.contains(&n) && holder(&node_port_key(n as i32)) == Holder::Other {
                    errors.push(FieldError::invalid_number(
                        &at,
                        n,
                        "provided port is already allocated",
                    ));
                    continue;
                }
                n
            }
            None => {
                let size = (NODE_PORTS.end() - NODE_PORTS.start() + 1) as u32;
                let picked = pick(rng, size, |k| {
                    let n = *NODE_PORTS.start() as i64 + k as i64;
                    !numbers.contains(&n) && holder(&node_port_key(n as i32)) == Holder::Free
                });
                let Some(k) = picked else {
                    errors.push(FieldError::forbidden(
                        &at,
                        "failed to allocate a nodePort: range is full",
                    ));
                    continue;
                };
                let n = *NODE_PORTS.start() as i64 + k as i64;
                chosen.insert((n, protocol));
                p["nodePort"] = json!(n);
                n
            }
        };
        numbers.insert(port);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let now = held(service);
    let before = old.map(held).unwrap_or_default();
    Ok(Allocation {
        take: now
            .iter()
            .filter(|k| holder(k) == Holder::Free)
            .cloned()
            .collect(),
        release: before
            .difference(&now)
            .filter(|k| holder(k) == Holder::This)
            .cloned()
            .collect(),
    })
}

/// The cluster IP of a service that has one: asked for (`None` for headless) or picked.
fn cluster_ip(
    spec: &Value,
    holder: &dyn Fn(&str) -> Holder,
    rng: &mut impl Rng,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let asked = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["clusterIPs"][0].as_str().filter(|s| !s.is_empty()));
    let at = "spec.clusterIPs[0]";
    match asked {
        Some("None") => Some("None".into()),
        Some(text) => {
            let Ok(ip) = text.parse::<Ipv4Addr>() else {
                errors.push(FieldError::invalid(
                    at,
                    text,
                    "must be a valid IPv4 address",
                ));
                return None;
            };
            if !in_network(ip) {
                errors.push(FieldError::invalid(at, text, &format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {SERVICE_NETWORK}/{SERVICE_PREFIX_LEN}"
                )));
                return None;
            }
            if holder(&cluster_ip_key(ip)) == Holder::Other {
                errors.push(FieldError::invalid(
                    at,
                    text,
                    &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ));
                return None;
            }
            Some(text.to_string())
        }
        None => {
            let size = (1u32 << (32 - SERVICE_PREFIX_LEN)) - 2;
            let free = |k: u32| {
                let ip = Ipv4Addr::from(u32::from(SERVICE_NETWORK) + 1 + k);
                holder(&cluster_ip_key(ip)) == Holder::Free
            };
            // The upper band first; the static band only when that is full.
            let picked = pick(rng, size - STATIC_BAND, |k| free(k + STATIC_BAND))
                .map(|k| k + STATIC_BAND)
                .or_else(|| pick(rng, STATIC_BAND, free));
            match picked {
                Some(k) => Some(Ipv4Addr::from(u32::from(SERVICE_NETWORK) + 1 + k).to_string()),
                None => {
                    errors.push(FieldError::forbidden(
                        at,
                        "failed to allocate a service IP: range is full",
                    ));
                    None
                }
            }
        }
    }
}

/// A free offset in `0..size`: from a random one onwards, wrapping round, so that services
/// created at once through different nodes rarely race for the same address.
fn pick(rng: &mut impl Rng, size: u32, free: impl Fn(u32) -> bool) -> Option<u32> {
    if size == 0 {
        return None;
    }
    let start = rng.random_range(0..size);
    (0..size).map(|i| (start + i) % size).find(|k| free(*k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"namespace": "ns", "name": "web", "uid": "u1"}, "spec": spec})
    }

    fn store(held: &[(&str, Holder)]) -> impl Fn(&str) -> Holder {
        let m: BTreeMap<String, Holder> = held.iter().map(|(k, h)| (k.to_string(), *h)).collect();
        move |k: &str| m.get(k).copied().unwrap_or(Holder::Free)
    }

    #[test]
    fn a_cluster_ip_is_picked_above_the_static_band_and_held() {
        let mut s = svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let a = allocate(&mut s, None, &store(&[]), &mut rand::rng()).unwrap();
        let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_network(ip) && u32::from(ip) - u32::from(SERVICE_NETWORK) > STATIC_BAND);
        assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(a.take, vec![cluster_ip_key(ip)]);
        assert!(a.release.is_empty());
        assert!(s["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn requested_addresses_are_checked_against_range_and_holders() {
        let taken = store(&[("/flotilla/clusterips/10.96.0.10", Holder::Other)]);
        for (ip, message) in [
            ("10.96.0.10", "provided IP is already allocated"),
            ("10.97.0.3", "is not in the valid range"),
            ("10.96.255.255", "is not in the valid range"),
            ("nope", "must be a valid IPv4 address"),
        ] {
            let mut s = svc(json!({"clusterIP": ip, "ports": [{"port": 80}]}));
            let errors = allocate(&mut s, None, &taken, &mut rand::rng()).unwrap_err();
            assert_eq!(errors[0].field, "spec.clusterIPs[0]");
            assert!(errors[0].message.contains(message), "{ip}: {errors:?}");
        }
        let mut s = svc(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}));
        let a = allocate(&mut s, None, &taken, &mut rand::rng()).unwrap();
        assert_eq!(a.take, vec!["/flotilla/clusterips/10.96.0.11"]);
    }

    #[test]
    fn headless_and_external_name_services_hold_no_address() {
        let mut s = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        let a = allocate(&mut s, None, &store(&[]), &mut rand::rng()).unwrap();
        assert_eq!(s["spec"]["clusterIPs"], json!(["None"]));
        assert!(a.take.is_empty());
        let mut s = svc(
            json!({"type": "ExternalName", "externalName": "x.example", "clusterIP": "10.96.0.9"}),
        );
        let a = allocate(&mut s, None, &store(&[]), &mut rand::rng()).unwrap();
        assert!(s["spec"].get("clusterIP").is_none());
        assert!(a.take.is_empty());
    }

    #[test]
    fn node_ports_are_picked_requested_shared_across_protocols_and_released() {
        let taken = store(&[("/flotilla/nodeports/30080", Holder::Other)]);
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        let e = allocate(&mut s, None, &taken, &mut rand::rng()).unwrap_err();
        assert_eq!(e[0].field, "spec.ports[0].nodePort");
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 53, "protocol": "TCP", "nodePort": 30053},
            {"name": "b", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "c", "port": 80, "protocol": "TCP"}]}));
        let a = allocate(&mut s, None, &taken, &mut rand::rng()).unwrap();
        let picked = s["spec"]["ports"][2]["nodePort"].as_i64().unwrap();
        assert!(NODE_PORTS.contains(&(picked as i32)) && picked != 30053);
        assert_eq!(a.take.len(), 3, "{a:?}");
        // Back to ClusterIP: the node ports go, the address stays.
        let old = s.clone();
        let ip_key = cluster_ip_key(s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap());
        let mine: BTreeSet<String> = held(&old);
        let holder = move |k: &str| {
            if mine.contains(k) {
                Holder::This
            } else {
                Holder::Free
            }
        };
        s["spec"]["type"] = json!("ClusterIP");
        let a = allocate(&mut s, Some(&old), &holder, &mut rand::rng()).unwrap();
        assert!(a.take.is_empty());
        assert_eq!(a.release.len(), 2);
        assert!(!a.release.contains(&ip_key));
        assert!(s["spec"]["ports"][2].get("nodePort").is_none());
        // The same node port twice for one protocol is refused.
        let mut s = svc(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 1, "protocol": "TCP", "nodePort": 30001},
            {"name": "b", "port": 2, "protocol": "TCP", "nodePort": 30001}]}));
        let e = allocate(&mut s, None, &store(&[]), &mut rand::rng()).unwrap_err();
        assert_eq!(e[0].field, "spec.ports[1].nodePort");
    }

    #[test]
    fn a_full_range_is_an_error_not_a_duplicate() {
        let full = |k: &str| {
            if k.starts_with(CLUSTER_IPS_PREFIX) {
                Holder::Other
            } else {
                Holder::Free
            }
        };
        let mut s = svc(json!({"ports": [{"port": 80}]}));
        let e = allocate(&mut s, None, &full, &mut rand::rng()).unwrap_err();
        assert!(e[0].message.contains("range is full"));
    }
}
