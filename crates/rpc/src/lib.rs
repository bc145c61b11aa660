//! Node-to-node gRPC: the code generated from `proto/flotilla.proto`, conversions between its
//! messages and the store's types, and [`StoreClient`], a typed client for tests and tools.

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("flotilla.v1");
}

pub mod batch;
mod client;
mod convert;
mod sent;
pub mod tls;

pub use client::{ClientError, StoreClient, WatchStream};
pub use convert::{
    command_from_pb, command_to_pb, error_from_pb, error_to_pb, event_from_pb, event_to_pb,
    record_from_pb, record_to_pb,
};
pub use sent::{never_sent, not_sent, NotSent};
pub use tls::Tls;

/// Raft payloads larger than this are refused by gRPC; snapshots travel in smaller chunks.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
