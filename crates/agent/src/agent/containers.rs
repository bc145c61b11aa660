//! Running one container: its image, environment, volumes and mounts, its OCI bundle (on a
//! tmpfs), then create and start, with every failure a waiting reason.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_runtime::ContainerRequest;
use flotilla_sys::Signal;
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::env::{self, ConfigError};
use crate::plan::{Observed, PodMemory, Terminated};
use crate::probe;
use crate::restart::RESTART_BACKOFF;
use crate::spec::{self, container_id, sandbox_id};
use crate::volumes::{self, Content};

use super::pods::{find, Replica};
use super::{Agent, Retry};

impl Agent {
    pub(super) fn volume_contents(&self, pod: &Pod) -> Result<Vec<(String, Content)>, ConfigError> {
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

    pub(super) fn refresh_volumes(&self, pod: &Pod, uid: &str) {
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
    }

    pub(super) fn env_runtime(&self, pod: &Pod, ip: Option<Ipv4Addr>) -> env::Runtime {
        env::Runtime {
            pod_ip: ip
                .map(|i| i.to_string())
                .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
                .unwrap_or_default(),
            host_ip: self.shared.config.node_ip.clone(),
            node_name: self.shared.config.node_name.clone(),
        }
    }

    /// Creates and starts container `name`: its image, environment, mounts and config; a
    /// failure is its waiting reason, retried after a backoff.
    pub(super) async fn run_container(
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
        let Some(image) = self.container_image(pod, c, memory, now).await? else {
            return Ok(());
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
                    self.warn(pod, Some(name), "Failed", &format!("Error: {e}"));
                }
                return Ok(());
            }
        };
        let bundle = self.bundle_dir(uid, name)?;
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), config.to_string())?;
        let id = container_id(uid, name);
        let request = ContainerRequest {
            bundle,
            sandbox: Some(sandbox_id(uid)),
            image: Some(image.manifest.clone()),
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin == Some(true) && c.stdin_once == Some(true),
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
                // Never started: the epoch, as Kubernetes reports a StartError.
                started_at: Some(std::time::SystemTime::UNIX_EPOCH),
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
                self.warn(pod, Some(name), "Failed", &format!("Error: {message}"));
                return Ok(());
            }
            let m = memory.containers.entry(name.to_string()).or_default();
            let delay = RESTART_BACKOFF.delay(m.restarts_in_a_row);
            if fail(memory, "CreateContainerError", text, delay) {
                self.warn(pod, Some(name), "Failed", &format!("Error: {e}"));
            }
            return Ok(());
        }
        self.note(
            pod,
            Some(name),
            "Created",
            &format!("Created container {name}"),
        );
        if let Err(e) = rt.start_container(&id).await {
            let _ = rt.delete_container(&id).await;
            let message = format!("failed to start container {name:?}: {e}");
            start_failed(memory, message.clone());
            self.warn(pod, Some(name), "Failed", &format!("Error: {message}"));
            return Ok(());
        }
        self.note(
            pod,
            Some(name),
            "Started",
            &format!("Started container {name}"),
        );
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
                self.warn(
                    pod,
                    Some(name),
                    "FailedPostStartHook",
                    &format!("PostStartHook failed: {e}"),
                );
                let _ = rt.kill_container(&id, Signal::SIGKILL).await;
            }
        }
        Ok(())
    }

    pub(super) fn bundle_dir(&self, uid: &str, name: &str) -> std::io::Result<PathBuf> {
        Ok(self.shared.config.volumes.bundles(uid)?.join(name))
    }

    /// The container's volume mounts, as bind mounts of the volumes' directories.
    pub(super) fn mounts(
        &self,
        pod: &Pod,
        uid: &str,
        c: &Container,
    ) -> Result<Vec<spec::Mount>, ConfigError> {
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
}
