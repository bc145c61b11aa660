//! Proposals sent in batches: callers queue one proposal each and await its own answer; a task
//! sends what has queued up as one call. With few writes in flight a batch holds one proposal
//! (no added latency); under load, while [`MAX_IN_FLIGHT`] calls are on the wire, new
//! proposals gather into the next one. Every proposal stays its own Raft entry with its own
//! revision and result: a batch only shares the RPC. Used by a follower forwarding to the
//! leader (`ProposeForwarded`) and by clients (`ProposeMany`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::pb;

/// Calls on the wire at a time.
pub const MAX_IN_FLIGHT: usize = 4;
/// Proposals in one call at most.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<pb::ProposeResponse, Status>>;

struct Pending {
    ops: Vec<pb::Op>,
    reply: Reply,
}

/// One batched call: the proposals in order, answered in the same order.
pub type SendFuture =
    Pin<Box<dyn Future<Output = Result<Vec<pb::ProposeResponse>, Status>> + Send>>;

/// A queue of proposals and the task that sends them; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the sending task (on the current tokio runtime): `send` makes one call of a
    /// batch, `timeout` bounds it, `shutdown` stops the task.
    pub fn start(
        send: impl Fn(Vec<pb::ProposeRequest>) -> SendFuture + Send + Sync + 'static,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Batcher {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(Arc::new(send), rx, timeout, shutdown));
        Batcher { queue }
    }

    /// Whether the task has stopped (shut down, or its runtime is gone).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Queues one proposal; the future answers it.
    pub fn propose(
        &self,
        ops: Vec<pb::Op>,
    ) -> impl Future<Output = Result<pb::ProposeResponse, Status>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send(Pending { ops, reply });
        async move {
            queued.map_err(|_| crate::not_sent("the proposal queue is closed"))?;
            answer
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("the proposal queue is closed")))
        }
    }
}

type SendFn = Arc<dyn Fn(Vec<pb::ProposeRequest>) -> SendFuture + Send + Sync>;

async fn send_batches(
    send: SendFn,
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
        let send = Arc::clone(&send);
        tokio::spawn(async move {
            let (replies, proposals): (Vec<Reply>, Vec<pb::ProposeRequest>) = batch
                .into_iter()
                .map(|p| (p.reply, pb::ProposeRequest { ops: p.ops }))
                .unzip();
            let answer = match tokio::time::timeout(timeout, send(proposals)).await {
                Ok(Ok(results)) if results.len() == replies.len() => Ok(results),
                Ok(Ok(results)) => Err(Status::internal(format!(
                    "{} of {} batched proposals were answered",
                    results.len(),
                    replies.len()
                ))),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded(
                    "batched proposals were not answered in time",
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
