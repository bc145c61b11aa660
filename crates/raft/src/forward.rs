//! Forwarding proposals from a follower to the leader, batched.
//!
//! Every write that reaches a follower goes to the leader. One RPC per write would cost a whole
//! HTTP/2 stream each; instead each leader address gets a [`Batcher`], which sends what has
//! queued up as one `ProposeForwarded` call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_rpc::batch::Batcher;
use flotilla_rpc::pb;
use flotilla_rpc::pb::store_client::StoreClient;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::failpoint;
use crate::network::Network;

#[derive(Clone)]
pub(crate) struct Forwarder {
    network: Network,
    timeout: Duration,
    shutdown: CancellationToken,
    queues: Arc<Mutex<HashMap<String, Batcher>>>,
}

impl Forwarder {
    /// `timeout` bounds each batch's call, so a hung leader cannot hold proposals forever.
    pub fn new(network: Network, timeout: Duration, shutdown: CancellationToken) -> Self {
        Self {
            network,
            timeout,
            shutdown,
            queues: Arc::default(),
        }
    }

    /// Queues one proposal for the leader at `addr`; the future answers it.
    pub fn propose(
        &self,
        addr: &str,
        ops: Vec<pb::Op>,
    ) -> impl Future<Output = Result<pb::ProposeResponse, Status>> + Send + 'static {
        self.queue(addr).propose(ops)
    }

    fn queue(&self, addr: &str) -> Batcher {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = queues.get(addr).filter(|b| !b.is_closed()) {
            return b.clone();
        }
        let client = StoreClient::new(self.network.channel(addr))
            .max_decoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES);
        let batcher = Batcher::start(
            move |proposals| {
                let mut client = client.clone();
                Box::pin(async move {
                    let keys: Vec<String> = if failpoint::is_armed(failpoint::FORWARD_REPLY_LOST) {
                        proposals
                            .iter()
                            .flat_map(|p| flotilla_rpc::command_from_pb(p.ops.clone()))
                            .flat_map(|c| c.ops.into_iter().map(|op| op.key().to_string()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let resp = client
                        .propose_forwarded(pb::ProposeForwardedRequest { proposals })
                        .await?;
                    let lost = failpoint::fire(failpoint::FORWARD_REPLY_LOST, |prefix| {
                        keys.iter().any(|k| k.starts_with(prefix))
                    });
                    if lost {
                        tracing::warn!(
                            "failpoint: the leader's answer to a forwarded batch is lost"
                        );
                        return Err(Status::unavailable(
                            "connection reset (failpoint forward-reply-lost)",
                        ));
                    }
                    Ok(resp.into_inner().results)
                })
            },
            self.timeout,
            self.shutdown.clone(),
        );
        queues.insert(addr.to_string(), batcher.clone());
        batcher
    }
}
