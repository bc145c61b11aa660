//! The agent's loop: an informer of the pods bound to this node (the local replica's watch
//! window, no API round trip) queues their keys; a worker takes a pod, observes its runtime
//! state, asks [`plan::next`] for the next step and runs it, until the answer is to wait; then
//! it reports the status computed by [`status::pod_status`] when it changed. A second
//! informer, of configMaps and secrets, queues the pods that use what changed.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_api::meta::parse_rfc3339;
use flotilla_controllers::{run_workers, Context, Informer, Next, WorkQueue};
use flotilla_runtime::{ContainerRequest, PodRuntime, RuntimeError, SandboxRequest, Status};
use flotilla_store::{Record, StoreError};
use flotilla_sys::Signal;
use flotilla_util::Backoff;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::env::{self, ConfigError, Lookup};
use crate::plan::{self, ContainerMemory, Observed, PodMemory, Step, Terminated, Termination};
use crate::probe::{self, ProbeSet, Results};
use crate::report::{Event, Reporter};
use crate::resources::NodeCapacity;
use crate::restart::{terminated_reason, RESTART_BACKOFF};
use crate::spec::{self, container_id, sandbox_id};
use crate::volumes::{self, Content, Volumes};

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

fn parse_pod(node: &str, record: &Record) -> Option<CachedPod> {
    let pod: Pod = serde_json::from_slice(&record.value).ok()?;
    let mine = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    mine.then(|| Arc::new(pod))
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// `(namespace, kind, name)` of a configMap or secret key.
fn config_ref(key: &str) -> Option<(&str, &str, &str)> {
    let (kind, rest) = if let Some(r) = key.strip_prefix(CONFIG_MAPS) {
        ("configmap", r)
    } else {
        ("secret", key.strip_prefix(SECRETS)?)
    };
    let (ns, name) = rest.split_once('/')?;
    Some((ns, kind, name))
}

/// Whether `pod` uses configMap or secret `name` (env, envFrom, volumes).
fn uses(pod: &Pod, kind: &str, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let env = spec::all_containers(pod).any(|c| {
        c.env.iter().flatten().any(|e| {
            let from = e.value_from.as_ref();
            match kind {
                "configmap" => from
                    .and_then(|f| f.config_map_key_ref.as_ref())
                    .is_some_and(|r| r.name == name),
                _ => from
                    .and_then(|f| f.secret_key_ref.as_ref())
                    .is_some_and(|r| r.name == name),
            }
        }) || c.env_from.iter().flatten().any(|f| match kind {
            "configmap" => f.config_map_ref.as_ref().is_some_and(|r| r.name == name),
            _ => f.secret_ref.as_ref().is_some_and(|r| r.name == name),
        })
    });
    env || spec.volumes.iter().flatten().any(|v| match kind {
        "configmap" => {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == name))
                })
        }
        _ => {
            v.secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref() == Some(name))
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.secret.as_ref().is_some_and(|c| c.name == name))
                })
        }
    })
}

/// The replica's configMaps and secrets, read when a container or volume needs them.
struct Replica<'a>(&'a dyn flotilla_store::Engine);

impl Replica<'_> {
    fn data(&self, key: &str, binary: bool) -> Option<BTreeMap<String, Vec<u8>>> {
        let record = self.0.get(key).ok()?.1?;
        let object: Value = serde_json::from_slice(&record.value).ok()?;
        let mut out = BTreeMap::new();
        for (k, v) in object["data"].as_object().into_iter().flatten() {
            let text = v.as_str().unwrap_or_default();
            let bytes = if binary {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_default()
            } else {
                text.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
        if !binary {
            for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                out.insert(k.clone(), bytes);
            }
        }
        Some(out)
    }
}

impl Lookup for Replica<'_> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.data(&format!("{CONFIG_MAPS}{namespace}/{name}"), false)
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.data(&format!("{SECRETS}{namespace}/{name}"), true)
    }
}

/// The memory of a pod first seen by this agent (a restart): what its reported status says.
fn memory_from_status(pod: &Pod) -> PodMemory {
    let mut memory = PodMemory {
        uid: uid_of(pod),
        ..PodMemory::default()
    };
    let Some(status) = &pod.status else {
        return memory;
    };
    memory.start_time = status
        .start_time
        .as_ref()
        .and_then(|t| parse_rfc3339(&t.0.to_string()));
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for s in all {
        let last = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| Terminated {
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_default(),
                started_at: t
                    .started_at
                    .as_ref()
                    .and_then(|x| parse_rfc3339(&x.0.to_string())),
                finished_at: t
                    .finished_at
                    .as_ref()
                    .and_then(|x| parse_rfc3339(&x.0.to_string())),
                container_id: t.container_id.clone().unwrap_or_default(),
            });
        let restarts = s.restart_count.max(0) as u32;
        memory.containers.insert(
            s.name.clone(),
            ContainerMemory {
                restart_count: restarts,
                restarts_in_a_row: restarts,
                last_terminated: last,
                ready: s.ready,
                started: s.started.unwrap_or(false),
                image_id: s.image_id.clone(),
                ..ContainerMemory::default()
            },
        );
    }
    memory
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_else(|| "pod".into());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    h
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

struct ProbeReport {
    queue: WorkQueue,
    reporter: Reporter,
    pods: Informer<CachedPod>,
}

impl probe::Report for ProbeReport {
    fn changed(&self, key: &str) {
        self.queue.add(key);
    }

    fn unhealthy(&self, key: &str, container: &str, message: &str) {
        if let Some(pod) = self.pods.get(key) {
            self.reporter.event(Event::warning(
                &pod.object,
                Some(container),
                "Unhealthy",
                message,
            ));
        }
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
            if memory.volumes_ready && observed.sandbox.is_some() && !observed.containers.is_empty()
            {
                // Keep configMap and secret files current while the pod runs.
                if memory.termination.is_none() {
                    self.refresh_volumes(pod, uid, memory);
                }
            }
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

    /// Event `BackOff`, once per wait, for each container waiting in a crash loop.
    fn report_backoffs(&self, pod: &Pod, observed: &Observed, memory: &mut PodMemory) {
        let now = self.shared.ctx.clock.now();
        let policy = plan::restart_policy(pod);
        for (name, state) in &observed.containers {
            let m = memory.containers.entry(name.clone()).or_default();
            let waiting = matches!(
                plan::restart_decision(policy, state, m, now),
                crate::restart::Restart::At(_)
            );
            if waiting && m.backoff_reported != Some(m.restart_count) {
                m.backoff_reported = Some(m.restart_count);
                self.shared.reporter.event(Event::warning(
                    pod,
                    Some(name),
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        memory.uid
                    ),
                ));
            }
        }
    }

    fn apply_probe_results(&self, key: &str, observed: &Observed, memory: &mut PodMemory) {
        for (name, state) in &observed.containers {
            if state.status != Status::Running {
                continue;
            }
            let instance = instance_of(state);
            if let Some(v) = self.shared.results.get(key, name, instance) {
                let m = memory.containers.entry(name.clone()).or_default();
                m.ready = v.ready;
                m.started = v.started;
                m.unhealthy = v.unhealthy;
            }
        }
    }

    fn stop_probes(&self, key: &str, keep: Option<&BTreeMap<String, u64>>) {
        let mut probes = self.shared.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.retain(|(k, name), (instance, _)| {
            k != key || keep.is_some_and(|keep| keep.get(name) == Some(instance))
        });
    }

    /// Starts the probes of running container instances that have none yet, and stops those
    /// of instances that no longer run.
    fn sync_probes(
        &self,
        key: &str,
        pod: &Pod,
        uid: &str,
        observed: &Observed,
        memory: &PodMemory,
    ) {
        let running: BTreeMap<String, u64> = if memory.termination.is_some() {
            BTreeMap::new()
        } else {
            observed
                .containers
                .iter()
                .filter(|(_, s)| s.status == Status::Running)
                .map(|(n, s)| (n.clone(), instance_of(s)))
                .collect()
        };
        self.stop_probes(key, Some(&running));
        let ip = observed
            .sandbox
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let mut probes = self.shared.probes.lock().unwrap_or_else(|p| p.into_inner());
        for c in containers {
            let Some(instance) = running.get(&c.name).copied() else {
                continue;
            };
            let slot = (key.to_string(), c.name.clone());
            if probes.contains_key(&slot) {
                continue;
            }
            let report = Arc::new(ProbeReport {
                queue: self.shared.queue.clone(),
                reporter: self.shared.reporter.clone(),
                pods: self.shared.pods.clone(),
            });
            let id = container_id(uid, &c.name);
            if let Some(set) = probe::start(
                Arc::clone(&self.shared.runtime),
                self.shared.results.clone(),
                report,
                key.to_string(),
                c,
                id,
                ip.clone(),
                instance,
            ) {
                probes.insert(slot, (instance, set));
            }
        }
    }

    fn volume_contents(&self, pod: &Pod) -> Result<Vec<(String, Content)>, ConfigError> {
        let replica = Replica(self.shared.ctx.engine.as_ref());
        let rt = self.env_runtime(pod, None);
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .map(|v| Ok((v.name.clone(), volumes::content(pod, v, &replica, &rt)?)))
            .collect()
    }

    fn refresh_volumes(&self, pod: &Pod, uid: &str, memory: &mut PodMemory) {
        let has_files = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.config_map.is_some()
                        || v.secret.is_some()
                        || v.projected.is_some()
                        || v.downward_api.is_some()
                })
            });
        if !has_files {
            return;
        }
        if let Ok(contents) = self.volume_contents(pod) {
            for (name, content) in contents {
                if matches!(content, Content::Files { .. }) {
                    if let Err(e) = self.shared.config.volumes.write(uid, &name, &content) {
                        tracing::warn!(volume = %name, error = %e, "cannot update a volume");
                    }
                }
            }
        }
        let _ = memory;
    }

    fn env_runtime(&self, pod: &Pod, ip: Option<Ipv4Addr>) -> env::Runtime {
        env::Runtime {
            pod_ip: ip
                .map(|i| i.to_string())
                .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
                .unwrap_or_default(),
            host_ip: self.shared.config.node_ip.clone(),
            node_name: self.shared.config.node_name.clone(),
        }
    }

    async fn run_step(
        &self,
        key: &str,
        pod: &Pod,
        uid: &str,
        observed: &Observed,
        memory: &mut PodMemory,
        step: Step,
    ) -> Result<(), Retry> {
        let rt = &self.shared.runtime;
        let now = self.shared.ctx.clock.now();
        match step {
            Step::Wait(_) => {}
            Step::CreateSandbox => {
                let id = sandbox_id(uid);
                let host_network = host_network(pod);
                let request = SandboxRequest {
                    hostname: if host_network {
                        self.shared.config.node_name.clone()
                    } else {
                        hostname(pod)
                    },
                    host_network,
                };
                let made = match rt.create_sandbox(&id, &request).await {
                    Err(RuntimeError::SandboxExists(_)) => {
                        // Half made by an earlier attempt: start over.
                        rt.delete_sandbox(&id).await?;
                        rt.create_sandbox(&id, &request).await
                    }
                    other => other,
                };
                match made {
                    Ok(s) => {
                        memory.ip = Some(self.pod_ip(pod, s.ip));
                        memory.start_time.get_or_insert(now);
                    }
                    Err(e) => {
                        self.shared.reporter.event(Event::warning(
                            pod,
                            None,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {e}"),
                        ));
                        return Err(e.into());
                    }
                }
            }
            Step::PrepareVolumes => {
                let result = self.volume_contents(pod).and_then(|contents| {
                    for (name, content) in &contents {
                        if let Content::HostPath(p) = content {
                            let kind = pod
                                .spec
                                .as_ref()
                                .and_then(|s| s.volumes.as_ref())
                                .and_then(|vs| vs.iter().find(|v| &v.name == name))
                                .and_then(|v| v.host_path.as_ref())
                                .and_then(|h| h.type_.clone())
                                .unwrap_or_default();
                            volumes::check_host_path(p, &kind)?;
                        }
                        self.shared
                            .config
                            .volumes
                            .write(uid, name, content)
                            .map_err(|e| ConfigError(format!("volume {name:?}: {e}")))?;
                    }
                    Ok(())
                });
                match result {
                    Ok(()) => {
                        memory.volumes_ready = true;
                        memory.volumes_error = None;
                    }
                    Err(e) => {
                        if memory.volumes_error.as_deref() != Some(&e.0) {
                            self.shared.reporter.event(Event::warning(
                                pod,
                                None,
                                "FailedMount",
                                &format!("MountVolume.SetUp failed: {e}"),
                            ));
                        }
                        memory.volumes_error = Some(e.0.clone());
                        return Err(Retry(e.0));
                    }
                }
            }
            Step::Run { name } => {
                self.run_container(pod, uid, &name, observed, memory)
                    .await?
            }
            Step::Remove { name } => {
                if let Some(state) = observed.containers.get(&name) {
                    let m = memory.containers.entry(name.clone()).or_default();
                    if let Some(ended) = state.ended {
                        let ran = state
                            .finished_at
                            .zip(state.started_at)
                            .and_then(|(f, s)| f.duration_since(s).ok())
                            .unwrap_or_default();
                        m.last_terminated = Some(Terminated {
                            exit_code: ended.code,
                            reason: terminated_reason(ended.code, ended.oom_killed).into(),
                            started_at: state.started_at,
                            finished_at: state.finished_at,
                            container_id: format!("flotilla://{}", container_id(uid, &name)),
                        });
                        m.restart_count += 1;
                        m.restarts_in_a_row = if ran >= crate::restart::BACKOFF_RESET {
                            1
                        } else {
                            m.restarts_in_a_row + 1
                        };
                    }
                }
                rt.delete_container(&container_id(uid, &name)).await?;
            }
            Step::Restart { name } => {
                let c = find(pod, &name);
                self.shared.reporter.event(Event::normal(
                    pod,
                    Some(&name),
                    "Killing",
                    &format!("Container {name} failed liveness probe, will be restarted"),
                ));
                self.shared.results.handled(key, &name);
                let m = memory.containers.entry(name.clone()).or_default();
                m.unhealthy = false;
                m.ready = false;
                let id = container_id(uid, &name);
                let grace = plan::grace_period(pod);
                if let Some(hook) = c
                    .and_then(|c| c.lifecycle.as_ref())
                    .and_then(|l| l.pre_stop.clone())
                {
                    let ip = observed.sandbox.map(|i| i.to_string()).unwrap_or_default();
                    let _ = tokio::time::timeout(grace, self.run_hook(&id, &ip, c.unwrap(), &hook))
                        .await;
                }
                let _ = rt.kill_container(&id, Signal::SIGTERM).await;
                // Killed for good after the grace period, unless it went.
                let rt2 = Arc::clone(rt);
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + grace;
                    while tokio::time::Instant::now() < deadline {
                        match rt2.container(&id).await {
                            Ok(Some(s)) if s.status != Status::Stopped => {}
                            _ => return,
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = rt2.kill_container(&id, Signal::SIGKILL).await;
                });
                self.shared.queue.add_after(key, Duration::from_millis(200));
            }
            Step::BeginTermination => {
                memory.termination = Some(Termination {
                    deadline: now + plan::grace_period(pod),
                    pre_stop_done: false,
                    term_sent: false,
                    kill_sent: false,
                });
                for (name, s) in &observed.containers {
                    if s.status == Status::Running {
                        self.shared.reporter.event(Event::normal(
                            pod,
                            Some(name),
                            "Killing",
                            &format!("Stopping container {name}"),
                        ));
                    }
                }
            }
            Step::PreStop => {
                let deadline = memory
                    .termination
                    .as_ref()
                    .map(|t| t.deadline)
                    .unwrap_or(now);
                let limit = deadline.duration_since(now).unwrap_or_default();
                let ip = observed.sandbox.map(|i| i.to_string()).unwrap_or_default();
                let hooks = pod
                    .spec
                    .as_ref()
                    .map(|s| s.containers.clone())
                    .unwrap_or_default();
                let runs = hooks.iter().filter_map(|c| {
                    let hook = c.lifecycle.as_ref()?.pre_stop.clone()?;
                    let running = observed
                        .containers
                        .get(&c.name)
                        .is_some_and(|s| s.status == Status::Running);
                    running.then(|| {
                        let id = container_id(uid, &c.name);
                        let ip = ip.clone();
                        async move {
                            if let Err(e) = self.run_hook(&id, &ip, c, &hook).await {
                                self.shared.reporter.event(Event::warning(
                                    pod,
                                    Some(&c.name),
                                    "FailedPreStopHook",
                                    &format!("PreStopHook failed: {e}"),
                                ));
                            }
                        }
                    })
                });
                let _ = tokio::time::timeout(limit, futures::future::join_all(runs)).await;
                if let Some(t) = &mut memory.termination {
                    t.pre_stop_done = true;
                }
            }
            Step::Signal { kill } => {
                let signal = if kill {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                };
                for (name, s) in &observed.containers {
                    let id = container_id(uid, name);
                    match s.status {
                        Status::Running => {
                            if let Err(e) = rt.kill_container(&id, signal).await {
                                tracing::debug!(%id, error = %e, "signal");
                            }
                        }
                        // Never started: nothing to stop gracefully.
                        Status::Created => rt.delete_container(&id).await?,
                        Status::Stopped => {}
                    }
                }
                if let Some(t) = &mut memory.termination {
                    if kill {
                        t.kill_sent = true;
                    } else {
                        t.term_sent = true;
                    }
                }
            }
            Step::TearDown => {
                self.stop_probes(key, None);
                self.tear_down(uid).await?;
                memory.ip = None;
            }
            Step::Finish => {
                self.finish(key, uid).await?;
                memory.finished = true;
            }
        }
        Ok(())
    }

    /// Deletes the pod's object, if it is still this pod.
    async fn finish(&self, key: &str, uid: &str) -> Result<(), Retry> {
        for _ in 0..10 {
            let Some(record) = self.shared.ctx.engine.get(key)?.1 else {
                return Ok(());
            };
            let object: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
            if object["metadata"]["uid"] != uid {
                return Ok(());
            }
            match self
                .shared
                .ctx
                .proposer
                .propose(flotilla_store::Command::delete(
                    key,
                    Some(record.mod_revision),
                ))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Retry(format!("{key} kept changing while being deleted")))
    }

    /// Runs a lifecycle hook (exec or httpGet) against container `id`.
    async fn run_hook(
        &self,
        id: &str,
        pod_ip: &str,
        c: &Container,
        hook: &LifecycleHandler,
    ) -> Result<(), String> {
        let probe = k8s_openapi::api::core::v1::Probe {
            exec: hook.exec.clone(),
            http_get: hook.http_get.clone(),
            tcp_socket: hook.tcp_socket.clone(),
            timeout_seconds: Some(30),
            ..Default::default()
        };
        if let Some(sleep) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            return Ok(());
        }
        match probe::run_once(self.shared.runtime.as_ref(), c, id, pod_ip, &probe).await {
            probe::Outcome::Success => Ok(()),
            probe::Outcome::Failure(m) => Err(m),
        }
    }

    /// Creates and starts container `name`: its image, environment, mounts and config; a
    /// failure is its waiting reason, retried after a backoff.
    async fn run_container(
        &self,
        pod: &Pod,
        uid: &str,
        name: &str,
        observed: &Observed,
        memory: &mut PodMemory,
    ) -> Result<(), Retry> {
        let rt = &self.shared.runtime;
        let now = self.shared.ctx.clock.now();
        let Some(c) = find(pod, name) else {
            return Ok(());
        };
        let image_name = c.image.clone().unwrap_or_default();
        let fail = |memory: &mut PodMemory, reason: &str, message: String, delay: Duration| {
            let m = memory.containers.entry(name.to_string()).or_default();
            let first = m
                .waiting
                .as_ref()
                .map(|(r, msg)| (r.as_str(), msg.as_str()))
                != Some((reason, message.as_str()));
            m.waiting = Some((reason.to_string(), message.clone()));
            m.retry_at = Some(now + delay);
            first
        };
        let image = match rt.image(&image_name).await? {
            Some(i) => i,
            None => {
                let never = c.image_pull_policy.as_deref() == Some("Never");
                let (reason, message) = if never {
                    (
                        "ErrImageNeverPulled",
                        format!(
                            "Container image \"{image_name}\" is not present with pull policy of Never"
                        ),
                    )
                } else {
                    (
                        "ImagePullBackOff",
                        format!(
                            "Back-off pulling image \"{image_name}\": this node has no image {image_name:?} and pulling from registries is not supported yet (import it with `flotilla image import`)"
                        ),
                    )
                };
                if fail(memory, reason, message.clone(), Duration::from_secs(10)) {
                    self.shared
                        .reporter
                        .event(Event::warning(pod, Some(name), "Failed", &message));
                }
                return Ok(());
            }
        };
        let replica = Replica(self.shared.ctx.engine.as_ref());
        let env_rt = self.env_runtime(pod, observed.sandbox.or(memory.ip));
        let config = env::environment(pod, c, &replica, &env_rt, &self.shared.config.capacity)
            .and_then(|env| {
                let mounts = self.mounts(pod, uid, c)?;
                spec::oci_config(pod, c, &image, &env, &mounts)
            });
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                if fail(
                    memory,
                    "CreateContainerConfigError",
                    e.0.clone(),
                    Duration::from_secs(2),
                ) {
                    self.shared.reporter.event(Event::warning(
                        pod,
                        Some(name),
                        "Failed",
                        &format!("Error: {e}"),
                    ));
                }
                return Ok(());
            }
        };
        self.shared.reporter.event(Event::normal(
            pod,
            Some(name),
            "Pulled",
            &format!("Container image \"{image_name}\" already present on machine"),
        ));
        let bundle = self.bundle_dir(uid, name)?;
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), config.to_string())?;
        let id = container_id(uid, name);
        let request = ContainerRequest {
            bundle,
            sandbox: Some(sandbox_id(uid)),
            image: Some(image.manifest.clone()),
        };
        // A program that cannot be executed fails `create` (the runtime looks it up before
        // the container is ready) or `start`: Kubernetes' RunContainerError, a StartError
        // that counts as a restart and backs off like a crash.
        let start_failed = |memory: &mut PodMemory, message: String| {
            let m = memory.containers.entry(name.to_string()).or_default();
            let delay = RESTART_BACKOFF.delay(m.restarts_in_a_row);
            m.restart_count += 1;
            m.restarts_in_a_row += 1;
            m.last_terminated = Some(Terminated {
                exit_code: 128,
                reason: "StartError".into(),
                started_at: None,
                finished_at: Some(now),
                container_id: format!("flotilla://{id}"),
            });
            fail(memory, "RunContainerError", message, delay);
        };
        if let Err(e) = rt.create_container(&id, &request).await {
            let _ = rt.delete_container(&id).await;
            let text = e.to_string();
            if text.contains("exec: \"") {
                let message = format!("failed to start container {name:?}: {text}");
                start_failed(memory, message.clone());
                self.shared.reporter.event(Event::warning(
                    pod,
                    Some(name),
                    "Failed",
                    &format!("Error: {message}"),
                ));
                return Ok(());
            }
            let m = memory.containers.entry(name.to_string()).or_default();
            let delay = RESTART_BACKOFF.delay(m.restarts_in_a_row);
            if fail(memory, "CreateContainerError", text, delay) {
                self.shared.reporter.event(Event::warning(
                    pod,
                    Some(name),
                    "Failed",
                    &format!("Error: {e}"),
                ));
            }
            return Ok(());
        }
        self.shared.reporter.event(Event::normal(
            pod,
            Some(name),
            "Created",
            &format!("Created container {name}"),
        ));
        if let Err(e) = rt.start_container(&id).await {
            let _ = rt.delete_container(&id).await;
            let message = format!("failed to start container {name:?}: {e}");
            start_failed(memory, message.clone());
            self.shared.reporter.event(Event::warning(
                pod,
                Some(name),
                "Failed",
                &format!("Error: {message}"),
            ));
            return Ok(());
        }
        self.shared.reporter.event(Event::normal(
            pod,
            Some(name),
            "Started",
            &format!("Started container {name}"),
        ));
        let verdict = probe::initial(c);
        let m = memory.containers.entry(name.to_string()).or_default();
        m.waiting = None;
        m.retry_at = None;
        m.image_id = image.config_digest.clone();
        m.ready = verdict.ready;
        m.started = verdict.started;
        m.unhealthy = false;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
            let ip = observed
                .sandbox
                .or(memory.ip)
                .map(|i| i.to_string())
                .unwrap_or_default();
            if let Err(e) = self.run_hook(&id, &ip, c, &hook).await {
                self.shared.reporter.event(Event::warning(
                    pod,
                    Some(name),
                    "FailedPostStartHook",
                    &format!("PostStartHook failed: {e}"),
                ));
                let _ = rt.kill_container(&id, Signal::SIGKILL).await;
            }
        }
        Ok(())
    }

    fn bundle_dir(&self, uid: &str, name: &str) -> std::io::Result<PathBuf> {
        Ok(self.shared.config.volumes.bundles(uid)?.join(name))
    }

    /// The container's volume mounts, as bind mounts of the volumes' directories.
    fn mounts(&self, pod: &Pod, uid: &str, c: &Container) -> Result<Vec<spec::Mount>, ConfigError> {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes.iter().find(|v| v.name == m.name).ok_or_else(|| {
                ConfigError(format!(
                    "volumeMount {:?} names no volume of the pod",
                    m.name
                ))
            })?;
            let mut source = match &v.host_path {
                Some(h) => PathBuf::from(&h.path),
                None => self.shared.config.volumes.dir(uid, &v.name),
            };
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                    return Err(ConfigError(format!(
                        "subPath {sub:?} must be a relative path inside the volume"
                    )));
                }
                source = source.join(sub);
                if !source.exists() && v.host_path.is_none() {
                    std::fs::create_dir_all(&source)
                        .map_err(|e| ConfigError(format!("subPath {sub:?}: {e}")))?;
                }
            }
            out.push(spec::Mount {
                destination: m.mount_path.clone(),
                source,
                read_only: m.read_only == Some(true)
                    || v.config_map.is_some()
                    || v.secret.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some(),
            });
        }
        Ok(out)
    }

    /// The pods this agent runs, for tests.
    pub fn pods(&self) -> Vec<String> {
        self.shared.pods.keys()
    }
}

fn find<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    spec::all_containers(pod).find(|c| c.name == name)
}

/// A container instance's identity for its probes: its start time.
fn instance_of(state: &flotilla_runtime::ContainerState) -> u64 {
    state
        .started_at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(state.pid as u64, |d| {
            d.as_millis() as u64 ^ ((state.pid as u64) << 48)
        })
}
