//! What deleting an object does, as Kubernetes decides it: at once, or marked with a
//! deletion timestamp (finalizers, a scheduled pod's grace period, a namespace). Pure: the API
//! server and the controllers (which delete pods gracefully, as a client would) share it.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::meta::rfc3339;
use crate::Resource;

/// What happens to an object's dependents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    /// The finalizer that makes the collector act on the dependents first, if any.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        }
    }
}

/// `DeleteOptions`, from the body and the query (the query wins, as in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// What a DELETE does to the object read.
#[derive(Debug, PartialEq)]
pub enum Deletion {
    /// Remove it now.
    Remove,
    /// Write it back marked for deletion (deletion timestamp, finalizers, a namespace's phase).
    Mark(Value),
    /// Already marked: nothing to write.
    Unchanged,
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Decides what deleting `object` (a `r`) with `options` at `now` does.
pub fn plan(r: &Resource, object: &Value, options: &DeleteOptions, now: SystemTime) -> Deletion {
    let mut finalizers = finalizers(object);
    let is_pod = r.kind == "Pod" && r.group.is_empty();
    let deleting = !object["metadata"]["deletionTimestamp"].is_null();
    // A forced pod deletion (grace 0) ends a graceful one.
    let forced = is_pod && options.grace_period_seconds == Some(0);
    if deleting && !(forced && finalizers.is_empty()) {
        return Deletion::Unchanged;
    }
    if let Some(f) = options.propagation.finalizer() {
        if !finalizers.iter().any(|x| x == f) {
            finalizers.push(f.to_string());
        }
    }
    let is_namespace = r.kind == "Namespace" && r.group.is_empty();
    let grace = if is_pod && !forced {
        let scheduled = object["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            object["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        let grace = options
            .grace_period_seconds
            .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if scheduled && !finished {
            grace.max(0)
        } else {
            0
        }
    } else {
        0
    };
    if finalizers.is_empty() && grace == 0 && !is_namespace {
        return Deletion::Remove;
    }
    let mut marked = object.clone();
    let at = now + Duration::from_secs(grace as u64);
    let meta = &mut marked["metadata"];
    meta["deletionTimestamp"] = json!(rfc3339(at));
    meta["deletionGracePeriodSeconds"] = json!(grace);
    if finalizers.is_empty() {
        if let Some(m) = meta.as_object_mut() {
            m.remove("finalizers");
        }
    } else {
        meta["finalizers"] = json!(finalizers);
    }
    if is_namespace {
        marked["status"]["phase"] = json!("Terminating");
    }
    Deletion::Mark(marked)
}
