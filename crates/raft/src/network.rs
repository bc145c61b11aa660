//! The Raft transport: openraft's network traits over gRPC, one lazily connected mutual-TLS
//! channel per peer address. Every message carries the cluster id; a peer of another cluster refuses it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use flotilla_rpc::pb;
use flotilla_rpc::pb::raft_client::RaftClient;
use flotilla_rpc::Tls;
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use crate::append_stream::{self, Ends};
use crate::types::{decode, encode, Member, NodeId, Snapshot, TypeConfig, Vote};

type StreamItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Opens and caches mutual-TLS channels to peers.
#[derive(Clone)]
pub struct Network {
    id: NodeId,
    cluster_id: String,
    tls: Tls,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Network {
    pub fn new(id: NodeId, cluster_id: String, tls: Tls) -> Self {
        Self {
            id,
            cluster_id,
            tls,
            channels: Arc::default(),
        }
    }

    /// A channel to `addr`, shared by every caller.
    pub fn channel(&self, addr: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(addr.to_string())
            .or_insert_with(|| {
                // Addresses come from membership, which only ever holds `host:port` strings we
                // formatted; an unparsable one would be a bug.
                self.tls
                    .channel(addr, None)
                    .expect("peer address is a valid URI authority")
            })
            .clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            id: self.id,
            target,
            cluster_id: self.cluster_id.clone(),
            client: RaftClient::new(self.channel(&node.addr))
                .max_decoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES),
        }
    }
}

/// The connection to one peer.
pub struct Peer {
    id: NodeId,
    target: NodeId,
    cluster_id: String,
    client: RaftClient<Channel>,
}

pub(crate) fn status_to_rpc(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::from_string(status))
        }
        _ => RPCError::Network(NetworkError::from_string(status)),
    }
}

impl Peer {
    async fn call<Req, Resp, F, Fut>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, pb::RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftPayload>, tonic::Status>>,
    {
        let payload = pb::RaftPayload {
            cluster_id: self.cluster_id.clone(),
            data: encode(req),
        };
        let ttl = option.hard_ttl();
        let resp = match tokio::time::timeout(ttl, send(self.client.clone(), payload)).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => return Err(status_to_rpc(status)),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        decode(&resp.data).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!("decode response: {e}")))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = std::path::PathBuf;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RPCTypes::AppendEntries,
            &rpc,
            &option,
            |mut c, p| async move { c.append_entries(p).await },
        )
        .await
    }

    /// One gRPC stream per replication session, pipelined (see [`crate::append_stream`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let ends = Ends {
            id: self.id,
            target: self.target,
        };
        // Like the other calls, a follower gets the whole interval to answer.
        let opened = append_stream::open(
            self.client.clone(),
            self.cluster_id.clone(),
            input,
            option.hard_ttl(),
            ends,
        );
        Box::pin(async move {
            let results: BoxStream<'s, StreamItem> = opened.await?;
            Ok(results)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, &rpc, &option, |mut c, p| async move {
            c.vote(p).await
        })
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RPCTypes::Vote, &rpc, &option, |mut c, p| async move {
            c.pre_vote(p).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RPCTypes::TransferLeader,
            &req,
            &option,
            |mut c, p| async move { c.transfer_leader(p).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = tokio::fs::File::open(&snapshot.snapshot)
            .await
            .map_err(|e| {
                StreamingError::Network(NetworkError::from_string(format!("open snapshot: {e}")))
            })?;
        let first = pb::SnapshotChunk {
            cluster_id: self.cluster_id.clone(),
            vote: encode(&vote),
            meta: encode(&snapshot.meta),
            data: vec![],
            done: false,
        };
        let cluster_id = self.cluster_id.clone();
        // Read the file a chunk at a time; the last chunk is marked `done`.
        let rest = futures::stream::unfold(Some(file), move |file| {
            let cluster_id = cluster_id.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            tracing::warn!(?e, "reading snapshot to send failed");
                            return None;
                        }
                    }
                }
                buf.truncate(filled);
                let done = filled < SNAPSHOT_CHUNK;
                let chunk = pb::SnapshotChunk {
                    cluster_id,
                    data: buf,
                    done,
                    ..Default::default()
                };
                Some((chunk, if done { None } else { Some(file) }))
            }
        });
        let stream = futures::stream::iter([first]).chain(rest);
        let mut client = self.client.clone();
        let send = async move { client.install_snapshot(stream).await };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            resp = send => {
                let resp = resp.map_err(|s| match status_to_rpc(s) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => StreamingError::Network(NetworkError::from_string(other)),
                })?;
                decode(&resp.into_inner().data)
                    .map_err(|e| StreamingError::Network(NetworkError::from_string(format!("decode response: {e}"))))
            }
        }
    }
}
