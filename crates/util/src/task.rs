//! Named tasks: every long-running piece is spawned with a name that its logs carry, and says
//! so when it ends.

use std::future::Future;

use tracing::Instrument;

/// Spawns `fut` on the current runtime inside a span named after the task; logs when it ends.
pub fn spawn_named<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_named_on(&tokio::runtime::Handle::current(), name, fut)
}

/// [`spawn_named`] on the runtime of `handle`.
pub fn spawn_named_on<F>(
    handle: &tokio::runtime::Handle,
    name: &'static str,
    fut: F,
) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle.spawn(
        async move {
            let out = fut.await;
            tracing::debug!("task ended");
            out
        }
        .instrument(tracing::info_span!("task", name)),
    )
}

/// A runtime of one worker thread named `name`, made on first use and kept in `cell` for the
/// life of the process (never dropped): for work that must keep its own pace however busy the
/// main runtime is (gossip), or must not slow it (the leader's control loops).
pub fn dedicated_runtime(
    cell: &'static std::sync::OnceLock<tokio::runtime::Runtime>,
    name: &str,
) -> Result<&'static tokio::runtime::Runtime, String> {
    if let Some(rt) = cell.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {name} runtime: {e}"))?;
    Ok(cell.get_or_init(|| rt))
}
