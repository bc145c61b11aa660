//! Wiring gossip to the Raft node: liveness for the autopilot, this node's Raft role in its
//! gossip metadata, and reconnecting to members that gossip does not see alive (at start, and after a partition heals, which memberlist alone
//! does not do).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_controllers::ClusterMembers;
use flotilla_gossip::{Gossip, GossipConfig, Liveness, Membership, NodeMeta, Timing};
use flotilla_pki::{Credential, NodePki};
use flotilla_raft::RaftNode;
use tokio_util::sync::CancellationToken;

const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How long a Raft member may be missing from gossip's view before the node lifecycle counts
/// it down (joins take about a second).
const MISSING_GRACE: Duration = Duration::from_secs(5);

/// Gossip's own runtime: one thread, so that failure detection keeps its timing however busy
/// the node's main runtime is (applying, serving the API, catching up). Never dropped.
fn gossip_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    flotilla_util::dedicated_runtime(&RUNTIME, "gossip")
}

pub async fn start(
    node: &Arc<RaftNode>,
    data_dir: &Path,
    timing: Timing,
    shutdown: CancellationToken,
) -> Result<(Gossip, tokio::task::JoinHandle<()>), String> {
    let pki = NodePki::load(data_dir)
        .map_err(|e| e.to_string())?
        .ok_or("no credentials under the data dir")?;
    let bind = node
        .gossip_addr
        .parse()
        .map_err(|_| format!("bad gossip address {}", node.gossip_addr))?;
    let runtime = gossip_runtime()?;
    let config = GossipConfig {
        id: format!("{:x}", node.id),
        bind,
        meta: NodeMeta {
            name: node.name.clone(),
            raft_id: node.id,
            peer_addr: node.addr.clone(),
            role: String::new(),
            leaving: false,
        },
        ca_pem: pki.ca_pem.clone(),
        identity: Credential {
            cert_pem: pki.chain_pem(),
            key_pem: pki.node.key_pem.clone(),
        },
        timing,
    };
    // Started on gossip's runtime, so that its tasks run there.
    let gossip = runtime
        .spawn(Gossip::start(config))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

    let view = gossip.clone();
    node.set_liveness(Arc::new(move || {
        view.view()
            .into_iter()
            .map(|p| {
                let down = (p.liveness != Liveness::Alive).then(|| p.since.elapsed());
                (p.meta.raft_id, down)
            })
            .collect()
    }));
    // It holds the node (and so its database): the caller waits for it after `shutdown`, so
    // that the node is closed before the process exits.
    let reconnecting = runtime.spawn(reconnect(Arc::clone(node), gossip.clone(), shutdown));
    Ok((gossip, reconnecting))
}

/// Joins the members gossip does not see alive: once a second, and at once when the Raft
/// membership changes, so that a node that has just joined the cluster is in gossip (and so
/// watched for failure) within a join's time rather than up to a second later.
async fn reconnect(node: Arc<RaftNode>, gossip: Gossip, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RECONNECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members = node.members_watch();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = members.changed() => if changed.is_err() { return },
        }
        let role = if node.is_voter() { "voter" } else { "learner" };
        if let Err(e) = gossip.set_role(role).await {
            tracing::warn!(error = %e, "cannot update the role in gossip");
        }
        let alive: BTreeSet<u64> = gossip
            .view()
            .into_iter()
            .filter(|p| p.liveness == Liveness::Alive)
            .map(|p| p.meta.raft_id)
            .collect();
        let seeds: Vec<_> = node
            .members()
            .into_iter()
            .filter(|(id, _)| *id != node.id && !alive.contains(id))
            .filter_map(|(_, m)| m.gossip_addr.parse().ok())
            .collect();
        if seeds.is_empty() {
            continue;
        }
        if let Err(e) = gossip.join(&seeds).await {
            tracing::debug!(error = %e, "gossip reconnect");
        }
    }
}

/// The members by name and those gossip reports down, for the node lifecycle: recomputed when
/// Raft's membership changes or gossip reports an event, and once a second as a backstop.
pub fn watch_members(
    node: &Arc<RaftNode>,
    gossip: &Gossip,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<ClusterMembers> {
    let now = {
        let node = Arc::clone(node);
        // Since when each member has been missing from gossip's view altogether.
        let missing_since: std::sync::Mutex<std::collections::HashMap<u64, Instant>> =
            Default::default();
        move || {
            let members = node.members();
            let view = node.gossip_view();
            let mut missing = missing_since.lock().unwrap_or_else(|p| p.into_inner());
            missing.retain(|id, _| !view.contains_key(id));
            let at = Instant::now();
            // Only a gossip that sees some other member alive can tell one missing: a node
            // whose own gossip sees nobody judges nobody.
            let working = view
                .iter()
                .any(|(id, down)| *id != node.id && down.is_none());
            let down = members
                .iter()
                .filter(|(id, _)| *id != node.id)
                .filter(|(id, _)| match view.get(id) {
                    Some(down) => down.is_some(),
                    // A member gossip has never seen (its join failed) is down once it has
                    // been missing for longer than a join takes: otherwise its death would
                    // go unnoticed.
                    None => {
                        let since = *missing.entry(*id).or_insert(at);
                        working && at.duration_since(since) > MISSING_GRACE
                    }
                })
                .map(|(_, m)| m.name.clone())
                .collect();
            ClusterMembers {
                names: members.iter().map(|(_, m)| m.name.clone()).collect(),
                down,
            }
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(now());
    let mut raft_members = node.members_watch();
    let mut events = gossip.subscribe();
    tokio::spawn(async move {
        let mut backstop = tokio::time::interval(Duration::from_secs(1));
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = raft_members.changed() => if changed.is_err() { return },
                event = events.recv() => match event {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = backstop.tick() => {}
            }
            let current = now();
            tx.send_if_modified(|m| {
                let changed = *m != current;
                *m = current;
                changed
            });
        }
    });
    rx
}
