//! The PATCH bodies the Kubernetes API accepts, applied to an object's JSON:
//!
//! * JSON merge patch (RFC 7386, `application/merge-patch+json`): objects merge, `null`
//!   deletes, everything else (lists too) replaces;
//! * JSON patch (RFC 6902, `application/json-patch+json`): `add`, `remove`, `replace`, `move`,
//!   `copy`, `test` at JSON pointers;
//! * strategic merge patch (`application/strategic-merge-patch+json`, what `kubectl apply`,
//!   `label`, `scale` and `patch` send by default): like a merge patch, except that the lists
//!   Kubernetes declares mergeable merge item by item on a key (containers by `name`, container
//!   ports by `containerPort`, …), and the directives `$patch` (`replace`, `delete`, `merge`),
//!   `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys` are obeyed.
//!
//! Which lists merge, and on which key, depends on where they are: [`list_strategy`] knows the
//! fields of the resources Flotilla serves.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch must be a JSON object")]
    NotAnObject,
    #[error("the JSON patch must be a list of operations")]
    NotAList,
    #[error("operation {index}: {reason}")]
    Operation { index: usize, reason: String },
    #[error("invalid JSON pointer {0:?}: it must be empty or start with '/'")]
    Pointer(String),
    #[error("{path}: {reason}")]
    Strategic { path: String, reason: String },
}

/// RFC 7386.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Splits a JSON pointer into unescaped reference tokens.
fn pointer_tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| PatchError::Pointer(pointer.to_string()))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The container a pointer's last token is in, and that token.
fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
) -> Result<(&'a mut Value, String), String> {
    let (last, path) = tokens
        .split_last()
        .ok_or("the operation cannot target the whole document")?;
    let mut cur = doc;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or(format!("{t:?} does not exist"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an index"))?;
                a.get_mut(i).ok_or(format!("index {i} is out of range"))?
            }
            _ => return Err(format!("{t:?} is inside a value that is not a container")),
        };
    }
    Ok((cur, last.clone()))
}

fn get_at<'a>(doc: &'a Value, tokens: &[String]) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t).ok_or(format!("{t:?} does not exist"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("{t:?} is not an index"))?;
                a.get(i).ok_or(format!("index {i} is out of range"))?
            }
            _ => return Err(format!("{t:?} is inside a value that is not a container")),
        };
    }
    Ok(cur)
}

fn add_at(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    if tokens.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(doc, tokens)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| format!("{last:?} is not an index"))?;
                if i > a.len() {
                    return Err(format!("index {i} is past the end of the list"));
                }
                a.insert(i, value);
            }
        }
        _ => return Err("the parent is not a container".into()),
    }
    Ok(())
}

fn remove_at(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (parent, last) = parent_mut(doc, tokens)?;
    match parent {
        Value::Object(m) => m.remove(&last).ok_or(format!("{last:?} does not exist")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("{last:?} is not an index"))?;
            if i >= a.len() {
                return Err(format!("index {i} is out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err("the parent is not a container".into()),
    }
}

/// RFC 6902. Either every operation applies or the document is unchanged.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or(PatchError::NotAList)?;
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let fail = |reason: String| PatchError::Operation { index, reason };
        let field = |name: &str| -> Result<&str, PatchError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| fail(format!("missing {name:?}")))
        };
        let path = pointer_tokens(field("path")?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| fail("missing \"value\"".into()))
        };
        match field("op")? {
            "add" => add_at(&mut doc, &path, value()?).map_err(fail)?,
            "remove" => {
                remove_at(&mut doc, &path).map_err(fail)?;
            }
            "replace" => {
                get_at(&doc, &path).map_err(fail)?;
                if path.is_empty() {
                    doc = value()?;
                } else {
                    remove_at(&mut doc, &path).map_err(fail)?;
                    add_at(&mut doc, &path, value()?).map_err(fail)?;
                }
            }
            "move" => {
                let from = pointer_tokens(field("from")?)?;
                if path.starts_with(&from) && path.len() > from.len() {
                    return Err(fail("cannot move a value into itself".into()));
                }
                let moved = remove_at(&mut doc, &from).map_err(fail)?;
                add_at(&mut doc, &path, moved).map_err(fail)?;
            }
            "copy" => {
                let from = pointer_tokens(field("from")?)?;
                let copied = get_at(&doc, &from).map_err(fail)?.clone();
                add_at(&mut doc, &path, copied).map_err(fail)?;
            }
            "test" => {
                let actual = get_at(&doc, &path).map_err(fail)?;
                if *actual != value()? {
                    return Err(fail(format!("test failed: the value is {actual}")));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

/// How a list field merges in a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's (the default).
    Replace,
    /// Items are objects merged on this key.
    MergeOnKey(&'static str),
    /// A list of scalars merged as a set (finalizers).
    MergePrimitives,
}

/// The strategy of list `field` inside an object reached by `parents` (field names from the
/// object's root, list indexes left out), as the Kubernetes types declare them.
pub fn list_strategy(parents: &[&str], field: &str) -> ListStrategy {
    use ListStrategy::*;
    let parent = parents.last().copied().unwrap_or("");
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match field {
        "containers" | "initContainers" | "ephemeralContainers" => MergeOnKey("name"),
        "ports" if in_container => MergeOnKey("containerPort"),
        "env" if in_container => MergeOnKey("name"),
        "volumeMounts" if in_container => MergeOnKey("mountPath"),
        "volumeDevices" if in_container => MergeOnKey("devicePath"),
        // ServiceSpec.ports.
        "ports" if parent == "spec" => MergeOnKey("port"),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => MergeOnKey("name"),
        "hostAliases" => MergeOnKey("ip"),
        "topologySpreadConstraints" => MergeOnKey("topologyKey"),
        "ownerReferences" if parent == "metadata" => MergeOnKey("uid"),
        "finalizers" if parent == "metadata" => MergePrimitives,
        // Pod, node and workload status conditions; node addresses.
        "conditions" if parent == "status" => MergeOnKey("type"),
        "addresses" if parent == "status" => MergeOnKey("type"),
        _ => Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to an object's JSON.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject);
    }
    let mut parents = Vec::new();
    Ok(merge_object(target, patch, &mut parents)?.unwrap_or(Value::Object(Map::new())))
}

fn strategic_err(parents: &[&str], reason: impl Into<String>) -> PatchError {
    PatchError::Strategic {
        path: if parents.is_empty() {
            ".".into()
        } else {
            parents.join(".")
        },
        reason: reason.into(),
    }
}

/// Merges patch object `patch` into `target`; `None` when the patch deletes it.
fn merge_object<'p>(
    target: &Value,
    patch: &'p Value,
    parents: &mut Vec<&'p str>,
) -> Result<Option<Value>, PatchError> {
    let p = patch.as_object().expect("callers pass objects");
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut replaced = p.clone();
            replaced.remove("$patch");
            return Ok(Some(Value::Object(replaced)));
        }
        Some("merge") | None => {}
        Some(other) => return Err(strategic_err(parents, format!("unknown $patch {other:?}"))),
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if k == "$patch"
            || k == "$retainKeys"
            || k.starts_with(SET_ORDER)
            || k.starts_with(DELETE_PRIMITIVES)
        {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let current = out.get(k).cloned().unwrap_or(Value::Null);
        parents.push(k.as_str());
        let merged = match v {
            Value::Object(_) => merge_object(&current, v, parents)?,
            Value::Array(items) => {
                let strategy = list_strategy(&parents[..parents.len() - 1], k);
                Some(merge_list(&current, items, strategy, parents)?)
            }
            scalar => Some(scalar.clone()),
        };
        parents.pop();
        match merged {
            Some(m) => {
                out.insert(k.clone(), m);
            }
            None => {
                out.remove(k);
            }
        }
    }
    // Scalars to drop from primitive lists.
    for (k, v) in p {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVES) {
            let drop = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|item| !drop.contains(item));
            }
        }
    }
    // The order the patch's author wants for merged lists.
    for (k, v) in p {
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            let order = v.as_array().cloned().unwrap_or_default();
            let strategy = list_strategy(parents, field);
            if let Some(Value::Array(list)) = out.get_mut(field) {
                reorder(list, &order, strategy);
            }
        }
    }
    // Union types: only the listed keys (and what the patch sets) stay.
    if let Some(retain) = p.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| strategic_err(parents, "$retainKeys must be a list"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()) || p.contains_key(k));
    }
    Ok(Some(Value::Object(out)))
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.as_object()?.get(key)
}

fn merge_list<'p>(
    current: &Value,
    items: &'p [Value],
    strategy: ListStrategy,
    parents: &mut Vec<&'p str>,
) -> Result<Value, PatchError> {
    let existing = current.as_array().cloned().unwrap_or_default();
    match strategy {
        ListStrategy::Replace => Ok(Value::Array(
            items
                .iter()
                .filter(|i| key_of(i, "$patch").is_none())
                .cloned()
                .collect(),
        )),
        ListStrategy::MergePrimitives => {
            let mut out = existing;
            for item in items {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeOnKey(key) => {
            // `{"$patch": "replace"}` among the items: the other items are the whole list.
            if items
                .iter()
                .any(|i| key_of(i, "$patch").and_then(Value::as_str) == Some("replace"))
            {
                return Ok(Value::Array(
                    items
                        .iter()
                        .filter(|i| key_of(i, "$patch").is_none())
                        .cloned()
                        .collect(),
                ));
            }
            let mut out = existing;
            for item in items {
                let Some(id) = key_of(item, key) else {
                    return Err(strategic_err(
                        parents,
                        format!("an item has no merge key {key:?}"),
                    ));
                };
                let at = out.iter().position(|o| key_of(o, key) == Some(id));
                match (
                    at,
                    merge_object(at.map_or(&Value::Null, |i| &out[i]), item, parents)?,
                ) {
                    (Some(i), Some(merged)) => out[i] = merged,
                    (Some(i), None) => {
                        out.remove(i);
                    }
                    (None, Some(merged)) => out.push(merged),
                    (None, None) => {}
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Orders `list` as `order` lists it (items not named keep their relative order, after).
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |item: &Value| -> usize {
        let position = match strategy {
            ListStrategy::MergeOnKey(key) => order
                .iter()
                .position(|o| key_of(o, key).is_some() && key_of(o, key) == key_of(item, key)),
            _ => order.iter().position(|o| o == item),
        };
        position.unwrap_or(order.len())
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a"]},
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]}}
            }
        })
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let patch = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(
            merge_patch(&target, &patch),
            json!({"a": "z", "c": {"d": "e"}, "l": [3]})
        );
        assert_eq!(merge_patch(&json!({"a": 1}), &json!("x")), json!("x"));
    }

    #[test]
    fn json_patch_applies_every_op_or_none() {
        let target = json!({"a": {"b": [1, 2]}, "c": "d", "e~/f": 1});
        let patch = json!([
            {"op": "add", "path": "/a/b/1", "value": 9},
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "x"},
            {"op": "copy", "from": "/c", "path": "/k"},
            {"op": "move", "from": "/k", "path": "/m"},
            {"op": "remove", "path": "/e~0~1f"},
            {"op": "test", "path": "/a/b/0", "value": 1}
        ]);
        assert_eq!(
            json_patch(&target, &patch).unwrap(),
            json!({"a": {"b": [1, 9, 2, 3]}, "c": "x", "m": "x"})
        );
        let failing = json!([
            {"op": "replace", "path": "/c", "value": "x"},
            {"op": "test", "path": "/c", "value": "nope"}
        ]);
        let err = json_patch(&target, &failing).unwrap_err();
        assert!(
            matches!(err, PatchError::Operation { index: 1, .. }),
            "{err}"
        );
        assert!(json_patch(&target, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&target, &json!([{"op": "frob", "path": "/c"}])).is_err());
        assert!(json_patch(&target, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_ports_by_container_port() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 443}]}
        ]}}}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2, "{out:#}");
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(
            containers[0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 443}])
        );
        assert_eq!(
            containers[0]["env"][1]["name"], "B",
            "untouched fields stay"
        );
        assert_eq!(containers[1]["name"], "sidecar");
    }

    /// What `kubectl apply` sends after a container and an env entry were removed from the
    /// file and the image changed.
    #[test]
    fn strategic_merge_obeys_kubectl_apply_directives() {
        let patch = json!({
            "metadata": {"labels": {"tier": null}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [
                    {"name": "web", "image": "nginx:3",
                     "$setElementOrder/env": [{"name": "A"}],
                     "env": [{"$patch": "delete", "name": "B"}]},
                    {"$patch": "delete", "name": "sidecar"}
                ]
            }}}
        });
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "{out:#}");
        assert_eq!(containers[0]["image"], "nginx:3");
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert!(!out.to_string().contains("$setElementOrder"));
    }

    #[test]
    fn strategic_merge_orders_replaces_retains_and_deletes_primitives() {
        // $setElementOrder puts a new container first.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "init"}, {"name": "web"}, {"name": "sidecar"}],
            "containers": [{"name": "init", "image": "busybox"}]
        }}}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["init", "web", "sidecar"]);

        // $patch: replace on a list and on a map.
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"}, {"name": "only", "image": "x"}
        ]}}}, "metadata": {"labels": {"$patch": "replace", "new": "1"}}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        assert_eq!(out["metadata"]["labels"], json!({"new": "1"}));

        // $retainKeys: switching the strategy to Recreate drops rollingUpdate.
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        // Finalizers merge as a set; $deleteFromPrimitiveList removes.
        let patch = json!({"metadata": {"finalizers": ["b", "a"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));

        // Lists without a strategy are replaced, as with a merge patch.
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k"}]}}}});
        let out = strategic_merge_patch(&deployment(), &patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k"}])
        );

        // Service ports merge on `port`.
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let out =
            strategic_merge_patch(&svc, &json!({"spec": {"ports": [{"port": 443}]}})).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http"}, {"port": 443}])
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..100).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// A merge patch applied twice changes nothing more, and without lists or `$`
        /// directives a strategic merge patch is exactly a merge patch.
        #[test]
        fn merge_patches_are_idempotent_and_strategic_agrees(
            target in json_value(),
            patch in json_value(),
        ) {
            let once = merge_patch(&target, &patch);
            proptest::prop_assert_eq!(merge_patch(&once, &patch), once.clone());
            if patch.is_object() && !patch.to_string().contains('[') {
                let strategic = strategic_merge_patch(&target, &patch).unwrap();
                proptest::prop_assert_eq!(strategic, once);
            }
        }
    }

    #[test]
    fn strategic_merge_refuses_what_it_cannot_apply() {
        let err = strategic_merge_patch(&deployment(), &json!([1])).unwrap_err();
        assert_eq!(err, PatchError::NotAnObject);
        let no_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = strategic_merge_patch(&deployment(), &no_key).unwrap_err();
        assert!(
            matches!(&err, PatchError::Strategic { path, .. } if path == "spec.template.spec.containers"),
            "{err}"
        );
        let bad = json!({"metadata": {"$patch": "frob"}});
        assert!(strategic_merge_patch(&deployment(), &bad).is_err());
    }
}
