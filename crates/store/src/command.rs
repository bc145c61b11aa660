//! Commands: what a client asks the replicated state machine to do.

use serde::{Deserialize, Serialize};

/// A revision is the Raft log index of the entry that wrote a key. It becomes
/// `metadata.resourceVersion` in the API.
pub type Revision = u64;

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create `key`; rejected with [`RejectReason::AlreadyExists`] if it exists.
    Create {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Replace the value of an existing `key`. With `expected` set, the key's current revision
    /// must equal it (compare-and-set).
    Update {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    /// Delete an existing `key`, optionally only at the `expected` revision.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// A batch of operations applied atomically: all of them at one revision, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub ops: Vec<Op>,
}

impl Command {
    pub fn create(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::single(Op::Create {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn update(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        expected: Option<Revision>,
    ) -> Self {
        Self::single(Op::Update {
            key: key.into(),
            value: value.into(),
            expected,
        })
    }

    pub fn delete(key: impl Into<String>, expected: Option<Revision>) -> Self {
        Self::single(Op::Delete {
            key: key.into(),
            expected,
        })
    }

    pub fn batch(ops: Vec<Op>) -> Self {
        Self { ops }
    }

    fn single(op: Op) -> Self {
        Self { ops: vec![op] }
    }
}

/// Why the state machine refused a command. Nothing of a refused command is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    AlreadyExists,
    NotFound,
    /// The key is at `current`, not at the expected revision.
    Conflict {
        expected: Revision,
        current: Revision,
    },
}

/// A refused command: which operation failed and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub op_index: usize,
    pub key: String,
    pub reason: RejectReason,
}

/// What applying one log entry produced: the revision it was applied at, or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome(pub Result<Revision, Rejection>);

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match op {
                Op::Create { key, value } => write!(f, "create {key} ({} bytes)", value.len())?,
                Op::Update {
                    key,
                    value,
                    expected,
                } => {
                    write!(f, "update {key} ({} bytes", value.len())?;
                    if let Some(r) = expected {
                        write!(f, ", at {r}")?;
                    }
                    f.write_str(")")?;
                }
                Op::Delete { key, expected } => {
                    write!(f, "delete {key}")?;
                    if let Some(r) = expected {
                        write!(f, " (at {r})")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(rev) => write!(f, "applied at {rev}"),
            Err(r) => write!(f, "refused: op {} on {}: {:?}", r.op_index, r.key, r.reason),
        }
    }
}
