//! The pod network across nodes (host-gw): every node routes each other node's pod CIDR
//! through that node's address, kept in step with the Node objects of the local replica, and
//! masquerades what its pods send outside the pod network. [`routes`] is pure; the
//! [`Programmer`] puts routes and rules on the host.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_controllers::{run_workers, Context, Informer, Next, WorkQueue};
use flotilla_runtime::ipam::Cidr;
use flotilla_util::Backoff;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The cluster's pod network, which pods reach without masquerading.
pub const POD_NETWORK: &str = "10.244.0.0/16";

/// A node as the network needs it: its pod CIDR and internal address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRoute {
    pub name: String,
    pub cidr: Option<Cidr>,
    pub address: Option<Ipv4Addr>,
}

pub fn parse_node(object: &Value) -> Option<NodeRoute> {
    Some(NodeRoute {
        name: object["metadata"]["name"].as_str()?.to_string(),
        cidr: object["spec"]["podCIDR"]
            .as_str()
            .and_then(|c| c.parse().ok()),
        address: object["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .and_then(|a| a.parse().ok()),
    })
}

/// The routes node `me` needs: every other node's pod CIDR through its address.
pub fn routes(nodes: &[NodeRoute], me: &str) -> BTreeMap<Cidr, Ipv4Addr> {
    nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| Some((n.cidr?, n.address?)))
        .collect()
}

/// What puts the network on the host.
#[async_trait::async_trait]
pub trait Programmer: Send + Sync {
    /// Forwarding on, the masquerade rule in place: once, before the first routes.
    async fn prepare(&self) -> Result<(), String>;
    /// Makes the node's pod routes exactly `routes`; returns how many changed.
    async fn sync(&self, routes: &BTreeMap<Cidr, Ipv4Addr>) -> Result<usize, String>;
}

/// The real one: rtnetlink for routes, `/proc/sys` for forwarding, nftables for the
/// masquerade (table `ip flotilla`).
pub struct HostNetwork;

#[async_trait::async_trait]
impl Programmer for HostNetwork {
    async fn prepare(&self) -> Result<(), String> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("cannot turn IP forwarding on: {e}"))?;
        let rules = format!(
            "table ip flotilla\ndelete table ip flotilla\n\
             table ip flotilla {{\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr {POD_NETWORK} ip daddr != {POD_NETWORK} masquerade\n\
               }}\n\
             }}\n"
        );
        flotilla_runtime::nft::Nft::default()
            .apply(&rules)
            .await
            .map_err(|e| format!("the masquerade rule was not applied: {e}"))?;
        Ok(())
    }

    async fn sync(&self, routes: &BTreeMap<Cidr, Ipv4Addr>) -> Result<usize, String> {
        let routes = routes.clone();
        tokio::task::spawn_blocking(move || {
            flotilla_runtime::net::on_host(|h| async move {
                flotilla_runtime::net::sync_pod_routes(&h, &routes).await
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}

const SYNC: &str = "routes";

/// Keeps the node's routes in step with the Node objects until `stop`.
pub async fn run(
    ctx: Context,
    me: String,
    programmer: Arc<dyn Programmer>,
    stop: CancellationToken,
) {
    let queue = WorkQueue::new(Backoff::doubling(
        Duration::from_millis(200),
        Duration::from_secs(10),
    ));
    let nodes = Informer::builder([flotilla_controllers::nodes::NODES_PREFIX], |_, r| {
        serde_json::from_slice::<Value>(&r.value)
            .ok()
            .and_then(|v| parse_node(&v))
    })
    .on_change({
        let queue = queue.clone();
        move |_| queue.add(SYNC)
    })
    .build();
    nodes.spawn(Arc::clone(&ctx.engine), stop.clone(), "network");
    let mut backoff = Duration::from_millis(200);
    loop {
        match programmer.prepare().await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "cannot prepare the pod network; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    queue.add(SYNC);
    let reconcile = move |_key: String| {
        let nodes = nodes.clone();
        let me = me.clone();
        let programmer = Arc::clone(&programmer);
        async move {
            nodes.synced().await;
            let all: Vec<NodeRoute> = nodes.list().iter().map(|n| n.object.clone()).collect();
            let wanted = routes(&all, &me);
            let changed = programmer.sync(&wanted).await?;
            if changed > 0 {
                tracing::info!(routes = wanted.len(), changed, "pod routes synced");
            }
            // Routes someone removed come back within a minute.
            Ok::<_, String>(Next::After(Duration::from_secs(60)))
        }
    };
    run_workers("network", queue, 1, stop, reconcile).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_other_node_with_a_cidr_and_address_is_a_route() {
        let node = |name: &str, cidr: Option<&str>, ip: &str| {
            parse_node(&json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
            }))
            .unwrap()
        };
        let nodes = vec![
            node("n1", Some("10.244.0.0/24"), "10.0.0.1"),
            node("n2", Some("10.244.1.0/24"), "10.0.0.2"),
            node("n3", None, "10.0.0.3"),
        ];
        let r = routes(&nodes, "n1");
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            vec![("10.244.1.0/24".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 2))]
        );
        assert_eq!(routes(&nodes, "n2").len(), 1);
    }
}
