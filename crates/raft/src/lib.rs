//! Flotilla's replicated store: openraft with RocksDB log storage and state machine, snapshots
//! streamed in chunks, and a gRPC transport. [`RaftNode`] implements the store contract of
//! `flotilla-store` for everything above it.

mod admission;
mod append_stream;
mod backup;
mod db;
mod failpoint;
mod forward;
mod leader;
mod log_store;
mod members;
mod membership;
mod network;
mod node;
mod propose;
mod recent;
mod service;
mod snapshot;
mod state_machine;
mod status;
mod types;

pub use backup::{restore, RestoreConfig, RestoreError, Restored};
pub use db::{Db, Identity, OpenError};
pub use members::left_marker;
pub use membership::{plan, target_voters, AutopilotConfig, LivenessSource, Observed, Step};
pub use node::{NodeConfig, RaftNode, StartError};
pub use snapshot::verify as verify_snapshot;
pub use state_machine::Replica;
pub use types::{Member, NodeId, TypeConfig};
