//! The collector's loop on the leader: an index of every object kept from the watch window
//! (rebuilt from a full scan when this node becomes leader or falls out of the window), a
//! plan once a second when something changed or a deletion is pending, and each action
//! applied to the stored object with the revision the plan saw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_raft::RaftNode;
use flotilla_store::{Command, Engine, EventKind, Proposer, StoreError, Watcher};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{plan, Action, Item, Owner};

/// Every served object, by store key, and the watcher that keeps it current.
struct Index {
    items: BTreeMap<String, Item>,
    watcher: Watcher,
    prefixes: Vec<String>,
}

impl Index {
    /// Starts watching, then scans: a change during the scan is replayed on top of it.
    fn build(node: &RaftNode) -> Result<Index, StoreError> {
        let from = node.replica.applied_revision();
        let watcher = node.replica.window_arc().watch("/", from)?;
        let prefixes: Vec<String> = flotilla_api::RESOURCES
            .iter()
            .map(|r| flotilla_api::store_prefix(r, None))
            .collect();
        let mut items = BTreeMap::new();
        for prefix in &prefixes {
            for (key, record) in node.replica.list(prefix, None, 0)?.items {
                if let Some(item) = Item::parse(&key, record.mod_revision, &record.value) {
                    items.insert(key, item);
                }
            }
        }
        Ok(Index {
            items,
            watcher,
            prefixes,
        })
    }

    /// Applies every change already in the window; whether there was any.
    async fn catch_up(&mut self) -> Result<bool, StoreError> {
        let mut changed = false;
        while let Ok(events) = tokio::time::timeout(Duration::ZERO, self.watcher.next()).await {
            for event in events? {
                if !self.prefixes.iter().any(|p| event.key.starts_with(p)) {
                    continue;
                }
                let stale = self
                    .items
                    .get(&event.key)
                    .is_some_and(|i| i.revision >= event.revision);
                if stale {
                    continue;
                }
                changed = true;
                match (&event.kind, &event.record) {
                    (EventKind::Deleted, _) | (_, None) => {
                        self.items.remove(&event.key);
                    }
                    (_, Some(record)) => {
                        match Item::parse(&event.key, record.mod_revision, &record.value) {
                            Some(item) => self.items.insert(event.key.clone(), item),
                            None => self.items.remove(&event.key),
                        };
                    }
                }
            }
        }
        Ok(changed)
    }

    fn any_deleting(&self) -> bool {
        self.items.values().any(|i| i.deleting())
    }
}

/// Whether `owner` still exists with its uid.
fn owner_exists(node: &RaftNode, owner: &Owner) -> bool {
    match node.replica.get(&owner.key) {
        Ok((_, Some(record))) => serde_json::from_slice::<Value>(&record.value)
            .map(|o| o["metadata"]["uid"] == owner.uid.as_str())
            .unwrap_or(false),
        Ok((_, None)) => false,
        // Unknown: keep the dependent.
        Err(_) => true,
    }
}

/// The write an action makes, if the object is still as planned.
fn command_for(node: &RaftNode, action: &Action, now: SystemTime) -> Option<Command> {
    let key = action.key();
    let record = node.replica.get(key).ok()?.1?;
    if record.mod_revision != action.revision() {
        return None;
    }
    if let Action::DeleteOrphan { owners, .. } = action {
        if owners.is_empty() || owners.iter().any(|o| owner_exists(node, o)) {
            return None;
        }
    }
    let object: Value = serde_json::from_slice(&record.value).ok()?;
    Some(match action.apply(&object, now) {
        Some(updated) => Command::update(key, updated.to_string(), Some(record.mod_revision)),
        None => Command::delete(key, Some(record.mod_revision)),
    })
}

/// On the leader, once a second when anything changed or a deletion is pending: plan and act.
pub async fn run(node: Arc<RaftNode>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index: Option<Index> = None;
    let mut retry = false;
    // Time alone expires events: plan at least this often.
    let sweep = Duration::from_secs(60);
    let mut planned_at = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            index = None;
            continue;
        }
        let idx = match index.as_mut() {
            Some(i) => i,
            None => match Index::build(&node) {
                Ok(i) => {
                    retry = true;
                    index.insert(i)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector cannot scan");
                    continue;
                }
            },
        };
        let changed = match idx.catch_up().await {
            Ok(changed) => changed,
            Err(e) => {
                // Fell out of the watch window (or it was reset): scan again next round.
                tracing::info!(error = %e, "garbage collector rebuilds its index");
                index = None;
                continue;
            }
        };
        if !changed && !retry && !idx.any_deleting() && planned_at.elapsed() < sweep {
            continue;
        }
        planned_at = std::time::Instant::now();
        let now = SystemTime::now();
        let actions = plan(idx.items.values(), now);
        retry = false;
        if actions.is_empty() || node.read_barrier().await.is_err() {
            retry = !actions.is_empty();
            continue;
        }
        for action in actions {
            let Some(command) = command_for(&node, &action, now) else {
                continue;
            };
            let key = action.key();
            match node.propose(command).await {
                Ok(_) => tracing::info!(%key, ?action, "garbage collected"),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => {
                    retry = true;
                    tracing::warn!(%key, error = %e, "garbage collector write failed");
                }
            }
        }
    }
}
