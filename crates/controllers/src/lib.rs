//! Control loops. Each has the same shape: an [`Informer`] (list + watch of the local replica
//! into an indexed cache) feeds a [`WorkQueue`] of keys; workers run a pure planner
//! (desired, observed, now → writes) and write through the [`Proposer`] with the revision the
//! plan saw. Leader-only loops are started and stopped together by the node's
//! `flotilla_util::LeaderGroup`. This crate reads and writes only through the store contract
//! (`flotilla-store`), never Raft, so every loop runs against `MemoryStore` in tests.

pub mod batch;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod informer;
pub mod namespaces;
pub mod nodes;
pub mod queue;
pub mod scheduling;
pub mod services;
pub mod taints;
pub mod workloads;

pub use informer::{Cached, Change, Informer};
pub use nodes::{run_node_lifecycle, ClusterMembers};
pub use queue::{run_workers, Next, WorkQueue};

use std::collections::BTreeSet;
use std::sync::Arc;

use flotilla_api::meta::{new_uid, now_rfc3339};
use flotilla_store::{Engine, Proposer, StoreError};
use flotilla_util::Clock;

use crate::nodes::{NodeInfo, POD_CIDRS_PREFIX};

/// What a control loop reads, writes and asks the time of.
#[derive(Clone)]
pub struct Context {
    /// The local replica.
    pub engine: Arc<dyn Engine>,
    pub proposer: Arc<dyn Proposer>,
    pub clock: Arc<dyn Clock>,
}

/// Creates the system namespaces that do not exist yet (each node calls it at start; a create
/// that another node already made is fine).
pub async fn ensure_system_namespaces(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
) -> Result<(), StoreError> {
    for name in namespaces::SYSTEM_NAMESPACES {
        let key = namespaces::namespace_key(name);
        if engine.get(&key)?.1.is_some() {
            continue;
        }
        let object = namespaces::new_namespace(name, &new_uid(), &now_rfc3339());
        match proposer
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
pub async fn register_node(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    info: &NodeInfo,
) -> Result<String, StoreError> {
    let key = nodes::node_key(&info.name);
    let mut last = None;
    for _ in 0..20 {
        proposer.read_barrier().await?;
        let (_, current) = engine.get(&key)?;
        let command = match &current {
            Some(record) => nodes::register_existing(info, record, &now_rfc3339()),
            None => {
                let taken: BTreeSet<String> = engine
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
        match proposer.propose(command).await {
            Ok(_) => break,
            Err(e @ (StoreError::AlreadyExists { .. } | StoreError::Conflict { .. })) => {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last.filter(|_| engine.get(&key).ok().and_then(|(_, r)| r).is_none()) {
        return Err(e);
    }
    // The write may have been committed by the leader before this replica applied it.
    proposer.read_barrier().await?;
    let (_, record) = engine.get(&key)?;
    let cidr = record
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.value).ok())
        .and_then(|v| v["spec"]["podCIDR"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok(cidr)
}
