//! Events the control loops write about the objects they manage (`ScalingReplicaSet`,
//! `SuccessfulCreate`, `FailedScheduling`, …), as core/v1 Event objects. The same occurrence
//! repeated is counted in one object (`count`, `lastTimestamp`), as Kubernetes' recorder does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::meta::{new_uid, now_rfc3339};
use flotilla_store::{Command, Engine, Op, Proposer};
use serde_json::{json, Value};

/// Recent events remembered for counting repeats (the map is cleared beyond this).
const SEEN: usize = 4096;

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Involved {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Involved {
    /// The reference to a typed object of `kind` in `api_version`, from its metadata.
    pub fn from_meta(
        api_version: &str,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Involved {
        Involved {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }

    /// Reads the reference from an object's JSON.
    pub fn of(object: &Value) -> Involved {
        let m = &object["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        Involved {
            api_version: s(&object["apiVersion"]),
            kind: s(&object["kind"]),
            namespace: s(&m["namespace"]),
            name: s(&m["name"]),
            uid: s(&m["uid"]),
        }
    }
}

/// The Event object (and its store key) for one occurrence.
pub fn event_object(
    involved: &Involved,
    field_path: Option<&str>,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
) -> (String, Value) {
    let now = now_rfc3339();
    let suffix: String = new_uid().chars().filter(|c| *c != '-').take(16).collect();
    let name = format!("{}.{suffix}", involved.name);
    let namespace = if involved.namespace.is_empty() {
        "default"
    } else {
        &involved.namespace
    };
    let mut reference = json!({
        "kind": involved.kind,
        "namespace": involved.namespace,
        "name": involved.name,
        "uid": involved.uid,
        "apiVersion": involved.api_version,
    });
    if let Some(f) = field_path {
        reference["fieldPath"] = json!(f);
    }
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let object = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": new_uid(),
            "creationTimestamp": now,
        },
        "involvedObject": reference,
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": type_,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or(component),
    });
    (format!("/core/events/{namespace}/{name}"), object)
}

/// The update of the event at `key` for one more occurrence: `count` up, `lastTimestamp` now.
pub fn repeat_command(engine: &dyn Engine, key: &str) -> Option<Command> {
    let record = engine.get(key).ok()?.1?;
    let mut object: Value = serde_json::from_slice(&record.value).ok()?;
    let count = object["count"].as_u64().unwrap_or(1) + 1;
    object["count"] = json!(count);
    object["lastTimestamp"] = json!(now_rfc3339());
    Some(Command::update(
        key,
        serde_json::to_vec(&object).expect("JSON serialises"),
        Some(record.mod_revision),
    ))
}

/// Events one component may write about one object at once, and how fast that allowance comes
/// back: Kubernetes' spam filter (a burst of 25, then one per 5 minutes). A ReplicaSet
/// controller making 1,000 pods writes 25 `SuccessfulCreate` events, not 1,000.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);

/// One object's allowance of events.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: SPAM_BURST,
            at: now,
        }
    }

    /// Takes one event's token at `now`; whether there was one.
    fn take(&mut self, now: Instant) -> bool {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(SPAM_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes events for one component (`deployment-controller`, `default-scheduler`). Clones
/// share what was seen and each object's allowance.
#[derive(Clone)]
pub struct Recorder {
    engine: Arc<dyn Engine>,
    proposer: Arc<dyn Proposer>,
    component: &'static str,
    seen: Arc<Mutex<HashMap<String, String>>>,
    allowance: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl Recorder {
    pub fn new(
        engine: Arc<dyn Engine>,
        proposer: Arc<dyn Proposer>,
        component: &'static str,
    ) -> Recorder {
        Recorder {
            engine,
            proposer,
            component,
            seen: Arc::default(),
            allowance: Arc::default(),
        }
    }

    /// Whether one more event about `involved` may be written now (the spam filter).
    fn allowed(&self, involved: &Involved) -> bool {
        let now = Instant::now();
        let mut allowance = self.allowance.lock().expect("allowance");
        if allowance.len() > SEEN {
            // Full buckets are the same as none.
            allowance.retain(|_, b| {
                b.tokens
                    + now.saturating_duration_since(b.at).as_secs_f64() / SPAM_REFILL.as_secs_f64()
                    < SPAM_BURST
            });
        }
        let key = format!(
            "{}/{}/{}/{}",
            involved.kind, involved.namespace, involved.name, involved.uid
        );
        let allowed = allowance
            .entry(key)
            .or_insert_with(|| Bucket::full(now))
            .take(now);
        if !allowed {
            tracing::debug!(object = %involved.name, "event dropped: too many about one object");
        }
        allowed
    }

    pub async fn normal(&self, involved: &Involved, reason: &str, message: &str) {
        self.record(involved, "Normal", reason, message).await
    }

    pub async fn warning(&self, involved: &Involved, reason: &str, message: &str) {
        self.record(involved, "Warning", reason, message).await
    }

    /// A new event of this component, to be written in the same batch as the change it
    /// describes (a created pod and its `SuccessfulCreate`): one Raft entry for both. `None`
    /// when the spam filter drops it.
    pub fn create_op(
        &self,
        involved: &Involved,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Option<Op> {
        if !self.allowed(involved) {
            return None;
        }
        let (key, object) =
            event_object(involved, None, type_, reason, message, self.component, None);
        Some(Op::Create {
            key,
            value: object.to_string().into_bytes(),
        })
    }

    /// Writes the event (or counts a repeat); a failure is logged, never returned: an event
    /// is worth no retry of the work it describes.
    pub async fn record(&self, involved: &Involved, type_: &str, reason: &str, message: &str) {
        if !self.allowed(involved) {
            return;
        }
        let signature = format!(
            "{}/{}/{}/{type_}/{reason}/{message}",
            involved.namespace, involved.kind, involved.uid
        );
        let known = self.seen.lock().expect("seen").get(&signature).cloned();
        let command = known
            .and_then(|key| repeat_command(self.engine.as_ref(), &key))
            .unwrap_or_else(|| {
                let (key, object) =
                    event_object(involved, None, type_, reason, message, self.component, None);
                let mut seen = self.seen.lock().expect("seen");
                if seen.len() > SEEN {
                    seen.clear();
                }
                seen.insert(signature, key.clone());
                Command::create(key, object.to_string())
            });
        if let Err(e) = self.proposer.propose(command).await {
            tracing::debug!(error = %e, reason, "cannot write an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spam_filter_allows_a_burst_then_one_per_five_minutes() {
        let t0 = Instant::now();
        let mut bucket = Bucket::full(t0);
        let burst = (0..100).filter(|_| bucket.take(t0)).count();
        assert_eq!(burst, 25);
        assert!(!bucket.take(t0 + Duration::from_secs(299)));
        assert!(bucket.take(t0 + Duration::from_secs(301)));
        assert!(!bucket.take(t0 + Duration::from_secs(302)));
        // A long quiet time refills it, but never beyond the burst.
        let later = t0 + Duration::from_secs(3600 * 24);
        assert_eq!((0..100).filter(|_| bucket.take(later)).count(), 25);
    }
}
