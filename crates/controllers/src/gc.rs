//! The garbage collector: what happens after a DELETE that did not remove the object at once,
//! and to the dependents of deleted owners.
//!
//! - A dependent (an object with `ownerReferences`) whose owners are all gone is deleted
//!   (background propagation). Before acting, the runner reads each owner again: an owner
//!   created after the index saw the dependent is not mistaken for a missing one.
//! - An owner being deleted with the `orphan` finalizer: its reference is removed from each
//!   dependent, then the finalizer.
//! - An owner being deleted with `foregroundDeletion`: its dependents are deleted (in turn in
//!   the foreground), then the finalizer is removed.
//! - An object being deleted whose last finalizer is gone is removed.
//! - A namespace being deleted is emptied, then removed.
//! - An event last seen more than [`EVENT_TTL`] ago is removed.
//! - A pod whose grace period has run out is removed, unless it is bound to a Ready node:
//!   that node's agent removes it once its containers are gone. This is the backstop for
//!   pods no node runs (unbound, or on a node that is gone or not Ready).
//!
//! The collector keeps a slim index of every object ([`Item`]: identity, owners, deletion
//! state, not the object) up to date from the watch window, so a round costs no JSON parsing.
//! [`plan`] is pure: the index and the time in, actions out; the runner applies each action to
//! the object as stored, only if it is still at the revision the plan saw.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use flotilla_api::meta::{parse_rfc3339, rfc3339};
use flotilla_api::{find_kind, store_key};
use serde::Deserialize;
use serde_json::{json, Value};

/// An owner reference, as far as the collector needs it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRef {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    finalizers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slim {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
    // Events only: when they last happened.
    #[serde(default)]
    last_timestamp: Option<String>,
    #[serde(default)]
    event_time: Option<String>,
    // Pods: the node they are bound to.
    #[serde(default)]
    spec: SlimSpec,
    // Nodes: their conditions.
    #[serde(default)]
    status: SlimStatus,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Default, Deserialize)]
struct SlimStatus {
    #[serde(default)]
    conditions: Vec<SlimCondition>,
}

#[derive(Deserialize)]
struct SlimCondition {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    status: String,
}

/// How long an event is kept after it last happened (the Kubernetes API server's default).
pub const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// One stored object as the collector indexes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub revision: u64,
    /// `Pod` and `Namespace` of the core group get their own rules.
    pub core_kind: Option<String>,
    meta: Meta,
    /// For events: when they last happened.
    last_seen: Option<String>,
    /// For pods: the node they are bound to.
    node_name: Option<String>,
    /// For nodes: whether they are Ready.
    ready: bool,
}

impl Item {
    /// Indexes a stored object; `None` if it is not a JSON object with metadata.
    pub fn parse(key: &str, revision: u64, value: &[u8]) -> Option<Item> {
        let slim: Slim = serde_json::from_slice(value).ok()?;
        let event = slim.api_version == "v1" && slim.kind == "Event";
        let core = slim.api_version == "v1";
        Some(Item {
            key: key.to_string(),
            revision,
            node_name: (core && slim.kind == "Pod")
                .then_some(slim.spec.node_name)
                .flatten(),
            ready: core
                && slim.kind == "Node"
                && slim
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.kind == "Ready" && c.status == "True"),
            last_seen: event
                .then(|| slim.last_timestamp.or(slim.event_time))
                .flatten(),
            core_kind: (slim.api_version == "v1").then_some(slim.kind),
            meta: slim.metadata,
        })
    }

    fn is(&self, kind: &str) -> bool {
        self.core_kind.as_deref() == Some(kind)
    }

    fn deleting(&self) -> bool {
        self.meta.deletion_timestamp.is_some()
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.meta.finalizers.iter().any(|x| x == f)
    }
}

/// The owner an action depends on being gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub key: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Remove `key` if still at `revision`.
    Delete { key: String, revision: u64 },
    /// Remove `key` (at `revision`) if none of `owners` exists any more with its uid.
    DeleteOrphan {
        key: String,
        revision: u64,
        owners: Vec<Owner>,
    },
    /// Remove the owner reference to `owner_uid` from `key`.
    ReleaseDependent {
        key: String,
        revision: u64,
        owner_uid: String,
    },
    /// Remove `finalizer` from `key` (which then goes, unless it is a namespace).
    DropFinalizer {
        key: String,
        revision: u64,
        finalizer: String,
    },
    /// Mark `key` deleted now, with the `foregroundDeletion` finalizer if it has dependents.
    MarkDeleted {
        key: String,
        revision: u64,
        foreground: bool,
    },
}

impl Action {
    pub fn key(&self) -> &str {
        match self {
            Action::Delete { key, .. }
            | Action::DeleteOrphan { key, .. }
            | Action::ReleaseDependent { key, .. }
            | Action::DropFinalizer { key, .. }
            | Action::MarkDeleted { key, .. } => key,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            Action::Delete { revision, .. }
            | Action::DeleteOrphan { revision, .. }
            | Action::ReleaseDependent { revision, .. }
            | Action::DropFinalizer { revision, .. }
            | Action::MarkDeleted { revision, .. } => *revision,
        }
    }

    /// What the action writes over `object` (as stored): `Some(new object)`, or `None` for
    /// a removal.
    pub fn apply(&self, object: &Value, now: SystemTime) -> Option<Value> {
        let mut object = object.clone();
        let meta = &mut object["metadata"];
        match self {
            Action::Delete { .. } | Action::DeleteOrphan { .. } => return None,
            Action::ReleaseDependent { owner_uid, .. } => {
                if let Some(refs) = meta["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != owner_uid.as_str());
                    if refs.is_empty() {
                        meta.as_object_mut().map(|m| m.remove("ownerReferences"));
                    }
                }
            }
            Action::DropFinalizer { finalizer, .. } => {
                let namespace = object["kind"] == "Namespace" && object["apiVersion"] == "v1";
                let meta = &mut object["metadata"];
                if let Some(list) = meta["finalizers"].as_array_mut() {
                    list.retain(|f| f != finalizer.as_str());
                    if list.is_empty() {
                        if !namespace {
                            return None;
                        }
                        meta.as_object_mut().map(|m| m.remove("finalizers"));
                    }
                }
            }
            Action::MarkDeleted { foreground, .. } => {
                meta["deletionTimestamp"] = json!(rfc3339(now));
                meta["deletionGracePeriodSeconds"] = json!(0);
                if *foreground {
                    let list = meta["finalizers"].as_array().cloned().unwrap_or_default();
                    if !list.iter().any(|f| f == "foregroundDeletion") {
                        let mut list = list;
                        list.push(json!("foregroundDeletion"));
                        meta["finalizers"] = json!(list);
                    }
                }
            }
        }
        Some(object)
    }
}

/// The owners of `item` as store keys with their uids (owners of unknown kinds are left out).
fn owners_of(item: &Item) -> Vec<Owner> {
    let namespace = item.meta.namespace.as_deref().unwrap_or("");
    item.meta
        .owner_references
        .iter()
        .filter_map(|r| {
            let resource = find_kind(&r.api_version, &r.kind)?;
            Some(Owner {
                key: store_key(resource, namespace, &r.name),
                uid: r.uid.clone(),
            })
        })
        .collect()
}

/// Deletes `item` on behalf of a foreground deletion or a terminating namespace: at once if
/// nothing holds it, else marked.
fn delete_held(item: &Item, has_dependents: bool) -> Action {
    if item.meta.finalizers.is_empty() && !has_dependents {
        Action::Delete {
            key: item.key.clone(),
            revision: item.revision,
        }
    } else {
        Action::MarkDeleted {
            key: item.key.clone(),
            revision: item.revision,
            foreground: has_dependents,
        }
    }
}

/// What to do now, given every object and the time.
pub fn plan<'a>(items: impl IntoIterator<Item = &'a Item>, now: SystemTime) -> Vec<Action> {
    let items: Vec<&Item> = items.into_iter().collect();
    let uids: HashSet<&str> = items.iter().map(|i| i.meta.uid.as_str()).collect();
    let mut dependents: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in &items {
        for r in &item.meta.owner_references {
            dependents.entry(r.uid.as_str()).or_default().push(item);
        }
    }
    let has_dependents = |item: &Item| dependents.contains_key(item.meta.uid.as_str());
    // A pod bound to a Ready node is removed by that node's agent once its containers are
    // gone, however long that takes; the collector removes only the others.
    let ready_nodes: HashSet<&str> = items
        .iter()
        .filter(|i| i.is("Node") && i.ready)
        .map(|i| i.meta.name.as_str())
        .collect();
    let agent_finishes = |item: &Item| {
        item.is("Pod")
            && item
                .node_name
                .as_deref()
                .is_some_and(|n| ready_nodes.contains(n))
    };
    let mut actions = Vec::new();
    let mut touched: HashSet<&str> = HashSet::new();

    let mut namespaces_deleting = BTreeMap::new();
    for item in items.iter().filter(|i| i.deleting()) {
        let own: &[&Item] = dependents
            .get(item.meta.uid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if item.is("Namespace") {
            namespaces_deleting.insert(item.meta.name.as_str(), (*item, 0usize));
        } else if item.has_finalizer("orphan") {
            for d in own {
                if touched.insert(d.key.as_str()) {
                    actions.push(Action::ReleaseDependent {
                        key: d.key.clone(),
                        revision: d.revision,
                        owner_uid: item.meta.uid.clone(),
                    });
                }
            }
            if own.is_empty() {
                actions.push(Action::DropFinalizer {
                    key: item.key.clone(),
                    revision: item.revision,
                    finalizer: "orphan".into(),
                });
            }
        } else if item.has_finalizer("foregroundDeletion") {
            for d in own {
                if !d.deleting() && touched.insert(d.key.as_str()) {
                    actions.push(delete_held(d, has_dependents(d)));
                }
            }
            if own.is_empty() {
                actions.push(Action::DropFinalizer {
                    key: item.key.clone(),
                    revision: item.revision,
                    finalizer: "foregroundDeletion".into(),
                });
            }
        } else if item.meta.finalizers.is_empty() {
            // A pod past its grace period, or an object whose last finalizer went by a write
            // that did not remove it.
            let due = item
                .meta
                .deletion_timestamp
                .as_deref()
                .and_then(parse_rfc3339)
                .is_none_or(|at| at <= now);
            if due && !agent_finishes(item) {
                actions.push(Action::Delete {
                    key: item.key.clone(),
                    revision: item.revision,
                });
            }
        }
    }

    // Terminating namespaces: delete what is inside, then the namespace.
    for item in &items {
        let Some(ns) = item.meta.namespace.as_deref() else {
            continue;
        };
        if let Some((_, count)) = namespaces_deleting.get_mut(ns) {
            *count += 1;
            if !item.deleting() && touched.insert(item.key.as_str()) {
                actions.push(delete_held(item, false));
            }
        }
    }
    for (ns, count) in namespaces_deleting.values() {
        if *count == 0 {
            actions.push(Action::Delete {
                key: ns.key.clone(),
                revision: ns.revision,
            });
        }
    }

    // Events past their time to live.
    for item in items.iter().filter(|i| i.is("Event") && !i.deleting()) {
        let seen = item.last_seen.as_deref().and_then(parse_rfc3339);
        if seen.is_some_and(|at| at + EVENT_TTL <= now) && touched.insert(item.key.as_str()) {
            actions.push(Action::Delete {
                key: item.key.clone(),
                revision: item.revision,
            });
        }
    }

    // Dependents whose owners are all gone.
    for item in items.iter().filter(|i| !i.deleting()) {
        let refs = &item.meta.owner_references;
        if refs.is_empty() || touched.contains(item.key.as_str()) {
            continue;
        }
        if refs.iter().all(|r| !uids.contains(r.uid.as_str())) {
            actions.push(Action::DeleteOrphan {
                key: item.key.clone(),
                revision: item.revision,
                owners: owners_of(item),
            });
        }
    }
    actions
}

/// When the next timer in the objects falls due after `now`: a pod's grace period running out,
/// or an event's time to live. The runner sweeps again then.
pub fn next_due<'a>(
    items: impl IntoIterator<Item = &'a Item>,
    now: SystemTime,
) -> Option<SystemTime> {
    items
        .into_iter()
        .filter_map(|i| {
            if i.deleting() && i.meta.finalizers.is_empty() {
                i.meta.deletion_timestamp.as_deref().and_then(parse_rfc3339)
            } else if i.is("Event") && !i.deleting() {
                let seen = i.last_seen.as_deref().and_then(parse_rfc3339)?;
                Some(seen + EVENT_TTL)
            } else {
                None
            }
        })
        .filter(|at| *at > now)
        .min()
}

mod runner;

pub use runner::run;

#[cfg(test)]
mod tests;
