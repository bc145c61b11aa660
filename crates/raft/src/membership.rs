//! Voter promotion: the leader keeps 1, 3 or 5 voters by promoting caught-up learners.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use tokio_util::sync::CancellationToken;

use crate::types::{NodeId, Raft};

/// A learner is caught up when its replicated log is at most this many entries behind.
pub const CAUGHT_UP_LAG: u64 = 100;

/// The number of voters a cluster of `members` nodes should have: the largest odd number not
/// above the member count, at most 5.
pub fn target_voters(members: usize) -> usize {
    match members {
        0..=2 => 1,
        3 | 4 => 3,
        _ => 5,
    }
}

/// Which learners to promote: enough caught-up ones (lowest ids first) to reach the target
/// voter count, or, if there are too few, the largest odd count within reach. Never an even
/// voter count.
pub fn promotions(
    voters: &BTreeSet<NodeId>,
    caught_up_learners: &BTreeSet<NodeId>,
    members: usize,
) -> BTreeSet<NodeId> {
    let target = target_voters(members);
    if voters.len() >= target {
        return BTreeSet::new();
    }
    let mut reachable = (voters.len() + caught_up_learners.len()).min(target);
    if reachable.is_multiple_of(2) {
        reachable -= 1;
    }
    caught_up_learners
        .iter()
        .take(reachable.saturating_sub(voters.len()))
        .copied()
        .collect()
}

/// Runs on every node; acts only while this node is the leader.
pub async fn run_promoter(raft: Raft, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (voters, caught_up, members) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.current_leader != Some(m.id) {
                continue;
            }
            let membership = m.membership_config.membership();
            // A joint configuration is being changed already.
            if membership.get_joint_config().len() > 1 {
                continue;
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let last = m.last_log_index.unwrap_or(0);
            let replication: BTreeMap<NodeId, Option<crate::types::LogId>> =
                m.replication.clone().unwrap_or_default();
            let caught_up: BTreeSet<NodeId> = membership
                .learner_ids()
                .filter(|id| {
                    replication
                        .get(id)
                        .and_then(|l| l.as_ref())
                        .is_some_and(|l| l.index + CAUGHT_UP_LAG >= last)
                })
                .collect();
            (voters, caught_up, membership.nodes().count())
        };
        let promote = promotions(&voters, &caught_up, members);
        if promote.is_empty() {
            continue;
        }
        tracing::info!(
            ?promote,
            voters = voters.len(),
            "promoting learners to voters"
        );
        if let Err(err) = raft
            .change_membership(ChangeMembers::AddVoterIds(promote), true)
            .await
        {
            tracing::warn!(%err, "promotion failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn targets_are_odd_and_capped() {
        let got: Vec<usize> = (1..=8).map(target_voters).collect();
        assert_eq!(got, vec![1, 1, 3, 3, 5, 5, 5, 5]);
    }

    #[test]
    fn promotes_to_three_when_two_learners_caught_up() {
        assert_eq!(promotions(&set(&[1]), &set(&[2, 3]), 3), set(&[2, 3]));
    }

    #[test]
    fn never_makes_an_even_voter_count() {
        // Three members but only one learner caught up: stay at one voter.
        assert!(promotions(&set(&[1]), &set(&[2]), 3).is_empty());
        // Six members, three voters, one caught up: stay at three.
        assert!(promotions(&set(&[1, 2, 3]), &set(&[4]), 6).is_empty());
        // Six members, three voters, three caught up: go to five.
        assert_eq!(
            promotions(&set(&[1, 2, 3]), &set(&[4, 5, 6]), 6),
            set(&[4, 5])
        );
    }

    #[test]
    fn two_members_keep_one_voter() {
        assert!(promotions(&set(&[1]), &set(&[2]), 2).is_empty());
    }
}
