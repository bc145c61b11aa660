use std::time::Duration;

use super::*;

fn item(key: &str, object: Value) -> Item {
    Item::parse(key, 7, object.to_string().as_bytes()).expect("an object")
}

fn deploy(uid: &str, extra: Value) -> (Item, Value) {
    let mut o = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": uid}});
    if let (Some(m), Some(e)) = (o["metadata"].as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    (item("/apps/deployments/default/web", o.clone()), o)
}

fn owned(name: &str, owner_uid: &str) -> (Item, Value) {
    let o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": name, "namespace": "default", "uid": format!("u-{name}"),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner_uid}]}});
    (
        item(&format!("/core/configmaps/default/{name}"), o.clone()),
        o,
    )
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[test]
fn dependents_of_a_missing_owner_go_and_others_stay() {
    let items = [
        deploy("d1", json!({})).0,
        owned("kept", "d1").0,
        owned("lost", "gone").0,
    ];
    assert_eq!(
        plan(&items, now()),
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
    let (owner, owner_json) = deploy("d1", marked);
    let (dependent, dependent_json) = owned("a", "d1");
    let actions = plan([&owner, &dependent], now());
    assert_eq!(
        actions,
        vec![Action::ReleaseDependent {
            key: "/core/configmaps/default/a".into(),
            revision: 7,
            owner_uid: "d1".into()
        }]
    );
    let released = actions[0].apply(&dependent_json, now()).unwrap();
    assert!(released["metadata"].get("ownerReferences").is_none());
    // Next round: no dependents left, so the finalizer goes and with it the owner.
    let actions = plan([&owner], now());
    assert_eq!(
        actions,
        vec![Action::DropFinalizer {
            key: "/apps/deployments/default/web".into(),
            revision: 7,
            finalizer: "orphan".into()
        }]
    );
    assert_eq!(
        actions[0].apply(&owner_json, now()),
        None,
        "the last finalizer: removed"
    );
}

#[test]
fn foreground_deletes_dependents_before_the_owner() {
    let marked = json!({"deletionTimestamp": "2027-01-15T08:00:00Z", "finalizers": ["foregroundDeletion", "example.com/keep"]});
    let (owner, owner_json) = deploy("d1", marked);
    let items = [owner.clone(), owned("a", "d1").0];
    assert_eq!(
        plan(&items, now()),
        vec![Action::Delete {
            key: "/core/configmaps/default/a".into(),
            revision: 7
        }]
    );
    let actions = plan([&owner], now());
    assert!(
        matches!(actions.as_slice(), [Action::DropFinalizer { finalizer, .. }] if finalizer == "foregroundDeletion")
    );
    let kept = actions[0]
        .apply(&owner_json, now())
        .expect("another finalizer holds it");
    assert_eq!(kept["metadata"]["finalizers"], json!(["example.com/keep"]));
}

#[test]
fn a_dependent_with_dependents_is_deleted_in_the_foreground_too() {
    let marked =
        json!({"deletionTimestamp": "2027-01-15T08:00:00Z", "finalizers": ["foregroundDeletion"]});
    let (owner, _) = deploy("d1", marked);
    let (middle, middle_json) = owned("m", "d1");
    let leaf = item(
        "/core/configmaps/default/leaf",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "leaf", "namespace": "default", "uid": "l",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "m", "uid": "u-m"}]}}),
    );
    let actions = plan([&owner, &middle, &leaf], now());
    assert_eq!(
        actions,
        vec![Action::MarkDeleted {
            key: "/core/configmaps/default/m".into(),
            revision: 7,
            foreground: true
        }]
    );
    let marked = actions[0].apply(&middle_json, now()).unwrap();
    assert_eq!(
        marked["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
}

#[test]
fn a_terminating_namespace_is_emptied_then_removed() {
    let ns = item(
        "/core/namespaces/default",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "uid": "n",
            "deletionTimestamp": "2027-01-15T08:00:00Z"}, "spec": {"finalizers": ["kubernetes"]}}),
    );
    let items = [ns.clone(), owned("a", "d1").0];
    assert_eq!(
        plan(&items, now()),
        vec![Action::Delete {
            key: "/core/configmaps/default/a".into(),
            revision: 7
        }]
    );
    assert_eq!(
        plan([&ns], now()),
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
    assert!(plan([&pod("2027-01-15T08:00:30Z")], now()).is_empty());
    assert_eq!(plan([&pod("2027-01-15T07:59:59Z")], now()).len(), 1);
}

#[test]
fn a_pod_on_a_ready_node_is_left_to_its_agent() {
    let pod = item(
        "/core/pods/default/p",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "p",
            "deletionTimestamp": "2027-01-15T07:59:00Z"}, "spec": {"nodeName": "n1"}}),
    );
    let node = |ready: &str| {
        item(
            "/core/nodes/n1",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "uid": "n1"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}),
        )
    };
    // Its agent removes it once its containers are gone.
    assert!(plan([&pod, &node("True")], now()).is_empty());
    // A node that is not Ready, or gone, runs nothing: the collector removes it.
    assert_eq!(plan([&pod, &node("Unknown")], now()).len(), 1);
    assert_eq!(plan([&pod], now()).len(), 1);
}

#[test]
fn events_expire_an_hour_after_they_last_happened() {
    let event = |last: &str| {
        item(
            "/core/events/default/e",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default", "uid": "e"},
                "lastTimestamp": last, "count": 3}),
        )
    };
    // now() is 2027-01-15T08:00:00Z.
    assert!(plan([&event("2027-01-15T07:00:01Z")], now()).is_empty());
    assert_eq!(
        plan([&event("2027-01-15T06:59:59Z")], now()),
        vec![Action::Delete {
            key: "/core/events/default/e".into(),
            revision: 7
        }]
    );
}

#[test]
fn the_next_sweep_is_due_at_the_first_timer() {
    let pod = item(
        "/core/pods/default/p",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "p",
            "deletionTimestamp": "2027-01-15T08:00:30Z"}}),
    );
    let event = item(
        "/core/events/default/e",
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default", "uid": "e"},
            "lastTimestamp": "2027-01-15T07:00:10Z"}),
    );
    let at = |s: &str| parse_rfc3339(s).unwrap();
    assert_eq!(
        next_due([&pod, &event], now()),
        Some(at("2027-01-15T08:00:10Z"))
    );
    assert_eq!(next_due([&pod], now()), Some(at("2027-01-15T08:00:30Z")));
    // Past timers are the plan's business, not a reason to wait.
    assert_eq!(next_due([&pod], at("2027-01-15T09:00:00Z")), None);
    assert_eq!(next_due([&deploy("d", json!({})).0], now()), None);
}
