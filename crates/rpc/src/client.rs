//! A typed client of one node's `Store` and `Cluster` services.

use std::time::Duration;

use flotilla_store::{Command, Event, Listing, Record, Revision, StoreError};
use tonic::transport::Channel;

use crate::batch::Batcher;
use crate::convert::{command_to_pb, error_from_pb, event_from_pb, record_from_pb};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::store_client::StoreClient as PbStoreClient;
use crate::tls::Tls;

/// Why a call failed: the store refused it, or the node could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rpc to {addr} failed: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("invalid address {addr}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl ClientError {
    /// The store's error, if the store answered.
    pub fn store(&self) -> Option<&StoreError> {
        match self {
            ClientError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// A client of one node, addressed as `host:port`. Connects lazily; cheap to clone (clones
/// share one connection and one proposal queue). Proposals made concurrently go to the node
/// in batches (`ProposeMany`, see [`crate::batch`]), each still its own entry and revision.
#[derive(Clone)]
pub struct StoreClient {
    addr: String,
    timeout: Duration,
    store: PbStoreClient<Channel>,
    cluster: ClusterClient<Channel>,
    batcher: std::sync::Arc<std::sync::Mutex<Option<Batcher>>>,
}

fn check(error: Option<pb::StoreError>) -> Result<(), ClientError> {
    match error {
        Some(e) => Err(ClientError::Store(error_from_pb(e))),
        None => Ok(()),
    }
}

impl StoreClient {
    /// A client of the node at `addr` authenticating with `tls` (an admin's or a node's).
    pub fn new(addr: &str, timeout: Duration, tls: &Tls) -> Result<Self, ClientError> {
        let channel = tls
            .channel(addr, Some(timeout))
            .map_err(|source| ClientError::Address {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Self {
            addr: addr.to_string(),
            timeout,
            store: PbStoreClient::new(channel.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
            cluster: ClusterClient::new(channel),
            batcher: Default::default(),
        })
    }

    /// The proposal queue, started on first use (on the caller's runtime), restarted if that
    /// runtime has gone.
    fn batcher(&self) -> Batcher {
        let mut slot = self.batcher.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = slot.as_ref().filter(|b| !b.is_closed()) {
            return b.clone();
        }
        let store = self.store.clone();
        let batcher = Batcher::start(
            move |proposals| {
                let mut store = store.clone();
                Box::pin(async move {
                    let resp = store
                        .propose_many(pb::ProposeForwardedRequest { proposals })
                        .await?;
                    Ok(resp.into_inner().results)
                })
            },
            self.timeout,
            tokio_util::sync::CancellationToken::new(),
        );
        *slot = Some(batcher.clone());
        batcher
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn rpc(&self, status: tonic::Status) -> ClientError {
        ClientError::Rpc {
            addr: self.addr.clone(),
            status,
        }
    }

    pub async fn propose(&self, command: &Command) -> Result<Revision, ClientError> {
        let resp = self
            .batcher()
            .propose(command_to_pb(command))
            .await
            .map_err(|s| self.rpc(s))?;
        check(resp.error)?;
        Ok(resp.revision)
    }

    pub async fn create(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<Revision, ClientError> {
        self.propose(&Command::create(key, value)).await
    }

    pub async fn update(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        expected: Option<Revision>,
    ) -> Result<Revision, ClientError> {
        self.propose(&Command::update(key, value, expected)).await
    }

    pub async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<Revision, ClientError> {
        self.propose(&Command::delete(key, expected)).await
    }

    pub async fn get(
        &self,
        key: &str,
        linearizable: bool,
    ) -> Result<(Revision, Option<Record>), ClientError> {
        let resp = self
            .store
            .clone()
            .get(pb::GetRequest {
                key: key.to_string(),
                linearizable,
            })
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        check(resp.error)?;
        Ok((resp.revision, resp.record.map(record_from_pb)))
    }

    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
        linearizable: bool,
    ) -> Result<Listing, ClientError> {
        let resp = self
            .store
            .clone()
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                start_after: start_after.unwrap_or_default().to_string(),
                limit,
                linearizable,
            })
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        check(resp.error)?;
        Ok(Listing {
            revision: resp.revision,
            items: resp
                .items
                .into_iter()
                .map(|i| (i.key, record_from_pb(i.record.unwrap_or_default())))
                .collect(),
        })
    }

    /// Every key under `prefix`, page by page, each page read linearizably or locally.
    pub async fn list_all(
        &self,
        prefix: &str,
        linearizable: bool,
    ) -> Result<Vec<(String, Record)>, ClientError> {
        let mut out: Vec<(String, Record)> = Vec::new();
        loop {
            let after = out.last().map(|(k, _)| k.clone());
            let page = self
                .list(prefix, after.as_deref(), 1000, linearizable)
                .await?;
            let done = page.items.len() < 1000;
            out.extend(page.items);
            if done {
                return Ok(out);
            }
        }
    }

    /// Opens a watch of changes under `prefix` after revision `after`.
    pub async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, ClientError> {
        let stream = self
            .store
            .clone()
            .watch(pb::WatchRequest {
                prefix: prefix.to_string(),
                after_revision: after,
            })
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        Ok(WatchStream {
            addr: self.addr.clone(),
            inner: stream,
        })
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        Ok(self
            .cluster
            .clone()
            .status(pb::StatusRequest {})
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner())
    }

    /// Streams a backup of the node's store (a snapshot file, admins only) into `out`;
    /// returns how many bytes were written. The stream must complete within the client's
    /// timeout, like every call.
    pub async fn save_snapshot(
        &self,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let mut stream = self
            .cluster
            .clone()
            .save_snapshot(pb::SaveSnapshotRequest {})
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner();
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| self.rpc(s))? {
            out.write_all(&chunk.data).await.map_err(|e| {
                self.rpc(tonic::Status::internal(format!("writing the backup: {e}")))
            })?;
            written += chunk.data.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| self.rpc(tonic::Status::internal(format!("writing the backup: {e}"))))?;
        Ok(written)
    }

    /// Asks the node this client talks to to leave the cluster for good.
    pub async fn leave(&self) -> Result<(), ClientError> {
        self.cluster
            .clone()
            .leave(pb::LeaveRequest {})
            .await
            .map_err(|s| self.rpc(s))?;
        Ok(())
    }

    pub async fn digest(&self) -> Result<pb::DigestResponse, ClientError> {
        Ok(self
            .cluster
            .clone()
            .digest(pb::DigestRequest {})
            .await
            .map_err(|s| self.rpc(s))?
            .into_inner())
    }
}

/// The changes a watch delivers, batch by batch.
pub struct WatchStream {
    addr: String,
    inner: tonic::Streaming<pb::WatchResponse>,
}

impl WatchStream {
    /// The next batch of changes; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, ClientError> {
        match self.inner.message().await {
            Ok(Some(resp)) => {
                check(resp.error)?;
                Ok(Some(resp.events.into_iter().map(event_from_pb).collect()))
            }
            Ok(None) => Ok(None),
            Err(status) => Err(ClientError::Rpc {
                addr: self.addr.clone(),
                status,
            }),
        }
    }
}
