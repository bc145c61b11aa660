//! The agent's side of probes: their verdicts merged into a pod's memory, their tasks started
//! and stopped with container instances, and `BackOff` events for crash loops.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_controllers::{Informer, WorkQueue};
use flotilla_runtime::Status;
use k8s_openapi::api::core::v1::Pod;

use crate::plan::{self, Observed, PodMemory};
use crate::probe;
use crate::report::{Event, Reporter};
use crate::spec::container_id;

use super::pods::instance_of;
use super::{Agent, CachedPod};

pub(super) struct ProbeReport {
    pub(super) queue: WorkQueue,
    pub(super) reporter: Reporter,
    pub(super) pods: Informer<CachedPod>,
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
    /// Event `BackOff`, once per wait, for each container waiting in a crash loop.
    pub(super) fn report_backoffs(&self, pod: &Pod, observed: &Observed, memory: &mut PodMemory) {
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
                self.warn(
                    pod,
                    Some(name),
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        memory.uid
                    ),
                );
            }
        }
    }

    pub(super) fn apply_probe_results(
        &self,
        key: &str,
        observed: &Observed,
        memory: &mut PodMemory,
    ) {
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

    pub(super) fn stop_probes(&self, key: &str, keep: Option<&BTreeMap<String, u64>>) {
        let mut probes = self.shared.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.retain(|(k, name), (instance, _)| {
            k != key || keep.is_some_and(|keep| keep.get(name) == Some(instance))
        });
    }

    /// Starts the probes of running container instances that have none yet, and stops those
    /// of instances that no longer run.
    pub(super) fn sync_probes(
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
}
