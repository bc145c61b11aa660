//! A cluster member as a whole, as every `flotilla node` runs it: the Raft node started
//! (bootstrap, join or resume, [`start_node`]), the admin's credentials
//! written by the node that holds the CA key, gossip wired to Raft (liveness for the autopilot,
//! reconnects, the membership the node lifecycle follows), this node's Node object registered,
//! and the leader-only loops (garbage collector, node lifecycle) in their [`LeaderGroup`]. The
//! binary adds the API server and the signals.

pub mod admin;
mod gossip;
mod loops;
mod seed;
mod startup;

pub use startup::start_node;

use std::sync::Arc;
use std::time::Duration;

use flotilla_controllers::nodes::NodeInfo;
use flotilla_gossip::{Gossip, Membership, Timing};
use flotilla_pki::JoinToken;
use flotilla_raft::{NodeConfig, RaftNode};

use flotilla_store::Leadership;
use flotilla_util::{GroupStatusHandle, LeaderGroup};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a member starts: its Raft node, gossip's timing, what it says about itself, and where
/// its API listens (for the admin kubeconfig).
pub struct MemberConfig {
    pub raft: NodeConfig,
    pub timing: Timing,
    pub info: NodeInfo,
    pub api_addr: std::net::SocketAddr,
}

/// A running member.
pub struct Member {
    pub node: Arc<RaftNode>,
    /// Created now (a bootstrap): the first join token, printed once.
    pub join_token: Option<JoinToken>,
    /// What the leader group has done, for `/metrics`.
    pub leader_loops: GroupStatusHandle,
    /// The members and those this node's gossip reports down.
    pub members: tokio::sync::watch::Receiver<flotilla_controllers::ClusterMembers>,
    stop: CancellationToken,
    gossip: Gossip,
    reconnecting: JoinHandle<()>,
    loops: JoinHandle<()>,
}

impl Member {
    /// Starts the member; returns once it is one (a joiner: once the leader added it).
    pub async fn start(config: MemberConfig) -> Result<Member, String> {
        let data_dir = config.raft.data_dir.clone();
        let node = start_node(config.raft).await.map_err(|e| e.to_string())?;
        let join_token = admin::ensure_admin_credentials(&node, &data_dir, config.api_addr)
            .await
            .map_err(|e| format!("cannot write the admin credentials: {e}"))?;
        let stop = CancellationToken::new();
        let (gossip, reconnecting) = gossip::start(&node, &data_dir, config.timing, stop.clone())
            .await
            .map_err(|e| format!("cannot start gossip: {e}"))?;
        let members = gossip::watch_members(&node, &gossip, stop.clone());
        let group: LeaderGroup = loops::leader_group(&node, members.clone())?;
        let leader_loops = group.status();
        tokio::spawn(loops::register(
            Arc::clone(&node),
            config.info,
            stop.clone(),
        ));
        let loops =
            flotilla_util::spawn_named("leader-group", group.run(node.leadership(), stop.clone()));
        Ok(Member {
            node,
            join_token,
            leader_loops,
            members,
            stop,
            gossip,
            reconnecting,
            loops,
        })
    }

    /// Cancelled when the member shuts down: for what the binary runs beside it.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops the member: hands leadership over first if `step_down` (writes then pause only
    /// for a handover, not an election), stops the loops, says goodbye in gossip (the others
    /// see it gone at once), and closes the node.
    pub async fn shutdown(self, step_down: bool) {
        if step_down && self.node.step_down(Duration::from_secs(2)).await {
            tracing::info!("handed leadership over");
        }
        self.stop.cancel();
        let _ = self.loops.await;
        self.gossip.leave(Duration::from_secs(1)).await;
        let _ = self.reconnecting.await;
        self.node.shutdown().await;
    }
}
