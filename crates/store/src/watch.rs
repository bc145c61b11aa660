//! The watch window: the most recent applied changes, kept in memory so that a watcher can start
//! from any revision still inside it and receive every later change exactly once, in order.
//!
//! Each watcher keeps a cursor (the last revision it has seen) and pulls from the window; there
//! is no per-watcher buffer to overflow. A watcher that falls behind the window's start gets
//! [`StoreError::Compacted`], as Kubernetes answers 410 Gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::command::Revision;
use crate::error::StoreError;
use crate::record::Event;

struct Window {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Every event with a revision above `start` is in `events`.
    start: Revision,
    /// The last revision published.
    head: Revision,
    /// Bumped by [`WatchWindow::reset`]; a watcher from an older epoch is compacted.
    epoch: u64,
}

/// The in-memory window of recent changes on one replica.
pub struct WatchWindow {
    inner: Mutex<Window>,
    head_tx: watch::Sender<Revision>,
}

impl WatchWindow {
    /// A window holding at least the last `capacity` events, starting after `revision`.
    pub fn new(revision: Revision, capacity: usize) -> Self {
        let (head_tx, _) = watch::channel(revision);
        Self {
            inner: Mutex::new(Window {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                start: revision,
                head: revision,
                epoch: 0,
            }),
            head_tx,
        }
    }

    /// Publishes the events applied at `revision` (possibly none: the head still advances).
    /// Revisions must increase.
    pub fn publish(&self, revision: Revision, events: Vec<Event>) {
        {
            let mut w = self.lock();
            if revision <= w.head {
                return;
            }
            w.head = revision;
            w.events.extend(events.into_iter().map(Arc::new));
            while w.events.len() > w.capacity {
                // Drop whole revisions so that a batch is never split.
                let Some(oldest) = w.events.front().map(|e| e.revision) else {
                    break;
                };
                while w.events.front().is_some_and(|e| e.revision == oldest) {
                    w.events.pop_front();
                }
                w.start = oldest;
            }
        }
        self.head_tx.send_replace(revision);
    }

    /// Forgets every event: the replica jumped to `revision` (a snapshot was installed). Open
    /// watchers get [`StoreError::Compacted`]; new ones may start at `revision` or later.
    pub fn reset(&self, revision: Revision) {
        {
            let mut w = self.lock();
            w.events.clear();
            w.start = revision;
            w.head = revision;
            w.epoch += 1;
        }
        self.head_tx.send_replace(revision);
    }

    /// The last revision published.
    pub fn head(&self) -> Revision {
        self.lock().head
    }

    /// The oldest revision a watch may start after.
    pub fn start(&self) -> Revision {
        self.lock().start
    }

    /// Watches keys starting with `prefix` for changes after revision `after`.
    pub fn watch(
        self: &Arc<Self>,
        prefix: impl Into<String>,
        after: Revision,
    ) -> Result<Watcher, StoreError> {
        let w = self.lock();
        if after < w.start {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: w.start,
            });
        }
        Ok(Watcher {
            window: Arc::clone(self),
            head_rx: self.head_tx.subscribe(),
            prefix: prefix.into(),
            cursor: after,
            epoch: w.epoch,
            on_quiet: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding this lock leaves the window consistent (every mutation is a
        // single step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events after `cursor` matching `prefix`, and the revision the caller has now seen.
    fn pull(
        &self,
        prefix: &str,
        cursor: Revision,
        epoch: u64,
    ) -> Result<(Vec<Arc<Event>>, Revision), StoreError> {
        let w = self.lock();
        if epoch != w.epoch || cursor < w.start {
            return Err(StoreError::Compacted {
                requested: cursor,
                oldest: w.start,
            });
        }
        let from = w.events.partition_point(|e| e.revision <= cursor);
        let events = w
            .events
            .range(from..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok((events, cursor.max(w.head)))
    }
}

/// One watcher's position in the window.
pub struct Watcher {
    window: Arc<WatchWindow>,
    head_rx: watch::Receiver<Revision>,
    prefix: String,
    cursor: Revision,
    epoch: u64,
    on_quiet: Option<Box<dyn Fn(Revision) + Send + Sync>>,
}

impl Watcher {
    /// Calls `f` with the revision reached whenever the window moves past changes that do not
    /// match this watcher's prefix: the caller, who has handled everything returned before,
    /// is then current up to that revision although nothing came (an informer's cache of pods
    /// is current once the writes of other kinds after it have been looked at).
    pub fn on_quiet(&mut self, f: impl Fn(Revision) + Send + Sync + 'static) {
        self.on_quiet = Some(Box::new(f));
    }

    /// The next changes, in revision order, waiting until there is at least one.
    pub async fn next(&mut self) -> Result<Vec<Arc<Event>>, StoreError> {
        loop {
            self.head_rx.borrow_and_update();
            let (events, seen) = self.window.pull(&self.prefix, self.cursor, self.epoch)?;
            let moved = seen > self.cursor;
            self.cursor = seen;
            if !events.is_empty() {
                return Ok(events);
            }
            if let (true, Some(f)) = (moved, &self.on_quiet) {
                f(seen);
            }
            if self.head_rx.changed().await.is_err() {
                return Err(StoreError::Closed {
                    reason: "the watch window was dropped".into(),
                });
            }
        }
    }

    /// The last revision this watcher has seen.
    pub fn cursor(&self) -> Revision {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventKind, Record};

    fn ev(rev: Revision, key: &str) -> Event {
        Event {
            revision: rev,
            kind: EventKind::Created,
            key: key.into(),
            record: Some(Record {
                create_revision: rev,
                mod_revision: rev,
                value: vec![],
            }),
            prev: None,
        }
    }

    #[tokio::test]
    async fn delivers_each_change_once_in_order() {
        let w = Arc::new(WatchWindow::new(0, 100));
        w.publish(1, vec![ev(1, "/a/1")]);
        let mut watcher = w.watch("/a/", 0).unwrap();
        w.publish(2, vec![ev(2, "/b/1")]);
        w.publish(3, vec![ev(3, "/a/2"), ev(3, "/a/3")]);
        let got: Vec<_> = watcher
            .next()
            .await
            .unwrap()
            .iter()
            .map(|e| (e.revision, e.key.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, "/a/1".into()), (3, "/a/2".into()), (3, "/a/3".into())]
        );
        w.publish(4, vec![ev(4, "/a/4")]);
        let got: Vec<_> = watcher
            .next()
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(got, vec![4]);
    }

    #[tokio::test]
    async fn waits_for_new_changes() {
        let w = Arc::new(WatchWindow::new(0, 100));
        let mut watcher = w.watch("", 0).unwrap();
        let w2 = Arc::clone(&w);
        let publisher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            w2.publish(5, vec![ev(5, "k")]);
        });
        let got = watcher.next().await.unwrap();
        assert_eq!(got[0].revision, 5);
        publisher.await.unwrap();
    }

    #[test]
    fn too_old_revision_is_compacted() {
        let w = Arc::new(WatchWindow::new(0, 2));
        for rev in 1..=5 {
            w.publish(rev, vec![ev(rev, "k")]);
        }
        assert_eq!(w.start(), 3);
        assert!(matches!(
            w.watch("", 2),
            Err(StoreError::Compacted {
                requested: 2,
                oldest: 3
            })
        ));
        assert!(w.watch("", 3).is_ok());
    }

    #[tokio::test]
    async fn slow_watcher_is_compacted_not_skipped() {
        let w = Arc::new(WatchWindow::new(0, 2));
        let mut watcher = w.watch("", 0).unwrap();
        for rev in 1..=5 {
            w.publish(rev, vec![ev(rev, "k")]);
        }
        assert!(matches!(
            watcher.next().await,
            Err(StoreError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn reset_compacts_open_watchers() {
        let w = Arc::new(WatchWindow::new(0, 10));
        let mut watcher = w.watch("", 0).unwrap();
        w.reset(100);
        assert!(matches!(
            watcher.next().await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(w.watch("", 99).is_err());
        assert!(w.watch("", 100).is_ok());
    }

    #[tokio::test]
    async fn watcher_ahead_of_head_does_not_go_back() {
        let w = Arc::new(WatchWindow::new(0, 10));
        let mut watcher = w.watch("", 2).unwrap();
        w.publish(1, vec![ev(1, "k")]);
        w.publish(2, vec![ev(2, "k")]);
        w.publish(3, vec![ev(3, "k")]);
        let got: Vec<_> = watcher
            .next()
            .await
            .unwrap()
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(got, vec![3]);
    }
}
