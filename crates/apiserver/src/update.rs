//! Every read-modify-write of the API (PUT, PATCH, DELETE, the status and scale subresources)
//! goes through [`guaranteed_update`]: read the object, decide the write from it, and write it
//! with the revision it was read at (compare-and-set).
//!
//! The first read is the local replica's, with no quorum round, as the Kubernetes API server
//! reads its watch cache first: an update through a follower then costs one round trip to the
//! leader (the forwarded write), not two. Only when that read may have been stale does the
//! helper read again after a read barrier: the write conflicted, the object was missing, a
//! precondition did not match, or the write would have changed nothing.

use flotilla_api::Resource;
use flotilla_store::{Command, Engine, ErrorCode, Proposer, StoreError};
use serde_json::Value;

use crate::objects::object_of;
use crate::writes::{kept_changing, store_failure, WriteError};

/// What an attempt decided from the object as read.
pub(crate) enum Attempt<T> {
    /// Write `command` (with the read revision as its expected one); `finish` makes the answer
    /// from the revision written.
    Write(Command, Box<dyn FnOnce(u64) -> T + Send>),
    /// Nothing to write: the answer.
    Unchanged(T),
}

/// Attempts at most this many reads before answering that the object kept changing.
pub(crate) const ATTEMPTS: usize = 5;

/// The stored object and its revision: from the local replica, or after a read barrier when
/// `fresh`. 404 if it is not there.
pub(crate) async fn read_object(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    r: &Resource,
    key: &str,
    name: &str,
    fresh: bool,
) -> Result<(Value, u64), WriteError> {
    if fresh {
        proposer
            .read_barrier()
            .await
            .map_err(|e| store_failure(r, name, e))?;
    }
    let (_, record) = engine.get(key).map_err(|e| store_failure(r, name, e))?;
    let record = record.ok_or_else(|| {
        store_failure(
            r,
            name,
            StoreError::NotFound {
                key: key.to_string(),
            },
        )
    })?;
    let object = object_of(&record).ok_or_else(|| {
        WriteError::new(
            500,
            "InternalError",
            format!("stored {key} is not an object"),
        )
    })?;
    Ok((object, record.mod_revision))
}

/// Reads `key`, lets `attempt` decide, writes; see the module's doc for when it reads again.
pub(crate) async fn guaranteed_update<T>(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    r: &Resource,
    key: &str,
    name: &str,
    mut attempt: impl FnMut(Value, u64) -> Result<Attempt<T>, WriteError>,
) -> Result<T, WriteError> {
    let mut fresh = false;
    for _ in 0..ATTEMPTS {
        let (object, revision) = match read_object(engine, proposer, r, key, name, fresh).await {
            Err(e) if e.store_code == Some(ErrorCode::NotFound) && !fresh => {
                fresh = true;
                continue;
            }
            read => read?,
        };
        match attempt(object, revision) {
            // A precondition failed against what may be a stale copy.
            Err(e) if e.is_conflict() && !fresh => fresh = true,
            Err(e) => return Err(e),
            Ok(Attempt::Unchanged(answer)) if fresh => return Ok(answer),
            // Unchanged against the local copy: confirm against the latest.
            Ok(Attempt::Unchanged(_)) => fresh = true,
            Ok(Attempt::Write(command, finish)) => match proposer.propose(command).await {
                Ok(written) => return Ok(finish(written)),
                // Written meanwhile (or the replica lagged): read the latest and decide again.
                Err(StoreError::Conflict { .. }) => fresh = true,
                // A key written beside the object (a service's address) was taken meanwhile.
                Err(StoreError::AlreadyExists { key: other }) if other != key => fresh = true,
                Err(e) => return Err(store_failure(r, name, e)),
            },
        }
    }
    Err(kept_changing(r, name))
}

/// A client's `resourceVersion` precondition (`None`: none) against the revision read: 409 if
/// it does not match.
pub(crate) fn check_precondition(
    r: &Resource,
    name: &str,
    key: &str,
    expected: Option<u64>,
    revision: u64,
) -> Result<(), WriteError> {
    match expected {
        Some(expected) if expected != revision => {
            Err(precondition_failed(r, name, key, expected, revision))
        }
        _ => Ok(()),
    }
}

/// The 409 for a `resourceVersion` precondition that does not match the stored object.
pub(crate) fn precondition_failed(
    r: &Resource,
    name: &str,
    key: &str,
    expected: u64,
    current: u64,
) -> WriteError {
    store_failure(
        r,
        name,
        StoreError::Conflict {
            key: key.to_string(),
            expected,
            current,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use flotilla_store::{MemoryStore, Record, Revision};
    use serde_json::json;

    use super::*;
    use crate::objects::parse_path;
    use crate::writes::{update, WriteRequest};

    /// A follower's view: the leader's store, a local replica that may lag it, and a count of
    /// the round trips to the leader (proposals and read barriers).
    struct Follower {
        leader: MemoryStore,
        /// While set, the replica answers reads with this older copy of the key.
        stale: Mutex<Option<(String, Record)>>,
        proposals: AtomicUsize,
        barriers: AtomicUsize,
    }

    impl Engine for Follower {
        fn get(&self, key: &str) -> Result<(Revision, Option<Record>), StoreError> {
            if let Some((_, r)) = self
                .stale
                .lock()
                .unwrap()
                .as_ref()
                .filter(|(k, _)| k == key)
            {
                return Ok((r.mod_revision, Some(r.clone())));
            }
            self.leader.get(key)
        }
        fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<flotilla_store::Listing, StoreError> {
            self.leader.list(prefix, start_after, limit)
        }
        fn applied_revision(&self) -> Revision {
            self.leader.applied_revision()
        }
        fn window(&self) -> &std::sync::Arc<flotilla_store::WatchWindow> {
            self.leader.window()
        }
    }

    #[async_trait]
    impl Proposer for Follower {
        async fn propose(&self, command: Command) -> Result<Revision, StoreError> {
            self.proposals.fetch_add(1, Ordering::SeqCst);
            self.leader.propose(command).await
        }
        async fn read_barrier(&self) -> Result<Revision, StoreError> {
            self.barriers.fetch_add(1, Ordering::SeqCst);
            // The barrier brings the replica up to date.
            *self.stale.lock().unwrap() = None;
            self.leader.read_barrier().await
        }
    }

    const KEY: &str = "/core/configmaps/default/c";

    async fn follower() -> Follower {
        let leader = MemoryStore::new(100);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "data": {"k": "1"}});
        leader
            .propose(Command::create(KEY, cm.to_string()))
            .await
            .unwrap();
        Follower {
            leader,
            stale: Mutex::new(None),
            proposals: AtomicUsize::new(0),
            barriers: AtomicUsize::new(0),
        }
    }

    fn body(value: &str, rv: Option<u64>) -> Vec<u8> {
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"k": value}});
        if let Some(rv) = rv {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        o.to_string().into_bytes()
    }

    async fn put(f: &Follower, body: &[u8]) -> Result<Value, WriteError> {
        let target =
            parse_path(&["api", "v1", "namespaces", "default", "configmaps", "c"]).unwrap();
        let request = WriteRequest {
            body,
            content_type: "application/json",
            validation: flotilla_api::kinds::FieldValidation::Strict,
        };
        update(f, f, &target, "c", &request).await.map(|w| w.object)
    }

    #[tokio::test]
    async fn a_put_through_a_follower_makes_one_round_trip() {
        let f = follower().await;
        let written = put(&f, &body("2", Some(1))).await.unwrap();
        assert_eq!(written["data"]["k"], "2");
        assert_eq!(f.proposals.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.barriers.load(Ordering::SeqCst),
            0,
            "no read barrier before the write"
        );
    }

    #[tokio::test]
    async fn a_stale_replica_costs_a_conflict_and_a_fresh_read_not_a_lost_update() {
        let f = follower().await;
        let old = f.leader.get(KEY).unwrap().1.unwrap();
        // The leader moves on (another writer); this replica has not seen it yet.
        put(&f, &body("2", None)).await.unwrap();
        *f.stale.lock().unwrap() = Some((KEY.to_string(), old));
        f.proposals.store(0, Ordering::SeqCst);

        // Without a precondition: the stale write conflicts, the fresh read retries and wins.
        let written = put(&f, &body("3", None)).await.unwrap();
        assert_eq!(written["data"]["k"], "3");
        assert_eq!(f.proposals.load(Ordering::SeqCst), 2);
        assert_eq!(f.barriers.load(Ordering::SeqCst), 1);

        // With a precondition the client read from the leader: the stale copy does not refuse it.
        let current = f.leader.get(KEY).unwrap().1.unwrap();
        *f.stale.lock().unwrap() = Some((KEY.to_string(), old_record(&current)));
        let written = put(&f, &body("4", Some(current.mod_revision)))
            .await
            .unwrap();
        assert_eq!(written["data"]["k"], "4");

        // A precondition that is really out of date: 409, and nothing written.
        let err = put(&f, &body("5", Some(current.mod_revision)))
            .await
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        let stored: Value =
            serde_json::from_slice(&f.leader.get(KEY).unwrap().1.unwrap().value).unwrap();
        assert_eq!(stored["data"]["k"], "4");
    }

    /// A copy of `r` as it was one revision earlier.
    fn old_record(r: &Record) -> Record {
        Record {
            mod_revision: r.mod_revision - 1,
            ..r.clone()
        }
    }
}
