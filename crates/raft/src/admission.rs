//! Admitting nodes: the cluster CA and join tokens live in the replicated store, so any node
//! can check a token, sign a certificate and add the learner (through the leader).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_pki::{Ca, CaHash, Credential, JoinToken, TokenRecord, TokenRejected};
use flotilla_rpc::pb;
use flotilla_store::{Command, Engine, Proposer, StoreError};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::node::RaftNode;

/// Where the cluster CA (certificate and key) is stored.
pub const CA_KEY: &str = "/flotilla/pki/ca";
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The CA stored at [`CA_KEY`], from its value.
pub(crate) fn ca_of(value: &[u8]) -> Result<Ca, String> {
    let stored: StoredCa =
        serde_json::from_slice(value).map_err(|e| format!("stored CA is unreadable: {e}"))?;
    Ca::from_pem(Credential {
        cert_pem: stored.cert_pem,
        key_pem: stored.key_pem,
    })
    .map_err(|e| format!("stored CA is unusable: {e}"))
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

impl RaftNode {
    /// Stores the CA unless it is there already (a bootstrap resumed after a crash).
    pub async fn publish_ca(&self, ca: &Ca) -> Result<(), StoreError> {
        let stored = StoredCa {
            cert_pem: ca.credential().cert_pem.clone(),
            key_pem: ca.credential().key_pem.clone(),
        };
        let value = serde_json::to_vec(&stored).expect("plain strings serialise");
        match self.propose(Command::create(CA_KEY, value)).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates and stores a join token valid for `ttl_secs` (`None`: no expiry).
    pub async fn create_token(
        &self,
        ca: CaHash,
        ttl_secs: Option<u64>,
        description: &str,
    ) -> Result<JoinToken, StoreError> {
        let token = JoinToken::generate(ca);
        let record = TokenRecord::new(&token, now_unix(), ttl_secs, description);
        self.propose(Command::create(
            TokenRecord::key(&token.id),
            record.to_json(),
        ))
        .await?;
        Ok(token)
    }

    /// The cluster CA from the local replica.
    fn cluster_ca(&self) -> Result<Ca, Status> {
        let (_, record) = self.replica.get(CA_KEY).map_err(store_status)?;
        let record =
            record.ok_or_else(|| Status::unavailable("the cluster CA is not in the store yet"))?;
        ca_of(&record.value).map_err(Status::internal)
    }

    /// Checks the token, signs the node's certificate and adds it as a learner. Nothing is
    /// written unless the token admits the node.
    pub(crate) async fn admit(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        // Linearizable: a token revoked a moment ago must not admit anyone.
        self.read_barrier().await.map_err(store_status)?;
        let (_, record) = self
            .replica
            .get(&TokenRecord::key(&req.token_id))
            .map_err(store_status)?;
        let record = match record {
            Some(r) => {
                TokenRecord::from_json(&r.value).map_err(|e| Status::internal(e.to_string()))?
            }
            None => {
                return Err(Status::permission_denied(
                    TokenRejected::Unknown { id: req.token_id }.to_string(),
                ))
            }
        };
        record
            .admits(&req.token_secret, now_unix())
            .map_err(|e| Status::permission_denied(e.to_string()))?;

        let addr: SocketAddr = req.addr.parse().map_err(|_| {
            Status::invalid_argument(format!("address {:?} is not host:port", req.addr))
        })?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("a joining node needs a name"));
        }
        let ca = self.cluster_ca()?;
        let cert_pem = ca
            .sign_node_csr(&req.csr_pem, &req.name, addr.ip())
            .map_err(|e| Status::invalid_argument(format!("bad certificate request: {e}")))?;
        self.add_learner(pb::AddLearnerRequest {
            node_id: req.node_id,
            name: req.name.clone(),
            addr: req.addr.clone(),
            forwarded: false,
            gossip_addr: req.gossip_addr.clone(),
        })
        .await?;
        tracing::info!(node = %req.name, addr = %req.addr, token = %req.token_id, "admitted a node");
        Ok(pb::JoinResponse {
            cluster_id: self.cluster_id.clone(),
            cert_pem,
            ca_pem: ca.cert_pem().to_string(),
        })
    }
}
