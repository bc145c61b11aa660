//! The collector's loop on the leader: an informer keeps a slim [`Item`] of every served
//! object; any change queues one sweep ([`SWEEP_DELAY`] later, with the other changes of that
//! second), which plans over the whole cache and applies each
//! action to the stored object only if it is still at the revision the plan saw. A sweep asks
//! to run again when the next timer in the objects falls due (a pod's grace period, an event's
//! time to live), and at least every [`SWEEP_EVERY`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_store::{Command, Engine, StoreError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{next_due, plan, Action, Item, Owner};
use crate::informer::{Cached, Informer};
use crate::queue::{run_workers, Next, WorkQueue};
use crate::Context;

/// The collector plans over every object at once: its queue holds this one key.
const SWEEP: &str = "sweep";

/// Time alone expires events: sweep at least this often.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A change is swept this long after it arrived, together with every other change of that
/// second: bursts (a deployment's hundred pods, a namespace's content) cost one sweep, and a
/// client deleting a namespace and its content in one go (`kubectl delete -f`) deletes the
/// content itself rather than finding it already gone, as with Kubernetes' namespace
/// controller.
pub const SWEEP_DELAY: Duration = Duration::from_secs(1);

/// How often the collector's informer takes the changes that arrived.
const INFORMER_BATCH: Duration = Duration::from_millis(200);

/// Whether `owner` still exists with its uid.
fn owner_exists(engine: &dyn Engine, owner: &Owner) -> bool {
    match engine.get(&owner.key) {
        Ok((_, Some(record))) => serde_json::from_slice::<Value>(&record.value)
            .map(|o| o["metadata"]["uid"] == owner.uid.as_str())
            .unwrap_or(false),
        Ok((_, None)) => false,
        // Unknown: keep the dependent.
        Err(_) => true,
    }
}

/// The write an action makes, if the object is still as planned.
fn command_for(engine: &dyn Engine, action: &Action, now: SystemTime) -> Option<Command> {
    let key = action.key();
    let record = engine.get(key).ok()?.1?;
    if record.mod_revision != action.revision() {
        return None;
    }
    if let Action::DeleteOrphan { owners, .. } = action {
        if owners.is_empty() || owners.iter().any(|o| owner_exists(engine, o)) {
            return None;
        }
    }
    let object: Value = serde_json::from_slice(&record.value).ok()?;
    Some(match action.apply(&object, now) {
        Some(updated) => Command::update(key, updated.to_string(), Some(record.mod_revision)),
        None => Command::delete(key, Some(record.mod_revision)),
    })
}

/// One sweep: plan over the cache and act.
async fn sweep(ctx: &Context, informer: &Informer<Item>) -> Result<Next, StoreError> {
    let cached: Vec<Arc<Cached<Item>>> = informer.list();
    let items = || cached.iter().map(|c| &c.object);
    let now = ctx.clock.now();
    let actions = plan(items(), now);
    if !actions.is_empty() {
        // Act on what the cluster holds now, not on a replica that may lag the leader.
        ctx.proposer.read_barrier().await?;
    }
    let mut failed = None;
    for action in actions {
        let Some(command) = command_for(ctx.engine.as_ref(), &action, now) else {
            continue;
        };
        let key = action.key();
        match ctx.proposer.propose(command).await {
            Ok(_) => tracing::info!(%key, ?action, "garbage collected"),
            // Someone wrote it meanwhile: the informer brings the change and another sweep.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let wait = next_due(items(), now)
        .map(|due| due.duration_since(now).unwrap_or_default())
        .map_or(SWEEP_EVERY, |d| d.min(SWEEP_EVERY));
    Ok(Next::After(wait.max(Duration::from_millis(100))))
}

/// The garbage collector, until `shutdown` (the leader group cancels it when leadership ends).
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let queue = WorkQueue::default();
    let prefixes: Vec<String> = flotilla_api::RESOURCES
        .iter()
        .map(|r| flotilla_api::store_prefix(r, None))
        .collect();
    let informer = Informer::builder(prefixes, |key, record| {
        Item::parse(key, record.mod_revision, &record.value)
    })
    .on_change({
        let queue = queue.clone();
        move |_| queue.add_after(SWEEP, SWEEP_DELAY)
    })
    // A sweep comes a second after a change anyway: take changes in batches.
    .batch(INFORMER_BATCH)
    .build();
    let informing = informer.spawn(
        Arc::clone(&ctx.engine),
        shutdown.clone(),
        "garbage-collector",
    );
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = informer.synced() => {
            queue.add(SWEEP);
            run_workers("garbage-collector", queue, 1, shutdown.clone(), move |_key| {
                let (ctx, informer) = (ctx.clone(), informer.clone());
                async move { sweep(&ctx, &informer).await }
            })
            .await;
        }
    }
    let _ = informing.await;
}

#[cfg(test)]
mod tests;
