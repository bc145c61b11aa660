//! Fencing: a node that was unreachable says it is Ready again only from its agent, and only
//! once the agent has stopped every pod the cluster replaced meanwhile. Every half second,
//! while its Node is not Ready and no longer tainted unreachable (the leader's gossip sees it
//! again), the agent proves it reaches a quorum (a read barrier), lets its
//! pods' cache catch up to it, and looks for sandboxes of pods that are gone or being deleted:
//! it stops those (the usual termination, or the removal of orphans) and writes `Ready=True`
//! only when none is left. A pod that was replaced therefore never runs beside its
//! replacement on a node the scheduler sees as Ready.

use std::collections::HashSet;
use std::time::Duration;

use flotilla_api::cluster::ready_status;
use flotilla_api::meta::now_rfc3339;
use flotilla_controllers::nodes::{condition, node_key, set_ready_condition, UNREACHABLE_TAINT};
use flotilla_store::{Command, StoreError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{uid_of, Agent, Retry};

/// How often a node that is not Ready checks whether it may say it is.
const EVERY: Duration = Duration::from_millis(500);

impl Agent {
    /// Runs the fence until `stop`.
    pub(super) async fn run_fence(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            match self.fence().await {
                Ok(true) => tracing::info!("stale pods stopped: the node is Ready again"),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "not Ready yet"),
            }
        }
    }

    /// One check: whether it wrote `Ready=True`.
    async fn fence(&self) -> Result<bool, Retry> {
        let ctx = &self.shared.ctx;
        let key = node_key(&self.shared.config.node_name);
        let Some(record) = ctx.engine.get(&key)?.1 else {
            return Ok(false);
        };
        let mut node: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
        if ready_status(&node) == Some("True") {
            return Ok(false);
        }
        // While the leader's gossip still has it down (its taint), it is not back: saying
        // Ready now would only flip with the lifecycle's `Unknown`.
        let tainted = node["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == UNREACHABLE_TAINT && t["effect"] == "NoExecute")
        });
        if tainted {
            return Ok(false);
        }
        // Reaching a quorum proves the partition is over; the cache then holds every deletion
        // made meanwhile.
        let revision = ctx.proposer.read_barrier().await?;
        let pods = &self.shared.pods;
        if tokio::time::timeout(Duration::from_secs(5), pods.wait_for(revision))
            .await
            .is_err()
        {
            return Err(Retry("the pods' cache is behind".into()));
        }
        let live: HashSet<String> = pods
            .list()
            .iter()
            .filter(|p| p.object.metadata.deletion_timestamp.is_none())
            .map(|p| uid_of(&p.object))
            .collect();
        let stale: Vec<String> = self
            .shared
            .runtime
            .sandboxes()
            .await?
            .into_iter()
            .filter(|s| !live.contains(s))
            .collect();
        if !stale.is_empty() {
            // Pods being deleted go through their termination; pods gone, with the orphans.
            for p in pods.list() {
                if stale.contains(&uid_of(&p.object)) {
                    self.shared.queue.add(p.key.clone());
                }
            }
            self.remove_orphans().await?;
            return Ok(false);
        }
        let ready = condition(
            "Ready",
            "True",
            "KubeletReady",
            "the agent is running the node's pods",
            &now_rfc3339(),
        );
        if !set_ready_condition(&mut node, ready) {
            return Ok(false);
        }
        let command = Command::update(&key, node.to_string(), Some(record.mod_revision));
        match ctx.proposer.propose(command).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
