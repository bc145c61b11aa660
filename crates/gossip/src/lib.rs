//! Who is alive: SWIM gossip with Lifeguard (memberlist) over QUIC, authenticated both ways
//! with the cluster certificates. Raft keeps the truth; gossip is the fast signal that a node is
//! gone.
//!
//! The rest of Flotilla sees only [`Membership`]: a view of peers with their metadata and
//! whether they are alive, and a stream of [`Event`]s.

mod accept;
mod memberlist_impl;
mod meta;
mod quic;
mod view;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use memberlist_impl::{Gossip, GossipConfig};
pub use meta::NodeMeta;
pub use view::{Event, Liveness, PeerView, View};

/// Failure-detection timing. See docs/decisions.md for how these were chosen.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// One probe of one peer per interval (round robin over a shuffled list).
    pub probe_interval: Duration,
    /// How long a direct probe waits for its ack before asking others to probe.
    pub probe_timeout: Duration,
    /// Suspicion lasts `suspicion_mult * max(1, log10(n)) * probe_interval` at least, once
    /// `suspicion_mult - 2` other members have confirmed it (none are awaited if the cluster is
    /// too small to have them).
    pub suspicion_mult: usize,
    /// ... and at most this many times that, without those confirmations.
    pub suspicion_max_timeout_mult: usize,
    /// How often news is gossiped (besides piggybacking on probes).
    pub gossip_interval: Duration,
    /// Peers told per gossip round.
    pub gossip_nodes: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_interval: Duration::from_millis(160),
            probe_timeout: Duration::from_millis(100),
            suspicion_mult: 3,
            suspicion_max_timeout_mult: 3,
            gossip_interval: Duration::from_millis(100),
            gossip_nodes: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("gossip TLS setup: {0}")]
    Tls(String),
    #[error("cannot start gossip on {addr}: {detail}")]
    Start { addr: SocketAddr, detail: String },
    #[error("cannot join gossip through any of {seeds:?}: {detail}")]
    Join {
        seeds: Vec<SocketAddr>,
        detail: String,
    },
    #[error("node metadata too large ({0} bytes, at most 512)")]
    MetaTooLarge(usize),
}

/// Membership as the rest of Flotilla uses it.
#[async_trait]
pub trait Membership: Send + Sync {
    /// Every peer heard of (this node included), alive or not, until forgotten.
    fn view(&self) -> View;
    /// Changes from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
    /// Joins through any of `seeds`; Ok once one answered.
    async fn join(&self, seeds: &[SocketAddr]) -> Result<(), GossipError>;
    /// Changes this node's role in its metadata and spreads it (no-op if unchanged).
    async fn set_role(&self, role: &str) -> Result<(), GossipError>;
    /// Tells the others this node is leaving (they see it gone at once, not after a timeout),
    /// then stops.
    async fn leave(&self, timeout: Duration);
}
