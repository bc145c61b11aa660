//! The store contract of Flotilla.
//!
//! Every change to cluster state is a [`Command`] proposed through a [`Proposer`] and applied
//! deterministically by an engine at a [`Revision`] (the Raft log index of the entry). The
//! engine keeps the data, answers local reads and publishes every applied change to its
//! [`WatchWindow`]. This crate knows nothing of Raft or RocksDB: `flotilla-raft` implements the
//! same contract on top of them, and [`MemoryStore`] implements it in memory for unit tests.

mod apply;
mod command;
mod error;
mod memory;
mod record;
mod traits;
mod watch;

#[cfg(test)]
mod proptests;

pub use apply::{plan, Plan};
pub use command::{Command, Op, Outcome, RejectReason, Rejection, Revision};
pub use error::{ErrorCode, StoreError};
pub use memory::MemoryStore;
pub use record::{digest, list_start_key, Event, EventKind, Listing, Record};
pub use traits::{Consistency, Engine, Leadership, Proposer};
pub use watch::{WatchWindow, Watcher};
