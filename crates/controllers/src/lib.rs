//! Control loops. Each has a pure planner (desired, observed, now → writes) and a runner that
//! feeds it from the local replica and acts only on the leader.

pub mod gc;
pub mod namespaces;

pub use gc::run as run_garbage_collector;
pub mod nodes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::RaftNode;
use flotilla_store::{Engine, Proposer, StoreError};
use tokio_util::sync::CancellationToken;

use flotilla_api::meta::{new_uid, now_rfc3339};

use crate::nodes::{NodeInfo, NODES_PREFIX, POD_CIDRS_PREFIX};

/// Creates the system namespaces that do not exist yet (each node calls it at start; a create
/// that another node already made is fine).
pub async fn ensure_system_namespaces(node: &RaftNode) -> Result<(), StoreError> {
    for name in namespaces::SYSTEM_NAMESPACES {
        let key = namespaces::namespace_key(name);
        if node.replica.get(&key)?.1.is_some() {
            continue;
        }
        let object = namespaces::new_namespace(name, &new_uid(), &now_rfc3339());
        match node
            .propose(flotilla_store::Command::create(key, object.to_string()))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates or refreshes this node's Node object (and its pod CIDR). Retries conflicts with
/// other nodes registering at the same time.
pub async fn register_node(node: &RaftNode, info: &NodeInfo) -> Result<String, StoreError> {
    let key = nodes::node_key(&info.name);
    let mut last = None;
    for _ in 0..20 {
        node.read_barrier().await?;
        let (_, current) = node.replica.get(&key)?;
        let command = match &current {
            Some(record) => nodes::register_existing(info, record, &now_rfc3339()),
            None => {
                let taken: BTreeSet<String> = node
                    .replica
                    .list(POD_CIDRS_PREFIX, None, 0)?
                    .items
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let command = nodes::register_new(info, &taken, &new_uid(), &now_rfc3339());
                if command.is_none() {
                    return Err(StoreError::Storage {
                        detail: "no free pod CIDR left in 10.244.0.0/16".into(),
                    });
                }
                command
            }
        };
        let Some(command) = command else {
            break;
        };
        match node.propose(command).await {
            Ok(_) => break,
            Err(e @ (StoreError::AlreadyExists { .. } | StoreError::Conflict { .. })) => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last.filter(|_| node.replica.get(&key).ok().and_then(|(_, r)| r).is_none()) {
        return Err(e);
    }
    // The write may have been committed by the leader before this replica applied it.
    node.read_barrier().await?;
    let (_, record) = node.replica.get(&key)?;
    let cidr = record
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok())
        .and_then(|v| v["spec"]["podCIDR"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(cidr)
}

/// On the leader, every half second: Ready transitions from gossip, and removal of Node
/// objects whose node left the membership.
pub async fn run_node_lifecycle(node: Arc<RaftNode>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        let members = node.members();
        let names: BTreeSet<String> = members.iter().map(|(_, m)| m.name.clone()).collect();
        let down_ids = node.down_members();
        let down: BTreeSet<String> = members
            .iter()
            .filter(|(id, _)| down_ids.contains_key(id))
            .map(|(_, m)| m.name.clone())
            .collect();
        let listing = match node.replica.list(NODES_PREFIX, None, 0) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list nodes");
                continue;
            }
        };
        let objects: Vec<_> = listing
            .items
            .into_iter()
            .filter_map(|(k, r)| {
                serde_json::from_slice(&r.value)
                    .ok()
                    .map(|v| (k, r.mod_revision, v))
            })
            .collect();
        for command in nodes::plan(&objects, &names, &down, &now_rfc3339()) {
            let key = command.ops[0].key().to_string();
            match node.propose(command).await {
                Ok(_) => tracing::info!(%key, "node lifecycle"),
                // Someone wrote it meanwhile: the next round sees the new state.
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%key, error = %e, "node lifecycle write failed"),
            }
        }
    }
}
