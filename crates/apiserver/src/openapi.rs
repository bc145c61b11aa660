//! OpenAPI v3, as much as kubectl needs for `apply` and `create -f` without
//! `--validate=false`: per group-version, a PATCH operation for each resource carrying
//! `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter. (With that,
//! kubectl leaves validation to the server and computes strategic merge patches from its own
//! compiled-in types.) `components.schemas` are generated from the `k8s-openapi` types, each
//! kind's schema marked with its group-version-kind, for `kubectl explain`.
//!
//! The documents never change while the binary runs: each is built once and kept.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use bytes::Bytes;

use flotilla_api::{Resource, RESOURCES};
use serde_json::{json, Value};

/// `api/v1`, `apis/apps/v1`: the group-version's path segment in `/openapi/v3/...`.
fn gv_path(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// Every group-version's document, serialised, with the hash its URL carries.
fn documents() -> &'static BTreeMap<String, (Bytes, u64)> {
    static DOCUMENTS: OnceLock<BTreeMap<String, (Bytes, u64)>> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        RESOURCES
            .iter()
            .map(gv_path)
            .filter_map(|gv| {
                let text = Bytes::from(build(&gv)?.to_string());
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                text.hash(&mut hasher);
                Some((gv, (text, hasher.finish())))
            })
            .collect()
    })
}

/// The serialised document of one group-version (`api/v1`, `apis/apps/v1`), if served.
pub fn document_bytes(gv: &str) -> Option<Bytes> {
    documents().get(gv).map(|(text, _)| text.clone())
}

/// The document of one group-version, parsed (for tests).
#[cfg(test)]
fn document(gv: &str) -> Option<Value> {
    document_bytes(gv).map(|b| serde_json::from_slice(&b).expect("our own JSON"))
}

fn build(gv: &str) -> Option<Value> {
    let resources: Vec<&Resource> = RESOURCES.iter().filter(|r| gv_path(r) == gv).collect();
    if resources.is_empty() {
        return None;
    }
    let schemas = flotilla_api::kinds::openapi_schemas(&resources);
    let mut paths = serde_json::Map::new();
    for r in resources {
        let path = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{gv}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", r.kind),
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Flotilla", "version": crate::discovery::version()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `GET /openapi/v3`: every group-version with a URL that changes when its document does.
pub fn index() -> Value {
    let paths: serde_json::Map<String, Value> = documents()
        .iter()
        .map(|(gv, (_, hash))| {
            let url = format!("/openapi/v3/{gv}?hash={hash:016X}");
            (gv.clone(), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_has_a_patch_operation_kubectl_recognises() {
        let index = index();
        assert!(index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        assert!(index["paths"]["apis/apps/v1"].is_object());
        let doc = document("apis/apps/v1").unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let core = document("api/v1").unwrap();
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(document("apis/nope/v1").is_none());
        // `kubectl explain deployment.spec` finds the kind by its group-version-kind.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let deployment = schemas
            .values()
            .find(|s| s["x-kubernetes-group-version-kind"][0]["kind"] == "Deployment")
            .expect("a schema for Deployment");
        assert!(deployment["properties"]["spec"]["description"].is_string());
        assert!(schemas.contains_key("io.k8s.api.apps.v1.DeploymentSpec"));
    }
}
