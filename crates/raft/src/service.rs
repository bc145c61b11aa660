//! The gRPC services every node serves on its peer port.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_pki::ca::subject_of;
use flotilla_pki::{ADMINS_GROUP, NODES_GROUP};
use flotilla_rpc::pb;
use flotilla_rpc::pb::admission_server::{Admission, AdmissionServer};
use flotilla_rpc::pb::cluster_server::{Cluster, ClusterServer};
use flotilla_rpc::pb::raft_server::{Raft as RaftRpc, RaftServer};
use flotilla_rpc::pb::store_server::{Store, StoreServer};
use flotilla_rpc::{command_from_pb, error_to_pb, event_to_pb, record_to_pb, Tls};
use flotilla_store::{Engine, Proposer, StoreError};
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status, Streaming};

use crate::node::RaftNode;
use crate::types::{decode, encode, Snapshot, SnapshotMeta, Vote};

/// The peer endpoint: every service over TLS. `Admission` is open to callers without a
/// certificate (joining nodes); `Store` and `Cluster` need one from the cluster CA; `Raft` needs
/// a node's.
pub fn router(node: &Arc<RaftNode>, tls: &Tls) -> Result<Router, tonic::transport::Error> {
    let max = flotilla_rpc::MAX_MESSAGE_BYTES;
    let raft = RaftServer::new(RaftService {
        node: Arc::clone(node),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let store = StoreServer::new(StoreService {
        node: Arc::clone(node),
    })
    .max_decoding_message_size(max);
    let cluster = ClusterServer::new(ClusterService {
        node: Arc::clone(node),
    });
    let admission = AdmissionServer::new(AdmissionService {
        node: Arc::clone(node),
    });
    Ok(tonic::transport::Server::builder()
        .tls_config(tls.server_config())?
        .add_service(InterceptedService::new(raft, require_node))
        .add_service(InterceptedService::new(store, require_certificate))
        .add_service(InterceptedService::new(cluster, require_certificate))
        .add_service(admission))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(router: Router, listener: std::net::TcpListener, shutdown: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(?err, "cannot register the peer listener");
            return;
        }
    };
    // `tcp_nodelay` on the builder only applies to listeners tonic binds itself; set it on ours
    // too, or small replies wait out Nagle's delay against the peer's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Err(err) = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        tracing::error!(?err, "peer server stopped");
    }
}

fn require_certificate(req: Request<()>) -> Result<Request<()>, Status> {
    match req.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(req),
        _ => Err(Status::unauthenticated(
            "this endpoint needs a client certificate from the cluster CA",
        )),
    }
}

fn require_node(req: Request<()>) -> Result<Request<()>, Status> {
    let req = require_certificate(req)?;
    let is_node = req
        .peer_certs()
        .and_then(|certs| subject_of(certs[0].as_ref()).ok())
        .is_some_and(|(_, groups)| groups.iter().any(|g| g == NODES_GROUP));
    if is_node {
        Ok(req)
    } else {
        Err(Status::permission_denied(
            "only cluster nodes may speak Raft",
        ))
    }
}

#[derive(Clone)]
struct RaftService {
    node: Arc<RaftNode>,
}

impl RaftService {
    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        if cluster_id != self.node.cluster_id {
            return Err(Status::permission_denied(format!(
                "message for cluster {cluster_id}, this node is in cluster {}",
                self.node.cluster_id
            )));
        }
        Ok(())
    }

    fn payload<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<T, Status> {
        let p = req.into_inner();
        self.check_cluster(&p.cluster_id)?;
        self.decode_payload(&p.data)
    }

    fn decode_payload<T: serde::de::DeserializeOwned>(&self, data: &[u8]) -> Result<T, Status> {
        decode(data).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<pb::RaftPayload>, Status> {
    match r {
        Ok(v) => Ok(Response::new(pb::RaftPayload {
            cluster_id: String::new(),
            data: encode(&v),
        })),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// The replies of an `AppendStream`.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = self.payload(req)?;
        reply(self.node.raft.append_entries(rpc).await)
    }

    type AppendStreamStream = ReplyStream;

    /// Hands the requests to openraft as they arrive (it pipelines them) and sends back one
    /// result per request, in order. A message for another cluster or one that does not decode
    /// ends the input; the replies then end with its error.
    async fn append_stream(
        &self,
        req: Request<Streaming<pb::RaftPayload>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let refused: Arc<std::sync::Mutex<Option<Status>>> = Arc::default();
        let state = (req.into_inner(), self.clone(), Arc::clone(&refused));
        let input = futures::stream::unfold(state, |(mut inbound, service, refused)| async move {
            // A transport error means the leader went away: the input just ends.
            let message = inbound.next().await?.ok()?;
            match service
                .check_cluster(&message.cluster_id)
                .and_then(|()| service.decode_payload(&message.data))
            {
                Ok(rpc) => Some((rpc, (inbound, service, refused))),
                Err(status) => {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    None
                }
            }
        });
        let results = Box::pin(self.node.raft.stream_append(input));
        let replies = futures::stream::unfold(Some(results), |results| async move {
            let mut results = results?;
            match results.next().await? {
                Ok(result) => Some((
                    Ok(pb::RaftPayload {
                        cluster_id: String::new(),
                        data: encode(&result),
                    }),
                    Some(results),
                )),
                Err(fatal) => Some((Err(Status::unavailable(fatal.to_string())), None)),
            }
        });
        let refusal = futures::stream::once(async move {
            refused.lock().unwrap_or_else(|p| p.into_inner()).take()
        })
        .filter_map(|status| async move { status.map(Err) });
        Ok(Response::new(Box::pin(replies.chain(refusal))))
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = self.payload(req)?;
        reply(self.node.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = self.payload(req)?;
        reply(self.node.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc = self.payload(req)?;
        reply(self.node.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check_cluster(&first.cluster_id)?;
        let bad = |what: &str, e: postcard::Error| {
            Status::invalid_argument(format!("undecodable snapshot {what}: {e}"))
        };
        let vote: Vote = decode(&first.vote).map_err(|e| bad("vote", e))?;
        let meta: SnapshotMeta = decode(&first.meta).map_err(|e| bad("metadata", e))?;
        let path = self.node.snapshots.incoming_path();
        let received = receive_snapshot(&mut stream, first, &path).await;
        if let Err(status) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(status);
        }
        let snapshot = Snapshot {
            meta,
            snapshot: path.clone(),
        };
        let result = self.node.raft.install_full_snapshot(vote, snapshot).await;
        // An installed snapshot was moved into place; anything left here was not used.
        let _ = tokio::fs::remove_file(&path).await;
        reply(result)
    }
}

async fn receive_snapshot(
    stream: &mut Streaming<pb::SnapshotChunk>,
    first: pb::SnapshotChunk,
    path: &std::path::Path,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing received snapshot: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut chunk = first;
    loop {
        file.write_all(&chunk.data).await.map_err(io)?;
        if chunk.done {
            break;
        }
        chunk = stream
            .message()
            .await?
            .ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))?;
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}

struct StoreService {
    node: Arc<RaftNode>,
}

fn propose_response(answer: Result<flotilla_store::Revision, StoreError>) -> pb::ProposeResponse {
    match answer {
        Ok(revision) => pb::ProposeResponse {
            revision,
            error: None,
        },
        Err(e) => pb::ProposeResponse {
            revision: 0,
            error: Some(error_to_pb(&e)),
        },
    }
}

/// The commands of batched proposals; an empty one refuses the whole batch.
fn commands_from_pb(
    proposals: Vec<pb::ProposeRequest>,
) -> Result<Vec<flotilla_store::Command>, Status> {
    proposals
        .into_iter()
        .map(|p| match command_from_pb(p.ops) {
            Some(c) if !c.ops.is_empty() => Ok(c),
            _ => Err(Status::invalid_argument(
                "a batched proposal is empty or has an empty operation",
            )),
        })
        .collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Store for StoreService {
    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = req.into_inner();
        let command = command_from_pb(req.ops)
            .ok_or_else(|| Status::invalid_argument("an operation is empty"))?;
        if command.ops.is_empty() {
            return Err(Status::invalid_argument(
                "a proposal needs at least one operation",
            ));
        }
        Ok(Response::new(propose_response(
            self.node.propose(command).await,
        )))
    }

    async fn propose_forwarded(
        &self,
        req: Request<pb::ProposeForwardedRequest>,
    ) -> Result<Response<pb::ProposeForwardedResponse>, Status> {
        let commands = commands_from_pb(req.into_inner().proposals)?;
        // One message to the Raft core for the batch, which keeps its order.
        let results = self
            .node
            .propose_local_many(commands)
            .await
            .into_iter()
            .map(|answer| {
                propose_response(answer.and_then(|revision| {
                    revision.ok_or_else(|| StoreError::NotLeader {
                        reason: "the forwarded-to node is no longer the leader".into(),
                    })
                }))
            })
            .collect();
        Ok(Response::new(pb::ProposeForwardedResponse { results }))
    }

    async fn propose_many(
        &self,
        req: Request<pb::ProposeForwardedRequest>,
    ) -> Result<Response<pb::ProposeForwardedResponse>, Status> {
        let commands = commands_from_pb(req.into_inner().proposals)?;
        let results = self
            .node
            .propose_many(commands)
            .await
            .into_iter()
            .map(propose_response)
            .collect();
        Ok(Response::new(pb::ProposeForwardedResponse { results }))
    }

    async fn read_index(
        &self,
        _req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let resp = match self.node.read_index_local().await {
            Ok(Some(index)) => pb::ReadIndexResponse { index, error: None },
            Ok(None) => pb::ReadIndexResponse {
                index: 0,
                error: Some(error_to_pb(&StoreError::NotLeader {
                    reason: "asked for a read index, but not the leader".into(),
                })),
            },
            Err(e) => pb::ReadIndexResponse {
                index: 0,
                error: Some(error_to_pb(&e)),
            },
        };
        Ok(Response::new(resp))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            if req.linearizable {
                self.node.read_barrier().await?;
            }
            self.node.replica.get(&req.key)
        }
        .await;
        Ok(Response::new(match result {
            Ok((revision, record)) => pb::GetResponse {
                revision,
                record: record.as_ref().map(record_to_pb),
                error: None,
            },
            Err(e) => pb::GetResponse {
                error: Some(error_to_pb(&e)),
                ..Default::default()
            },
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            if req.linearizable {
                self.node.read_barrier().await?;
            }
            let after = (!req.start_after.is_empty()).then_some(req.start_after.as_str());
            self.node
                .replica
                .list(&req.prefix, after, req.limit as usize)
        }
        .await;
        Ok(Response::new(match result {
            Ok(listing) => pb::ListResponse {
                revision: listing.revision,
                items: listing
                    .items
                    .iter()
                    .map(|(k, r)| pb::KeyRecord {
                        key: k.clone(),
                        record: Some(record_to_pb(r)),
                    })
                    .collect(),
                error: None,
            },
            Err(e) => pb::ListResponse {
                error: Some(error_to_pb(&e)),
                ..Default::default()
            },
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::WatchResponse, Status>>(16);
        let watcher = self
            .node
            .replica
            .window()
            .watch(req.prefix, req.after_revision);
        tokio::spawn(async move {
            let mut watcher = match watcher {
                Ok(w) => w,
                Err(e) => {
                    let _ = tx.send(Ok(error_response(&e))).await;
                    return;
                }
            };
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => return,
                    next = watcher.next() => next,
                };
                match msg {
                    Ok(events) => {
                        let resp = pb::WatchResponse {
                            events: events.iter().map(|e| event_to_pb(e)).collect(),
                            error: None,
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(error_response(&e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn error_response(e: &StoreError) -> pb::WatchResponse {
    pb::WatchResponse {
        events: vec![],
        error: Some(error_to_pb(e)),
    }
}

struct ClusterService {
    node: Arc<RaftNode>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerResponse>, Status> {
        self.node.add_learner(req.into_inner()).await?;
        Ok(Response::new(pb::AddLearnerResponse {}))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.node.status()))
    }

    async fn digest(
        &self,
        _req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        let (revision, digest, keys) = self
            .node
            .replica
            .digest()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DigestResponse {
            revision,
            digest,
            keys,
        }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        require_group(&req, ADMINS_GROUP, "only an admin may make a node leave")?;
        self.node.leave().await?;
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        require_group(&req, NODES_GROUP, "only cluster nodes may remove members")?;
        self.node.remove_member(req.into_inner()).await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    type SaveSnapshotStream = SnapshotFileStream;

    async fn save_snapshot(
        &self,
        req: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        require_group(&req, ADMINS_GROUP, "only an admin may save a snapshot")?;
        let (path, index) = self
            .node
            .write_backup()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(index, "streaming a backup snapshot");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let sent = async {
                let mut file = tokio::fs::File::open(&path).await?;
                loop {
                    let mut data = vec![0u8; BACKUP_CHUNK];
                    let n = file.read(&mut data).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    data.truncate(n);
                    if tx.send(Ok(pb::SnapshotFileChunk { data })).await.is_err() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = sent {
                let _ = tx
                    .send(Err(Status::internal(format!("reading the backup: {e}"))))
                    .await;
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Backups travel in chunks of this size.
const BACKUP_CHUNK: usize = 1 << 20;

type SnapshotFileStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotFileChunk, Status>> + Send>>;

/// Refuses the call unless the caller's client certificate puts it in `group`.
fn require_group<T>(req: &Request<T>, group: &str, refusal: &str) -> Result<(), Status> {
    let groups = req
        .peer_certs()
        .and_then(|certs| subject_of(certs.first()?.as_ref()).ok())
        .map(|(_, groups)| groups)
        .unwrap_or_default();
    if groups.iter().any(|g| g == group) {
        Ok(())
    } else {
        Err(Status::permission_denied(refusal.to_string()))
    }
}

struct AdmissionService {
    node: Arc<RaftNode>,
}

#[tonic::async_trait]
impl Admission for AdmissionService {
    async fn info(
        &self,
        _req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse {
            cluster_id: self.node.cluster_id.clone(),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        Ok(Response::new(self.node.admit(req.into_inner()).await?))
    }
}
