//! The openraft type configuration and the codec for Raft messages.

use std::fmt;

use flotilla_store::{Command, Outcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A member of the cluster as Raft's membership records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (`--name`).
    pub name: String,
    /// `host:port` of its peer (gRPC) endpoint.
    pub addr: String,
    /// `host:port` (UDP) of its gossip endpoint.
    pub gossip_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Flotilla's Raft: commands in, outcomes out, members named by `u64` ids.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Member,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, std::path::PathBuf>;

/// Raft messages and log entries travel and rest in postcard encoding: compact, and openraft's
/// types avoid the self-describing serde features postcard cannot decode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail: postcard only errors on sequences of
    // unknown length and on writer failures, neither of which our types or a Vec produce.
    postcard::to_stdvec(value).expect("postcard encoding of a plain value into a Vec")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// An I/O error for openraft's storage traits.
pub(crate) fn io_err(context: &str, err: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{context}: {err}"))
}
