//! Changing the membership by request: adding a learner (a node that was admitted), and
//! leaving the cluster for good (`flotilla leave`): the node hands leadership over, asks the
//! leader to remove it from the Raft membership, and marks its data dir so that it never
//! resumes as a member it no longer is. (SIGTERM, by contrast, only stops the node: it stays a
//! member and resumes on restart.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_rpc::pb;
use flotilla_rpc::pb::cluster_client::ClusterClient;
use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use tonic::Status;

use crate::leader::Try;
use crate::node::RaftNode;
use crate::types::{Member, NodeId};

/// Present in a data dir whose node has left its cluster.
pub fn left_marker(data_dir: &Path) -> PathBuf {
    data_dir.join("left")
}

impl RaftNode {
    /// Leaves the cluster: steps down if leading, is removed from the membership through the
    /// leader, marks the data dir, and cancels [`RaftNode::left`]. The caller then leaves gossip
    /// and shuts down.
    pub async fn leave(&self) -> Result<(), Status> {
        let voters = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config.membership().voter_ids().count()
        };
        if voters <= 1 && self.is_leader() {
            return Err(Status::failed_precondition(
                "the only voter cannot leave: the cluster would be gone (stop it instead)",
            ));
        }
        if self.step_down(Duration::from_secs(3)).await {
            tracing::info!("handed leadership over before leaving");
        }
        self.remove_member(pb::RemoveMemberRequest {
            node_id: self.id,
            forwarded: false,
        })
        .await?;
        std::fs::write(left_marker(&self.data_dir), b"left the cluster\n")
            .map_err(|e| Status::internal(format!("cannot mark the data dir: {e}")))?;
        tracing::info!("left the cluster");
        self.left.cancel();
        Ok(())
    }

    /// Adds a learner, here if this node leads, else through the leader (once: a node that
    /// gets a forwarded request and does not lead turns it away).
    pub(crate) async fn add_learner(&self, req: pb::AddLearnerRequest) -> Result<(), Status> {
        if req.name.is_empty() || req.addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(
                "join needs a name and a host:port address",
            ));
        }
        // Adding the same learner again changes nothing: a lost answer may be retried.
        self.on_leader(
            "learner addition",
            true,
            || async { self.add_learner_here(&req).await },
            |leader| {
                let mut client = ClusterClient::new(self.network.channel(&leader.addr));
                let (req, leader) = (req.clone(), leader.clone());
                async move {
                    if req.forwarded {
                        return Try::Answer(Err(Status::unavailable("not the leader")));
                    }
                    let fwd = pb::AddLearnerRequest {
                        forwarded: true,
                        ..req
                    };
                    forwarded_membership_change(&leader, client.add_learner(fwd).await)
                }
            },
        )
        .await
    }

    /// On the leader: adds the learner unless another member has its name or address.
    async fn add_learner_here(&self, req: &pb::AddLearnerRequest) -> Try<(), Status> {
        let duplicate = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let membership = m.membership_config.membership();
            let found = membership
                .nodes()
                .find(|(nid, n)| **nid != req.node_id && (n.name == req.name || n.addr == req.addr))
                .map(|(_, n)| n.clone());
            found
        };
        if let Some(other) = duplicate {
            return Try::Answer(Err(Status::already_exists(format!(
                "member {other} already uses this name or address"
            ))));
        }
        let member = Member {
            name: req.name.clone(),
            addr: req.addr.clone(),
            gossip_addr: req.gossip_addr.clone(),
        };
        match self.raft.add_learner(req.node_id, member, false).await {
            Ok(_) => Try::Answer(Ok(())),
            Err(e) if e.forward_to_leader().is_some() => Try::NotLeader("leadership moved".into()),
            Err(e) => Try::Answer(Err(Status::unavailable(e.to_string()))),
        }
    }

    /// Removes a member from the Raft membership, here if this node leads, else through the
    /// leader. Removing a member that is not there succeeds.
    pub(crate) async fn remove_member(&self, req: pb::RemoveMemberRequest) -> Result<(), Status> {
        self.on_leader(
            "member removal",
            true,
            || async {
                if req.node_id == self.id {
                    return Try::Answer(Err(Status::failed_precondition(
                        "the leader cannot remove itself; it hands leadership over first",
                    )));
                }
                match self.remove_here(req.node_id).await {
                    Ok(()) => Try::Answer(Ok(())),
                    Err(Retry) => Try::NotLeader("the membership cannot change yet".into()),
                }
            },
            |leader| {
                let mut client = ClusterClient::new(self.network.channel(&leader.addr));
                let leader = leader.clone();
                async move {
                    if req.forwarded {
                        return Try::Answer(Err(Status::unavailable("not the leader")));
                    }
                    let fwd = pb::RemoveMemberRequest {
                        forwarded: true,
                        ..req
                    };
                    forwarded_membership_change(&leader, client.remove_member(fwd).await)
                }
            },
        )
        .await
    }

    /// On the leader: drops `id` as a voter or learner. The autopilot then restores an odd
    /// voter count from the learners.
    async fn remove_here(&self, id: NodeId) -> Result<(), Retry> {
        let (is_voter, is_member) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let membership = m.membership_config.membership();
            let is_voter = membership.voter_ids().any(|v| v == id);
            let is_member = membership.nodes().any(|(n, _)| *n == id);
            (is_voter, is_member)
        };
        if !is_member {
            return Ok(());
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        // retain = false: a removed voter does not stay on as a learner.
        match self.raft.change_membership(change, false).await {
            Ok(_) => {
                tracing::info!(member = id, "removed a member that left");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(%err, member = id, "cannot remove the member yet");
                Err(Retry)
            }
        }
    }
}

/// A removal that may succeed on a later try (leadership moved, a change under way).
struct Retry;

/// A membership change forwarded to `leader`: `Unavailable` means it does not lead (now) or
/// cannot change the membership yet, which a later try may not meet.
fn forwarded_membership_change<R>(
    leader: &Member,
    result: Result<tonic::Response<R>, Status>,
) -> Try<(), Status> {
    match result {
        Ok(_) => Try::Answer(Ok(())),
        Err(s) if flotilla_rpc::never_sent(&s) => Try::failed_call(leader, &s),
        Err(s) if s.code() == tonic::Code::Unavailable => Try::NotLeader(s.message().to_string()),
        Err(s) => Try::Answer(Err(s)),
    }
}
