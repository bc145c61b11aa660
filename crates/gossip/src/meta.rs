//! What a node tells others about itself in gossip (at most 512 bytes of JSON).

use serde::{Deserialize, Serialize};

use crate::GossipError;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// The node's name (`--name`).
    pub name: String,
    /// Its Raft id.
    pub raft_id: u64,
    /// `host:port` of its peer (gRPC) endpoint.
    pub peer_addr: String,
    /// Its Raft role, `voter` or `learner` (empty until known); updated as it changes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Set just before a graceful leave, so that others can tell it from a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

pub(crate) const META_LIMIT: usize = 512;

impl NodeMeta {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, GossipError> {
        let bytes = serde_json::to_vec(self).expect("node meta serialises");
        if bytes.len() > META_LIMIT {
            return Err(GossipError::MetaTooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Unreadable metadata (another program on the port, a newer version) reads as empty.
    pub(crate) fn decode(bytes: &[u8]) -> NodeMeta {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}
