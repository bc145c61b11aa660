//! What a node reports about itself and the cluster: its gossip view, the members, the
//! status `flotilla status` shows, and the terms it has led.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_rpc::pb;
use flotilla_store::Engine;
use openraft::async_runtime::WatchReceiver;
use openraft::{Instant as _, ServerState};
use tokio_util::sync::CancellationToken;

use crate::membership::LivenessSource;
use crate::node::RaftNode;
use crate::types::{Member, NodeId, Raft};

/// Follows this node's metrics: publishes the term it leads in (or `None`) to `leading`, and
/// records each term in which it is leader.
pub(crate) async fn follow_leadership(
    raft: Raft,
    id: NodeId,
    terms: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    leading: tokio::sync::watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let led = {
            let m = metrics.borrow_watched();
            (m.current_leader == Some(id) && m.state == ServerState::Leader)
                .then_some(m.current_term)
        };
        if let Some(term) = led {
            terms.lock().unwrap_or_else(|p| p.into_inner()).insert(term);
        }
        leading.send_if_modified(|now| std::mem::replace(now, led) != led);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
        }
    }
    // A node that stops follows nothing any more: it leads nothing.
    leading.send_replace(None);
}

impl RaftNode {
    /// A watch of the Raft members by id, changed only when the membership changes.
    pub fn members_watch(&self) -> tokio::sync::watch::Receiver<BTreeMap<NodeId, Member>> {
        let members = |m: &openraft::metrics::RaftServerMetrics<crate::types::TypeConfig>| {
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut metrics = self.raft.server_metrics();
        let (tx, rx) = tokio::sync::watch::channel(members(&metrics.borrow_watched()));
        let shutdown = self.shutdown_token();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
                let now = members(&metrics.borrow_watched());
                tx.send_if_modified(|m| {
                    let changed = *m != now;
                    *m = now;
                    changed
                });
            }
        });
        rx
    }

    /// Every member this node's gossip knows: `None` while alive, `Some(how long)` while down.
    pub fn gossip_view(&self) -> BTreeMap<NodeId, Option<Duration>> {
        (self.liveness.read().unwrap_or_else(|p| p.into_inner()))()
    }

    /// Tells the autopilot where liveness comes from.
    pub fn set_liveness(&self, source: LivenessSource) {
        *self.liveness.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// The members as Raft's membership records them.
    pub fn members(&self) -> Vec<(NodeId, Member)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> pb::StatusResponse {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let gossip = self.gossip_view();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower if voters.contains(&self.id) => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
            _ => "learner",
        };
        pb::StatusResponse {
            node_id: self.id,
            name: self.name.clone(),
            cluster_id: self.cluster_id.clone(),
            role: role.into(),
            term: m.current_term,
            leader_id: m.current_leader,
            applied: m.last_applied.as_ref().map_or(0, |l| l.index),
            last_log: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
            purged_index: m.purged.as_ref().map_or(0, |l| l.index),
            members: membership
                .nodes()
                .map(|(id, n)| {
                    let own = *id == self.id && m.state == ServerState::Leader;
                    let matched = match &m.replication {
                        _ if own => m.last_log_index,
                        Some(r) => r.get(id).map(|l| l.as_ref().map_or(0, |l| l.index)),
                        None => None,
                    };
                    let last_contact_ms = match &m.heartbeat {
                        _ if own => Some(0),
                        Some(h) => h
                            .get(id)
                            .and_then(|t| t.as_ref())
                            .map(|t| t.elapsed().as_millis() as u64),
                        None => None,
                    };
                    pb::Member {
                        id: *id,
                        name: n.name.clone(),
                        addr: n.addr.clone(),
                        voter: voters.contains(id),
                        matched,
                        last_contact_ms,
                        gossip_addr: n.gossip_addr.clone(),
                        down_ms: gossip
                            .get(id)
                            .copied()
                            .flatten()
                            .map(|d| d.as_millis() as u64),
                        gossip: match gossip.get(id) {
                            Some(None) => "alive",
                            Some(Some(_)) => "dead",
                            None => "unknown",
                        }
                        .into(),
                    }
                })
                .collect(),
            watch_window_start: self.replica.window().start(),
            led_terms: self
                .led_terms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect(),
        }
    }
}
