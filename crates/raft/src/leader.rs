//! The one way to run something on the leader: here if this node leads, else forwarded to the
//! leader its Raft metrics name, until a deadline. Proposals, read indexes and membership
//! changes all go through [`RaftNode::on_leader`].
//!
//! A try is repeated only when it certainly had no effect: no leader, a node that turned it
//! away as not the leader, or a call that never reached the leader. A call that may have
//! reached the leader and whose answer was lost (a reset connection, no answer in time) is
//! repeated only for an idempotent operation; otherwise its outcome is unknown and the answer
//! says so, as etcd and Kubernetes answer.

use std::future::Future;
use std::time::{Duration, Instant};

use flotilla_store::StoreError;
use tonic::Status;

use crate::node::RaftNode;
use crate::types::Member;

/// What one try gave.
pub(crate) enum Try<T, E> {
    /// The leader's answer: done, or refused for good.
    Answer(Result<T, E>),
    /// Certainly no effect: the node asked does not lead (now).
    NotLeader(String),
    /// The call certainly never reached the leader.
    NotSent(String),
    /// The call may have reached the leader; its answer was lost.
    Lost(String),
}

impl<T> Try<T, StoreError> {
    /// A try on this node: `Ok(None)` when it does not lead.
    pub(crate) fn local(result: Result<Option<T>, StoreError>) -> Self {
        match result {
            Ok(Some(v)) => Try::Answer(Ok(v)),
            Ok(None) => Try::NotLeader("leadership moved".into()),
            Err(StoreError::NotLeader { reason }) => Try::NotLeader(reason),
            Err(e) => Try::Answer(Err(e)),
        }
    }

    /// A try forwarded to `leader`: the store's answer, or the call's failure.
    pub(crate) fn forwarded(
        leader: &Member,
        result: Result<Result<T, StoreError>, Status>,
    ) -> Self {
        match result {
            Ok(Err(StoreError::NotLeader { reason })) => Try::NotLeader(reason),
            Ok(answer) => Try::Answer(answer),
            Err(status) => Try::failed_call(leader, &status),
        }
    }
}

impl<T, E> Try<T, E> {
    /// A call to `leader` that failed with `status`: never sent, or lost.
    pub(crate) fn failed_call(leader: &Member, status: &Status) -> Self {
        if flotilla_rpc::never_sent(status) {
            Try::NotSent(format!("leader {leader} unreachable: {}", status.message()))
        } else {
            Try::Lost(format!(
                "leader {leader}: the call failed: {}",
                status.message()
            ))
        }
    }
}

/// How an operation on the leader fails when no try gave an answer.
pub(crate) trait LeaderFailure {
    /// The outcome is unknown: a try may have been applied.
    fn unknown(what: &str, detail: String, waited: Duration) -> Self;
    /// No try reached a leader that answered, before the deadline.
    fn gave_up(detail: String) -> Self;
}

impl LeaderFailure for StoreError {
    fn unknown(what: &str, detail: String, waited: Duration) -> Self {
        StoreError::Timeout {
            waiting_for: format!(
                "the answer of the {detail}: the {what} may or may not have been applied"
            ),
            millis: waited.as_millis() as u64,
        }
    }

    fn gave_up(detail: String) -> Self {
        StoreError::NotLeader { reason: detail }
    }
}

impl LeaderFailure for Status {
    fn unknown(what: &str, detail: String, _waited: Duration) -> Self {
        Status::deadline_exceeded(format!(
            "the answer of the {detail}: the {what} may or may not have been applied"
        ))
    }

    fn gave_up(detail: String) -> Self {
        Status::unavailable(detail)
    }
}

impl RaftNode {
    /// Runs `local` if this node leads, else `remote` against the leader, until an answer or
    /// the request timeout; see the module's doc for what is tried again.
    pub(crate) async fn on_leader<T, E, L, LF, R, RF>(
        &self,
        what: &str,
        idempotent: bool,
        local: L,
        remote: R,
    ) -> Result<T, E>
    where
        E: LeaderFailure,
        L: Fn() -> LF,
        LF: Future<Output = Try<T, E>>,
        R: Fn(&Member) -> RF,
        RF: Future<Output = Try<T, E>>,
    {
        let started = Instant::now();
        let deadline = started + self.request_timeout;
        let mut last = String::from("no leader elected");
        loop {
            let tried = match self.leader() {
                Some((id, _)) if id == self.id => Some(local().await),
                Some((_, member)) => {
                    // A hung leader (paused, partitioned) must not hold the caller past its
                    // deadline. A write is not sent with too little of it left: its answer
                    // would likely be lost in flight, and its outcome unknown.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if !idempotent && remaining < self.request_timeout / 4 {
                        return Err(E::gave_up(format!(
                            "{what} gave up after {} ms: {last}",
                            started.elapsed().as_millis()
                        )));
                    }
                    match tokio::time::timeout(remaining, remote(&member)).await {
                        Ok(tried) => Some(tried),
                        Err(_) => Some(Try::Lost(format!("leader {member}: no answer in time"))),
                    }
                }
                None => None,
            };
            match tried {
                Some(Try::Answer(answer)) => return answer,
                Some(Try::NotLeader(why) | Try::NotSent(why)) => last = why,
                Some(Try::Lost(why)) if idempotent => last = why,
                Some(Try::Lost(why)) => return Err(E::unknown(what, why, started.elapsed())),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(E::gave_up(format!(
                    "{what} gave up after {} ms: {last}",
                    self.request_timeout.as_millis()
                )));
            }
            // Give the cluster a moment to settle (an election, a reconnect) before retrying.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.await_leader((deadline - now).min(Duration::from_millis(500)))
                .await;
        }
    }
}
