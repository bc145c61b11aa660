//! Sequential specifications: what each operation does to the object, and what it may return.

use std::fmt;

use crate::linearizability::Model;

/// A register holding an integer or nothing (`nil`), as Jepsen's etcd test uses one key:
/// read, write, and compare-and-set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    Read,
    Write(i64),
    /// Set the second value if the register holds the first.
    Cas(i64, i64),
}

/// What a completed register operation returned: a read's value; a write or a
/// compare-and-set that succeeded returns nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOut {
    Read(Option<i64>),
    Done,
    /// A compare-and-set that found another value (Jepsen's `:fail`).
    CasFailed,
}

fn value(v: Option<i64>) -> String {
    v.map_or("nil".into(), |v| v.to_string())
}

impl fmt::Display for RegisterOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterOp::Read => write!(f, "read"),
            RegisterOp::Write(v) => write!(f, "write {v}"),
            RegisterOp::Cas(old, new) => write!(f, "cas {old}->{new}"),
        }
    }
}

impl fmt::Display for RegisterOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterOut::Read(v) => write!(f, "{}", value(*v)),
            RegisterOut::Done => write!(f, "ok"),
            RegisterOut::CasFailed => write!(f, "failed"),
        }
    }
}

impl Model for Register {
    type State = Option<i64>;
    type Input = RegisterOp;
    type Output = RegisterOut;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterOp,
        output: Option<&RegisterOut>,
    ) -> Option<Option<i64>> {
        match (input, output) {
            (RegisterOp::Read, Some(RegisterOut::Read(v))) => (v == state).then_some(*state),
            (RegisterOp::Read, _) => Some(*state),
            (RegisterOp::Write(v), _) => Some(Some(*v)),
            (RegisterOp::Cas(old, _), Some(RegisterOut::CasFailed)) => {
                (*state != Some(*old)).then_some(*state)
            }
            (RegisterOp::Cas(old, new), _) if *state == Some(*old) => Some(Some(*new)),
            // A compare-and-set known to have succeeded cannot happen here; one whose
            // outcome is unknown failed, changing nothing.
            (RegisterOp::Cas(..), Some(_)) => None,
            (RegisterOp::Cas(..), None) => Some(*state),
        }
    }

    fn changes_state(&self, input: &RegisterOp, output: Option<&RegisterOut>) -> bool {
        !matches!(
            (input, output),
            (RegisterOp::Read, _) | (RegisterOp::Cas(..), Some(RegisterOut::CasFailed))
        )
    }
}

/// One key of a map of strings that starts empty (a missing key reads `""`): get, put and
/// append.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvKey;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Get,
    Put(String),
    Append(String),
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Get => write!(f, "get"),
            KvOp::Put(v) => write!(f, "put {v:?}"),
            KvOp::Append(v) => write!(f, "append {v:?}"),
        }
    }
}

/// What a completed operation returned: a get's value (puts and appends return nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvOut(pub Option<String>);

impl fmt::Display for KvOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => write!(f, "{v:?}"),
            None => write!(f, "ok"),
        }
    }
}

impl Model for KvKey {
    type State = String;
    type Input = KvOp;
    type Output = KvOut;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvOp, output: Option<&KvOut>) -> Option<String> {
        match (input, output) {
            (KvOp::Get, Some(KvOut(Some(v)))) => (v == state).then(|| state.clone()),
            (KvOp::Get, _) => Some(state.clone()),
            (KvOp::Put(v), _) => Some(v.clone()),
            (KvOp::Append(v), _) => Some(format!("{state}{v}")),
        }
    }

    fn changes_state(&self, input: &KvOp, _: Option<&KvOut>) -> bool {
        !matches!(input, KvOp::Get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_reads_what_was_written_and_sets_only_on_a_match() {
        let r = Register;
        let read = |v| Some(RegisterOut::Read(v));
        assert_eq!(
            r.step(&None, &RegisterOp::Read, read(None).as_ref()),
            Some(None)
        );
        assert_eq!(
            r.step(&None, &RegisterOp::Read, read(Some(1)).as_ref()),
            None
        );
        assert_eq!(r.step(&Some(1), &RegisterOp::Write(2), None), Some(Some(2)));
        let done = Some(RegisterOut::Done);
        assert_eq!(
            r.step(&Some(1), &RegisterOp::Cas(1, 3), done.as_ref()),
            Some(Some(3))
        );
        assert_eq!(
            r.step(&Some(2), &RegisterOp::Cas(1, 3), done.as_ref()),
            None
        );
        let failed = Some(RegisterOut::CasFailed);
        assert_eq!(
            r.step(&Some(2), &RegisterOp::Cas(1, 3), failed.as_ref()),
            Some(Some(2))
        );
        assert_eq!(
            r.step(&Some(1), &RegisterOp::Cas(1, 3), failed.as_ref()),
            None
        );
        // Unknown outcome: applies on a match, else changes nothing.
        assert_eq!(
            r.step(&Some(1), &RegisterOp::Cas(1, 3), None),
            Some(Some(3))
        );
        assert_eq!(
            r.step(&Some(2), &RegisterOp::Cas(1, 3), None),
            Some(Some(2))
        );
    }

    #[test]
    fn a_key_appends_and_reads_empty_before_any_write() {
        let k = KvKey;
        let got = |v: &str| Some(KvOut(Some(v.into())));
        assert_eq!(
            k.step(&String::new(), &KvOp::Get, got("").as_ref()),
            Some(String::new())
        );
        assert_eq!(
            k.step(&"a".into(), &KvOp::Append("b".into()), None),
            Some("ab".into())
        );
        assert_eq!(k.step(&"ab".into(), &KvOp::Get, got("a").as_ref()), None);
    }
}
