//! Events, as the API server stores them: timestamps and count filled in, and a new event that
//! repeats one already stored (same object, reason, type, message and source) folded into it
//! (its `count` grows, its `lastTimestamp` moves) instead of becoming another object, so that
//! a component repeating itself cannot flood the log. The garbage collector removes events an
//! hour after they last happened.

use flotilla_api::meta::now_rfc3339;
use flotilla_api::Resource;
use flotilla_store::Engine;
use serde_json::{json, Value};

use crate::objects::object_of;

pub(crate) fn is_event(r: &Resource) -> bool {
    r.group.is_empty() && r.kind == "Event"
}

/// Fills in what a client may leave out: the timestamps (now) and the count (1).
pub(crate) fn prepare(object: &mut Value) {
    if object["lastTimestamp"].is_null() && object["eventTime"].is_null() {
        object["lastTimestamp"] = json!(now_rfc3339());
    }
    if object["firstTimestamp"].is_null() && object["lastTimestamp"].is_string() {
        object["firstTimestamp"] = object["lastTimestamp"].clone();
    }
    if object["count"].is_null() {
        object["count"] = json!(1);
    }
}

/// What makes two events the same happening.
fn identity(o: &Value) -> Value {
    let i = &o["involvedObject"];
    json!([
        i["kind"],
        i["namespace"],
        i["name"],
        i["uid"],
        i["fieldPath"],
        o["reason"],
        o["type"],
        o["message"],
        o["source"]["component"],
        o["source"]["host"],
        o["reportingComponent"],
    ])
}

/// The stored event in `prefix` that `incoming` repeats: its key, revision and object.
pub(crate) fn similar(
    engine: &dyn Engine,
    prefix: &str,
    incoming: &Value,
) -> Option<(String, u64, Value)> {
    let want = identity(incoming);
    let listing = engine.list(prefix, None, 0).ok()?;
    listing.items.into_iter().find_map(|(key, record)| {
        let o = object_of(&record)?;
        (o["metadata"]["deletionTimestamp"].is_null() && identity(&o) == want).then_some((
            key,
            record.mod_revision,
            o,
        ))
    })
}

/// `stored` with `incoming` folded in.
pub(crate) fn fold(stored: &Value, incoming: &Value) -> Value {
    let mut folded = stored.clone();
    let count = stored["count"].as_i64().unwrap_or(1) + incoming["count"].as_i64().unwrap_or(1);
    folded["count"] = json!(count);
    let (a, b) = (&stored["lastTimestamp"], &incoming["lastTimestamp"]);
    folded["lastTimestamp"] = match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) if y > x => b.clone(),
        (Some(_), _) => a.clone(),
        _ => b.clone(),
    };
    if let Some(m) = folded["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str, at: &str) -> Value {
        let mut e = json!({"metadata": {"name": "x"}, "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "BackOff", "type": "Warning", "message": message, "lastTimestamp": at});
        prepare(&mut e);
        e
    }

    #[test]
    fn repeats_fold_into_one_event() {
        let first = event("back-off restarting", "2026-12-01T00:00:00Z");
        assert_eq!(first["count"], 1);
        assert_eq!(first["firstTimestamp"], "2026-12-01T00:00:00Z");
        let again = event("back-off restarting", "2026-12-01T00:05:00Z");
        assert_eq!(identity(&first), identity(&again));
        assert_ne!(
            identity(&first),
            identity(&event("other", "2026-12-01T00:05:00Z"))
        );
        let folded = fold(&first, &again);
        assert_eq!(folded["count"], 2);
        assert_eq!(folded["lastTimestamp"], "2026-12-01T00:05:00Z");
        assert_eq!(folded["firstTimestamp"], "2026-12-01T00:00:00Z");
        let mut bare = json!({"reason": "x"});
        prepare(&mut bare);
        assert!(bare["lastTimestamp"].is_string() && bare["count"] == 1);
    }
}
