//! The agent's loop: an informer of the pods bound to this node (the local replica's watch
//! window, no API round trip) queues their keys; a worker takes a pod, observes its runtime
//! state, asks [`plan::next`] for the next step and runs it, until the answer is to wait; then
//! it reports the status computed by [`status::pod_status`] when it changed. A second
//! informer, of configMaps and secrets, queues the pods that use what changed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_controllers::{run_workers, Context, Informer, Next, WorkQueue};
use flotilla_runtime::{PodRuntime, RuntimeError, Status};
use flotilla_store::StoreError;
use flotilla_util::Backoff;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::plan::{self, Observed, PodMemory, Step};
use crate::probe::{ProbeSet, Results};
use crate::report::{Event, Reporter};
use crate::resources::NodeCapacity;
use crate::spec::{self, container_id, sandbox_id};
use crate::volumes::Volumes;

mod containers;
mod fence;
mod image;
mod pods;
mod probes;
mod steps;

use pods::{config_ref, host_network, memory_from_status, parse_pod, uid_of, uses};
/// Store prefixes of what the agent reads.
pub const PODS: &str = "/core/pods/";
const CONFIG_MAPS: &str = "/core/configmaps/";
const SECRETS: &str = "/core/secrets/";

/// How often a pod with running containers is looked at again (exits, volume content): the
/// kubelet's relist period.
pub const RESYNC: Duration = Duration::from_secs(1);

/// What an agent is.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// The node's address (`status.hostIP`).
    pub node_ip: String,
    pub capacity: NodeCapacity,
    /// Where pods' volumes and bundles are kept.
    pub volumes: Volumes,
    /// Pods worked on at once.
    pub workers: usize,
    /// Where images come from when a pod needs one the node lacks; `None`: nowhere.
    pub images: Option<Arc<crate::images::Images>>,
}

/// A pod as the informer keeps it: parsed once.
pub type CachedPod = Arc<Pod>;

struct Shared {
    ctx: Context,
    runtime: Arc<dyn PodRuntime>,
    config: Config,
    pods: Informer<CachedPod>,
    queue: WorkQueue,
    memory: Mutex<HashMap<String, PodMemory>>,
    reporter: Reporter,
    results: Results,
    probes: Mutex<HashMap<(String, String), (u64, ProbeSet)>>,
}

/// The running agent: for tests and the node's status.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

/// What a step's failure does: the pod is looked at again after a while.
#[derive(Debug)]
struct Retry(String);

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RuntimeError> for Retry {
    fn from(e: RuntimeError) -> Self {
        Retry(e.to_string())
    }
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        Retry(e.to_string())
    }
}

impl From<std::io::Error> for Retry {
    fn from(e: std::io::Error) -> Self {
        Retry(e.to_string())
    }
}

impl Agent {
    /// Starts the agent: its informers, the status reporter, the cleanup of what belongs to
    /// no pod, and its workers, until `stop`.
    pub async fn start(
        ctx: Context,
        runtime: Arc<dyn PodRuntime>,
        config: Config,
        stop: CancellationToken,
    ) -> Agent {
        let queue = WorkQueue::new(Backoff::doubling(
            Duration::from_millis(200),
            Duration::from_secs(10),
        ));
        let node = config.node_name.clone();
        let pods = Informer::builder([PODS], move |_, r| parse_pod(&node, r))
            .on_change({
                let queue = queue.clone();
                move |c| queue.add(c.key)
            })
            .build();
        let configs = Informer::builder([CONFIG_MAPS, SECRETS], |_, _| Some(()))
            .batch(Duration::from_millis(100))
            .on_change({
                let queue = queue.clone();
                let pods = pods.clone();
                move |c| {
                    let Some((ns, kind, name)) = config_ref(c.key) else {
                        return;
                    };
                    for p in pods.list() {
                        if p.object.metadata.namespace.as_deref() == Some(ns)
                            && uses(&p.object, kind, name)
                        {
                            queue.add(p.key.clone());
                        }
                    }
                }
            })
            .build();
        let reporter = Reporter::start(
            Arc::clone(&ctx.engine),
            Arc::clone(&ctx.proposer),
            config.node_name.clone(),
            stop.clone(),
        );
        let agent = Agent {
            shared: Arc::new(Shared {
                ctx: ctx.clone(),
                runtime,
                config,
                pods: pods.clone(),
                queue: queue.clone(),
                memory: Mutex::new(HashMap::new()),
                reporter,
                results: Results::default(),
                probes: Mutex::new(HashMap::new()),
            }),
        };
        pods.spawn(Arc::clone(&ctx.engine), stop.clone(), "agent");
        configs.spawn(Arc::clone(&ctx.engine), stop.clone(), "agent");
        let this = agent.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = pods.synced() => {}
            }
            if let Err(e) = this.remove_orphans().await {
                tracing::warn!(error = %e, "cannot clean up what belongs to no pod");
            }
            tokio::spawn(this.clone().run_fence(stop.clone()));
            let workers = this.shared.config.workers;
            let reconcile = {
                let this = this.clone();
                move |key: String| {
                    let this = this.clone();
                    async move { this.reconcile(&key).await }
                }
            };
            run_workers("agent", queue, workers, stop, reconcile).await;
        });
        agent
    }

    /// Event `reason` of kind Warning about `pod` (and one of its containers).
    fn warn(&self, pod: &Pod, container: Option<&str>, reason: &str, message: &str) {
        self.shared
            .reporter
            .event(Event::warning(pod, container, reason, message));
    }

    /// Event `reason` of kind Normal about `pod` (and one of its containers).
    fn note(&self, pod: &Pod, container: Option<&str>, reason: &str, message: &str) {
        self.shared
            .reporter
            .event(Event::normal(pod, container, reason, message));
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodMemory>> {
        self.shared.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the sandboxes, containers and volumes of pods this node no longer has (deleted
    /// while it was down): their uids are not among its pods'.
    async fn remove_orphans(&self) -> Result<(), Retry> {
        let rt = &self.shared.runtime;
        let uids: std::collections::HashSet<String> = self
            .shared
            .pods
            .list()
            .iter()
            .map(|p| uid_of(&p.object))
            .collect();
        for sandbox in rt.sandboxes().await? {
            if !uids.contains(&sandbox) {
                tracing::info!(%sandbox, "removing the sandbox of a pod that is gone");
                self.tear_down(&sandbox).await?;
            }
        }
        for c in rt.containers().await? {
            let uid = c.split('_').next().unwrap_or_default();
            if !uids.contains(uid) {
                rt.delete_container(&c).await?;
            }
        }
        for uid in self.shared.config.volumes.pods() {
            if !uids.contains(&uid) {
                self.shared.config.volumes.remove(&uid)?;
            }
        }
        Ok(())
    }

    /// Removes everything of pod `uid` from the node.
    async fn tear_down(&self, uid: &str) -> Result<(), Retry> {
        let rt = &self.shared.runtime;
        rt.delete_sandbox(&sandbox_id(uid)).await?;
        let prefix = format!("{uid}_");
        for c in rt.containers().await? {
            if c.starts_with(&prefix) {
                rt.delete_container(&c).await?;
            }
        }
        self.shared.config.volumes.remove(uid)?;
        Ok(())
    }

    /// A pod's address: its sandbox's, or the node's for a `hostNetwork` pod.
    fn pod_ip(&self, pod: &Pod, sandbox_ip: Ipv4Addr) -> Ipv4Addr {
        if host_network(pod) {
            self.shared
                .config
                .node_ip
                .parse()
                .unwrap_or(Ipv4Addr::UNSPECIFIED)
        } else {
            sandbox_ip
        }
    }

    async fn observe(&self, pod: &Pod, uid: &str) -> Result<Observed, Retry> {
        let rt = &self.shared.runtime;
        let mut observed = Observed {
            sandbox: rt
                .sandbox(&sandbox_id(uid))
                .await?
                .map(|s| self.pod_ip(pod, s.ip)),
            ..Observed::default()
        };
        for c in spec::all_containers(pod) {
            if let Some(state) = rt.container(&container_id(uid, &c.name)).await? {
                observed.containers.insert(c.name.clone(), state);
            }
        }
        Ok(observed)
    }

    async fn reconcile(&self, key: &str) -> Result<Next, Retry> {
        let Some(cached) = self.shared.pods.get(key) else {
            // Deleted from the store (or moved off this node): nothing of it may remain.
            let gone = self.memory().remove(key);
            self.shared.results.forget(key);
            self.stop_probes(key, None);
            if let Some(m) = gone {
                if !m.finished {
                    self.tear_down(&m.uid).await?;
                }
            }
            return Ok(Next::Done);
        };
        let pod = &cached.object;
        let uid = uid_of(pod);
        let (known, replaced) = {
            let mut all = self.memory();
            match all.get(key) {
                Some(m) if m.uid == uid => (Some(m.clone()), None),
                Some(_) => (None, all.remove(key).map(|m| m.uid)),
                None => (None, None),
            }
        };
        if let Some(old) = replaced {
            // A new pod of the same name: the old one's remains go first.
            self.stop_probes(key, None);
            self.tear_down(&old).await?;
        }
        let mut memory = known.unwrap_or_else(|| memory_from_status(pod));
        let result = self.drive(key, pod, &uid, &mut memory).await;
        self.memory().insert(key.to_string(), memory.clone());
        let wait = result?;
        let observed = self.observe(pod, &uid).await?;
        if memory.volumes_ready && memory.termination.is_none() && !observed.containers.is_empty() {
            // Keep configMap and secret files current while the pod runs (once a round).
            self.refresh_volumes(pod, &uid);
        }
        self.sync_probes(key, pod, &uid, &observed, &memory);
        self.report_backoffs(pod, &observed, &mut memory);
        self.memory().insert(key.to_string(), memory.clone());
        if !memory.finished {
            let now = self.shared.ctx.clock.now();
            let status = crate::status::pod_status(
                pod,
                &observed,
                &memory,
                &self.shared.config.node_ip,
                now,
            );
            let current = pod
                .status
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            if status != current {
                self.shared.reporter.status(key, &uid, status);
            }
        }
        let now = self.shared.ctx.clock.now();
        let running = observed
            .containers
            .values()
            .any(|s| s.status != Status::Stopped);
        let mut next = if running || memory.termination.is_some() {
            Some(RESYNC)
        } else {
            None
        };
        if let Some(at) = wait {
            let d = at.duration_since(now).unwrap_or_default();
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        Ok(match next {
            Some(d) => Next::After(d.max(Duration::from_millis(10))),
            None => Next::Done,
        })
    }

    /// Runs steps until the plan says to wait; returns until when.
    async fn drive(
        &self,
        key: &str,
        pod: &Pod,
        uid: &str,
        memory: &mut PodMemory,
    ) -> Result<Option<SystemTime>, Retry> {
        for _ in 0..64 {
            let observed = self.observe(pod, uid).await?;
            self.apply_probe_results(key, &observed, memory);
            let now = self.shared.ctx.clock.now();
            let step = plan::next(pod, &observed, memory, now);
            tracing::debug!(key, ?step, "agent step");
            match step {
                Step::Wait(at) => return Ok(at),
                step => {
                    self.run_step(key, pod, uid, &observed, memory, step)
                        .await?
                }
            }
        }
        Ok(Some(
            self.shared.ctx.clock.now() + Duration::from_millis(100),
        ))
    }

    /// The pods this agent runs, for tests.
    pub fn pods(&self) -> Vec<String> {
        self.shared.pods.keys()
    }
}
