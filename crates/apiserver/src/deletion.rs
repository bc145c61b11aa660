//! DELETE as Kubernetes does it. An object without finalizers goes at once; otherwise it is
//! marked (`metadata.deletionTimestamp`) and goes when its last finalizer is removed. The
//! propagation policy picks what happens to dependents (objects whose `ownerReferences` name
//! it): `Background` deletes the owner now and the garbage collector its dependents after;
//! `Foreground` adds the `foregroundDeletion` finalizer, so the owner stays until its dependents
//! are gone; `Orphan` adds `orphan`, and the collector strips the owner reference from each
//! dependent instead. A scheduled pod is deleted gracefully (its deletion timestamp is now plus
//! the grace period); a namespace becomes `Terminating` until the collector has emptied it.
//! The planning is pure ([`plan`]); [`delete`] reads, plans and writes with the revision read.

use std::time::SystemTime;

use flotilla_api::{store_key, Resource};
use flotilla_store::{Command, Engine, Proposer};
use serde_json::{json, Value};

use crate::objects::{query_param, Target};
use crate::update::{guaranteed_update, Attempt};
use crate::writes::WriteError;

pub use flotilla_api::deletion::{plan, DeleteOptions, Deletion, Propagation};

/// Parses the options. A protobuf body (`kubectl drain`) is read as the defaults.
pub fn parse_options(
    query: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> Result<DeleteOptions, WriteError> {
    let bad = |m: String| WriteError::new(400, "BadRequest", m);
    let body: Value = if body.is_empty() || content_type.contains("protobuf") {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| bad(format!("the DeleteOptions body is not valid JSON: {e}")))?
    };
    let policy = query_param(query, "propagationPolicy")
        .or_else(|| body["propagationPolicy"].as_str().map(str::to_string));
    let propagation = match policy.as_deref() {
        None => match body["orphanDependents"].as_bool() {
            Some(true) => Propagation::Orphan,
            _ => Propagation::Background,
        },
        Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(WriteError::new(
                422,
                "Invalid",
                format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                ),
            ))
        }
    };
    let grace = match query_param(query, "gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| bad(format!("gracePeriodSeconds must be an integer, not {g:?}")))?,
        ),
        None => body["gracePeriodSeconds"].as_i64(),
    };
    if let Some(g) = grace.filter(|g| *g < 0) {
        return Err(WriteError::new(
            422,
            "Invalid",
            format!("gracePeriodSeconds: Invalid value: {g}: must be greater than or equal to 0"),
        ));
    }
    let pre = &body["preconditions"];
    Ok(DeleteOptions {
        propagation,
        grace_period_seconds: grace,
        precondition_uid: pre["uid"].as_str().map(str::to_string),
        precondition_resource_version: pre["resourceVersion"].as_str().map(str::to_string),
    })
}

/// DELETE: removes or marks the object and answers with it as it was left.
pub async fn delete(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    target: &Target<'_>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, WriteError> {
    let r = target.resource;
    let key = store_key(r, target.namespace.unwrap_or(""), name);
    guaranteed_update(engine, proposer, r, &key, name, |object, revision| {
        check_preconditions(r, name, &object, revision, options)?;
        Ok(match plan(r, &object, options, SystemTime::now()) {
            Deletion::Unchanged => Attempt::Unchanged(with_version(object, revision)),
            Deletion::Remove if crate::services::is_service(r) => Attempt::Write(
                crate::services::remove(engine, &key, revision, &object),
                answer(object, revision),
            ),
            Deletion::Remove => Attempt::Write(
                Command::delete(key.clone(), Some(revision)),
                answer(object, revision),
            ),
            Deletion::Mark(marked) => {
                let mut stored = marked.clone();
                if let Some(m) = stored["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                Attempt::Write(
                    Command::update(key.clone(), stored.to_string(), Some(revision)),
                    answer(marked, revision),
                )
            }
        })
    })
    .await
}

/// The answer to a DELETE: the object as it was left. One removed outright keeps the revision
/// it was read at; one marked (or removed while being deleted) has the written one.
fn answer(object: Value, read: u64) -> Box<dyn FnOnce(u64) -> Value + Send> {
    Box::new(move |written| {
        let removed = object["metadata"]["deletionTimestamp"].is_null();
        with_version(object, if removed { read } else { written })
    })
}

fn with_version(mut object: Value, revision: u64) -> Value {
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
    object
}

fn check_preconditions(
    r: &Resource,
    name: &str,
    object: &Value,
    revision: u64,
    options: &DeleteOptions,
) -> Result<(), WriteError> {
    let conflict = |what: &str, want: &str, have: &str| {
        WriteError::from_store(
            flotilla_store::ErrorCode::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}: {want}, {what} in object meta: {have}",
                r.plural
            ),
        )
    };
    if let Some(uid) = &options.precondition_uid {
        let have = object["metadata"]["uid"].as_str().unwrap_or("");
        if uid != have {
            return Err(conflict("UID", uid, have));
        }
    }
    if let Some(rv) = &options.precondition_resource_version {
        if *rv != revision.to_string() {
            return Err(conflict("ResourceVersion", rv, &revision.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(propagation: Propagation, grace: Option<i64>) -> DeleteOptions {
        DeleteOptions {
            propagation,
            grace_period_seconds: grace,
            precondition_uid: None,
            precondition_resource_version: None,
        }
    }

    fn resource(plural: &str) -> &'static Resource {
        flotilla_api::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn options_come_from_the_body_and_the_query() {
        let o = parse_options(
            None,
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Foreground","preconditions":{"uid":"u"}}"#,
            "application/json",
        )
        .unwrap();
        assert_eq!(o.propagation, Propagation::Foreground);
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
        let o = parse_options(
            Some("propagationPolicy=Orphan&gracePeriodSeconds=0"),
            b"",
            "",
        )
        .unwrap();
        assert_eq!(o, options(Propagation::Orphan, Some(0)));
        assert_eq!(
            parse_options(None, br#"{"orphanDependents":true}"#, "application/json")
                .unwrap()
                .propagation,
            Propagation::Orphan
        );
        assert_eq!(
            parse_options(Some("propagationPolicy=Later"), b"", "")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            parse_options(None, b"{", "application/json")
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn plain_objects_go_at_once_and_finalizers_keep_them() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let cm = json!({"metadata": {"name": "c"}});
        let r = resource("configmaps");
        assert_eq!(
            plan(r, &cm, &options(Propagation::Background, None), now),
            Deletion::Remove
        );
        let Deletion::Mark(m) = plan(r, &cm, &options(Propagation::Foreground, None), now) else {
            panic!("foreground keeps the owner until its dependents are gone")
        };
        assert_eq!(m["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        assert_eq!(m["metadata"]["deletionTimestamp"], "2027-01-15T08:00:00Z");
        let Deletion::Mark(m) = plan(r, &cm, &options(Propagation::Orphan, None), now) else {
            panic!("orphan keeps the owner until its dependents are released")
        };
        assert_eq!(m["metadata"]["finalizers"], json!(["orphan"]));
        let held = json!({"metadata": {"name": "c", "finalizers": ["example.com/hold"]}});
        let Deletion::Mark(m) = plan(r, &held, &options(Propagation::Background, None), now) else {
            panic!("a finalizer keeps the object")
        };
        assert_eq!(
            plan(r, &m, &options(Propagation::Background, None), now),
            Deletion::Unchanged
        );
    }

    #[test]
    fn scheduled_pods_are_deleted_gracefully_unless_forced() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let r = resource("pods");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}});
        let Deletion::Mark(m) = plan(r, &pod, &options(Propagation::Background, None), now) else {
            panic!("a running pod gets its grace period")
        };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 10);
        assert_eq!(m["metadata"]["deletionTimestamp"], "2027-01-15T08:00:10Z");
        assert_eq!(
            plan(r, &m, &options(Propagation::Background, Some(0)), now),
            Deletion::Remove,
            "--force --grace-period=0 ends it"
        );
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(
            plan(
                r,
                &unscheduled,
                &options(Propagation::Background, None),
                now
            ),
            Deletion::Remove
        );
    }

    #[test]
    fn a_namespace_terminates_first() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let ns = json!({"metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let Deletion::Mark(m) = plan(
            resource("namespaces"),
            &ns,
            &options(Propagation::Background, None),
            now,
        ) else {
            panic!("a namespace is emptied before it goes")
        };
        assert_eq!(m["status"]["phase"], "Terminating");
        assert!(m["metadata"]["deletionTimestamp"].is_string());
    }
}
