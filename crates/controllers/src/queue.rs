//! The work queue: keys (`ns/name`, or store keys) waiting for a reconcile.
//!
//! A key is queued at most once however often it is added; a key being reconciled is never
//! handed to a second worker, and one added meanwhile is queued again when the first reconcile
//! is done. Failed keys come back after an exponential backoff; a reconcile may also ask to look
//! again after a delay. [`run_workers`] is the loop around a reconcile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_util::Backoff;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The default retry backoff of controllers: 5 ms doubling up to 30 s (as client-go's).
pub const RETRY_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_millis(5), Duration::from_secs(30));

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    /// Keys in `ready`.
    queued: HashSet<String>,
    /// Keys handed to a worker and not yet done.
    active: HashSet<String>,
    /// Active keys added again: queued once they are done.
    again: HashSet<String>,
    /// Consecutive failures per key.
    failures: HashMap<String, u32>,
    /// Keys waiting for a delay, with when they are due.
    delayed: HashMap<String, Instant>,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    backoff: Backoff,
}

/// A deduplicating queue of keys. Clones share the queue.
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

impl Default for WorkQueue {
    fn default() -> Self {
        WorkQueue::new(RETRY_BACKOFF)
    }
}

impl WorkQueue {
    pub fn new(backoff: Backoff) -> WorkQueue {
        WorkQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                backoff,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (once, however often it is added).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        s.delayed.remove(&key);
        s.queued.insert(key.clone());
        s.ready.push_back(key);
        drop(s);
        self.inner.notify.notify_one();
    }

    /// Queues `key` after `delay` (an earlier pending delay of the same key wins).
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let key = key.into();
        let due = Instant::now() + delay;
        {
            let mut s = self.lock();
            if s.closed || s.queued.contains(&key) {
                return;
            }
            match s.delayed.get(&key) {
                Some(at) if *at <= due => return,
                _ => s.delayed.insert(key.clone(), due),
            };
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let still_due = {
                let mut s = queue.lock();
                let mine = s.delayed.get(&key) == Some(&due);
                if mine {
                    s.delayed.remove(&key);
                }
                mine
            };
            if still_due {
                queue.add(key);
            }
        });
    }

    /// Queues `key` again after the backoff its consecutive failures have earned.
    pub fn retry(&self, key: impl Into<String>) {
        let key = key.into();
        let failures = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, self.inner.backoff.delay(failures));
    }

    /// Forgets the failures of `key` (its reconcile succeeded).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many times `key` has failed in a row.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to reconcile, waiting for one; `None` once the queue is shut down. The key
    /// is active until [`WorkQueue::done`].
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.inner.notify.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    // Another worker may be waiting for the rest.
                    if !s.ready.is_empty() {
                        self.inner.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Ends the reconcile of `key`: if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &str) {
        let again = {
            let mut s = self.lock();
            s.active.remove(key);
            s.again.remove(key)
        };
        if again {
            self.add(key);
        }
    }

    /// Wakes every waiting worker with `None`; later adds are ignored.
    pub fn shut_down(&self) {
        self.lock().closed = true;
        self.inner.notify.notify_waiters();
    }

    /// Keys queued and not yet handed out.
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing until the key changes again.
    Done,
    /// Look again after this long (a timer in the object: a grace period, a TTL).
    After(Duration),
}

/// Runs `workers` workers that take keys from `queue` and reconcile them until `shutdown`.
/// A failed reconcile is logged and retried with backoff. Each reconcile runs in a span that
/// names the controller and the key.
pub async fn run_workers<F, Fut, E>(
    controller: &'static str,
    queue: WorkQueue,
    workers: usize,
    shutdown: CancellationToken,
    reconcile: F,
) where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, E>> + Send,
    E: std::fmt::Display,
{
    let stop = {
        let queue = queue.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            queue.shut_down();
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                let span = tracing::info_span!("reconcile", controller, key = %key);
                let result = reconcile(key.clone()).instrument(span).await;
                queue.done(&key);
                match result {
                    Ok(Next::Done) => queue.forget(&key),
                    Ok(Next::After(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key, delay);
                    }
                    Err(e) => {
                        tracing::warn!(controller, key = %key, error = %e, failures = queue.failures(&key) + 1, "reconcile failed; retrying");
                        queue.retry(key);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stop.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_key_is_queued_once_and_requeued_if_added_while_active() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        let a = q.next().await.unwrap();
        assert_eq!(a, "a");
        // Added while a worker has it: not handed out again until it is done.
        q.add("a");
        assert_eq!(q.next().await.as_deref(), Some("b"));
        assert!(q.is_empty());
        q.done("a");
        assert_eq!(q.next().await.as_deref(), Some("a"));
        q.done("a");
        q.done("b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_and_backoff() {
        let q = WorkQueue::new(Backoff::doubling(
            Duration::from_secs(1),
            Duration::from_secs(4),
        ));
        let t0 = Instant::now();
        q.add_after("late", Duration::from_secs(10));
        q.add_after("late", Duration::from_secs(3)); // the earlier wins
        assert_eq!(q.next().await.as_deref(), Some("late"));
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
        q.done("late");

        // Failures wait 1 s, 2 s, 4 s, 4 s; forgetting starts over.
        let mut waits = Vec::new();
        for _ in 0..4 {
            let before = Instant::now();
            q.retry("x");
            q.next().await.unwrap();
            q.done("x");
            waits.push((Instant::now() - before).as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 4]);
        q.forget("x");
        assert_eq!(q.failures("x"), 0);
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let q = WorkQueue::default();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiting.await.unwrap(), None);
        q.add("ignored");
        assert!(q.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_never_reconcile_one_key_twice_at_once() {
        let q = WorkQueue::default();
        let running = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let workers = tokio::spawn(run_workers("test", q.clone(), 4, stop.clone(), {
            let (running, overlaps, calls) = (running.clone(), overlaps.clone(), calls.clone());
            move |_key: String| {
                let (running, overlaps, calls) = (running.clone(), overlaps.clone(), calls.clone());
                async move {
                    if running.fetch_add(1, Ordering::SeqCst) > 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(Next::Done)
                }
            }
        }));
        for _ in 0..50 {
            q.add("same");
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        let ok = flotilla_util::wait_until(Duration::from_secs(5), || {
            let idle = q.is_empty() && running.load(Ordering::SeqCst) == 0;
            async move { idle.then_some(()) }
        })
        .await;
        assert!(ok.is_some());
        stop.cancel();
        workers.await.unwrap();
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        let n = calls.load(Ordering::SeqCst);
        assert!((1..50).contains(&n), "{n} reconciles for 50 adds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reconcile_is_retried_and_then_forgotten() {
        let q = WorkQueue::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let workers = tokio::spawn(run_workers("test", q.clone(), 1, stop.clone(), {
            let calls = calls.clone();
            move |_key: String| {
                let calls = calls.clone();
                async move {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err("not yet"),
                        _ => Ok(Next::Done),
                    }
                }
            }
        }));
        q.add("k");
        let ok = flotilla_util::wait_until(Duration::from_secs(5), || {
            let n = calls.load(Ordering::SeqCst);
            async move { (n == 3).then_some(()) }
        })
        .await;
        assert!(ok.is_some());
        let forgotten = flotilla_util::wait_until(Duration::from_secs(1), || {
            let f = q.failures("k");
            async move { (f == 0).then_some(()) }
        })
        .await;
        assert!(forgotten.is_some());
        stop.cancel();
        workers.await.unwrap();
    }
}
