//! Subresources: `scale` (the `autoscaling/v1` Scale view of `spec.replicas`, what `kubectl
//! scale` reads and patches), `status` (the whole object on read; on write only its `status`
//! is taken, as Kubernetes does), `eviction` (a pod deletion, as `kubectl drain` asks) and
//! `binding` (a scheduler's placement of a pod on a node).

use flotilla_api::store_key;
use flotilla_store::{Command, Engine, Op, Proposer};
use serde_json::{json, Value};

use crate::objects::Target;
use crate::update::{guaranteed_update, read_object, Attempt};
use crate::writes::{admitted, apply_patch, invalid_object, WriteError};
use flotilla_api::kinds::FieldValidation;

/// Parses `…/namespaces/NS/PLURAL/NAME/SUB` and `…/PLURAL/NAME/SUB` for a declared subresource.
pub fn parse<'a>(segments: &[&'a str]) -> Option<(Target<'a>, &'a str)> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, *name, *sub),
        [plural, name, sub] => (None, *plural, *name, *sub),
        _ => return None,
    };
    let resource = flotilla_api::find(group, version, plural)?;
    if resource.namespaced != namespace.is_some() || !resource.subresources.contains(&sub) {
        return None;
    }
    Some((
        Target {
            resource,
            namespace,
            name: Some(name),
        },
        sub,
    ))
}

fn scale_of(object: &Value) -> Value {
    let selector = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}

fn not_supported(sub: &str) -> WriteError {
    WriteError::new(
        405,
        "MethodNotAllowed",
        format!("this method is not supported on the {sub} subresource"),
    )
}

/// The `Status` of an eviction or a binding made.
fn done() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    })
}

/// `POST pods/NAME/eviction` (what `kubectl drain` sends): deletes the pod with the eviction's
/// `deleteOptions`, unless a PodDisruptionBudget selecting it allows no disruption: then 429
/// `TooManyRequests`, which kubectl retries. An allowed eviction takes one disruption from the
/// budget's status in the same Raft entry as the deletion, so two evictions never both spend
/// the last one. A pod that is not Ready is evicted without spending one if the budget is
/// healthy (or says `AlwaysAllow`). kubectl 1.32 sends the Eviction as protobuf; its options
/// are then the defaults.
async fn evict(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    method: &hyper::Method,
    target: &Target<'_>,
    body: &[u8],
    content_type: &str,
) -> Result<Value, WriteError> {
    if *method != hyper::Method::POST {
        return Err(not_supported("eviction"));
    }
    let options = if content_type.contains("protobuf") || body.is_empty() {
        Vec::new()
    } else {
        let eviction: Value = serde_json::from_slice(body).map_err(|e| {
            WriteError::new(
                400,
                "BadRequest",
                format!("the Eviction is not valid JSON: {e}"),
            )
        })?;
        eviction["deleteOptions"].to_string().into_bytes()
    };
    let options = if options.is_empty() || options == b"null" {
        crate::deletion::parse_options(None, b"", "")?
    } else {
        crate::deletion::parse_options(None, &options, "application/json")?
    };
    let name = target.name.unwrap_or("");
    let namespace = target.namespace.unwrap_or("");
    let r = target.resource;
    let key = store_key(r, namespace, name);
    let store = |e: flotilla_store::StoreError| WriteError::from_store(e.code(), e.to_string());
    proposer.read_barrier().await.map_err(store)?;
    for _ in 0..5 {
        let Some(record) = engine.get(&key).map_err(store)?.1 else {
            // As any delete of a missing pod answers.
            crate::deletion::delete(engine, proposer, target, name, &options).await?;
            return Ok(done());
        };
        let pod: Value = serde_json::from_slice(&record.value)
            .map_err(|e| WriteError::new(500, "InternalError", e.to_string()))?;
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
        let prefix = format!("/policy/poddisruptionbudgets/{namespace}/");
        let budgets: Vec<(String, u64, Value)> = engine
            .list(&prefix, None, 0)
            .map_err(store)?
            .items
            .into_iter()
            .filter_map(|(k, rec)| {
                let b: Value = serde_json::from_slice(&rec.value).ok()?;
                let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
                    serde_json::from_value(b["spec"]["selector"].clone()).ok()?;
                flotilla_api::kinds::selector_matches(&selector, &labels).then_some((
                    k,
                    rec.mod_revision,
                    b,
                ))
            })
            .collect();
        let finished = matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if budgets.is_empty() || finished || !pod["metadata"]["deletionTimestamp"].is_null() {
            crate::deletion::delete(engine, proposer, target, name, &options).await?;
            return Ok(done());
        }
        if budgets.len() > 1 {
            return Err(WriteError::new(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
        let (budget_key, budget_revision, mut budget) = budgets.into_iter().next().expect("one");
        let st = &budget["status"];
        let (healthy, desired, allowed) = (
            st["currentHealthy"].as_i64().unwrap_or(0),
            st["desiredHealthy"].as_i64().unwrap_or(0),
            st["disruptionsAllowed"].as_i64().unwrap_or(0),
        );
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        let spend = if ready {
            let observed = st["observedGeneration"].as_i64().unwrap_or(0)
                >= budget["metadata"]["generation"].as_i64().unwrap_or(1);
            if allowed <= 0 || !observed {
                let mut e = WriteError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                );
                e.causes.push(flotilla_api::FieldError {
                    reason: "DisruptionBudget",
                    message: format!(
                        "The disruption budget {} needs {desired} healthy pods and has {healthy} currently",
                        budget["metadata"]["name"].as_str().unwrap_or("")
                    ),
                    field: String::new(),
                });
                return Err(e);
            }
            true
        } else {
            let always = budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
            if !(always || healthy >= desired) {
                return Err(WriteError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                ));
            }
            false
        };
        let pod_op =
            match flotilla_api::deletion::plan(r, &pod, &options, std::time::SystemTime::now()) {
                flotilla_api::deletion::Deletion::Remove => Op::Delete {
                    key: key.clone(),
                    expected: Some(record.mod_revision),
                },
                flotilla_api::deletion::Deletion::Mark(marked) => Op::Update {
                    key: key.clone(),
                    value: marked.to_string().into_bytes(),
                    expected: Some(record.mod_revision),
                },
                flotilla_api::deletion::Deletion::Unchanged => return Ok(done()),
            };
        let mut ops = vec![pod_op];
        if spend {
            budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
            ops.push(Op::Update {
                key: budget_key,
                value: budget.to_string().into_bytes(),
                expected: Some(budget_revision),
            });
        }
        match proposer.propose(Command::batch(ops)).await {
            Ok(_) => return Ok(done()),
            // The pod or the budget changed meanwhile: read both again.
            Err(flotilla_store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store(e)),
        }
    }
    Err(WriteError::new(
        409,
        "Conflict",
        format!("the eviction of pod {name} kept conflicting with other writes; try again"),
    ))
}

/// `POST pods/NAME/binding` with a `Binding` (`target.name` the node): sets `spec.nodeName`
/// of a pod that has none, with `PodScheduled=True`; a pod already bound is a 409.
async fn bind(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    method: &hyper::Method,
    target: &Target<'_>,
    body: &[u8],
) -> Result<Value, WriteError> {
    if *method != hyper::Method::POST {
        return Err(not_supported("binding"));
    }
    let binding: Value = serde_json::from_slice(body).map_err(|e| {
        WriteError::new(
            400,
            "BadRequest",
            format!("the Binding is not valid JSON: {e}"),
        )
    })?;
    let name = target.name.unwrap_or("");
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(invalid_object(
            "",
            "Binding",
            name,
            vec![flotilla_api::FieldError::required("target.name")],
        ));
    }
    let r = target.resource;
    let key = store_key(r, target.namespace.unwrap_or(""), name);
    guaranteed_update(engine, proposer, r, &key, name, |object, revision| {
        if let Some(bound) = object["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(WriteError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""
                ),
            ));
        }
        let mut updated = object.clone();
        updated["spec"]["nodeName"] = json!(node);
        let conditions = updated["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": flotilla_api::meta::now_rfc3339(),
        }));
        updated["status"]["conditions"] = json!(conditions);
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let command = Command::update(key.clone(), updated.to_string(), Some(revision));
        Ok(Attempt::Write(
            command,
            Box::new(|_| done()),
        ))
    })
    .await
}

/// Serves a subresource request: the answer, or why not.
pub async fn handle(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    method: &hyper::Method,
    target: &Target<'_>,
    sub: &str,
    body: &[u8],
    content_type: &str,
) -> Result<Value, WriteError> {
    let r = target.resource;
    let name = target.name.unwrap_or("");
    let key = store_key(r, target.namespace.unwrap_or(""), name);
    if sub == "eviction" {
        return evict(engine, proposer, method, target, body, content_type).await;
    }
    if sub == "binding" {
        return bind(engine, proposer, method, target, body).await;
    }
    if !matches!(sub, "scale" | "status") {
        return Err(not_supported(sub));
    }
    if *method == hyper::Method::GET {
        let (object, _) = read_object(engine, proposer, r, &key, name, true).await?;
        return Ok(if sub == "scale" {
            scale_of(&object)
        } else {
            object
        });
    }
    guaranteed_update(engine, proposer, r, &key, name, |object, revision| {
        let view = if sub == "scale" {
            scale_of(&object)
        } else {
            object.clone()
        };
        let input = match *method {
            hyper::Method::PUT => serde_json::from_slice::<Value>(body).map_err(|e| {
                WriteError::new(
                    400,
                    "BadRequest",
                    format!("the body is not valid JSON: {e}"),
                )
            })?,
            hyper::Method::PATCH => {
                let patch: Value = serde_json::from_slice(body).map_err(|e| {
                    WriteError::new(
                        400,
                        "BadRequest",
                        format!("the patch is not valid JSON: {e}"),
                    )
                })?;
                apply_patch(&view, &patch, content_type)?
            }
            _ => return Err(not_supported(sub)),
        };
        // A resourceVersion the client sent is a precondition, as for any update (a status
        // writer that read an older object must not overwrite a newer one).
        let expected = crate::writes::precondition(&input)?;
        crate::update::check_precondition(r, name, &key, expected, revision)?;
        let mut updated = object.clone();
        if sub == "scale" {
            let replicas = input["spec"]["replicas"]
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    invalid_object(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![flotilla_api::FieldError::invalid(
                            "spec.replicas",
                            &input["spec"]["replicas"].to_string(),
                            "must be greater than or equal to 0",
                        )],
                    )
                })?;
            updated["spec"]["replicas"] = json!(replicas);
            if replicas != object["spec"]["replicas"].as_i64().unwrap_or(1) {
                let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                updated["metadata"]["generation"] = json!(generation + 1);
            }
        } else {
            updated["status"] = input["status"].clone();
        }
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        // The result is an object like any other write's: decoded, defaulted, validated (a
        // negative replica count or a malformed status is a 422 naming the field).
        let mut updated = admitted(r, name, updated, Some(&object), FieldValidation::Warn)?.object;
        let command = Command::update(key.clone(), updated.to_string(), Some(revision));
        let scale = sub == "scale";
        Ok(Attempt::Write(
            command,
            Box::new(move |written| {
                updated["metadata"]["resourceVersion"] = json!(written.to_string());
                if scale {
                    scale_of(&updated)
                } else {
                    updated
                }
            }),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::MemoryStore;

    #[tokio::test]
    async fn binding_sets_the_node_once() {
        let store = MemoryStore::new(100);
        let pod = json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        store
            .propose(Command::create("/core/pods/default/p", pod.to_string()))
            .await
            .unwrap();
        let (target, sub) =
            parse(&["api", "v1", "namespaces", "default", "pods", "p", "binding"]).unwrap();
        let body = br#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
        let post = hyper::Method::POST;
        let ok = handle(
            &store,
            &store,
            &post,
            &target,
            sub,
            body,
            "application/json",
        )
        .await
        .unwrap();
        assert_eq!(ok["status"], "Success");
        let (_, rec) = store.get("/core/pods/default/p").unwrap();
        let stored: Value = serde_json::from_slice(&rec.unwrap().value).unwrap();
        assert_eq!(stored["spec"]["nodeName"], "n1");
        assert_eq!(stored["status"]["conditions"][0]["type"], "PodScheduled");
        let again = handle(
            &store,
            &store,
            &post,
            &target,
            sub,
            body,
            "application/json",
        )
        .await
        .unwrap_err();
        assert_eq!(again.code, 409);
        assert!(
            again.message.contains("already assigned to node \"n1\""),
            "{}",
            again.message
        );
        let empty = br#"{"target":{}}"#;
        let bad = handle(
            &store,
            &store,
            &post,
            &target,
            sub,
            empty,
            "application/json",
        )
        .await
        .unwrap_err();
        assert_eq!(bad.code, 422);
    }

    #[tokio::test]
    async fn scale_reads_and_patches_spec_replicas() {
        let store = MemoryStore::new(100);
        let deploy = json!({"kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}});
        store
            .propose(Command::create(
                "/apps/deployments/default/web",
                deploy.to_string(),
            ))
            .await
            .unwrap();
        let (target, sub) = parse(&[
            "apis",
            "apps",
            "v1",
            "namespaces",
            "default",
            "deployments",
            "web",
            "scale",
        ])
        .unwrap();
        assert_eq!(sub, "scale");
        let got = handle(&store, &store, &hyper::Method::GET, &target, sub, b"", "")
            .await
            .unwrap();
        assert_eq!(got["spec"]["replicas"], 2);
        assert_eq!(got["status"]["selector"], "app=web");
        let patched = handle(
            &store,
            &store,
            &hyper::Method::PATCH,
            &target,
            sub,
            br#"{"spec":{"replicas":5}}"#,
            "application/merge-patch+json",
        )
        .await
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 5);
        let (_, rec) = store.get("/apps/deployments/default/web").unwrap();
        let stored: Value = serde_json::from_slice(&rec.unwrap().value).unwrap();
        assert_eq!(stored["spec"]["replicas"], 5);
        assert_eq!(stored["metadata"]["generation"], 2);
        let err = handle(
            &store,
            &store,
            &hyper::Method::PATCH,
            &target,
            sub,
            br#"{"spec":{"replicas":-1}}"#,
            "application/merge-patch+json",
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(parse(&[
            "api",
            "v1",
            "namespaces",
            "default",
            "configmaps",
            "x",
            "scale"
        ])
        .is_none());
    }
}
