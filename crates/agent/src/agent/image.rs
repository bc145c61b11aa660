//! A container's image before it is created: here already, fetched (from a peer or its
//! registry, with the pod's `imagePullSecrets`), or why not, as the kubelet says it:
//! `ErrImagePull`, then `ImagePullBackOff` until the next try, `ErrImageNeverPulled`.

use std::time::{Duration, SystemTime};

use flotilla_runtime::images::ImageConfig;
use flotilla_runtime::registry::{credentials_for, Credentials, Reference};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::env::Lookup;
use crate::images::Outcome;
use crate::plan::PodMemory;

use super::pods::Replica;
use super::{Agent, Retry};

/// How often a container waiting for its image looks again.
const PULL_POLL: Duration = Duration::from_millis(250);
const ERR_IMAGE_PULL: &str = "ErrImagePull";
const BACK_OFF: &str = "ImagePullBackOff";

impl Agent {
    /// The credentials the pod's `imagePullSecrets` hold for `image`'s registry.
    fn pull_credentials(&self, pod: &Pod, image: &str) -> Option<Credentials> {
        let registry = Reference::parse(image).ok()?.registry;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let replica = Replica(self.shared.ctx.engine.as_ref());
        let secrets = pod.spec.as_ref()?.image_pull_secrets.as_ref()?;
        secrets.iter().find_map(|s| {
            let data = replica.secret(namespace, &s.name)?;
            let config = data.get(".dockerconfigjson").or(data.get(".dockercfg"))?;
            credentials_for(config, &registry)
        })
    }

    /// `c`'s image if it is here; otherwise its waiting reason is set in `memory` (with when
    /// to look again) and the answer is `None`.
    pub(super) async fn container_image(
        &self,
        pod: &Pod,
        c: &Container,
        memory: &mut PodMemory,
        now: SystemTime,
    ) -> Result<Option<ImageConfig>, Retry> {
        let image = c.image.clone().unwrap_or_default();
        let name = c.name.as_str();
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let mut report = None;
        if let (Some(images), false) = (&self.shared.config.images, policy == "Never") {
            let waiter = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            let credentials = self.pull_credentials(pod, &image);
            let m = memory.containers.entry(name.to_string()).or_default();
            let was = m.waiting.as_ref().map(|(r, _)| r.clone());
            match images.ensure(&image, policy, credentials, &waiter) {
                Outcome::Ready(r) => report = r,
                Outcome::Pulling => {
                    if !m.pulling {
                        m.pulling = true;
                        self.note(
                            pod,
                            Some(name),
                            "Pulling",
                            &format!("Pulling image \"{image}\""),
                        );
                    }
                    if was.as_deref() != Some(BACK_OFF) {
                        m.waiting = None;
                    }
                    m.retry_at = Some(now + PULL_POLL);
                    return Ok(None);
                }
                Outcome::Failed { message, retry_at } => {
                    // A pull this container waited for has just failed: ErrImagePull again.
                    let just_failed = std::mem::take(&mut m.pulling);
                    let backing_off =
                        was.as_deref() == Some(ERR_IMAGE_PULL) || was.as_deref() == Some(BACK_OFF);
                    if backing_off && !just_failed {
                        let text = format!(
                            "Back-off pulling image \"{image}\": {ERR_IMAGE_PULL}: {message}"
                        );
                        if was.as_deref() == Some(ERR_IMAGE_PULL) {
                            self.note(
                                pod,
                                Some(name),
                                "BackOff",
                                &format!("Back-off pulling image \"{image}\""),
                            );
                        }
                        m.waiting = Some((BACK_OFF.into(), text));
                        m.retry_at = Some(retry_at.max(now + PULL_POLL));
                    } else {
                        self.warn(
                            pod,
                            Some(name),
                            "Failed",
                            &format!("Failed to pull image \"{image}\": {message}"),
                        );
                        self.warn(
                            pod,
                            Some(name),
                            "Failed",
                            &format!("Error: {ERR_IMAGE_PULL}"),
                        );
                        m.waiting = Some((ERR_IMAGE_PULL.into(), message));
                        // The status shows ErrImagePull for a moment, then the back-off.
                        m.retry_at = Some(now + Duration::from_secs(1));
                    }
                    return Ok(None);
                }
            }
        }
        let m = memory.containers.entry(name.to_string()).or_default();
        m.pulling = false;
        let Some(config) = self.shared.runtime.image(&image).await? else {
            let message = if policy == "Never" {
                format!("Container image \"{image}\" is not present with pull policy of Never")
            } else {
                format!("Container image \"{image}\" is not present on this node, which pulls none")
            };
            let reason = if policy == "Never" {
                "ErrImageNeverPulled"
            } else {
                ERR_IMAGE_PULL
            };
            if m.waiting
                .as_ref()
                .map(|(r, msg)| (r.as_str(), msg.as_str()))
                != Some((reason, message.as_str()))
            {
                self.warn(pod, Some(name), "Failed", &message);
            }
            m.waiting = Some((reason.into(), message));
            m.retry_at = Some(now + Duration::from_secs(10));
            return Ok(None);
        };
        match report {
            Some(r) => {
                let mut text = format!(
                    "Successfully pulled image \"{image}\" in {:.3}s from {} ({} bytes fetched)",
                    r.took.as_secs_f64(),
                    r.source,
                    r.bytes
                );
                if r.bytes == 0 {
                    text.push_str(": every layer was here already");
                }
                for note in &r.notes {
                    self.warn(pod, Some(name), "PullRetried", note);
                }
                self.note(pod, Some(name), "Pulled", &text);
            }
            None => self.note(
                pod,
                Some(name),
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            ),
        }
        Ok(Some(config))
    }
}
