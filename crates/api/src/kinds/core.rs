//! Core kinds other than pods: services (types, ports, the cluster IP an update keeps),
//! config maps and secrets (keys, sizes, `immutable`, `stringData`), namespaces, and the kinds
//! with no rules beyond their type (nodes, events, endpoints, service accounts).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, NamespaceStatus, Node, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::pod::{port_name, port_number, PROTOCOLS};
use super::Kind;
use crate::validation::{dns1123_label, dns1123_subdomain, labels, FieldError};

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];

impl Kind for Service {
    /// An update without a cluster IP or node ports keeps the allocated ones, as Kubernetes
    /// does (so `kubectl replace` of a manifest works).
    fn update_from(&mut self, old: &Service) {
        let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) else {
            return;
        };
        let kind = new.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            return;
        }
        if new.cluster_ip.as_deref().is_none_or(str::is_empty) {
            new.cluster_ip = old.cluster_ip.clone();
            if new.cluster_ips.is_none() {
                new.cluster_ips = old.cluster_ips.clone();
            }
        }
        let old_ports = old.ports.as_deref().unwrap_or_default();
        let wants_ports = |k: &str| k == "NodePort" || k == "LoadBalancer";
        if !wants_ports(kind) {
            // A type that has no node ports drops the ones the old type had, as Kubernetes
            // does (`kubectl patch` of the type alone works).
            if wants_ports(old.type_.as_deref().unwrap_or("ClusterIP")) {
                for p in new.ports.iter_mut().flatten() {
                    if old_ports.iter().any(|o| o.node_port == p.node_port) {
                        p.node_port = None;
                    }
                }
            }
            return;
        }
        for p in new.ports.iter_mut().flatten() {
            if p.node_port.is_none() {
                p.node_port = old_ports
                    .iter()
                    .find(|o| o.port == p.port && o.protocol == p.protocol)
                    .and_then(|o| o.node_port);
            }
        }
    }

    fn default(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let kind = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        spec.session_affinity.get_or_insert_with(|| "None".into());
        if kind != "ExternalName" {
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            p.target_port.get_or_insert(IntOrString::Int(p.port));
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            return errors.push(FieldError::required("spec"));
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !SERVICE_TYPES.contains(&kind) {
            errors.push(FieldError::not_supported("spec.type", kind, SERVICE_TYPES));
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() && kind != "ExternalName" && !headless {
            errors.push(FieldError::required("spec.ports"));
        }
        if kind == "ExternalName" {
            let name = spec.external_name.as_deref().unwrap_or("");
            errors.extend(dns1123_subdomain("spec.externalName", name));
        }
        let mut names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            match p.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => {
                    errors.extend(dns1123_label(&format!("{at}.name"), name));
                    if !names.insert(name) {
                        errors.push(FieldError::duplicate(format!("{at}.name"), name));
                    }
                }
                None if ports.len() > 1 => {
                    errors.push(FieldError::required(format!("{at}.name")));
                }
                None => {}
            }
            port_number(&format!("{at}.port"), p.port, errors);
            if let Some(proto) = p.protocol.as_deref() {
                if !PROTOCOLS.contains(&proto) {
                    errors.push(FieldError::not_supported(
                        format!("{at}.protocol"),
                        proto,
                        PROTOCOLS,
                    ));
                }
            }
            match &p.target_port {
                Some(IntOrString::Int(n)) => {
                    port_number(&format!("{at}.targetPort"), *n, errors);
                }
                Some(IntOrString::String(name)) => {
                    errors.extend(port_name(&format!("{at}.targetPort"), name));
                }
                None => {}
            }
            if let Some(n) = p.node_port.filter(|n| *n != 0) {
                if kind == "ClusterIP" {
                    errors.push(FieldError::forbidden(
                        format!("{at}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                } else {
                    port_number(&format!("{at}.nodePort"), n, errors);
                }
            }
        }
        if let Some(a) = spec.session_affinity.as_deref() {
            if !AFFINITIES.contains(&a) {
                errors.push(FieldError::not_supported(
                    "spec.sessionAffinity",
                    a,
                    AFFINITIES,
                ));
            }
        }
        if let Some(selector) = &spec.selector {
            errors.extend(labels("spec.selector", selector));
        }
    }

    fn validate_update(&self, old: &Service, errors: &mut Vec<FieldError>) {
        let ip = |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        let (new_ip, old_ip) = (ip(self), ip(old));
        let external = self
            .spec
            .as_ref()
            .is_some_and(|s| s.type_.as_deref() == Some("ExternalName"));
        if old_ip.as_deref().is_some_and(|ip| !ip.is_empty()) && new_ip != old_ip && !external {
            errors.push(FieldError::immutable(
                "spec.clusterIP",
                new_ip.as_deref().unwrap_or(""),
            ));
        }
    }
}

/// Keys of `data` and `binaryData`: `[-._a-zA-Z0-9]+`, at most 253 characters, in one map only.
fn data_keys<'a>(
    keys: impl Iterator<Item = (&'static str, &'a str)>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (field, key) in keys {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            && key != "."
            && key != "..";
        if !ok {
            errors.push(FieldError::invalid(
                field,
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
        if !seen.insert(key) {
            errors.push(FieldError::duplicate(field, key));
        }
    }
}

/// At most 1 MiB of data in one object (it must fit in a Raft entry with room to spare).
const MAX_DATA: usize = 1024 * 1024;

fn data_size(field: &str, size: usize, errors: &mut Vec<FieldError>) {
    if size > MAX_DATA {
        errors.push(FieldError::too_long(field, MAX_DATA));
    }
}

fn immutable_data(
    old_immutable: Option<bool>,
    new_immutable: Option<bool>,
    changed: bool,
    errors: &mut Vec<FieldError>,
) {
    if old_immutable == Some(true) {
        if new_immutable != Some(true) {
            errors.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        if changed {
            errors.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

impl Kind for ConfigMap {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let data = self.data.iter().flatten();
        let binary = self.binary_data.iter().flatten();
        data_keys(
            data.clone()
                .map(|(k, _)| ("data", k.as_str()))
                .chain(binary.clone().map(|(k, _)| ("binaryData", k.as_str()))),
            errors,
        );
        let size = data.map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + binary.map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
        data_size("data", size, errors);
    }

    fn validate_update(&self, old: &ConfigMap, errors: &mut Vec<FieldError>) {
        let changed = self.data != old.data || self.binary_data != old.binary_data;
        immutable_data(old.immutable, self.immutable, changed, errors);
    }
}

impl Kind for Secret {
    /// `stringData` is written into `data` (it wins over the same key there) and not stored.
    fn default(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let data = self.data.iter().flatten();
        data_keys(data.clone().map(|(k, _)| ("data", k.as_str())), errors);
        let size = data.map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
        data_size("data", size, errors);
    }

    fn validate_update(&self, old: &Secret, errors: &mut Vec<FieldError>) {
        if self.type_ != old.type_ {
            errors.push(FieldError::immutable(
                "type",
                self.type_.as_deref().unwrap_or(""),
            ));
        }
        immutable_data(old.immutable, self.immutable, self.data != old.data, errors);
    }
}

impl Kind for Namespace {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.finalizers
            .get_or_insert_with(|| vec!["kubernetes".into()]);
        let status = self.status.get_or_insert_with(NamespaceStatus::default);
        status.phase.get_or_insert_with(|| "Active".into());
    }
}

impl Kind for Node {}
impl Kind for Event {}
impl Kind for Endpoints {}
impl Kind for k8s_openapi::api::discovery::v1::EndpointSlice {}
impl Kind for ServiceAccount {}
