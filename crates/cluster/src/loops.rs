//! What a member runs besides Raft and gossip: its own registration, and the leader-only loops.

use std::sync::Arc;
use std::time::Duration;

use flotilla_controllers::nodes::NodeInfo;
use flotilla_controllers::ClusterMembers;
use flotilla_raft::RaftNode;
use flotilla_util::LeaderGroup;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The leader's control loops' own runtime: one thread, so that scheduling and reconciling
/// under load (10,000 pods at once) neither starve the Raft core and the API of the node that
/// leads nor wait behind them; the loops reach both only through the store. Never dropped.
fn control_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    flotilla_util::dedicated_runtime(&RUNTIME, "control")
}

/// The leader-only loops: the garbage collector, the node lifecycle, the scheduler and the
/// workload controllers, on their own runtime.
pub(crate) fn leader_group(
    node: &Arc<RaftNode>,
    members: watch::Receiver<ClusterMembers>,
) -> Result<LeaderGroup, String> {
    let ctx = flotilla_controllers::Context {
        engine: Arc::new(node.replica.clone()),
        proposer: Arc::clone(node) as Arc<dyn flotilla_store::Proposer>,
        clock: Arc::new(flotilla_util::SystemClock),
    };
    let mut group = LeaderGroup::new().on_runtime(control_runtime()?.handle().clone());
    group.add("garbage-collector", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::gc::run(ctx.clone(), stop)
    });
    group.add("scheduler", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::scheduling::run_scheduler(ctx.clone(), stop)
    });
    group.add("taint-eviction", {
        let (ctx, members) = (ctx.clone(), members.clone());
        move |stop| {
            flotilla_controllers::taints::run_taint_eviction(ctx.clone(), members.clone(), stop)
        }
    });
    group.add("disruption", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::disruption::run_disruption(ctx.clone(), stop)
    });
    group.add("endpoints", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::endpoints::run_endpoints(ctx.clone(), stop)
    });
    group.add("services", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::services::run_services(ctx.clone(), stop)
    });
    group.add("workloads", {
        let ctx = ctx.clone();
        move |stop| flotilla_controllers::workloads::runner::run_workloads(ctx.clone(), stop)
    });
    group.add("node-lifecycle", move |stop| {
        flotilla_controllers::run_node_lifecycle(ctx.clone(), members.clone(), stop)
    });
    Ok(group)
}

/// Registers this node's Node object (and makes sure the system namespaces exist), retrying
/// while the cluster has no quorum.
pub(crate) async fn register(node: Arc<RaftNode>, info: NodeInfo, stop: CancellationToken) {
    loop {
        match flotilla_controllers::ensure_system_namespaces(&node.replica, node.as_ref()).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "cannot create the system namespaces yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    loop {
        match flotilla_controllers::register_node(&node.replica, node.as_ref(), &info).await {
            Ok(cidr) => {
                tracing::info!(%cidr, "node registered");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot register the node yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
