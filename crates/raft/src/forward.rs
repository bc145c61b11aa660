//! Forwarding proposals from a follower to the leader, batched.
//!
//! Every write that reaches a follower goes to the leader. One RPC per write would cost a whole
//! HTTP/2 stream each; instead each leader address gets a queue, and a task sends what has
//! queued up as one `ProposeForwarded` call. With few writes in flight a batch holds one
//! proposal (no added latency); under load, while [`MAX_IN_FLIGHT`] batches are on the wire,
//! new proposals gather into the next one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_rpc::pb;
use flotilla_rpc::pb::store_client::StoreClient;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::network::Network;

/// Batches on the wire to one leader at a time.
const MAX_IN_FLIGHT: usize = 4;
/// Proposals in one batch at most.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<pb::ProposeResponse, Status>>;

struct Pending {
    ops: Vec<pb::Op>,
    reply: Reply,
}

#[derive(Clone)]
pub(crate) struct Forwarder {
    network: Network,
    timeout: Duration,
    shutdown: CancellationToken,
    queues: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>>,
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
        let (reply, answer) = oneshot::channel();
        let queued = self.queue(addr).send(Pending { ops, reply });
        async move {
            queued.map_err(|_| Status::unavailable("this node is shutting down"))?;
            answer
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("this node is shutting down")))
        }
    }

    fn queue(&self, addr: &str) -> mpsc::UnboundedSender<Pending> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = queues.get(addr).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let client = StoreClient::new(self.network.channel(addr))
            .max_decoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flotilla_rpc::MAX_MESSAGE_BYTES);
        tokio::spawn(send_batches(
            client,
            rx,
            self.timeout,
            self.shutdown.clone(),
        ));
        queues.insert(addr.to_string(), tx.clone());
        tx
    }
}

async fn send_batches(
    client: StoreClient<tonic::transport::Channel>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Wait for a slot first: proposals arriving meanwhile join the next batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            p = queue.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut client = client.clone();
        tokio::spawn(async move {
            let (replies, proposals): (Vec<Reply>, Vec<pb::ProposeRequest>) = batch
                .into_iter()
                .map(|p| (p.reply, pb::ProposeRequest { ops: p.ops }))
                .unzip();
            let call = client.propose_forwarded(pb::ProposeForwardedRequest { proposals });
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(resp)) => {
                    let results = resp.into_inner().results;
                    if results.len() == replies.len() {
                        Ok(results)
                    } else {
                        Err(Status::internal(format!(
                            "the leader answered {} of {} forwarded proposals",
                            results.len(),
                            replies.len()
                        )))
                    }
                }
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded(
                    "the leader did not answer forwarded proposals in time",
                )),
            };
            match answer {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}
