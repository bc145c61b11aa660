//! Writing objects: create (POST), update (PUT), patch (the three PATCH types) and delete, each
//! one command through Raft. Updates carry the expected revision, so a stale
//! `metadata.resourceVersion` is a 409 Conflict, as in Kubernetes; a patch is applied to the
//! object as last read and written with that object's revision, retried if it raced.
//!
//! Bodies are JSON, or protobuf for the kinds kubectl 1.32 sends that way (`create configmap`,
//! `secret`, `namespace`); other protobuf bodies get a 415.

use flotilla_api::kinds::{admit, FieldValidation, Rejection};
use flotilla_api::meta::{new_uid, now_rfc3339};
use flotilla_api::validation::FieldError;
use flotilla_api::{json_patch, merge_patch, store_key, strategic_merge_patch, Resource};
use flotilla_store::{Command, Engine, ErrorCode, Proposer, StoreError};
use serde_json::{json, Map, Value};

use crate::objects::{object_of, Target};
use crate::update::{check_precondition, guaranteed_update, Attempt};

/// A failed write, for a `Status`.
#[derive(Debug)]
pub struct WriteError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub causes: Vec<FieldError>,
    /// For an invalid object: its group, kind and name, which a Kubernetes `Status` names in
    /// its details (kubectl prints `The Service "web" is invalid`).
    pub invalid: Option<Box<Invalid>>,
    /// The store's code when the store refused the write, or the object was not there.
    pub store_code: Option<ErrorCode>,
}

/// The object a 422 is about.
#[derive(Debug)]
pub struct Invalid {
    pub group: &'static str,
    pub kind: &'static str,
    pub name: String,
}

impl WriteError {
    pub(crate) fn new(code: u16, reason: &'static str, message: String) -> WriteError {
        WriteError {
            code,
            reason,
            message,
            causes: Vec::new(),
            invalid: None,
            store_code: None,
        }
    }

    /// The store's refusal of `code`, as Kubernetes words it.
    pub(crate) fn from_store(code: ErrorCode, message: String) -> WriteError {
        WriteError {
            store_code: Some(code),
            ..WriteError::new(code.http_status(), code.k8s_reason(), message)
        }
    }

    /// Whether the store refused the write as a conflict (a revision or precondition that
    /// does not match).
    pub(crate) fn is_conflict(&self) -> bool {
        self.store_code == Some(ErrorCode::Conflict)
    }

    fn bad_request(message: String) -> WriteError {
        WriteError::new(400, "BadRequest", message)
    }

    pub fn details(&self, r: &Resource, name: &str) -> Value {
        let (group, kind, name) = match &self.invalid {
            Some(i) => (i.group, i.kind, i.name.as_str()),
            None => (r.group, r.plural, name),
        };
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        if !self.causes.is_empty() {
            d["causes"] = serde_json::to_value(&self.causes).expect("causes serialise");
        }
        d
    }
}

pub(crate) fn store_failure(r: &Resource, name: &str, e: StoreError) -> WriteError {
    let message = match &e {
        StoreError::AlreadyExists { .. } => format!("{} \"{name}\" already exists", r.plural),
        StoreError::NotFound { .. } => format!("{} \"{name}\" not found", r.plural),
        StoreError::Conflict { .. } => format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            r.plural
        ),
        other => other.to_string(),
    };
    WriteError::from_store(e.code(), message)
}

/// A write retried on conflicts until it gave up: 409.
pub(crate) fn kept_changing(r: &Resource, name: &str) -> WriteError {
    WriteError::from_store(
        ErrorCode::Conflict,
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object kept changing",
            r.plural
        ),
    )
}

pub(crate) fn invalid(r: &Resource, name: &str, causes: Vec<FieldError>) -> WriteError {
    invalid_object(r.group, r.kind, name, causes)
}

/// A 422 about object `name` of `kind`, as Kubernetes words it.
pub(crate) fn invalid_object(
    group: &'static str,
    kind: &'static str,
    name: &str,
    causes: Vec<FieldError>,
) -> WriteError {
    let list: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    WriteError {
        code: 422,
        reason: "Invalid",
        message: format!("{qualified} \"{name}\" is invalid: {}", list.join(", ")),
        causes,
        invalid: Some(Box::new(Invalid {
            group,
            kind,
            name: name.to_string(),
        })),
        store_code: None,
    }
}

/// A write as asked for: the body, its content type, and what to do with unknown fields.
pub struct WriteRequest<'a> {
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub validation: FieldValidation,
}

/// A written object and the warnings for the client (`Warning` headers).
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// Admission (decoding, defaults, validation) as a write's failure.
pub(crate) fn admitted(
    r: &Resource,
    name: &str,
    object: Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> Result<flotilla_api::kinds::Admitted, WriteError> {
    // A create names the object in its body, not its path.
    let named = match object["metadata"]["name"].as_str() {
        Some(n) if name.is_empty() => n.to_string(),
        _ => name.to_string(),
    };
    admit(r, object, old, validation).map_err(|e| match e {
        Rejection::Decode(message) => WriteError::bad_request(message),
        Rejection::Invalid(causes) => invalid(r, &named, causes),
    })
}

/// Kinds with a `status` subresource: their status is written only through it.
fn has_status(r: &Resource) -> bool {
    r.subresources.contains(&"status")
}

fn parse_body(body: &[u8], content_type: &str) -> Result<Value, WriteError> {
    if content_type.contains("protobuf") {
        return crate::protobuf::decode(body).map_err(|e| match e {
            crate::protobuf::ProtobufError::Malformed(_) => WriteError::bad_request(e.to_string()),
            _ => WriteError::new(415, "UnsupportedMediaType", e.to_string()),
        });
    }
    serde_json::from_slice(body)
        .map_err(|e| WriteError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// The namespace must exist for a namespaced object to be created in it.
fn check_namespace(engine: &dyn Engine, target: &Target<'_>) -> Result<(), WriteError> {
    if let Some(ns) = target.namespace {
        let (_, found) = engine
            .get(&store_key(
                flotilla_api::find("", "v1", "namespaces").expect("namespaces are served"),
                "",
                ns,
            ))
            .map_err(|e| store_failure(target.resource, ns, e))?;
        let Some(record) = found else {
            return Err(WriteError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        };
        let terminating =
            object_of(&record).is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
        if terminating {
            return Err(WriteError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
    }
    Ok(())
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("just made an object")
}

/// POST: creates the object in the body.
pub async fn create(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    target: &Target<'_>,
    request: &WriteRequest<'_>,
) -> Result<Written, WriteError> {
    let r = target.resource;
    let mut object = parse_body(request.body, request.content_type)?;
    if !object.is_object() {
        return Err(WriteError::bad_request(
            "the body must be a JSON object".into(),
        ));
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if let (Some(ns), Some(body_ns)) = (target.namespace, object["metadata"]["namespace"].as_str())
    {
        if ns != body_ns {
            return Err(WriteError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )));
        }
    }
    if has_status(r) {
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
    }
    if crate::events::is_event(r) {
        crate::events::prepare(&mut object);
    }
    if r.kind == "Pod" && r.group.is_empty() {
        crate::priority::set_priority(engine, &mut object, &name)?;
    }
    let meta = meta_mut(&mut object);
    meta.remove("resourceVersion");
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    if let Some(ns) = target.namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    let Written {
        mut object,
        warnings,
    } = admitted(r, &name, object, None, request.validation).map(|a| Written {
        object: a.object,
        warnings: a.warnings,
    })?;
    // The namespace is checked in the local replica, as Kubernetes checks it in its cache;
    // only a refusal is confirmed after a read barrier (the namespace may be newer than the
    // replica), so a create costs no quorum round. An event's fold needs the latest events.
    if check_namespace(engine, target).is_err() || crate::events::is_event(r) {
        proposer
            .read_barrier()
            .await
            .map_err(|e| store_failure(r, &name, e))?;
        check_namespace(engine, target)?;
    }
    if crate::events::is_event(r) {
        let prefix = flotilla_api::store_prefix(r, target.namespace);
        if let Some((key, revision, stored)) = crate::events::similar(engine, &prefix, &object) {
            let mut folded = crate::events::fold(&stored, &object);
            // A race with another fold: store this one as its own event instead.
            if let Ok(written) = proposer
                .propose(Command::update(key, folded.to_string(), Some(revision)))
                .await
            {
                meta_mut(&mut folded).insert("resourceVersion".into(), json!(written.to_string()));
                return Ok(Written {
                    object: folded,
                    warnings,
                });
            }
        }
    }
    let key = store_key(r, target.namespace.unwrap_or(""), &name);
    if !crate::services::is_service(r) {
        let revision = proposer
            .propose(Command::create(key, object.to_string()))
            .await
            .map_err(|e| store_failure(r, &name, e))?;
        meta_mut(&mut object).insert("resourceVersion".into(), json!(revision.to_string()));
        return Ok(Written { object, warnings });
    }
    crate::services::create(engine, proposer, r, &key, &name, object, warnings).await
}

/// The write of `object` over `current` (read at `revision`), keeping what the server owns
/// (uid, creation time, the status of kinds with a status subresource) and bumping the
/// generation when the spec changed. A write that changes nothing is not made (the
/// resourceVersion stays), as in Kubernetes.
#[allow(clippy::too_many_arguments)]
fn plan_replace(
    engine: &dyn Engine,
    r: &Resource,
    key: &str,
    name: &str,
    current: &Value,
    revision: u64,
    mut object: Value,
    validation: FieldValidation,
) -> Result<Attempt<Written>, WriteError> {
    if !object.is_object() {
        return Err(WriteError::bad_request(
            "the body must be a JSON object".into(),
        ));
    }
    if object["metadata"]["name"].as_str() != Some(name) {
        return Err(WriteError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    if has_status(r) {
        match current.get("status") {
            Some(status) => object["status"] = status.clone(),
            None => {
                object.as_object_mut().map(|o| o.remove("status"));
            }
        }
    }
    let meta = meta_mut(&mut object);
    meta.remove("resourceVersion");
    for owned in [
        "uid",
        "creationTimestamp",
        "namespace",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match current["metadata"].get(owned) {
            Some(v) => meta.insert(owned.into(), v.clone()),
            None => meta.remove(owned),
        };
    }
    let Written {
        mut object,
        warnings,
    } = admitted(r, name, object, Some(current), validation).map(|a| Written {
        object: a.object,
        warnings: a.warnings,
    })?;
    if object.get("spec") != current.get("spec") {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        meta_mut(&mut object).insert("generation".into(), json!(generation + 1));
    }
    let mut unchanged = current.clone();
    meta_mut(&mut unchanged).remove("resourceVersion");
    if unchanged == object {
        return Ok(Attempt::Unchanged(Written {
            object: current.clone(),
            warnings,
        }));
    }
    let gone = finalizing(r, name, current, &object)?;
    let command = if crate::services::is_service(r) {
        crate::services::replace(engine, r, key, name, revision, current, &mut object, gone)?
    } else if gone {
        // The last finalizer of an object being deleted is gone: so is the object.
        Command::delete(key, Some(revision))
    } else {
        Command::update(key, object.to_string(), Some(revision))
    };
    Ok(Attempt::Write(
        command,
        Box::new(move |written| {
            meta_mut(&mut object).insert("resourceVersion".into(), json!(written.to_string()));
            Written { object, warnings }
        }),
    ))
}

/// A `resourceVersion` the client set as a precondition (`None`: none set).
pub(crate) fn precondition(object: &Value) -> Result<Option<u64>, WriteError> {
    match object["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| WriteError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// For an object being deleted: whether the update removed its last finalizer (so it goes);
/// adding a finalizer is refused.
fn finalizing(
    r: &Resource,
    name: &str,
    current: &Value,
    object: &Value,
) -> Result<bool, WriteError> {
    if current["metadata"]["deletionTimestamp"].is_null() {
        return Ok(false);
    }
    let list = |o: &Value| -> Vec<String> {
        o["metadata"]["finalizers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (list(current), list(object));
    if let Some(added) = after.iter().find(|f| !before.contains(f)) {
        return Err(invalid(
            r,
            name,
            vec![FieldError::forbidden(
                "metadata.finalizers",
                &format!("no new finalizers can be added if the object is being deleted, found new finalizers [{added:?}]"),
            )],
        ));
    }
    // A namespace goes when the collector has emptied it, not when its metadata finalizers do.
    let namespace = r.kind == "Namespace" && r.group.is_empty();
    Ok(after.is_empty() && !namespace)
}

/// PUT: replaces the object; a `metadata.resourceVersion` in the body must be current.
pub async fn update(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    target: &Target<'_>,
    name: &str,
    request: &WriteRequest<'_>,
) -> Result<Written, WriteError> {
    let r = target.resource;
    let object = parse_body(request.body, request.content_type)?;
    let expected = precondition(&object)?;
    let key = store_key(r, target.namespace.unwrap_or(""), name);
    guaranteed_update(engine, proposer, r, &key, name, |current, revision| {
        check_precondition(r, name, &key, expected, revision)?;
        plan_replace(
            engine,
            r,
            &key,
            name,
            &current,
            revision,
            object.clone(),
            request.validation,
        )
    })
    .await
}

/// Applies `patch` to `target` by the patch's content type: JSON patch, strategic merge patch,
/// or merge patch (apply patches are treated as merge patches for now).
pub(crate) fn apply_patch(
    target: &Value,
    patch: &Value,
    content_type: &str,
) -> Result<Value, WriteError> {
    let invalid = |e: flotilla_api::PatchError| WriteError::new(422, "Invalid", e.to_string());
    if content_type.starts_with("application/json-patch+json") {
        json_patch(target, patch).map_err(invalid)
    } else if content_type.starts_with("application/strategic-merge-patch+json") {
        strategic_merge_patch(target, patch).map_err(invalid)
    } else if content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/apply-patch")
    {
        Ok(merge_patch(target, patch))
    } else {
        Err(WriteError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type})"),
        ))
    }
}

/// PATCH with the body's content type: JSON patch, merge patch, strategic merge patch (and
/// apply patches, treated as merge patches for now, which create what is missing).
pub async fn patch(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    target: &Target<'_>,
    name: &str,
    request: &WriteRequest<'_>,
) -> Result<Written, WriteError> {
    let r = target.resource;
    let patch: Value = serde_json::from_slice(request.body)
        .map_err(|e| WriteError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let key = store_key(r, target.namespace.unwrap_or(""), name);
    let patched = guaranteed_update(engine, proposer, r, &key, name, |current, revision| {
        let patched = apply_patch(&current, &patch, request.content_type)?;
        // A patch may set a resourceVersion precondition (the object as read carries its own).
        check_precondition(r, name, &key, precondition(&patched)?, revision)?;
        plan_replace(
            engine,
            r,
            &key,
            name,
            &current,
            revision,
            patched,
            request.validation,
        )
    })
    .await;
    match patched {
        // Server-side apply creates what is missing.
        Err(e) if e.code == 404 && request.content_type.starts_with("application/apply-patch") => {
            let mut object = patch.clone();
            if object["metadata"]["name"].is_null() && object.is_object() {
                meta_mut(&mut object).insert("name".into(), json!(name));
            }
            if object["metadata"]["name"].as_str() != Some(name) {
                return Err(WriteError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object["metadata"]["name"]
                )));
            }
            let body = object.to_string();
            let create_request = WriteRequest {
                body: body.as_bytes(),
                content_type: "application/json",
                validation: request.validation,
            };
            create(engine, proposer, target, &create_request).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::parse_path;
    use flotilla_store::MemoryStore;

    fn request<'a>(body: &'a [u8], content_type: &'a str) -> WriteRequest<'a> {
        WriteRequest {
            body,
            content_type,
            validation: FieldValidation::Strict,
        }
    }

    // The write functions with a JSON or protobuf body and strict validation.
    async fn create(
        store: &MemoryStore,
        _: &MemoryStore,
        target: &Target<'_>,
        body: &[u8],
        content_type: &str,
    ) -> Result<Value, WriteError> {
        let request = request(body, content_type);
        super::create(store, store, target, &request)
            .await
            .map(|w| w.object)
    }

    async fn update(
        store: &MemoryStore,
        _: &MemoryStore,
        target: &Target<'_>,
        name: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Value, WriteError> {
        let request = request(body, content_type);
        super::update(store, store, target, name, &request)
            .await
            .map(|w| w.object)
    }

    async fn patch(
        store: &MemoryStore,
        _: &MemoryStore,
        target: &Target<'_>,
        name: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<Value, WriteError> {
        let request = request(body, content_type);
        super::patch(store, store, target, name, &request)
            .await
            .map(|w| w.object)
    }

    async fn store_with_default_namespace() -> MemoryStore {
        let store = MemoryStore::new(100);
        store
            .propose(Command::create(
                "/core/namespaces/default",
                json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default"}})
                    .to_string(),
            ))
            .await
            .unwrap();
        store
    }

    fn cm(name: &str, value: &str) -> Vec<u8> {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "x"}}, "data": {"k": value}})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn create_update_patch_delete_with_kubernetes_errors() {
        let store = store_with_default_namespace().await;
        let list = parse_path(&["api", "v1", "namespaces", "default", "configmaps"]).unwrap();
        let made = create(&store, &store, &list, &cm("one", "1"), "application/json")
            .await
            .unwrap();
        assert_eq!(made["metadata"]["namespace"], "default");
        assert_eq!(made["metadata"]["resourceVersion"], "2");
        assert!(made["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36));
        assert!(made["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20));

        let again = create(&store, &store, &list, &cm("one", "1"), "application/json")
            .await
            .unwrap_err();
        assert_eq!((again.code, again.reason), (409, "AlreadyExists"));
        assert_eq!(again.message, "configmaps \"one\" already exists");

        let bad = create(
            &store,
            &store,
            &list,
            &cm("Not_Valid", "1"),
            "application/json",
        )
        .await
        .unwrap_err();
        assert_eq!((bad.code, bad.reason), (422, "Invalid"));
        assert_eq!(bad.causes[0].field, "metadata.name");
        let elsewhere = parse_path(&["api", "v1", "namespaces", "nowhere", "configmaps"]).unwrap();
        let err = create(
            &store,
            &store,
            &elsewhere,
            &cm("two", "2"),
            "application/json",
        )
        .await
        .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"nowhere\" not found")
        );
        let err = create(
            &store,
            &store,
            &list,
            b"\x6b\x38\x73\x00",
            "application/vnd.kubernetes.protobuf",
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 415);

        // PUT with a stale resourceVersion: 409 Conflict; with the current one, it applies.
        let mut stale = made.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        stale["data"]["k"] = json!("stale");
        let err = update(
            &store,
            &store,
            &list,
            "one",
            stale.to_string().as_bytes(),
            "application/json",
        )
        .await
        .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        let mut fresh = made.clone();
        fresh["data"]["k"] = json!("fresh");
        let updated = update(
            &store,
            &store,
            &list,
            "one",
            fresh.to_string().as_bytes(),
            "application/json",
        )
        .await
        .unwrap();
        assert_eq!(updated["data"]["k"], "fresh");
        assert_eq!(updated["metadata"]["uid"], made["metadata"]["uid"]);

        // The three patch types.
        let p = patch(
            &store,
            &store,
            &list,
            "one",
            br#"{"metadata":{"labels":{"tier":"a"}}}"#,
            "application/strategic-merge-patch+json",
        )
        .await
        .unwrap();
        assert_eq!(p["metadata"]["labels"], json!({"app": "x", "tier": "a"}));
        let p = patch(
            &store,
            &store,
            &list,
            "one",
            br#"{"data":{"k":null,"j":"2"}}"#,
            "application/merge-patch+json",
        )
        .await
        .unwrap();
        assert_eq!(p["data"], json!({"j": "2"}));
        let p = patch(
            &store,
            &store,
            &list,
            "one",
            br#"[{"op":"replace","path":"/data/j","value":"3"}]"#,
            "application/json-patch+json",
        )
        .await
        .unwrap();
        assert_eq!(p["data"]["j"], "3");
        let err = patch(
            &store,
            &store,
            &list,
            "one",
            br#"[{"op":"test","path":"/data/j","value":"9"}]"#,
            "application/json-patch+json",
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 422);
        let err = patch(
            &store,
            &store,
            &list,
            "nope",
            b"{}",
            "application/merge-patch+json",
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 404);

        let options = crate::deletion::parse_options(None, b"", "").unwrap();
        let delete = || crate::deletion::delete(&store, &store, &list, "one", &options);
        let gone = delete().await.unwrap();
        assert_eq!(gone["data"]["j"], "3");
        let err = delete().await.unwrap_err();
        assert_eq!(err.code, 404);
    }
}
