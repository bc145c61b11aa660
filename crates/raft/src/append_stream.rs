//! The leader's side of pipelined replication: openraft's AppendEntries requests go to a
//! follower over one gRPC stream as openraft makes them, without waiting for the previous
//! answer, and the follower's results come back in order on the same stream. One long-lived
//! stream per follower also spares an HTTP/2 stream, its headers and a service dispatch per
//! request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_rpc::pb;
use flotilla_rpc::pb::raft_client::RaftClient;
use futures::{Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError, Timeout};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use openraft::RPCTypes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::network::status_to_rpc;
use crate::types::{decode, encode, NodeId, TypeConfig};

type Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// When each request still unanswered was sent, oldest first. A follower that leaves the
/// oldest unanswered for longer than the time limit is reported as timed out.
#[derive(Default)]
struct Outstanding {
    sent: Mutex<VecDeque<Instant>>,
    more: Notify,
}

impl Outstanding {
    fn sent(&self, at: Instant) {
        self.lock().push_back(at);
        self.more.notify_one();
    }

    fn answered(&self) {
        self.lock().pop_front();
    }

    fn oldest(&self) -> Option<Instant> {
        self.lock().front().copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who is talking to whom, for errors.
#[derive(Clone, Copy)]
pub(crate) struct Ends {
    pub id: NodeId,
    pub target: NodeId,
}

/// Opens the stream and returns the follower's results, one per request of `input`, in order.
/// It ends when `input` ends and every request is answered, or after the first error.
pub(crate) async fn open<S>(
    mut client: RaftClient<Channel>,
    cluster_id: String,
    input: S,
    ttl: Duration,
    ends: Ends,
) -> Result<BoxStream<'static, Item>, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    let outstanding = Arc::new(Outstanding::default());
    let track = Arc::clone(&outstanding);
    let requests = input.map(move |rpc| {
        track.sent(Instant::now());
        pb::RaftPayload {
            cluster_id: cluster_id.clone(),
            data: encode(&rpc),
        }
    });
    let timeout = move || {
        RPCError::Timeout(Timeout {
            action: RPCTypes::AppendEntries,
            id: ends.id,
            target: ends.target,
            timeout: ttl,
        })
    };
    let replies = match tokio::time::timeout(ttl, client.append_stream(requests)).await {
        Err(_) => return Err(timeout()),
        Ok(Err(status)) => return Err(status_to_rpc(status)),
        Ok(Ok(response)) => response.into_inner(),
    };
    let results = futures::stream::unfold(Some(replies), move |replies| {
        let outstanding = Arc::clone(&outstanding);
        async move {
            let mut replies = replies?;
            let reply = loop {
                match outstanding.oldest() {
                    Some(sent) => match tokio::time::timeout_at(sent + ttl, replies.next()).await {
                        Ok(reply) => break reply,
                        Err(_) => return Some((Err(timeout()), None)),
                    },
                    // Nothing is waiting for an answer: no time limit until a request goes out.
                    None => tokio::select! {
                        reply = replies.next() => break reply,
                        () = outstanding.more.notified() => {}
                    },
                }
            };
            let item: Item = match reply? {
                Err(status) => Err(status_to_rpc(status)),
                Ok(payload) => decode(&payload.data).map_err(|e| {
                    RPCError::Network(NetworkError::from_string(format!("decode reply: {e}")))
                }),
            };
            outstanding.answered();
            let go_on = matches!(item, Ok(Ok(_)));
            Some((item, go_on.then_some(replies)))
        }
    });
    Ok(Box::pin(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_unanswered_request_sets_the_deadline() {
        let o = Outstanding::default();
        assert_eq!(o.oldest(), None);
        let t0 = Instant::now();
        o.sent(t0);
        o.sent(t0 + Duration::from_millis(5));
        assert_eq!(o.oldest(), Some(t0));
        o.answered();
        assert_eq!(o.oldest(), Some(t0 + Duration::from_millis(5)));
        o.answered();
        assert_eq!(o.oldest(), None);
        // A request sent while nobody waited leaves a permit, so it is not missed.
        o.sent(t0);
        tokio::time::timeout(Duration::from_secs(10), o.more.notified())
            .await
            .expect("the send was signalled");
    }
}
