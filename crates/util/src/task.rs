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
