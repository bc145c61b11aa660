//! The node's agent, started once the node has its Node object and pod CIDR: the runtime is
//! this binary as a child process (`flotilla runtime`), its state under the data dir
//! (`runtime/`, `images/`, `ipam/`, `pods/`), the pod network the bridge `flt0`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::resources::NodeCapacity;
use flotilla_agent::volumes::Volumes;
use flotilla_agent::{Agent, Config};
use flotilla_controllers::nodes::{node_key, NodeInfo};
use flotilla_raft::RaftNode;
use flotilla_runtime::{NodeNetwork, PodRuntime, ProcessRuntime};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The bridge the node's pods are attached to.
pub const BRIDGE: &str = "flt0";

/// Where the node keeps pods, in its data dir.
pub struct Layout {
    pub runtime: std::path::PathBuf,
    pub images: std::path::PathBuf,
    pub ipam: std::path::PathBuf,
    pub pods: std::path::PathBuf,
}

impl Layout {
    pub fn of(data_dir: &Path) -> Layout {
        Layout {
            runtime: data_dir.join("runtime"),
            images: data_dir.join("images"),
            ipam: data_dir.join("ipam"),
            pods: data_dir.join("pods"),
        }
    }
}

/// What the node's service proxy follows besides the store.
pub struct ProxyInputs {
    /// Services answered by this node's own servers (DNS, API).
    pub local: flotilla_proxy::LocalServices,
    pub members: tokio::sync::watch::Receiver<flotilla_controllers::ClusterMembers>,
}

/// Where the agent gets the images it lacks.
pub struct ImageSources {
    /// To fetch from peers (and so be fetched from).
    pub tunnel: Arc<flotilla_tunnel::Tunnel>,
    /// Whether to ask peers before registries (`--peer-fetch`).
    pub peers: bool,
    /// Registries reached over HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// When unused images are removed (`--image-gc-*`).
    pub gc: flotilla_runtime::gc::GcPolicy,
}

/// This node's pod CIDR, once its registration is in the local replica.
async fn pod_cidr(node: &RaftNode, name: &str, stop: &CancellationToken) -> Option<String> {
    let key = node_key(name);
    loop {
        if let Ok((_, Some(record))) = flotilla_store::Engine::get(&node.replica, &key) {
            let object: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
            if let Some(cidr) = object["spec"]["podCIDR"].as_str() {
                return Some(cidr.to_string());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Starts the agent when the node is registered (in the background); `None` when this
/// process cannot run pods (not root), which it says once.
pub fn spawn(
    node: Arc<RaftNode>,
    data_dir: &Path,
    info: &NodeInfo,
    workers: usize,
    proxy: ProxyInputs,
    sources: ImageSources,
    stop: CancellationToken,
) {
    if !flotilla_sys::can_administer() {
        tracing::warn!(
            "not running as root: this node runs no pods (they stay Pending); start it as root to run them"
        );
        return;
    }
    let layout = Layout::of(data_dir);
    let data_dir = data_dir.to_path_buf();
    let info = info.clone();
    tokio::spawn(async move {
        let Some(cidr) = pod_cidr(&node, &info.name, &stop).await else {
            return;
        };
        let binary = match std::env::current_exe() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot find this binary: no pods will run");
                return;
            }
        };
        let images = flotilla_agent::images::Images::new(
            layout.images.clone(),
            flotilla_runtime::registry::Registries::new(sources.insecure_registries),
            sources.peers.then_some(sources.tunnel),
            Arc::new(node.replica.clone()),
            info.name.clone(),
            Arc::new(flotilla_util::SystemClock),
        );
        let runtime = ProcessRuntime {
            binary,
            root: layout.runtime,
            images: layout.images.clone(),
            network: NodeNetwork {
                bridge: BRIDGE.into(),
                pod_cidr: cidr.clone(),
                ipam_dir: layout.ipam,
                dns: Vec::new(),
                search: Vec::new(),
            },
        };
        let ctx = flotilla_controllers::Context {
            engine: Arc::new(node.replica.clone()),
            proposer: Arc::clone(&node) as Arc<dyn flotilla_store::Proposer>,
            clock: Arc::new(flotilla_util::SystemClock),
        };
        let config = Config {
            node_name: info.name.clone(),
            node_ip: info.internal_ip.clone(),
            capacity: NodeCapacity {
                cpus: info.cpus,
                memory_bytes: info.memory_bytes,
            },
            volumes: Volumes {
                root: layout.pods,
                mounts: true,
            },
            workers,
            images: Some(Arc::new(images)),
        };
        tracing::info!(%cidr, bridge = BRIDGE, "agent starting");
        tokio::spawn(flotilla_agent::images::collect_garbage(
            layout.images.clone(),
            sources.gc,
            Duration::from_secs(30),
            stop.clone(),
        ));
        tokio::spawn(flotilla_agent::node_status::run(
            ctx.clone(),
            info.name.clone(),
            data_dir.clone(),
            Duration::from_secs(5),
            stop.clone(),
        ));
        tokio::spawn(flotilla_agent::network::run(
            ctx.clone(),
            info.name.clone(),
            Arc::new(flotilla_agent::network::HostNetwork),
            stop.clone(),
        ));
        tokio::spawn(flotilla_proxy::run(
            Arc::clone(&ctx.engine),
            flotilla_proxy::ProxyConfig {
                node: info.name.clone(),
                cluster_cidr: flotilla_agent::network::POD_NETWORK.into(),
            },
            proxy.local,
            proxy.members,
            flotilla_proxy::Nft::default(),
            stop.clone(),
        ));
        Agent::start(ctx, Arc::new(runtime) as Arc<dyn PodRuntime>, config, stop).await;
    });
}
