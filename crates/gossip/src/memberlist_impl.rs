//! [`Gossip`]: memberlist over QUIC, its events turned into this node's [`View`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flotilla_pki::Credential;
use memberlist::delegate::{CompositeDelegate, EventDelegate, NodeDelegate, VoidDelegate};
use memberlist::proto::{MaybeResolvedAddress, Meta, NodeState};
use memberlist::quic::QuicTransportOptions;
use memberlist::tokio::{TokioQuicTransport, TokioSocketAddrResolver};
use memberlist::{Memberlist, Options};
use smol_str::SmolStr;
use tokio::sync::{broadcast, mpsc};

use crate::meta::NodeMeta;
use crate::view::{Event, Raw, Tracker, View};
use crate::{accept, quic, GossipError, Membership, Timing};

type Id = SmolStr;
type Transport = TokioQuicTransport<Id, TokioSocketAddrResolver, accept::Layer>;
type Void = VoidDelegate<Id, SocketAddr>;
type Delegate =
    CompositeDelegate<Id, SocketAddr, Void, Void, Arc<Events>, Void, Arc<MetaSource>, Void>;
type List = Memberlist<Transport, Delegate>;
type RawEvent = (Raw, Arc<NodeState<Id, SocketAddr>>);

/// Forwards memberlist's callbacks. They run under memberlist's own lock: never call back into
/// it from here, only queue.
struct Events(mpsc::UnboundedSender<RawEvent>);

impl EventDelegate for Events {
    type Id = Id;
    type Address = SocketAddr;

    async fn notify_join(&self, node: Arc<NodeState<Id, SocketAddr>>) {
        let _ = self.0.send((Raw::Join, node));
    }

    async fn notify_leave(&self, node: Arc<NodeState<Id, SocketAddr>>) {
        let _ = self.0.send((Raw::Leave, node));
    }

    async fn notify_update(&self, node: Arc<NodeState<Id, SocketAddr>>) {
        let _ = self.0.send((Raw::Update, node));
    }
}

/// This node's metadata, as memberlist asks for it.
struct MetaSource(RwLock<Meta>);

impl NodeDelegate for MetaSource {
    async fn node_meta(&self, _limit: usize) -> Meta {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct GossipConfig {
    /// Unique and stable for this member (the Raft id in hex).
    pub id: String,
    /// UDP address to bind and advertise.
    pub bind: SocketAddr,
    pub meta: NodeMeta,
    pub ca_pem: String,
    /// The node's certificate chain and key.
    pub identity: Credential,
    pub timing: Timing,
}

/// A running gossip member. Cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    list: List,
    meta: Arc<MetaSource>,
    own: Arc<Mutex<NodeMeta>>,
    tracker: Arc<Mutex<Tracker>>,
    events: broadcast::Sender<Event>,
}

/// How long one join may take, handshake and state exchange included.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

fn options(t: &Timing) -> Options {
    Options::lan()
        .with_probe_interval(t.probe_interval)
        .with_probe_timeout(t.probe_timeout)
        .with_suspicion_mult(t.suspicion_mult)
        .with_suspicion_max_timeout_mult(t.suspicion_max_timeout_mult)
        .with_gossip_interval(t.gossip_interval)
        .with_gossip_nodes(t.gossip_nodes)
        // A node that restarts on another port under the same id is taken back soon.
        .with_dead_node_reclaim_time(Duration::from_secs(1))
        // No fallback ping over a stream: over QUIC a dead peer cannot refuse a connection, so
        // the fallback would hold each probe for the whole stream timeout. Indirect probes
        // through other members cover a lossy path instead.
        .with_disable_reliable_pings(true)
        // Stream operations (joins, push-pull) on a LAN.
        .with_timeout(Duration::from_secs(2))
}

impl Gossip {
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        let meta = Meta::try_from(config.meta.encode()?)
            .map_err(|_| GossipError::MetaTooLarge(config.meta.encode().map_or(0, |m| m.len())))?;
        let meta = Arc::new(MetaSource(RwLock::new(meta)));
        let stream = quic::options(&config.ca_pem, &config.identity)?;
        let mut transport =
            QuicTransportOptions::<Id, TokioSocketAddrResolver, accept::Layer>::with_stream_layer_options(
                SmolStr::new(&config.id),
                stream,
            );
        transport.add_bind_address(config.bind);
        // Keep live connections instead of recycling them every 30 s: a new QUIC handshake on
        // a loaded machine can outlast a probe timeout.
        let transport = transport.with_connection_ttl(None);
        let (tx, mut rx) = mpsc::unbounded_channel::<RawEvent>();
        let delegate = CompositeDelegate::<Id, SocketAddr>::new()
            .with_event_delegate(Arc::new(Events(tx)))
            .with_node_delegate(Arc::clone(&meta));
        let list = Memberlist::<Transport, Delegate>::with_delegate(
            delegate,
            transport,
            options(&config.timing),
        )
        .await
        .map_err(|e| GossipError::Start {
            addr: config.bind,
            detail: e.to_string(),
        })?;

        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (events, _) = broadcast::channel(1024);
        tokio::spawn({
            let tracker = Arc::clone(&tracker);
            let events = events.clone();
            async move {
                while let Some((raw, node)) = rx.recv().await {
                    let meta = NodeMeta::decode(node.meta());
                    let event = tracker.lock().unwrap_or_else(|p| p.into_inner()).apply(
                        raw,
                        node.id().as_str(),
                        *node.address(),
                        meta,
                        Instant::now(),
                    );
                    tracing::debug!(?event, "gossip");
                    let _ = events.send(event);
                }
            }
        });
        Ok(Gossip {
            list,
            meta,
            own: Arc::new(Mutex::new(config.meta)),
            tracker,
            events,
        })
    }

    /// The UDP address others reach this node's gossip at.
    pub fn addr(&self) -> SocketAddr {
        *self.list.advertise_address()
    }

    async fn set_meta(&self, meta: NodeMeta, timeout: Duration) -> Result<(), GossipError> {
        let encoded = Meta::try_from(meta.encode()?).map_err(|_| GossipError::MetaTooLarge(0))?;
        *self.meta.0.write().unwrap_or_else(|p| p.into_inner()) = encoded;
        *self.own.lock().unwrap_or_else(|p| p.into_inner()) = meta;
        if let Err(e) = self.list.update_node(timeout).await {
            tracing::debug!(error = %e, "gossip metadata update not confirmed");
        }
        Ok(())
    }

    /// Stops without a goodbye: others find out by probing, as after a crash.
    pub async fn shutdown(&self) {
        let _ = self.list.shutdown().await;
    }
}

#[async_trait]
impl Membership for Gossip {
    fn view(&self) -> View {
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn join(&self, seeds: &[SocketAddr]) -> Result<(), GossipError> {
        let own = self.addr();
        let targets: Vec<SocketAddr> = seeds.iter().copied().filter(|s| *s != own).collect();
        if targets.is_empty() {
            return Ok(());
        }
        // One seed at a time (memberlist's `join_many` future is not `Send`); one that
        // answers is enough, gossip does the rest.
        let mut errors = Vec::new();
        for seed in &targets {
            // Bounded here too: a join that hangs (seen once in about ten cluster starts: the
            // joiner never answered anyone again) holds memberlist's state; dropped, it frees
            // it and the caller's next round tries again.
            let join = self.list.join(MaybeResolvedAddress::resolved(*seed));
            match tokio::time::timeout(JOIN_TIMEOUT, join).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => errors.push(format!("{seed}: {e}")),
                Err(_) => errors.push(format!("{seed}: no answer in {JOIN_TIMEOUT:?}")),
            }
        }
        Err(GossipError::Join {
            seeds: targets,
            detail: errors.join("; "),
        })
    }

    async fn set_role(&self, role: &str) -> Result<(), GossipError> {
        let mut meta = self.own.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if meta.role == role {
            return Ok(());
        }
        meta.role = role.to_string();
        self.set_meta(meta, Duration::from_secs(1)).await
    }

    async fn leave(&self, timeout: Duration) {
        // Announce the leave in the metadata first: memberlist reports a leave and a failure
        // alike, and this is how the others tell them apart.
        let mut meta = self.own.lock().unwrap_or_else(|p| p.into_inner()).clone();
        meta.leaving = true;
        let half = timeout / 2;
        if let Err(e) = self.set_meta(meta, half).await {
            tracing::warn!(error = %e, "cannot announce the leave");
        }
        if let Err(e) = self.list.leave(half).await {
            tracing::debug!(error = %e, "gossip leave not confirmed");
        }
        self.shutdown().await;
    }
}
