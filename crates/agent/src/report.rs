//! Status and events go through Raft in batches: what the workers report is gathered for a
//! few milliseconds, a pod's latest status replacing an earlier one, then proposed together.
//! A status is written only if it changed, onto the pod as stored now (its `status` alone), and
//! only while the stored pod is the one it was computed for (same uid).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_controllers::events::{event_object, repeat_command, Involved};
use flotilla_store::{Command, Engine, Proposer, StoreError};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Recent events remembered for counting repeats (the map is cleared beyond this).
const SEEN_EVENTS: usize = 4096;

/// How long reports are gathered before they are written.
const GATHER: Duration = Duration::from_millis(5);

/// An event about a pod, as Kubernetes' kubelet writes them.
#[derive(Clone, Debug)]
pub struct Event {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
    pub kind: &'static str,
    pub reason: String,
    pub message: String,
}

impl Event {
    fn new(
        pod: &Pod,
        container: Option<&str>,
        kind: &'static str,
        reason: &str,
        message: &str,
    ) -> Event {
        Event {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            container: container.map(str::to_string),
            kind,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }

    pub fn normal(pod: &Pod, container: Option<&str>, reason: &str, message: &str) -> Event {
        Event::new(pod, container, "Normal", reason, message)
    }

    pub fn warning(pod: &Pod, container: Option<&str>, reason: &str, message: &str) -> Event {
        Event::new(pod, container, "Warning", reason, message)
    }

    /// What makes two events the same occurrence repeated (counted in one object).
    fn signature(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}/{}",
            self.namespace,
            self.uid,
            self.container.as_deref().unwrap_or(""),
            self.kind,
            self.reason,
            self.message
        )
    }

    /// The Event object, as the kubelet writes it.
    pub fn object(&self, node: &str) -> (String, Value) {
        let involved = Involved {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: self.namespace.clone(),
            name: self.pod.clone(),
            uid: self.uid.clone(),
        };
        let field = self
            .container
            .as_ref()
            .map(|c| format!("spec.containers{{{c}}}"));
        event_object(
            &involved,
            field.as_deref(),
            self.kind,
            &self.reason,
            &self.message,
            "kubelet",
            Some(node),
        )
    }
}

enum Report {
    Status {
        key: String,
        uid: String,
        status: Value,
    },
    Event(Event),
}

/// Where workers send statuses and events. Clones share the writer.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Report>,
}

impl Reporter {
    /// Starts the writer task, until `stop`.
    pub fn start(
        engine: Arc<dyn Engine>,
        proposer: Arc<dyn Proposer>,
        node: String,
        stop: CancellationToken,
    ) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(engine, proposer, node, rx, stop));
        Reporter { tx }
    }

    pub fn status(&self, key: &str, uid: &str, status: Value) {
        let _ = self.tx.send(Report::Status {
            key: key.to_string(),
            uid: uid.to_string(),
            status,
        });
    }

    pub fn event(&self, event: Event) {
        let _ = self.tx.send(Report::Event(event));
    }
}

/// The write of `status` onto the pod at `key` as stored: `None` when it is gone, another
/// pod, or already has that status.
fn status_command(engine: &dyn Engine, key: &str, uid: &str, status: &Value) -> Option<Command> {
    let record = engine.get(key).ok()?.1?;
    let mut object: Value = serde_json::from_slice(&record.value).ok()?;
    if object["metadata"]["uid"] != uid || object["status"] == *status {
        return None;
    }
    object["status"] = status.clone();
    Some(Command::update(
        key,
        serde_json::to_vec(&object).expect("JSON serialises"),
        Some(record.mod_revision),
    ))
}

async fn write_loop(
    engine: Arc<dyn Engine>,
    proposer: Arc<dyn Proposer>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let mut retry: BTreeMap<String, (String, Value)> = BTreeMap::new();
    // Recent events by what they say, for counting repeats into one object.
    let mut seen: HashMap<String, String> = HashMap::new();
    loop {
        let first = if retry.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.recv() => match r { Some(r) => Some(r), None => return },
            }
        } else {
            None
        };
        tokio::time::sleep(GATHER).await;
        let mut statuses = std::mem::take(&mut retry);
        let mut events = Vec::new();
        let mut take = |r: Report| match r {
            Report::Status { key, uid, status } => {
                statuses.insert(key, (uid, status));
            }
            Report::Event(e) => events.push(e),
        };
        if let Some(r) = first {
            take(r);
        }
        while let Ok(r) = rx.try_recv() {
            take(r);
        }
        let writes = statuses.iter().map(|(key, (uid, status))| {
            let engine = Arc::clone(&engine);
            let proposer = Arc::clone(&proposer);
            async move {
                let Some(command) = status_command(engine.as_ref(), key, uid, status) else {
                    return Ok(());
                };
                match proposer.propose(command).await {
                    Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        if seen.len() > SEEN_EVENTS {
            seen.clear();
        }
        let event_commands: Vec<Command> = events
            .iter()
            .map(|e| {
                let signature = e.signature();
                if let Some(key) = seen.get(&signature) {
                    if let Some(command) = repeat_command(engine.as_ref(), key) {
                        return command;
                    }
                }
                let (key, object) = e.object(&node);
                seen.insert(signature, key.clone());
                Command::create(key, object.to_string())
            })
            .collect();
        let event_writes = event_commands.into_iter().map(|command| {
            let proposer = Arc::clone(&proposer);
            async move { proposer.propose(command).await }
        });
        let (results, event_results) = tokio::join!(
            futures::future::join_all(writes),
            futures::future::join_all(event_writes)
        );
        let mut failed = false;
        for ((key, value), result) in statuses.into_iter().zip(results) {
            if let Err(e) = result {
                if !matches!(e, StoreError::Conflict { .. }) {
                    tracing::debug!(%key, error = %e, "cannot write a pod's status yet");
                    failed = true;
                }
                retry.insert(key, value);
            }
        }
        for r in event_results {
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot write an event");
            }
        }
        if failed {
            // No quorum, or no leader yet: not in a tight loop.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
