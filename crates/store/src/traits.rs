//! The traits the rest of Flotilla programs against.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::command::{Command, Revision};
use crate::error::StoreError;
use crate::record::{Listing, Record};
use crate::watch::WatchWindow;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (read index through the leader).
    Linearizable,
    /// Whatever the local replica has applied; no quorum round (Kubernetes' `resourceVersion=0`).
    Local,
}

/// The local replica: reads and the watch window. Reads never block on the network.
pub trait Engine: Send + Sync {
    /// The record of `key` and the revision the replica had applied when it was read.
    fn get(&self, key: &str) -> Result<(Revision, Option<Record>), StoreError>;
    /// Keys starting with `prefix`, after `start_after` when set, at most `limit` (0: no limit),
    /// all read at one revision.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, StoreError>;
    /// The last revision applied to this replica.
    fn applied_revision(&self) -> Revision;
    /// Every change applied to this replica, for watchers.
    fn window(&self) -> &Arc<WatchWindow>;
}

/// Whether this node leads the cluster, and in which term.
pub trait Leadership: Send + Sync {
    /// A watch that holds `Some(term)` while this node is the leader of `term`, else `None`.
    fn leadership(&self) -> watch::Receiver<Option<u64>>;
}

/// Submits commands to the replicated log and waits until they are applied.
#[async_trait]
pub trait Proposer: Send + Sync {
    /// Proposes `command`; returns the revision it was applied at, or why it was refused.
    async fn propose(&self, command: Command) -> Result<Revision, StoreError>;

    /// Waits until the local replica reflects every write acknowledged before this call and
    /// returns the revision it has reached.
    async fn read_barrier(&self) -> Result<Revision, StoreError>;
}
