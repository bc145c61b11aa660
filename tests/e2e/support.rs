//! Shared workload pieces: a writer that records what was acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_rpc::StoreClient;
use flotilla_store::{Command, Op};

/// Acknowledged writes: key → revision it was applied at.
pub type Acked = Arc<Mutex<BTreeMap<String, u64>>>;

/// A writer that creates `prefix/<n>` keys one after another through rotating nodes. Each key is
/// written as a batch of `width` keys (`prefix/<n>/<j>`) applied atomically.
pub struct Writer {
    pub acked: Acked,
    /// When each acknowledgement arrived, in order.
    pub acked_at: Arc<Mutex<Vec<Instant>>>,
    pub stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(clients: Vec<StoreClient>, prefix: &str, width: usize) -> Writer {
        let acked: Acked = Arc::default();
        let acked_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = prefix.to_string();
        let handle = tokio::spawn({
            let acked = Arc::clone(&acked);
            let acked_at = Arc::clone(&acked_at);
            let stop = Arc::clone(&stop);
            async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let client = &clients[n % clients.len()];
                    let keys: Vec<String> =
                        (0..width).map(|j| format!("{prefix}/{n:08}/{j}")).collect();
                    let ops = keys
                        .iter()
                        .map(|k| Op::Create {
                            key: k.clone(),
                            value: format!("value of {k}").into_bytes(),
                        })
                        .collect();
                    let result = tokio::time::timeout(
                        Duration::from_secs(20),
                        client.propose(&Command::batch(ops)),
                    )
                    .await;
                    if let Ok(Ok(rev)) = result {
                        acked_at.lock().unwrap().push(Instant::now());
                        let mut a = acked.lock().unwrap();
                        for k in keys {
                            a.insert(k, rev);
                        }
                    }
                    // Failed or unknown outcomes are simply not acknowledged; move on to a new key
                    // (and so to another node).
                    n += 1;
                }
            }
        });
        Writer {
            acked,
            acked_at,
            stop,
            handle,
        }
    }

    /// The longest time between two acknowledgements since `from`.
    pub fn longest_pause_since(&self, from: Instant) -> Duration {
        let at = self.acked_at.lock().unwrap();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for t in at.iter().filter(|t| **t >= from) {
            longest = longest.max(t.duration_since(previous));
            previous = *t;
        }
        longest.max(Instant::now().duration_since(previous))
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond `base` are acknowledged.
    pub async fn wait_acked(&self, at_least: usize, timeout: Duration) -> bool {
        flotilla_tests::wait_until(timeout, || {
            let n = self.acked_count();
            async move { (n >= at_least).then_some(()) }
        })
        .await
        .is_some()
    }

    pub async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("writer task");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Asserts every acknowledged key is on node `client` (local read) at its acknowledged revision.
pub async fn assert_all_present(client: &StoreClient, prefix: &str, acked: &BTreeMap<String, u64>) {
    let items: BTreeMap<String, u64> = client
        .list_all(prefix, false)
        .await
        .expect("list")
        .into_iter()
        .map(|(k, r)| (k, r.mod_revision))
        .collect();
    let mut missing = Vec::new();
    for (k, rev) in acked {
        match items.get(k) {
            Some(r) if r == rev => {}
            other => missing.push(format!("{k}: acked at {rev}, found {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes missing or wrong on {}: {:?}",
        missing.len(),
        acked.len(),
        client.addr(),
        &missing[..missing.len().min(5)]
    );
}
