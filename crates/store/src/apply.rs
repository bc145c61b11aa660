//! The one place that decides what a command does to the data: a pure function from the command,
//! its revision and a view of the current records to a plan of writes and events. Every engine
//! applies commands through it, so they all agree.

use std::collections::HashMap;

use crate::command::{Command, Op, RejectReason, Rejection, Revision};
use crate::record::{Event, EventKind, Record};

/// What applying a command changes: the final state of every touched key (`None` deletes it), in
/// the order first touched, and one event per operation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<(String, Option<Record>)>,
    pub events: Vec<Event>,
}

/// Plans `command` at `revision`. `lookup` reads the current record of a key. Operations of a
/// batch see the effects of the earlier operations in the same batch. Any refused operation
/// refuses the whole command.
pub fn plan<E>(
    command: &Command,
    revision: Revision,
    mut lookup: impl FnMut(&str) -> Result<Option<Record>, E>,
) -> Result<Result<Plan, Rejection>, E> {
    let mut staged: HashMap<&str, Option<Record>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut events = Vec::with_capacity(command.ops.len());

    for (op_index, op) in command.ops.iter().enumerate() {
        let key = op.key();
        let current = match staged.get(key) {
            Some(staged) => staged.clone(),
            None => lookup(key)?,
        };
        let reject = |reason| Rejection {
            op_index,
            key: key.to_string(),
            reason,
        };
        let (next, kind) = match (op, &current) {
            (Op::Create { .. }, Some(_)) => return Ok(Err(reject(RejectReason::AlreadyExists))),
            (Op::Create { value, .. }, None) => (
                Some(Record {
                    create_revision: revision,
                    mod_revision: revision,
                    value: value.clone(),
                }),
                EventKind::Created,
            ),
            (Op::Update { .. } | Op::Delete { .. }, None) => {
                return Ok(Err(reject(RejectReason::NotFound)))
            }
            (
                Op::Update {
                    expected, value, ..
                },
                Some(existing),
            ) => {
                if let Err(reason) = check_expected(*expected, existing) {
                    return Ok(Err(reject(reason)));
                }
                (
                    Some(Record {
                        create_revision: existing.create_revision,
                        mod_revision: revision,
                        value: value.clone(),
                    }),
                    EventKind::Updated,
                )
            }
            (Op::Delete { expected, .. }, Some(existing)) => {
                if let Err(reason) = check_expected(*expected, existing) {
                    return Ok(Err(reject(reason)));
                }
                (None, EventKind::Deleted)
            }
        };
        events.push(Event {
            revision,
            kind,
            key: key.to_string(),
            record: next.clone(),
            prev: current,
        });
        if staged.insert(key, next).is_none() {
            order.push(key);
        }
    }

    let writes = order
        .into_iter()
        .map(|key| {
            let value = staged.remove(key).flatten();
            (key.to_string(), value)
        })
        .collect();
    Ok(Ok(Plan { writes, events }))
}

fn check_expected(expected: Option<Revision>, existing: &Record) -> Result<(), RejectReason> {
    match expected {
        Some(expected) if expected != existing.mod_revision => Err(RejectReason::Conflict {
            expected,
            current: existing.mod_revision,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use super::*;

    fn run(
        data: &BTreeMap<String, Record>,
        cmd: &Command,
        rev: Revision,
    ) -> Result<Plan, Rejection> {
        plan(cmd, rev, |k| Ok::<_, Infallible>(data.get(k).cloned())).unwrap()
    }

    fn rec(c: Revision, m: Revision, v: &str) -> Record {
        Record {
            create_revision: c,
            mod_revision: m,
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn create_sets_both_revisions() {
        let p = run(&BTreeMap::new(), &Command::create("a", "1"), 5).unwrap();
        assert_eq!(p.writes, vec![("a".into(), Some(rec(5, 5, "1")))]);
        assert_eq!(p.events[0].kind, EventKind::Created);
        assert_eq!(p.events[0].prev, None);
    }

    #[test]
    fn create_of_existing_key_is_refused() {
        let data = BTreeMap::from([("a".to_string(), rec(1, 1, "x"))]);
        let r = run(&data, &Command::create("a", "1"), 5).unwrap_err();
        assert_eq!(r.reason, RejectReason::AlreadyExists);
    }

    #[test]
    fn update_checks_expected_revision() {
        let data = BTreeMap::from([("a".to_string(), rec(1, 3, "x"))]);
        let r = run(&data, &Command::update("a", "y", Some(2)), 5).unwrap_err();
        assert_eq!(
            r.reason,
            RejectReason::Conflict {
                expected: 2,
                current: 3
            }
        );
        let p = run(&data, &Command::update("a", "y", Some(3)), 5).unwrap();
        assert_eq!(p.writes, vec![("a".into(), Some(rec(1, 5, "y")))]);
        let p = run(&data, &Command::update("a", "y", None), 6).unwrap();
        assert_eq!(p.writes, vec![("a".into(), Some(rec(1, 6, "y")))]);
    }

    #[test]
    fn update_and_delete_of_missing_key_are_refused() {
        let data = BTreeMap::new();
        assert_eq!(
            run(&data, &Command::update("a", "y", None), 5)
                .unwrap_err()
                .reason,
            RejectReason::NotFound
        );
        assert_eq!(
            run(&data, &Command::delete("a", None), 5)
                .unwrap_err()
                .reason,
            RejectReason::NotFound
        );
    }

    #[test]
    fn delete_reports_previous_record() {
        let data = BTreeMap::from([("a".to_string(), rec(1, 3, "x"))]);
        let p = run(&data, &Command::delete("a", Some(3)), 5).unwrap();
        assert_eq!(p.writes, vec![("a".into(), None)]);
        assert_eq!(p.events[0].prev, Some(rec(1, 3, "x")));
    }

    #[test]
    fn batch_sees_its_own_writes_and_is_all_or_nothing() {
        let data = BTreeMap::new();
        let ok = Command::batch(vec![
            Op::Create {
                key: "a".into(),
                value: b"1".to_vec(),
            },
            Op::Update {
                key: "a".into(),
                value: b"2".to_vec(),
                expected: Some(9),
            },
            Op::Create {
                key: "b".into(),
                value: b"3".to_vec(),
            },
        ]);
        let p = run(&data, &ok, 9).unwrap();
        assert_eq!(
            p.writes,
            vec![
                ("a".into(), Some(rec(9, 9, "2"))),
                ("b".into(), Some(rec(9, 9, "3")))
            ]
        );
        assert_eq!(p.events.len(), 3);

        let bad = Command::batch(vec![
            Op::Create {
                key: "a".into(),
                value: b"1".to_vec(),
            },
            Op::Create {
                key: "a".into(),
                value: b"2".to_vec(),
            },
        ]);
        let r = run(&data, &bad, 9).unwrap_err();
        assert_eq!(r.op_index, 1);
    }
}
