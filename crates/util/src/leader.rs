//! The leader group: every leader-only loop (scheduler, controllers, node lifecycle, garbage
//! collector) starts together when this node becomes leader and stops together when it steps
//! down, so that no loop checks leadership on its own tick.
//!
//! Leadership arrives as a watch of `Option<term>`: `Some(t)` while this node leads in term
//! `t`. A new term (even one led by this node again) stops the loops of the old term and waits
//! for them before starting fresh ones, so two terms' loops never run at once in one process.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type LoopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type LoopFactory = Box<dyn Fn(CancellationToken) -> LoopFuture + Send + Sync>;

/// How long a stopping loop may take to return after its token is cancelled.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the group has done, for `/metrics` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The term whose loops run now, if any.
    pub running_term: Option<u64>,
    /// How many times the loops were started, and stopped.
    pub starts: u64,
    pub stops: u64,
    /// Every term in which the loops were started.
    pub started_terms: BTreeSet<u64>,
}

/// Leader-only loops, started and stopped as one.
pub struct LeaderGroup {
    loops: Vec<(&'static str, LoopFactory)>,
    status: Arc<Mutex<GroupStatus>>,
    /// The runtime the loops run on; the caller's when `None`.
    runtime: Option<tokio::runtime::Handle>,
}

impl Default for LeaderGroup {
    fn default() -> Self {
        Self::new()
    }
}

struct Running {
    term: u64,
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl LeaderGroup {
    pub fn new() -> LeaderGroup {
        LeaderGroup {
            loops: Vec::new(),
            status: Arc::default(),
            runtime: None,
        }
    }

    /// Runs the loops (and whatever they spawn) on the runtime of `handle`.
    pub fn on_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Adds a loop: `start` is called with a token that is cancelled when leadership ends; the
    /// future it returns must return soon after.
    pub fn add<F, Fut>(&mut self, name: &'static str, start: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.loops
            .push((name, Box::new(move |token| Box::pin(start(token)))));
    }

    /// A handle on what the group has done.
    pub fn status(&self) -> GroupStatusHandle {
        GroupStatusHandle(Arc::clone(&self.status))
    }

    /// Follows `leadership` until `shutdown`, starting and stopping the loops; stops them before
    /// it returns.
    pub async fn run(
        self,
        mut leadership: watch::Receiver<Option<u64>>,
        shutdown: CancellationToken,
    ) {
        let mut running: Option<Running> = None;
        loop {
            let want = *leadership.borrow_and_update();
            if running.as_ref().map(|r| r.term) != want {
                if let Some(r) = running.take() {
                    self.stop(r).await;
                }
                // Stopping may take a while: start for the leadership as it is now.
                let want = *leadership.borrow_and_update();
                if let Some(term) = want {
                    running = Some(self.start(term));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = leadership.changed() => if changed.is_err() { break },
            }
        }
        if let Some(r) = running.take() {
            self.stop(r).await;
        }
    }

    fn start(&self, term: u64) -> Running {
        let stop = CancellationToken::new();
        let tasks = self
            .loops
            .iter()
            .map(|(name, start)| {
                let fut = start(stop.child_token());
                let handle = self
                    .runtime
                    .clone()
                    .unwrap_or_else(tokio::runtime::Handle::current);
                let task = crate::task::spawn_named_on(&handle, name, async move {
                    fut.await;
                });
                (*name, task)
            })
            .collect();
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.running_term = Some(term);
            s.starts += 1;
            s.started_terms.insert(term);
        }
        tracing::info!(term, loops = self.loops.len(), "leader loops started");
        Running { term, stop, tasks }
    }

    async fn stop(&self, running: Running) {
        running.stop.cancel();
        for (name, mut task) in running.tasks {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!(
                    loop_name = name,
                    "leader loop did not stop in time; aborted"
                );
                task.abort();
                // Gone before the next term's loops start.
                let _ = task.await;
            }
        }
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            s.running_term = None;
            s.stops += 1;
        }
        tracing::info!(term = running.term, "leader loops stopped");
    }
}

/// Reads the group's [`GroupStatus`].
#[derive(Clone, Debug)]
pub struct GroupStatusHandle(Arc<Mutex<GroupStatus>>);

impl GroupStatusHandle {
    pub fn get(&self) -> GroupStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loop that counts how many of it run at once.
    fn counting(group: &mut LeaderGroup, name: &'static str, live: Arc<AtomicUsize>) {
        group.add(name, move |stop: CancellationToken| {
            let live = Arc::clone(&live);
            async move {
                live.fetch_add(1, Ordering::SeqCst);
                stop.cancelled().await;
                live.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let ok = crate::wait_until(Duration::from_secs(5), || {
            let v = check().then_some(());
            async move { v }
        })
        .await;
        assert!(ok.is_some(), "timed out waiting for {what}");
    }

    #[tokio::test]
    async fn loops_start_and_stop_with_leadership() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut group = LeaderGroup::new();
        counting(&mut group, "a", Arc::clone(&live));
        counting(&mut group, "b", Arc::clone(&live));
        let status = group.status();
        let (tx, rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(group.run(rx, shutdown.clone()));

        tx.send_replace(Some(3));
        until("two loops of term 3", || live.load(Ordering::SeqCst) == 2).await;
        assert_eq!(status.get().running_term, Some(3));

        tx.send_replace(None);
        until("the loops to stop", || status.get().running_term.is_none()).await;
        assert_eq!(live.load(Ordering::SeqCst), 0);

        // Leading again in a later term: a fresh start; a new term while leading restarts.
        tx.send_replace(Some(5));
        until("term 5", || status.get().running_term == Some(5)).await;
        tx.send_replace(Some(6));
        until("term 6", || status.get().running_term == Some(6)).await;
        until("two loops", || live.load(Ordering::SeqCst) == 2).await;

        shutdown.cancel();
        run.await.unwrap();
        assert_eq!(live.load(Ordering::SeqCst), 0);
        let s = status.get();
        assert_eq!((s.starts, s.stops), (3, 3));
        assert_eq!(s.started_terms, BTreeSet::from([3, 5, 6]));
        assert_eq!(s.running_term, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_ignores_its_token_is_aborted() {
        let mut group = LeaderGroup::new();
        group.add("stubborn", |_stop| std::future::pending::<()>());
        let status = group.status();
        let (tx, rx) = watch::channel(Some(1));
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(group.run(rx, shutdown.clone()));
        until("term 1", || status.get().running_term == Some(1)).await;
        tx.send_replace(None);
        until("the stop", || status.get().stops == 1).await;
        shutdown.cancel();
        run.await.unwrap();
    }
}
