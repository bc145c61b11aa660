//! The garbage collector: what happens after a DELETE that did not remove the object at once,
//! and to the dependents of deleted owners.
//!
//! - A dependent (an object with `ownerReferences`) whose owners are all gone is deleted
//!   (background propagation). Before acting, the runner reads each owner again: an owner
//!   created after the scan is not mistaken for a missing one.
//! - An owner being deleted with the `orphan` finalizer: its reference is removed from each
//!   dependent, then the finalizer.
//! - An owner being deleted with `foregroundDeletion`: its dependents are deleted (in turn in
//!   the foreground), then the finalizer is removed.
//! - An object being deleted whose last finalizer is gone is removed.
//! - A namespace being deleted is emptied, then removed.
//! - A pod whose grace period has run out is removed. (The node runtime removes a pod once
//!   its containers are stopped; this is the backstop for pods no node is running.)
//!
//! [`plan`] is pure: a scan of the objects and the time in, actions out.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use flotilla_api::meta::{parse_rfc3339, rfc3339};
use flotilla_api::{find_kind, store_key};
use serde_json::{json, Value};

/// One stored object as scanned.
#[derive(Clone, Debug)]
pub struct Item {
    pub key: String,
    pub revision: u64,
    pub object: Value,
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
    /// Write `object` over `key` at `revision`.
    Update {
        key: String,
        revision: u64,
        object: Value,
    },
}

impl Action {
    pub fn key(&self) -> &str {
        match self {
            Action::Delete { key, .. }
            | Action::DeleteOrphan { key, .. }
            | Action::Update { key, .. } => key,
        }
    }
}

fn meta_str<'a>(item: &'a Item, field: &str) -> Option<&'a str> {
    item.object["metadata"][field].as_str()
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn owner_uids(object: &Value) -> Vec<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["uid"].as_str()).collect())
        .unwrap_or_default()
}

fn deleting(item: &Item) -> bool {
    !item.object["metadata"]["deletionTimestamp"].is_null()
}

fn is_kind(item: &Item, kind: &str) -> bool {
    item.object["kind"] == kind && item.object["apiVersion"] == "v1"
}

/// `object` without `finalizer`: an update, or a removal if it was the last.
fn drop_finalizer(item: &Item, finalizer: &str) -> Action {
    let rest: Vec<String> = finalizers(&item.object)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    if rest.is_empty() && !is_kind(item, "Namespace") {
        return Action::Delete {
            key: item.key.clone(),
            revision: item.revision,
        };
    }
    let mut object = item.object.clone();
    object["metadata"]["finalizers"] = json!(rest);
    Action::Update {
        key: item.key.clone(),
        revision: item.revision,
        object,
    }
}

/// Deletes `item` in the foreground: at once if nothing holds it, else marked.
fn delete_foreground(item: &Item, has_dependents: bool, now: SystemTime) -> Action {
    let mut held = finalizers(&item.object);
    if held.is_empty() && !has_dependents {
        return Action::Delete {
            key: item.key.clone(),
            revision: item.revision,
        };
    }
    if has_dependents {
        held.push("foregroundDeletion".into());
    }
    let mut object = item.object.clone();
    object["metadata"]["deletionTimestamp"] = json!(rfc3339(now));
    object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    object["metadata"]["finalizers"] = json!(held);
    Action::Update {
        key: item.key.clone(),
        revision: item.revision,
        object,
    }
}

/// The owners of `item` as store keys with their uids (owners of unknown kinds are left out).
fn owners_of(item: &Item) -> Vec<Owner> {
    let namespace = meta_str(item, "namespace").unwrap_or("");
    item.object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| {
                    let resource = find_kind(r["apiVersion"].as_str()?, r["kind"].as_str()?)?;
                    Some(Owner {
                        key: store_key(resource, namespace, r["name"].as_str()?),
                        uid: r["uid"].as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What to do now, given every object (`items`) and the time.
pub fn plan(items: &[Item], now: SystemTime) -> Vec<Action> {
    let uids: HashSet<&str> = items.iter().filter_map(|i| meta_str(i, "uid")).collect();
    let mut dependents: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in items {
        for uid in owner_uids(&item.object) {
            dependents.entry(uid).or_default().push(item);
        }
    }
    let has_dependents = |item: &Item| {
        meta_str(item, "uid").is_some_and(|u| dependents.get(u).is_some_and(|d| !d.is_empty()))
    };
    let mut actions = Vec::new();
    let mut touched: HashSet<&str> = HashSet::new();

    for item in items.iter().filter(|i| deleting(i)) {
        let uid = meta_str(item, "uid").unwrap_or("");
        let own: &[&Item] = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
        let held = finalizers(&item.object);
        if is_kind(item, "Namespace") {
            let name = meta_str(item, "name").unwrap_or("");
            let inside: Vec<&Item> = items
                .iter()
                .filter(|i| meta_str(i, "namespace") == Some(name))
                .collect();
            for i in &inside {
                if !deleting(i) && touched.insert(i.key.as_str()) {
                    actions.push(delete_foreground(i, false, now));
                }
            }
            if inside.is_empty() {
                actions.push(Action::Delete {
                    key: item.key.clone(),
                    revision: item.revision,
                });
            }
        } else if held.iter().any(|f| f == "orphan") {
            for d in own {
                if !touched.insert(d.key.as_str()) {
                    continue;
                }
                let mut object = d.object.clone();
                if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != uid);
                    if refs.is_empty() {
                        object["metadata"]
                            .as_object_mut()
                            .map(|m| m.remove("ownerReferences"));
                    }
                }
                actions.push(Action::Update {
                    key: d.key.clone(),
                    revision: d.revision,
                    object,
                });
            }
            if own.is_empty() {
                actions.push(drop_finalizer(item, "orphan"));
            }
        } else if held.iter().any(|f| f == "foregroundDeletion") {
            for d in own {
                if !deleting(d) && touched.insert(d.key.as_str()) {
                    actions.push(delete_foreground(d, has_dependents(d), now));
                }
            }
            if own.is_empty() {
                actions.push(drop_finalizer(item, "foregroundDeletion"));
            }
        } else if held.is_empty() {
            // A pod past its grace period, or an object whose finalizers were removed by a
            // write that did not delete it (written straight to the store).
            let due = item.object["metadata"]["deletionTimestamp"]
                .as_str()
                .and_then(parse_rfc3339)
                .is_none_or(|at| at <= now);
            if due {
                actions.push(Action::Delete {
                    key: item.key.clone(),
                    revision: item.revision,
                });
            }
        }
    }

    for item in items.iter().filter(|i| !deleting(i)) {
        let refs = owner_uids(&item.object);
        if refs.is_empty() || touched.contains(item.key.as_str()) {
            continue;
        }
        if refs.iter().all(|u| !uids.contains(u)) {
            actions.push(Action::DeleteOrphan {
                key: item.key.clone(),
                revision: item.revision,
                owners: owners_of(item),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn item(key: &str, object: Value) -> Item {
        Item {
            key: key.into(),
            revision: 7,
            object,
        }
    }

    fn deploy(uid: &str, extra: Value) -> Item {
        let mut o = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": uid}});
        if let (Some(m), Some(e)) = (o["metadata"].as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        item("/apps/deployments/default/web", o)
    }

    fn owned(name: &str, owner_uid: &str) -> Item {
        item(
            &format!("/core/configmaps/default/{name}"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": name, "namespace": "default", "uid": format!("u-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner_uid}]}}),
        )
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn dependents_of_a_missing_owner_go_and_others_stay() {
        let items = vec![
            deploy("d1", json!({})),
            owned("kept", "d1"),
            owned("lost", "gone"),
        ];
        let actions = plan(&items, now());
        assert_eq!(
            actions,
            vec![Action::DeleteOrphan {
                key: "/core/configmaps/default/lost".into(),
                revision: 7,
                owners: vec![Owner {
                    key: "/apps/deployments/default/web".into(),
                    uid: "gone".into()
                }],
            }]
        );
    }

    #[test]
    fn orphaning_releases_dependents_then_the_owner() {
        let marked = json!({"deletionTimestamp": "2027-01-15T08:00:00Z", "finalizers": ["orphan"]});
        let items = vec![deploy("d1", marked.clone()), owned("a", "d1")];
        let actions = plan(&items, now());
        assert_eq!(actions.len(), 1);
        let Action::Update { key, object, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(key, "/core/configmaps/default/a");
        assert!(object["metadata"].get("ownerReferences").is_none());
        // Next round: no dependents left, so the finalizer goes and with it the owner.
        let actions = plan(&[deploy("d1", marked)], now());
        assert_eq!(
            actions,
            vec![Action::Delete {
                key: "/apps/deployments/default/web".into(),
                revision: 7
            }]
        );
    }

    #[test]
    fn foreground_deletes_dependents_before_the_owner() {
        let marked = json!({"deletionTimestamp": "2027-01-15T08:00:00Z", "finalizers": ["foregroundDeletion"]});
        let items = vec![deploy("d1", marked.clone()), owned("a", "d1")];
        assert_eq!(
            plan(&items, now()),
            vec![Action::Delete {
                key: "/core/configmaps/default/a".into(),
                revision: 7
            }]
        );
        assert!(matches!(
            plan(&[deploy("d1", marked)], now()).as_slice(),
            [Action::Delete { key, .. }] if key == "/apps/deployments/default/web"
        ));
    }

    #[test]
    fn a_terminating_namespace_is_emptied_then_removed() {
        let ns = |extra: Value| {
            let mut o = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "uid": "n",
                "deletionTimestamp": "2027-01-15T08:00:00Z"}, "spec": {"finalizers": ["kubernetes"]}});
            o["metadata"]["finalizers"] = extra;
            item("/core/namespaces/default", o)
        };
        let items = vec![ns(json!(null)), owned("a", "d1")];
        assert_eq!(
            plan(&items, now()),
            vec![Action::Delete {
                key: "/core/configmaps/default/a".into(),
                revision: 7
            }]
        );
        assert_eq!(
            plan(&[ns(json!(null))], now()),
            vec![Action::Delete {
                key: "/core/namespaces/default".into(),
                revision: 7
            }]
        );
    }

    #[test]
    fn a_pod_goes_when_its_grace_period_ends() {
        let pod = |at: &str| {
            item(
                "/core/pods/default/p",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "p",
                    "deletionTimestamp": at}}),
            )
        };
        assert!(plan(&[pod("2027-01-15T08:00:30Z")], now()).is_empty());
        assert_eq!(plan(&[pod("2027-01-15T07:59:59Z")], now()).len(), 1);
    }
}
