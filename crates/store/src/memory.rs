//! An in-memory engine and proposer for unit tests of the logic above the store.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::apply::plan;
use crate::command::{Command, Revision};
use crate::error::StoreError;
use crate::record::{list_start_key, Listing, Record};
use crate::traits::{Engine, Proposer};
use crate::watch::WatchWindow;

/// A single-replica store: every command is applied at the next revision, at once.
pub struct MemoryStore {
    state: Mutex<(Revision, BTreeMap<String, Record>)>,
    window: Arc<WatchWindow>,
}

impl MemoryStore {
    pub fn new(window_capacity: usize) -> Self {
        Self {
            state: Mutex::new((0, BTreeMap::new())),
            window: Arc::new(WatchWindow::new(0, window_capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Revision, BTreeMap<String, Record>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryStore {
    fn get(&self, key: &str) -> Result<(Revision, Option<Record>), StoreError> {
        let state = self.lock();
        Ok((state.0, state.1.get(key).cloned()))
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, StoreError> {
        let state = self.lock();
        let lower = Bound::Included(list_start_key(prefix, start_after));
        let items = state
            .1
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(if limit == 0 { usize::MAX } else { limit })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Listing {
            revision: state.0,
            items,
        })
    }

    fn applied_revision(&self) -> Revision {
        self.lock().0
    }

    fn window(&self) -> &Arc<WatchWindow> {
        &self.window
    }
}

#[async_trait]
impl Proposer for MemoryStore {
    async fn propose(&self, command: Command) -> Result<Revision, StoreError> {
        let mut state = self.lock();
        let revision = state.0 + 1;
        let data = &state.1;
        let planned = plan(&command, revision, |k| {
            Ok::<_, Infallible>(data.get(k).cloned())
        });
        let Ok(planned) = planned;
        // A refused command still consumes its revision, as a refused Raft entry does.
        state.0 = revision;
        match planned {
            Err(rejection) => {
                self.window.publish(revision, vec![]);
                Err(rejection.into())
            }
            Ok(p) => {
                for (key, value) in p.writes {
                    match value {
                        Some(record) => state.1.insert(key, record),
                        None => state.1.remove(&key),
                    };
                }
                self.window.publish(revision, p.events);
                Ok(revision)
            }
        }
    }

    async fn read_barrier(&self) -> Result<Revision, StoreError> {
        Ok(self.applied_revision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn list_pages_by_key() {
        let s = MemoryStore::new(100);
        for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
            s.propose(Command::create(k, "v")).await.unwrap();
        }
        let page = s.list("/p/", None, 2).unwrap();
        assert_eq!(
            page.items.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
            ["/p/a", "/p/b"]
        );
        let page = s.list("/p/", Some("/p/b"), 2).unwrap();
        assert_eq!(
            page.items.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
            ["/p/c"]
        );
        assert_eq!(page.revision, 4);
    }

    #[tokio::test]
    async fn compare_and_set_has_one_winner() {
        let s = Arc::new(MemoryStore::new(100));
        let rev = s.propose(Command::create("k", "0")).await.unwrap();
        let mut wins = 0;
        for i in 0..10 {
            if s.propose(Command::update("k", format!("{i}"), Some(rev)))
                .await
                .is_ok()
            {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }
}
