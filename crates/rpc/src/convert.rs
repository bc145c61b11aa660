//! Conversions between protobuf messages and the store's types.

use flotilla_store::{Command, ErrorCode, Event, EventKind, Op, Record, StoreError};

use crate::pb;

pub fn record_to_pb(r: &Record) -> pb::Record {
    pb::Record {
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        value: r.value.clone(),
    }
}

pub fn record_from_pb(r: pb::Record) -> Record {
    Record {
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        value: r.value,
    }
}

pub fn command_to_pb(c: &Command) -> Vec<pb::Op> {
    c.ops
        .iter()
        .map(|op| pb::Op {
            op: Some(match op {
                Op::Create { key, value } => pb::op::Op::Create(pb::CreateOp {
                    key: key.clone(),
                    value: value.clone(),
                }),
                Op::Update {
                    key,
                    value,
                    expected,
                } => pb::op::Op::Update(pb::UpdateOp {
                    key: key.clone(),
                    value: value.clone(),
                    expected: *expected,
                }),
                Op::Delete { key, expected } => pb::op::Op::Delete(pb::DeleteOp {
                    key: key.clone(),
                    expected: *expected,
                }),
            }),
        })
        .collect()
}

/// `None` if an operation is empty (a malformed request).
pub fn command_from_pb(ops: Vec<pb::Op>) -> Option<Command> {
    let ops = ops
        .into_iter()
        .map(|op| {
            Some(match op.op? {
                pb::op::Op::Create(c) => Op::Create {
                    key: c.key,
                    value: c.value,
                },
                pb::op::Op::Update(u) => Op::Update {
                    key: u.key,
                    value: u.value,
                    expected: u.expected,
                },
                pb::op::Op::Delete(d) => Op::Delete {
                    key: d.key,
                    expected: d.expected,
                },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Command { ops })
}

pub fn error_to_pb(e: &StoreError) -> pb::StoreError {
    let mut out = pb::StoreError {
        code: e.code().as_str().to_string(),
        detail: e.to_string(),
        ..Default::default()
    };
    match e {
        StoreError::AlreadyExists { key } | StoreError::NotFound { key } => out.key = key.clone(),
        StoreError::Conflict {
            key,
            expected,
            current,
        } => {
            out.key = key.clone();
            out.expected = *expected;
            out.current = *current;
        }
        StoreError::Compacted { requested, oldest } => {
            out.expected = *requested;
            out.current = *oldest;
        }
        _ => {}
    }
    out
}

pub fn error_from_pb(e: pb::StoreError) -> StoreError {
    match ErrorCode::parse(&e.code) {
        Some(ErrorCode::AlreadyExists) => StoreError::AlreadyExists { key: e.key },
        Some(ErrorCode::NotFound) => StoreError::NotFound { key: e.key },
        Some(ErrorCode::Conflict) => StoreError::Conflict {
            key: e.key,
            expected: e.expected,
            current: e.current,
        },
        Some(ErrorCode::Compacted) => StoreError::Compacted {
            requested: e.expected,
            oldest: e.current,
        },
        Some(ErrorCode::NotLeader) => StoreError::NotLeader { reason: e.detail },
        Some(ErrorCode::Timeout) => StoreError::Timeout {
            waiting_for: e.detail,
            millis: 0,
        },
        Some(ErrorCode::Closed) => StoreError::Closed { reason: e.detail },
        Some(ErrorCode::Internal) | None => StoreError::Storage { detail: e.detail },
    }
}

pub fn event_to_pb(e: &Event) -> pb::WatchEvent {
    pb::WatchEvent {
        revision: e.revision,
        kind: match e.kind {
            EventKind::Created => pb::EventKind::Created,
            EventKind::Updated => pb::EventKind::Updated,
            EventKind::Deleted => pb::EventKind::Deleted,
        } as i32,
        key: e.key.clone(),
        record: e.record.as_ref().map(record_to_pb),
        prev: e.prev.as_ref().map(record_to_pb),
    }
}

pub fn event_from_pb(e: pb::WatchEvent) -> Event {
    Event {
        revision: e.revision,
        kind: match pb::EventKind::try_from(e.kind) {
            Ok(pb::EventKind::Created) => EventKind::Created,
            Ok(pb::EventKind::Deleted) => EventKind::Deleted,
            _ => EventKind::Updated,
        },
        key: e.key,
        record: e.record.map(record_from_pb),
        prev: e.prev.map(record_from_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let c = Command::batch(vec![
            Op::Create {
                key: "a".into(),
                value: b"1".to_vec(),
            },
            Op::Update {
                key: "b".into(),
                value: b"2".to_vec(),
                expected: Some(3),
            },
            Op::Delete {
                key: "c".into(),
                expected: None,
            },
        ]);
        assert_eq!(command_from_pb(command_to_pb(&c)), Some(c));
        assert_eq!(command_from_pb(vec![pb::Op { op: None }]), None);
    }

    #[test]
    fn errors_round_trip() {
        let errors = [
            StoreError::AlreadyExists { key: "k".into() },
            StoreError::NotFound { key: "k".into() },
            StoreError::Conflict {
                key: "k".into(),
                expected: 1,
                current: 2,
            },
            StoreError::Compacted {
                requested: 1,
                oldest: 9,
            },
        ];
        for e in errors {
            assert_eq!(error_from_pb(error_to_pb(&e)), e);
        }
        assert_eq!(
            error_from_pb(error_to_pb(&StoreError::NotLeader { reason: "x".into() })).code(),
            ErrorCode::NotLeader
        );
    }
}
