//! Property tests: the apply planner against a naive model, and the watch window's
//! exactly-once-or-compacted guarantee.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::{Command, Engine, EventKind, MemoryStore, Op, Proposer, StoreError, WatchWindow};

fn op() -> impl Strategy<Value = Op> {
    let key = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string);
    let expected = prop::option::of(0u64..12);
    prop_oneof![
        (key.clone(), any::<u8>()).prop_map(|(key, v)| Op::Create {
            key,
            value: vec![v]
        }),
        (key.clone(), any::<u8>(), expected.clone()).prop_map(|(key, v, expected)| Op::Update {
            key,
            value: vec![v],
            expected
        }),
        (key, expected).prop_map(|(key, expected)| Op::Delete { key, expected }),
    ]
}

/// The model: a map of key to (value, mod revision), one op at a time, all or nothing.
fn model_apply(model: &mut BTreeMap<String, (Vec<u8>, u64)>, cmd: &Command, rev: u64) -> bool {
    let mut next = model.clone();
    for op in &cmd.ops {
        let ok = match op {
            Op::Create { key, value } => next.insert(key.clone(), (value.clone(), rev)).is_none(),
            Op::Update {
                key,
                value,
                expected,
            } => match next.get(key) {
                Some((_, m)) if expected.is_none_or(|e| e == *m) => {
                    next.insert(key.clone(), (value.clone(), rev));
                    true
                }
                _ => false,
            },
            Op::Delete { key, expected } => match next.get(key) {
                Some((_, m)) if expected.is_none_or(|e| e == *m) => {
                    next.remove(key);
                    true
                }
                _ => false,
            },
        };
        if !ok {
            return false;
        }
    }
    *model = next;
    true
}

proptest! {
    #[test]
    fn engine_matches_the_model(cmds in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..12)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = MemoryStore::new(1000);
            let mut model = BTreeMap::new();
            for (i, ops) in cmds.into_iter().enumerate() {
                let cmd = Command::batch(ops);
                let rev = i as u64 + 1;
                let applied = store.propose(cmd.clone()).await;
                let expected = model_apply(&mut model, &cmd, rev);
                prop_assert_eq!(applied.is_ok(), expected, "command {} at {}", cmd, rev);
                let listing = store.list("", None, 0).unwrap();
                let got: BTreeMap<String, (Vec<u8>, u64)> = listing
                    .items
                    .into_iter()
                    .map(|(k, r)| (k, (r.value, r.mod_revision)))
                    .collect();
                prop_assert_eq!(&got, &model);
            }
            Ok(())
        })?;
    }

    #[test]
    fn watchers_see_each_event_once_or_are_compacted(
        batches in prop::collection::vec(0usize..3, 1..40),
        capacity in 1usize..20,
        start in 0u64..40,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let window = Arc::new(WatchWindow::new(0, capacity));
            let mut published = Vec::new();
            for (i, n) in batches.iter().enumerate() {
                let rev = i as u64 + 1;
                let events: Vec<_> = (0..*n)
                    .map(|j| crate::Event {
                        revision: rev,
                        kind: EventKind::Created,
                        key: format!("k{rev}-{j}"),
                        record: None,
                        prev: None,
                    })
                    .collect();
                published.extend(events.iter().map(|e| (e.revision, e.key.clone())));
                window.publish(rev, events);
            }
            match window.watch("", start) {
                Err(StoreError::Compacted { oldest, .. }) => prop_assert!(start < oldest),
                Err(other) => prop_assert!(false, "unexpected error {}", other),
                Ok(mut watcher) => {
                    let want: Vec<_> = published.iter().filter(|(r, _)| *r > start).cloned().collect();
                    let mut got = Vec::new();
                    while got.len() < want.len() {
                        let events = watcher.next().await.unwrap();
                        got.extend(events.iter().map(|e| (e.revision, e.key.clone())));
                    }
                    prop_assert_eq!(got, want);
                }
            }
            Ok(())
        })?;
    }
}
