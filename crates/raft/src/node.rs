//! A replicated node: opens the database, starts Raft and the gRPC services, and bootstraps,
//! joins or resumes a cluster. [`RaftNode`] is the store for everything above it: proposals are
//! forwarded to the leader, linearizable reads take a read index from the leader.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_pki::{Credential, JoinToken, NodePki};
use flotilla_rpc::pb;
use flotilla_rpc::pb::store_client::StoreClient as PbStoreClient;
use flotilla_rpc::{command_to_pb, error_from_pb, Tls};
use flotilla_store::{Command, Engine, Leadership, Proposer, Revision, StoreError};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::db::{Db, Identity, OpenError};
use crate::forward::Forwarder;
use crate::leader::Try;
use crate::log_store::LogStore;
use crate::membership::{AutopilotConfig, LivenessSource};
use crate::network::Network;
use crate::snapshot::SnapshotDir;
use crate::state_machine::{Replica, StateMachine};
use crate::types::{Member, NodeId, Raft};

/// How a node is started (the `flotilla node` flags).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub advertise: IpAddr,
    /// 0 picks a free port on first start; a restart reuses the recorded one.
    pub peer_port: u16,
    pub join: Option<String>,
    /// The join token, needed with `join` when this node has no state yet.
    pub token: Option<JoinToken>,
    /// UDP port for gossip; 0 uses the peer port's number.
    pub gossip_port: u16,
    /// When the leader changes voters and removes members.
    pub autopilot: AutopilotConfig,
    /// How long to keep trying to reach the seed when joining.
    pub join_timeout: Duration,
    /// Build a snapshot after this many log entries.
    pub snapshot_threshold: u64,
    /// Log entries kept after a snapshot, for followers that lag a little.
    pub snapshot_keep_logs: u64,
    /// Changes kept in memory for watchers.
    pub watch_window: usize,
    /// How long a proposal or read may wait for a leader and a quorum.
    pub request_timeout: Duration,
}

impl NodeConfig {
    pub fn new(name: impl Into<String>, data_dir: impl Into<PathBuf>, advertise: IpAddr) -> Self {
        Self {
            name: name.into(),
            data_dir: data_dir.into(),
            advertise,
            peer_port: 7443,
            join: None,
            token: None,
            gossip_port: 7946,
            autopilot: AutopilotConfig::default(),
            join_timeout: Duration::from_secs(30),
            snapshot_threshold: 100_000,
            snapshot_keep_logs: 5_000,
            watch_window: 100_000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a node could not start. Each is one clear line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("data dir {dir} belongs to cluster {ours}, but seed {seed} {theirs}")]
    OtherCluster {
        dir: PathBuf,
        ours: String,
        seed: String,
        theirs: String,
    },
    #[error(
        "--join needs --token for a node without state (create one with `flotilla token create`)"
    )]
    TokenRequired,
    #[error("seed {seed} is not a member of the cluster the join token names: its certificate is not from the CA with sha256 {hash}")]
    SeedNotTrusted { seed: String, hash: String },
    #[error("credentials in {dir}: {detail}")]
    Credentials { dir: PathBuf, detail: String },
    #[error("cannot reach seed {seed} within {secs} s: {detail}")]
    SeedUnreachable {
        seed: String,
        secs: u64,
        detail: String,
    },
    #[error("seed {seed} refused the join: {detail}")]
    JoinRefused { seed: String, detail: String },
    #[error("peer port {addr} is already in use")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to data dir {dir}: {detail}")]
    Storage { dir: PathBuf, detail: String },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("bootstrap did not elect this node leader within {secs} s")]
    BootstrapTimeout { secs: u64 },
    #[error("the node of data dir {dir} left its cluster (flotilla leave); remove the directory to join again")]
    Left { dir: PathBuf },
}

/// A running member of the cluster.
pub struct RaftNode {
    pub id: NodeId,
    pub name: String,
    pub cluster_id: String,
    pub addr: String,
    pub raft: Raft,
    pub replica: Replica,
    pub(crate) snapshots: SnapshotDir,
    pub(crate) network: Network,
    forwarder: Forwarder,
    pub(crate) request_timeout: Duration,
    shutdown: CancellationToken,
    /// Cancelled once this node has left the cluster for good (`flotilla leave`).
    pub left: CancellationToken,
    pub(crate) data_dir: PathBuf,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `host:port` (UDP) of this node's gossip endpoint.
    pub gossip_addr: String,
    /// Which members are down, for the autopilot; set once gossip runs.
    pub(crate) liveness: Arc<std::sync::RwLock<LivenessSource>>,
    /// Every term in which this process saw itself leader, for the "one leader per term" check.
    pub(crate) led_terms: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    /// `Some(term)` while this node leads (see [`Leadership`]).
    leading: tokio::sync::watch::Sender<Option<u64>>,
}

fn raft_config(config: &NodeConfig) -> Arc<Config> {
    let c = Config {
        cluster_name: "flotilla".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
        max_in_snapshot_log_to_keep: config.snapshot_keep_logs,
        max_payload_entries: 1000,
        ..Default::default()
    };
    // The values above are within openraft's constraints; validation only rejects
    // inconsistent timeouts, which these are not.
    Arc::new(c.validate().expect("raft config is valid"))
}

impl RaftNode {
    /// Starts Raft on an opened data dir: the replica, the log, the network, the gRPC services
    /// on `listener`, the leadership watch and the autopilot. Which cluster it belongs to, and
    /// how it got its credentials (bootstrap, join, resume), was decided before, by
    /// `flotilla-cluster`; a bootstrap then calls [`RaftNode::initialize_cluster`].
    pub async fn open(
        config: &NodeConfig,
        db: Arc<Db>,
        identity: &Identity,
        cluster_id: String,
        pki: &NodePki,
        listener: std::net::TcpListener,
    ) -> Result<Arc<RaftNode>, StartError> {
        let storage_err = |detail: String| StartError::Storage {
            dir: config.data_dir.clone(),
            detail,
        };
        let creds_err = |detail: String| StartError::Credentials {
            dir: NodePki::dir(&config.data_dir),
            detail,
        };
        let tls = Tls::new(
            &pki.ca_pem,
            Credential {
                cert_pem: pki.chain_pem(),
                key_pem: pki.node.key_pem.clone(),
            },
        );

        let snapshots = SnapshotDir::open(config.data_dir.join("snapshots"))
            .map_err(|e| storage_err(e.to_string()))?;
        let replica = Replica::new(Arc::clone(&db), config.watch_window)
            .map_err(|e| storage_err(e.to_string()))?;
        let network = Network::new(identity.node_id, cluster_id.clone(), tls.clone());
        let raft = Raft::new(
            identity.node_id,
            raft_config(config),
            network.clone(),
            LogStore::new(Arc::clone(&db)),
            StateMachine::new(replica.clone(), snapshots.clone()),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let shutdown = CancellationToken::new();
        let forwarder = Forwarder::new(network.clone(), config.request_timeout, shutdown.clone());
        let node = Arc::new(RaftNode {
            id: identity.node_id,
            name: identity.name.clone(),
            cluster_id: cluster_id.clone(),
            addr: identity.addr.clone(),
            raft: raft.clone(),
            replica,
            snapshots,
            network,
            forwarder,
            request_timeout: config.request_timeout,
            shutdown,
            tasks: Mutex::new(Vec::new()),
            gossip_addr: identity.gossip_addr.clone(),
            liveness: Arc::new(std::sync::RwLock::new(Arc::new(BTreeMap::new))),
            led_terms: Arc::default(),
            leading: tokio::sync::watch::channel(None).0,
            left: CancellationToken::new(),
            data_dir: config.data_dir.clone(),
        });
        node.spawn(crate::status::follow_leadership(
            node.raft.clone(),
            node.id,
            Arc::clone(&node.led_terms),
            node.leading.clone(),
            node.shutdown.clone(),
        ));

        let router = crate::service::router(&node, &tls)
            .map_err(|e| creds_err(format!("unusable for TLS: {e}")))?;
        node.spawn(crate::service::serve(
            router,
            listener,
            node.shutdown.clone(),
        ));

        let liveness = Arc::clone(&node.liveness);
        node.spawn(crate::membership::run_autopilot(
            raft.clone(),
            Arc::new(move || (liveness.read().unwrap_or_else(|p| p.into_inner()))()),
            config.autopilot,
            node.shutdown.clone(),
        ));
        Ok(node)
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Makes this node the single voter of a new cluster and waits for its first commit as
    /// leader, so that joins can be served at once.
    pub async fn initialize_cluster(&self, member: Member) -> Result<(), StartError> {
        self.raft
            .initialize(BTreeMap::from([(self.id, member)]))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // Wait for our own first commit as leader, so that joins can be served at once.
        let secs = 10;
        self.raft
            .wait(Some(Duration::from_secs(secs)))
            .metrics(
                |m| {
                    m.current_leader == Some(m.id)
                        && m.last_applied.as_ref().map(|l| l.index) >= m.last_log_index
                },
                "bootstrap leader applied its first entry",
            )
            .await
            .map_err(|_| StartError::BootstrapTimeout { secs })?;
        tracing::info!(cluster = %self.cluster_id, "bootstrapped a new cluster");
        Ok(())
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(?err, "raft shutdown");
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }

    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.id) && m.state == ServerState::Leader
    }

    /// Whether this node is a voter in the current membership.
    pub fn is_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        voter
    }

    /// Waits up to `max` for a leader to be known (it may be gone by the time we use it).
    pub(crate) async fn await_leader(&self, max: Duration) {
        let _ = self
            .raft
            .wait(Some(max))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await;
    }

    fn store_client(&self, addr: &str) -> PbStoreClient<Channel> {
        PbStoreClient::new(self.network.channel(addr))
    }

    /// Applies `command` through this node if it is the leader. `Ok(None)`: not the leader.
    pub(crate) async fn propose_local(
        &self,
        command: Command,
    ) -> Result<Option<Revision>, StoreError> {
        match self.raft.client_write(command).await {
            Ok(resp) => resp.data.0.map(Some).map_err(StoreError::from),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(None),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(StoreError::Timeout {
                waiting_for: "commit: the leader changed first, so the write may or may not have been applied".into(),
                millis: 0,
            }),
            Err(RaftError::Fatal(f)) => Err(StoreError::Closed { reason: f.to_string() }),
            Err(RaftError::APIError(other)) => Err(StoreError::storage(other)),
        }
    }

    /// The read index from the leader, if this node is the leader. `Ok(None)`: not the leader.
    pub(crate) async fn read_index_local(&self) -> Result<Option<Revision>, StoreError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(Some(read.index())),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => Ok(None),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(StoreError::NotLeader {
                    reason: format!("the leader cannot reach a quorum: {q}"),
                })
            }
            Err(RaftError::Fatal(f)) => Err(StoreError::Closed {
                reason: f.to_string(),
            }),
        }
    }

    /// If this node leads, hands leadership to the most caught-up other voter and waits (up to
    /// `timeout`) until another node leads. Returns whether leadership moved.
    pub async fn step_down(&self, timeout: Duration) -> bool {
        let target = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            if m.current_leader != Some(self.id) {
                return false;
            }
            let replication = m.replication.clone().unwrap_or_default();
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != self.id)
                .max_by_key(|id| {
                    replication
                        .get(id)
                        .and_then(|l| l.as_ref())
                        .map_or(0, |l| l.index)
                })
        };
        let Some(to) = target else {
            return false;
        };
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return false;
        }
        let me = self.id;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership handed over",
            )
            .await
            .is_ok()
    }
}

impl Leadership for RaftNode {
    fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.leading.subscribe()
    }
}

#[async_trait]
impl Proposer for RaftNode {
    async fn propose(&self, command: Command) -> Result<Revision, StoreError> {
        let ops = command_to_pb(&command);
        self.on_leader(
            "proposal",
            false,
            || async { Try::local(self.propose_local(command.clone()).await) },
            |leader| {
                let answer = self.forwarder.propose(&leader.addr, ops.clone());
                let leader = leader.clone();
                async move {
                    let answer = answer.await.map(|resp| match resp.error {
                        Some(e) => Err(error_from_pb(e)),
                        None => Ok(resp.revision),
                    });
                    Try::forwarded(&leader, answer)
                }
            },
        )
        .await
    }

    async fn read_barrier(&self) -> Result<Revision, StoreError> {
        let index = self
            .on_leader(
                "read index",
                true,
                || async { Try::local(self.read_index_local().await) },
                |leader| {
                    let mut client = self.store_client(&leader.addr);
                    let leader = leader.clone();
                    async move {
                        let answer = client
                            .read_index(pb::ReadIndexRequest {})
                            .await
                            .map(|resp| {
                                let resp = resp.into_inner();
                                match resp.error {
                                    Some(e) => Err(error_from_pb(e)),
                                    None => Ok(resp.index),
                                }
                            });
                        Try::forwarded(&leader, answer)
                    }
                },
            )
            .await?;
        let waited = self
            .raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await;
        match waited {
            Ok(_) => Ok(self.replica.applied_revision().max(index)),
            Err(_) => Err(StoreError::Timeout {
                waiting_for: format!("the local replica to apply index {index}"),
                millis: self.request_timeout.as_millis() as u64,
            }),
        }
    }
}
