//! Many proposals at once: on the leader they reach the Raft core in one message
//! (`client_write_many`), on a follower they go to the forwarder together (one forwarded call).
//! Each is still its own log entry, with its own revision and result, in the order given.

use flotilla_store::{Command, Proposer, Revision, StoreError};
use futures::StreamExt;
use openraft::errors::{ClientWriteError, Fatal};
use openraft::raft::WriteResult;

use crate::node::RaftNode;
use crate::types::TypeConfig;

/// One write's outcome; `Ok(None)`: this node was not the leader.
fn answer(
    result: Result<WriteResult<TypeConfig>, Fatal<TypeConfig>>,
) -> Result<Option<Revision>, StoreError> {
    match result {
        Ok(Ok(resp)) => resp.response.0.map(Some).map_err(StoreError::from),
        Ok(Err(ClientWriteError::ForwardToLeader(_))) => Ok(None),
        Ok(Err(ClientWriteError::LogEntryDiscarded(_))) => Err(StoreError::Timeout {
            waiting_for:
                "commit: the leader changed first, so the write may or may not have been applied"
                    .into(),
            millis: 0,
        }),
        Ok(Err(other)) => Err(StoreError::storage(other)),
        Err(f) => Err(StoreError::Closed {
            reason: f.to_string(),
        }),
    }
}

impl RaftNode {
    /// Applies `commands` through this node if it is the leader; the answers in order.
    pub(crate) async fn propose_local_many(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<Option<Revision>, StoreError>> {
        let n = commands.len();
        match self.raft.client_write_many(commands).await {
            Ok(stream) => {
                let mut answers: Vec<_> = stream.map(answer).collect().await;
                // A stopped core ends the stream early.
                answers.resize_with(n, || {
                    Err(StoreError::Closed {
                        reason: "the Raft core stopped".into(),
                    })
                });
                answers
            }
            Err(f) => (0..n)
                .map(|_| {
                    Err(StoreError::Closed {
                        reason: f.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// Proposes each of `commands` as [`Proposer::propose`] would, together: the answers in
    /// order. Writes the leader turned away (it changed meanwhile) are retried one by one.
    pub async fn propose_many(&self, commands: Vec<Command>) -> Vec<Result<Revision, StoreError>> {
        let leads = self.leader().is_some_and(|(id, _)| id == self.id);
        if !leads {
            return futures::future::join_all(commands.into_iter().map(|c| self.propose(c))).await;
        }
        let answers = self.propose_local_many(commands.clone()).await;
        let retried = commands.into_iter().zip(answers).map(|(c, a)| async move {
            match a {
                Ok(Some(revision)) => Ok(revision),
                Ok(None) | Err(StoreError::NotLeader { .. }) => self.propose(c).await,
                Err(e) => Err(e),
            }
        });
        futures::future::join_all(retried).await
    }
}
