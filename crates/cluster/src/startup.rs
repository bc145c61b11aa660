//! How a node becomes a member: it bootstraps a new cluster (no state, no `--join`), joins one
//! through a seed with a join token (the seed is verified by the CA hash in the token, as
//! `kubeadm join` verifies it), or resumes as the member its data dir records, whatever the
//! flags. Then it starts Raft (`RaftNode::open`) and, for a bootstrap, initialises the
//! single-voter cluster and stores the CA where every node can admit joiners with it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_pki::files::{load_ca, save_ca};
use flotilla_pki::{Ca, CaHash, Credential, JoinToken, NodePki};
use flotilla_raft::{left_marker, Db, Identity, Member, NodeConfig, NodeId, RaftNode, StartError};
use flotilla_rpc::pb;

use crate::seed::{self, SeedError};

enum Mode {
    Bootstrap,
    Join(String, JoinToken),
    Resume,
}

/// Binds `addr`, trying again for up to `patience` while it is in use.
async fn bind_listener(
    addr: SocketAddr,
    patience: Duration,
) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + patience;
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tracing::info!(%addr, "the recorded peer port is in use; waiting for it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            bound => return bound,
        }
    }
}

/// A resumed node given `--join` checks that the seed is of its own cluster. Resuming needs no
/// seed, so only a seed that answers and disagrees is an error.
async fn check_same_cluster(
    seed: &str,
    identity: &Identity,
    pki: &NodePki,
    config: &NodeConfig,
) -> Result<(), StartError> {
    let ours = identity.cluster_id.clone().unwrap_or_default();
    let other = |theirs: String| StartError::OtherCluster {
        dir: config.data_dir.clone(),
        ours: ours.clone(),
        seed: seed.to_string(),
        theirs,
    };
    let ca = CaHash::of_pem(&pki.ca_pem).map_err(|e| StartError::Credentials {
        dir: NodePki::dir(&config.data_dir),
        detail: e.to_string(),
    })?;
    let info = seed::call(seed, ca, Duration::from_secs(2), |mut c| async move {
        Ok(c.info(pb::InfoRequest {}).await?.into_inner())
    })
    .await;
    match info {
        Ok(info) if info.cluster_id != ours => {
            Err(other(format!("belongs to cluster {}", info.cluster_id)))
        }
        Ok(_) | Err(SeedError::Unreachable(_)) | Err(SeedError::Refused(_)) => Ok(()),
        Err(SeedError::OtherCa) => Err(other(
            "does not: its certificate is not from this cluster's CA".into(),
        )),
    }
}

fn seed_error(e: SeedError, seed: &str, ca: CaHash, timeout: Duration) -> StartError {
    match e {
        SeedError::OtherCa => StartError::SeedNotTrusted {
            seed: seed.to_string(),
            hash: ca.to_string(),
        },
        SeedError::Refused(status) => StartError::JoinRefused {
            seed: seed.to_string(),
            detail: status.message().to_string(),
        },
        SeedError::Unreachable(detail) => StartError::SeedUnreachable {
            seed: seed.to_string(),
            secs: timeout.as_secs(),
            detail,
        },
    }
}

/// The bootstrap node's credentials: a new CA and a node certificate, or the ones a crashed
/// bootstrap left behind.
fn bootstrap_pki(data_dir: &Path, name: &str, advertise: IpAddr) -> Result<NodePki, String> {
    if let (Some(_), Some(pki)) = (
        load_ca(data_dir).map_err(|e| e.to_string())?,
        NodePki::load(data_dir).map_err(|e| e.to_string())?,
    ) {
        return Ok(pki);
    }
    let ca = Ca::generate(name).map_err(|e| e.to_string())?;
    let pki = NodePki {
        ca_pem: ca.cert_pem().to_string(),
        node: ca.issue_node(name, advertise).map_err(|e| e.to_string())?,
    };
    pki.save(data_dir).map_err(|e| e.to_string())?;
    save_ca(data_dir, &ca).map_err(|e| e.to_string())?;
    Ok(pki)
}

fn new_node_id() -> NodeId {
    // Zero is avoided so that it can mean "none" on the wire.
    rand::random::<u64>().max(1)
}

/// Opens the data dir and starts the node: it bootstraps a new cluster (no state, no
/// `--join`), joins one through a seed with a token, or resumes as the member its data dir
/// records. Returns once it is a member (for a join: once the leader has added it as a
/// learner).
pub async fn start_node(config: NodeConfig) -> Result<Arc<RaftNode>, StartError> {
    if left_marker(&config.data_dir).exists() {
        return Err(StartError::Left {
            dir: config.data_dir.clone(),
        });
    }
    let db = Db::open(&config.data_dir)?;
    let storage_err = |detail: String| StartError::Storage {
        dir: config.data_dir.clone(),
        detail,
    };
    let existing = db.identity()?;

    let (mode, identity) = match existing {
        Some(identity) if identity.cluster_id.is_some() => (Mode::Resume, identity),
        partial => {
            let node_id = partial.as_ref().map_or_else(new_node_id, |i| i.node_id);
            let port = partial
                .as_ref()
                .and_then(|i| i.addr.parse::<SocketAddr>().ok())
                .map_or(config.peer_port, |a| a.port());
            let identity = Identity {
                node_id,
                name: config.name.clone(),
                addr: SocketAddr::new(config.advertise, port).to_string(),
                cluster_id: None,
                gossip_addr: partial
                    .as_ref()
                    .map(|i| i.gossip_addr.clone())
                    .unwrap_or_default(),
            };
            match (&config.join, &config.token) {
                (Some(seed), Some(token)) => (Mode::Join(seed.clone(), token.clone()), identity),
                (Some(_), None) => return Err(StartError::TokenRequired),
                (None, _) => (Mode::Bootstrap, identity),
            }
        }
    };

    let bind: SocketAddr = match identity.addr.parse() {
        Ok(a) => a,
        Err(_) => SocketAddr::new(config.advertise, config.peer_port),
    };
    // A restarted node takes its recorded port again. A client's connection may hold it
    // as its local port for a moment (the kernel hands out listening and outgoing ports
    // from one range), so a resume waits a little for it.
    let patience = match &mode {
        Mode::Resume => Duration::from_secs(5),
        _ => Duration::ZERO,
    };
    let listener = bind_listener(bind, patience).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortInUse { addr: bind }
        } else {
            StartError::Listen { addr: bind, source }
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen { addr: bind, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: bind, source })?;
    let mut identity = identity;
    identity.addr = local.to_string();
    if identity.gossip_addr.is_empty() {
        let port = match config.gossip_port {
            0 => local.port(),
            p => p,
        };
        identity.gossip_addr = SocketAddr::new(config.advertise, port).to_string();
    }

    // Record the node id and address before asking anyone to admit them.
    db.save_identity(&identity)
        .map_err(|e| storage_err(e.to_string()))?;
    let creds_err = |detail: String| StartError::Credentials {
        dir: NodePki::dir(&config.data_dir),
        detail,
    };
    let (cluster_id, pki) = match &mode {
        Mode::Resume => {
            let pki = NodePki::load(&config.data_dir)
                .map_err(|e| creds_err(e.to_string()))?
                .ok_or_else(|| {
                    creds_err("missing: this data dir has state but no certificates".into())
                })?;
            if let Some(seed) = &config.join {
                check_same_cluster(seed, &identity, &pki, &config).await?;
            }
            (identity.cluster_id.clone().unwrap_or_default(), pki)
        }
        Mode::Bootstrap => {
            let advertise = config.advertise;
            let pki =
                bootstrap_pki(&config.data_dir, &identity.name, advertise).map_err(creds_err)?;
            // The cluster id is derived from the CA, so a bootstrap resumed after a crash
            // keeps both.
            let cluster_id = CaHash::of_pem(&pki.ca_pem)
                .map_err(|e| creds_err(e.to_string()))?
                .to_string()[..16]
                .to_string();
            (cluster_id, pki)
        }
        Mode::Join(seed, token) => {
            let (key_pem, csr_pem) =
                flotilla_pki::ca::node_csr(&identity.name).map_err(|e| creds_err(e.to_string()))?;
            let req = pb::JoinRequest {
                token_id: token.id.clone(),
                token_secret: token.secret.clone(),
                csr_pem,
                node_id: identity.node_id,
                name: identity.name.clone(),
                addr: identity.addr.clone(),
                gossip_addr: identity.gossip_addr.clone(),
            };
            let resp = seed::call(seed, token.ca_hash, config.join_timeout, |mut c| {
                let req = req.clone();
                async move { Ok(c.join(req).await?.into_inner()) }
            })
            .await
            .map_err(|e| seed_error(e, seed, token.ca_hash, config.join_timeout))?;
            if CaHash::of_pem(&resp.ca_pem).ok() != Some(token.ca_hash) {
                return Err(StartError::SeedNotTrusted {
                    seed: seed.clone(),
                    hash: token.ca_hash.to_string(),
                });
            }
            let pki = NodePki {
                ca_pem: resp.ca_pem,
                node: Credential {
                    cert_pem: resp.cert_pem,
                    key_pem,
                },
            };
            pki.save(&config.data_dir)
                .map_err(|e| creds_err(e.to_string()))?;
            tracing::info!(%seed, cluster = %resp.cluster_id, "admitted as a learner");
            (resp.cluster_id, pki)
        }
    };
    let node = RaftNode::open(
        &config,
        Arc::clone(&db),
        &identity,
        cluster_id.clone(),
        &pki,
        listener,
    )
    .await?;
    let member = Member {
        name: identity.name.clone(),
        addr: identity.addr.clone(),
        gossip_addr: identity.gossip_addr.clone(),
    };
    let initialized = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if let Mode::Bootstrap = mode {
        // A crash after `initialize` but before the identity was saved restarts here
        // with Raft already initialised: it is the same single-voter cluster.
        if !initialized {
            node.initialize_cluster(member).await?;
        }
    }
    if let Mode::Bootstrap = mode {
        // The CA goes into the store, where every node can admit joiners with it. Until the
        // cluster id is saved below, a crash restarts this as a bootstrap, which gets here
        // again (the write is idempotent).
        let ca = load_ca(&config.data_dir)
            .map_err(|e| creds_err(e.to_string()))?
            .ok_or_else(|| creds_err("the CA key vanished during bootstrap".into()))?;
        node.publish_ca(&ca)
            .await
            .map_err(|e| StartError::Raft(format!("cannot store the cluster CA: {e}")))?;
    }
    if identity.cluster_id.is_none() {
        identity.cluster_id = Some(cluster_id);
        db.save_identity(&identity)
            .map_err(|e| storage_err(e.to_string()))?;
    }

    Ok(node)
}
