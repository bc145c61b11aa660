//! Service DNS on every node (DESIGN.md §4): authoritative for `cluster.local` and for the
//! reverse zones of the service and pod networks, answered from the local replica, so a
//! lookup never leaves the node and keeps working while the leader is gone; other names are
//! relayed to the host's resolvers.
//!
//! The wire format is our own bounds-checked pass over the query ([`wire`]) with answers
//! encoded when the table is built ([`zone`]), not hickory-server's per-query task and
//! message objects: see `docs/decisions.md` (DNS). hickory-proto reads relayed answers' TTLs.

pub mod forward;
pub mod server;
pub mod source;
pub mod wire;
pub mod zone;

use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_store::Engine;
use tokio_util::sync::CancellationToken;

pub use server::{Serving, ZoneCell};
pub use source::Zones;

/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// How a node serves DNS.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    pub zones: Zones,
    /// UDP worker threads.
    pub workers: usize,
}

/// A server listening with an empty table, until [`Dns::follow`] keeps it from a replica.
pub struct Dns {
    pub serving: Serving,
    cell: Arc<ZoneCell>,
    zones: Zones,
    stop: CancellationToken,
}

impl Dns {
    /// Binds and serves until `stop` (a port in use fails here, before anything else).
    pub async fn bind(config: DnsConfig, stop: CancellationToken) -> std::io::Result<Dns> {
        let cell = Arc::new(ZoneCell::new(config.zones.empty()));
        let fwd = forward::start(&config.upstreams, stop.clone()).await?;
        let serving = server::serve(
            config.listen,
            config.workers,
            Arc::clone(&cell),
            fwd,
            stop.clone(),
        )
        .await?;
        Ok(Dns {
            serving,
            cell,
            zones: config.zones,
            stop,
        })
    }

    /// Answers from `engine`'s replica from now on.
    pub fn follow(&self, engine: Arc<dyn Engine>) {
        tokio::spawn(source::run(
            engine,
            Arc::clone(&self.cell),
            self.zones.clone(),
            self.stop.clone(),
        ));
    }
}

#[cfg(test)]
mod tests;
