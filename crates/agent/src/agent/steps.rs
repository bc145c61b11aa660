//! Running one step of a pod's plan: the sandbox, the volumes, a container's removal or
//! restart, the termination's hooks and signals, the tear-down, the deletion of the object.

use std::sync::Arc;
use std::time::Duration;

use flotilla_runtime::{RuntimeError, SandboxRequest, Status};
use flotilla_store::StoreError;
use flotilla_sys::Signal;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use serde_json::Value;

use crate::env::ConfigError;
use crate::plan::{self, Observed, PodMemory, Step, Terminated, Termination};
use crate::probe;
use crate::restart::terminated_reason;
use crate::spec::{container_id, sandbox_id};
use crate::volumes::{self, Content};

use super::pods::{find, host_network, hostname};
use super::{Agent, Retry};

impl Agent {
    pub(super) async fn run_step(
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
                    dns: super::pods::pod_dns(pod, || {
                        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
                    }),
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
                        self.warn(
                            pod,
                            None,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {e}"),
                        );
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
                            self.warn(
                                pod,
                                None,
                                "FailedMount",
                                &format!("MountVolume.SetUp failed: {e}"),
                            );
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
                self.note(
                    pod,
                    Some(&name),
                    "Killing",
                    &format!("Container {name} failed liveness probe, will be restarted"),
                );
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
                        self.note(
                            pod,
                            Some(name),
                            "Killing",
                            &format!("Stopping container {name}"),
                        );
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
                                self.warn(
                                    pod,
                                    Some(&c.name),
                                    "FailedPreStopHook",
                                    &format!("PreStopHook failed: {e}"),
                                );
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
    pub(super) async fn finish(&self, key: &str, uid: &str) -> Result<(), Retry> {
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
    pub(super) async fn run_hook(
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
}
