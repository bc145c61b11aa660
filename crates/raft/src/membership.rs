//! Autopilot: the leader keeps 1, 3 or 5 healthy voters. It promotes caught-up learners,
//! demotes voters that gossip has reported down for longer than a stabilisation time (when that
//! is safe for quorum), removes learners that stay down much longer, and hands leadership over
//! if it finds itself leading while not a voter.
//!
//! [`plan`] is pure: membership, replication progress and liveness in, one step out.

pub use flotilla_api::cluster::target_voters;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use tokio_util::sync::CancellationToken;

use crate::types::{NodeId, Raft};

/// A learner is caught up when its replicated log is at most this many entries behind.
pub const CAUGHT_UP_LAG: u64 = 100;

/// Where liveness comes from (gossip, wired by the binary): every member gossip knows, with
/// `None` while it is alive and `Some(how long)` while it is down (dead, or left without being
/// removed). Members it does not mention count as healthy. A member that said goodbye is
/// treated like a dead one: a restart after SIGTERM must not churn the voters.
pub type LivenessSource = Arc<dyn Fn() -> BTreeMap<NodeId, Option<Duration>> + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub struct AutopilotConfig {
    /// How long a voter must be down before it is demoted.
    pub stabilization: Duration,
    /// How long a learner must be down before it is removed.
    pub dead_learner_timeout: Duration,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            stabilization: Duration::from_secs(10),
            dead_learner_timeout: Duration::from_secs(300),
        }
    }
}

/// What the leader sees.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub leader: NodeId,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Learners whose log is close to the leader's.
    pub caught_up: BTreeSet<NodeId>,
    /// Members down, and for how long.
    pub down: BTreeMap<NodeId, Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// This leader is not a voter: hand over to this voter.
    TransferLeader(NodeId),
    /// Make exactly these the voters (others stay as learners).
    SetVoters(BTreeSet<NodeId>),
    /// Remove these learners from the cluster.
    RemoveLearners(BTreeSet<NodeId>),
}

/// The next membership step, if any.
pub fn plan(o: &Observed, config: &AutopilotConfig) -> Option<Step> {
    let down_past = |id: &NodeId, limit: Duration| o.down.get(id).is_some_and(|d| *d >= limit);
    let is_down = |id: &NodeId| o.down.contains_key(id);

    if !o.voters.contains(&o.leader) {
        if let Some(to) = o.voters.iter().find(|v| !is_down(v)) {
            return Some(Step::TransferLeader(*to));
        }
    }

    // Without a majority of voters up, nothing can commit: leave the membership alone.
    let voters_up = o.voters.iter().filter(|v| !is_down(v)).count();
    if voters_up * 2 <= o.voters.len() {
        return None;
    }

    let healthy = o
        .voters
        .iter()
        .chain(&o.learners)
        .filter(|m| !is_down(m))
        .count();
    let target = target_voters(healthy);
    let demote: BTreeSet<NodeId> = o
        .voters
        .iter()
        .filter(|v| down_past(v, config.stabilization))
        .copied()
        .collect();
    let keep: BTreeSet<NodeId> = o.voters.difference(&demote).copied().collect();
    let candidates: Vec<NodeId> = o
        .caught_up
        .iter()
        .filter(|l| o.learners.contains(l) && !is_down(l))
        .copied()
        .collect();
    // As many caught-up learners as needed (and available) to reach the target, then down to
    // an odd count; never fewer voters than are kept.
    let wanted = target.max(keep.len());
    let mut count = wanted.min(keep.len() + candidates.len());
    if count.is_multiple_of(2) && count > keep.len() {
        count -= 1;
    }
    let mut voters = keep.clone();
    if count.is_multiple_of(2) {
        // Only possible with no learner to promote: demoting all of them would leave an even
        // count, so one of the demoted (the lowest id) stays a voter for now.
        voters.extend(demote.iter().next());
    } else {
        voters.extend(candidates.iter().take(count - keep.len()));
    }
    if voters != o.voters && voters.len() % 2 == 1 {
        return Some(Step::SetVoters(voters));
    }

    let gone: BTreeSet<NodeId> = o
        .learners
        .iter()
        .filter(|l| down_past(l, config.dead_learner_timeout))
        .copied()
        .collect();
    (!gone.is_empty()).then_some(Step::RemoveLearners(gone))
}

/// Runs on every node; acts only while this node is the leader.
pub async fn run_autopilot(
    raft: Raft,
    liveness: LivenessSource,
    config: AutopilotConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(observed) = observe(&raft, &liveness) else {
            continue;
        };
        let Some(step) = plan(&observed, &config) else {
            continue;
        };
        tracing::info!(?step, voters = ?observed.voters, down = ?observed.down, "autopilot");
        let result = match &step {
            Step::TransferLeader(to) => raft
                .trigger()
                .transfer_leader(*to)
                .await
                .map_err(|e| e.to_string()),
            Step::SetVoters(voters) => raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Step::RemoveLearners(ids) => raft
                .change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(err) = result {
            tracing::warn!(%err, ?step, "autopilot step failed");
        }
    }
}

/// The leader's view, or `None` when this node does not lead or a change is under way.
fn observe(raft: &Raft, liveness: &LivenessSource) -> Option<Observed> {
    let (mut observed, members) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        if m.current_leader != Some(m.id) {
            return None;
        }
        let membership = m.membership_config.membership();
        // A joint configuration is being changed already.
        if membership.get_joint_config().len() > 1 {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let caught_up = membership
            .learner_ids()
            .filter(|id| {
                replication
                    .get(id)
                    .and_then(|l| l.as_ref())
                    .is_some_and(|l| l.index + CAUGHT_UP_LAG >= last)
            })
            .collect();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        (
            Observed {
                leader: m.id,
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                caught_up,
                down: BTreeMap::new(),
            },
            members,
        )
    };
    observed.down = liveness()
        .into_iter()
        .filter_map(|(id, down)| Some((id, down?)))
        .filter(|(id, _)| members.contains(id) && *id != observed.leader)
        .collect();
    Some(observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn dead(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn observed(voters: &[u64], learners: &[u64], caught_up: &[u64]) -> Observed {
        Observed {
            leader: voters[0],
            voters: set(voters),
            learners: set(learners),
            caught_up: set(caught_up),
            down: BTreeMap::new(),
        }
    }

    fn step(o: &Observed) -> Option<Step> {
        plan(o, &AutopilotConfig::default())
    }

    #[test]
    fn targets_are_odd_and_capped() {
        let got: Vec<usize> = (1..=8).map(target_voters).collect();
        assert_eq!(got, vec![1, 1, 3, 3, 5, 5, 5, 5]);
    }

    #[test]
    fn promotes_caught_up_learners_to_an_odd_count() {
        assert_eq!(
            step(&observed(&[1], &[2, 3], &[2, 3])),
            Some(Step::SetVoters(set(&[1, 2, 3])))
        );
        // Only one caught up: stay at one voter rather than two.
        assert_eq!(step(&observed(&[1], &[2, 3], &[2])), None);
        // Two members: one voter.
        assert_eq!(step(&observed(&[1], &[2], &[2])), None);
        // Six members, three caught up: five voters.
        assert_eq!(
            step(&observed(&[1, 2, 3], &[4, 5, 6], &[4, 5, 6])),
            Some(Step::SetVoters(set(&[1, 2, 3, 4, 5])))
        );
    }

    #[test]
    fn a_voter_down_past_stabilization_is_replaced_by_a_learner() {
        let mut o = observed(&[1, 2, 3], &[4], &[4]);
        o.down.insert(3, dead(5));
        assert_eq!(step(&o), None, "not before the stabilisation time");
        o.down.insert(3, dead(11));
        assert_eq!(step(&o), Some(Step::SetVoters(set(&[1, 2, 4]))));
    }

    #[test]
    fn never_an_even_voter_count_and_never_without_quorum() {
        // Three voters, one dead, no learner: keep it (two voters would be even).
        let mut o = observed(&[1, 2, 3], &[], &[]);
        o.down.insert(3, dead(60));
        assert_eq!(step(&o), None);
        // Five voters, two dead, no learners: go to three.
        let mut o = observed(&[1, 2, 3, 4, 5], &[], &[]);
        o.down.insert(4, dead(60));
        o.down.insert(5, dead(60));
        assert_eq!(step(&o), Some(Step::SetVoters(set(&[1, 2, 3]))));
        // Five voters, one dead, no learners: keep five (four would be even).
        let mut o = observed(&[1, 2, 3, 4, 5], &[], &[]);
        o.down.insert(5, dead(60));
        assert_eq!(step(&o), None);
        // Three voters, two dead: no quorum, no change.
        let mut o = observed(&[1, 2, 3], &[4, 5], &[4, 5]);
        o.down.insert(2, dead(60));
        o.down.insert(3, dead(60));
        assert_eq!(step(&o), None);
    }

    #[test]
    fn dead_learners_go_after_the_long_timeout() {
        let mut o = observed(&[1, 2, 3], &[4, 5], &[4, 5]);
        o.down.insert(4, dead(60));
        assert_eq!(step(&o), None);
        o.down.insert(4, dead(301));
        assert_eq!(step(&o), Some(Step::RemoveLearners(set(&[4]))));
    }

    #[test]
    fn a_leader_that_is_not_a_voter_hands_over() {
        let mut o = observed(&[1, 2, 3], &[4], &[4]);
        o.leader = 4;
        o.down.insert(1, dead(1));
        assert_eq!(step(&o), Some(Step::TransferLeader(2)));
    }
}
