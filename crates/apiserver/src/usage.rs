//! `metrics.k8s.io/v1beta1`, what `kubectl top` reads (metrics-server's API, without a
//! metrics-server): PodMetrics and NodeMetrics built from each node's latest usage sample,
//! asked for through the tunnel when the request comes. Pods come from the local replica; a
//! pod whose node has no sample yet, or is unreachable, is left out, as metrics-server leaves
//! out what it could not scrape.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use flotilla_api::LabelSelector;
use flotilla_tunnel::{read_header, NodeUsage, Request as TunnelRequest, Usage};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::objects::query_param;
use crate::{failure, json_response, ApiConfig, Body};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The node's latest sample, if it answers.
async fn node_usage(config: &ApiConfig, addr: SocketAddr) -> Option<NodeUsage> {
    let tunnel = config.tunnel.as_ref()?;
    let mut stream = tunnel.open(addr, &TunnelRequest::Metrics).await.ok()?;
    read_header(&mut stream.recv).await.ok()
}

fn quantities(u: &Usage) -> Value {
    json!({
        "cpu": format!("{}n", u.cpu_nanocores),
        "memory": format!("{}Ki", u.memory_bytes / 1024),
    })
}

fn window(u: &NodeUsage) -> String {
    format!("{}s", u.window_seconds.round().max(1.0) as u64)
}

fn objects(config: &ApiConfig, plural: &str, namespace: Option<&str>) -> Vec<Value> {
    let Some(resource) = flotilla_api::find("", "v1", plural) else {
        return Vec::new();
    };
    let prefix = flotilla_api::store_prefix(resource, namespace);
    config
        .engine
        .list(&prefix, None, 0)
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, r)| serde_json::from_slice(&r.value).ok())
        .collect()
}

fn labels(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// Serves `GET /apis/metrics.k8s.io/v1beta1/REST…`.
pub async fn handle(config: &ApiConfig, rest: &[&str], query: Option<&str>) -> Response<Body> {
    let selector = match query_param(query, "labelSelector").map(|s| LabelSelector::parse(&s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            return failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
        }
    };
    let picked = |o: &Value| selector.as_ref().is_none_or(|s| s.matches(&labels(o)));
    let (kind, namespace, name) = match rest {
        ["nodes"] => ("NodeMetrics", None, None),
        ["nodes", name] => ("NodeMetrics", None, Some(*name)),
        ["pods"] => ("PodMetrics", None, None),
        ["namespaces", ns, "pods"] => ("PodMetrics", Some(*ns), None),
        ["namespaces", ns, "pods", name] => ("PodMetrics", Some(*ns), Some(*name)),
        _ => {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    };
    // Each node's sample, asked for once per request.
    let mut samples: HashMap<String, Option<NodeUsage>> = HashMap::new();
    let mut items = Vec::new();
    if kind == "NodeMetrics" {
        for node in objects(config, "nodes", None) {
            let node_name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
            if name.is_some_and(|n| n != node_name) || !picked(&node) {
                continue;
            }
            let Some(addr) = crate::streams::node_address(config, &node_name) else {
                continue;
            };
            let Some(usage) = node_usage(config, addr).await else {
                continue;
            };
            items.push(json!({
                "kind": "NodeMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {"name": node_name, "labels": node["metadata"]["labels"],
                    "creationTimestamp": usage.timestamp},
                "timestamp": usage.timestamp,
                "window": window(&usage),
                "usage": quantities(&usage.node),
            }));
        }
    } else {
        for pod in objects(config, "pods", namespace) {
            let meta = &pod["metadata"];
            if name.is_some_and(|n| meta["name"] != n) || !picked(&pod) {
                continue;
            }
            let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
                continue;
            };
            if !samples.contains_key(node) {
                let usage = match crate::streams::node_address(config, node) {
                    Some(addr) => node_usage(config, addr).await,
                    None => None,
                };
                samples.insert(node.to_string(), usage);
            }
            let Some(Some(usage)) = samples.get(node) else {
                continue;
            };
            let uid = meta["uid"].as_str().unwrap_or("");
            let containers: Vec<Value> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let cname = c["name"].as_str()?;
                    let u = usage.containers.get(&format!("{uid}_{cname}"))?;
                    Some(json!({"name": cname, "usage": quantities(u)}))
                })
                .collect();
            if containers.is_empty() {
                continue;
            }
            items.push(json!({
                "kind": "PodMetrics",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                    "labels": meta["labels"], "creationTimestamp": usage.timestamp},
                "timestamp": usage.timestamp,
                "window": window(usage),
                "containers": containers,
            }));
        }
    }
    match name {
        None => json_response(StatusCode::OK, &list(kind, items)),
        Some(n) => match items.pop() {
            Some(item) => json_response(StatusCode::OK, &item),
            None => {
                let plural = if kind == "NodeMetrics" {
                    "nodemetrics"
                } else {
                    "podmetrics"
                };
                failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{plural}.{GROUP} \"{n}\" not found"),
                )
            }
        },
    }
}
