//! Control loops. Each has a pure planner (desired, observed, now → writes) and a runner that
//! feeds it from the local replica and acts only on the leader.

pub mod gc;
pub mod namespaces;
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

/// Every object the API serves, as the garbage collector scans them.
fn scan(node: &RaftNode) -> Result<Vec<gc::Item>, StoreError> {
    let mut items = Vec::new();
    for r in flotilla_api::RESOURCES {
        let listing = node
            .replica
            .list(&flotilla_api::store_prefix(r, None), None, 0)?;
        items.extend(listing.items.into_iter().filter_map(|(key, record)| {
            let object = serde_json::from_slice(&record.value).ok()?;
            Some(gc::Item {
                key,
                revision: record.mod_revision,
                object,
            })
        }));
    }
    Ok(items)
}

/// Whether `owner` still exists with its uid (read from the replica after a barrier).
fn owner_exists(node: &RaftNode, owner: &gc::Owner) -> bool {
    match node.replica.get(&owner.key) {
        Ok((_, Some(record))) => serde_json::from_slice::<serde_json::Value>(&record.value)
            .map(|o| o["metadata"]["uid"] == owner.uid.as_str())
            .unwrap_or(false),
        Ok((_, None)) => false,
        // Unknown: keep the dependent.
        Err(_) => true,
    }
}

/// On the leader, once a second when anything changed (or deletions are pending): the
/// garbage collector's actions ([`gc::plan`]).
pub async fn run_garbage_collector(node: Arc<RaftNode>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scanned_at = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            scanned_at = None;
            continue;
        }
        let revision = node.replica.applied_revision();
        if scanned_at == Some(revision) {
            continue;
        }
        let items = match scan(&node) {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector cannot scan");
                continue;
            }
        };
        let actions = gc::plan(&items, std::time::SystemTime::now());
        // Deletions waiting for time (grace periods) need another look without a write.
        let waiting = items
            .iter()
            .any(|i| !i.object["metadata"]["deletionTimestamp"].is_null());
        scanned_at = (!waiting && actions.is_empty()).then_some(revision);
        if actions.is_empty() {
            continue;
        }
        if node.read_barrier().await.is_err() {
            continue;
        }
        for action in actions {
            let key = action.key().to_string();
            let command = match action {
                gc::Action::Delete { key, revision } => {
                    flotilla_store::Command::delete(key, Some(revision))
                }
                gc::Action::DeleteOrphan {
                    key,
                    revision,
                    owners,
                } => {
                    if owners.is_empty() || owners.iter().any(|o| owner_exists(&node, o)) {
                        continue;
                    }
                    flotilla_store::Command::delete(key, Some(revision))
                }
                gc::Action::Update {
                    key,
                    revision,
                    object,
                } => flotilla_store::Command::update(key, object.to_string(), Some(revision)),
            };
            match node.propose(command).await {
                Ok(_) => tracing::info!(%key, "garbage collected"),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(%key, error = %e, "garbage collector write failed"),
            }
        }
    }
}
