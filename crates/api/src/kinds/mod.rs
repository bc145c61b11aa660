//! Admission of a written object, as the Kubernetes API server does it: the JSON is decoded into
//! the resource's type from `k8s-openapi` (a wrong type is a 400 naming the field; an unknown
//! field is a 400 under `fieldValidation=Strict`, a warning otherwise, and is dropped), then
//! defaulted (`replicas: 1`, `imagePullPolicy`, `protocol: TCP` …) and validated (names, labels,
//! containers, ports, selectors matching templates, immutable fields), each failure a
//! [`FieldError`] with its path (`spec.template.spec.containers[0].name`).
//!
//! The same types give the OpenAPI schemas ([`openapi_schemas`]) that `kubectl explain` reads.

mod core;
mod pod;
mod workloads;

pub use pod::{set_default_toleration_seconds, NODE_DOWN_TAINTS};
pub use workloads::priority_of;
pub use workloads::selector_matches;

use std::collections::BTreeMap;

use k8s_openapi::api::{apps, batch, core::v1 as core_v1, discovery, policy, scheduling};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::validation::{annotations, dns1123_label, dns1123_subdomain, labels, FieldError};
use crate::Resource;

/// What the client asked for unknown fields (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in a `Warning` header (the server's default).
    #[default]
    Warn,
    /// Refuse the object (kubectl's default).
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter's value; `None` for anything else.
    pub fn parse(value: &str) -> Option<FieldValidation> {
        match value {
            "Ignore" => Some(FieldValidation::Ignore),
            "Warn" => Some(FieldValidation::Warn),
            "Strict" => Some(FieldValidation::Strict),
            _ => None,
        }
    }
}

/// An admitted object: decoded, defaulted and valid, in the form to store.
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    /// For `Warning` headers (unknown fields under `Warn`).
    pub warnings: Vec<String>,
}

/// Why an object was refused.
#[derive(Debug, PartialEq)]
pub enum Rejection {
    /// Not decodable as the resource's type (400 BadRequest).
    Decode(String),
    /// Invalid fields (422 Invalid).
    Invalid(Vec<FieldError>),
}

/// A resource's type with its defaulting and validation.
trait Kind: DeserializeOwned + Serialize {
    /// On an update, before defaulting: what the new object keeps from the old one.
    fn update_from(&mut self, _old: &Self) {}
    fn default(&mut self) {}
    fn validate(&self, _errors: &mut Vec<FieldError>) {}
    /// Rules on an update only: fields that may not change.
    fn validate_update(&self, _old: &Self, _errors: &mut Vec<FieldError>) {}
}

/// Runs `f` with the Rust type of `r`'s kind as `K`.
macro_rules! with_kind {
    ($r:expr, $f:ident, $($arg:expr),*) => {
        match $r.kind {
            "Namespace" => $f::<core_v1::Namespace>($($arg),*),
            "Pod" => $f::<core_v1::Pod>($($arg),*),
            "Service" => $f::<core_v1::Service>($($arg),*),
            "Endpoints" => $f::<core_v1::Endpoints>($($arg),*),
            "ConfigMap" => $f::<core_v1::ConfigMap>($($arg),*),
            "Secret" => $f::<core_v1::Secret>($($arg),*),
            "Node" => $f::<core_v1::Node>($($arg),*),
            "Event" => $f::<core_v1::Event>($($arg),*),
            "ServiceAccount" => $f::<core_v1::ServiceAccount>($($arg),*),
            "Deployment" => $f::<apps::v1::Deployment>($($arg),*),
            "ReplicaSet" => $f::<apps::v1::ReplicaSet>($($arg),*),
            "DaemonSet" => $f::<apps::v1::DaemonSet>($($arg),*),
            "Job" => $f::<batch::v1::Job>($($arg),*),
            "CronJob" => $f::<batch::v1::CronJob>($($arg),*),
            "PodDisruptionBudget" => $f::<policy::v1::PodDisruptionBudget>($($arg),*),
            "EndpointSlice" => $f::<discovery::v1::EndpointSlice>($($arg),*),
            "PriorityClass" => $f::<scheduling::v1::PriorityClass>($($arg),*),
            other => unreachable!("no type for kind {other}"),
        }
    };
}

/// Decodes, defaults and validates `object` as a `r`; `old` is the stored object on an update.
/// `kind` and `apiVersion` may be missing (they are set from `r`); if present they must match.
pub fn admit(
    r: &Resource,
    mut object: Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> Result<Admitted, Rejection> {
    if !object.is_object() {
        return Err(Rejection::Decode("the body must be a JSON object".into()));
    }
    let mut errors = type_meta(r, &object);
    if !errors.is_empty() {
        return Err(Rejection::Invalid(errors));
    }
    object["kind"] = Value::from(r.kind);
    object["apiVersion"] = Value::from(r.api_version());
    let admitted = with_kind!(r, admit_as, r, object, old, validation)?;
    errors.extend(object_meta(r, &admitted.object["metadata"]));
    if errors.is_empty() {
        Ok(admitted)
    } else {
        Err(Rejection::Invalid(errors))
    }
}

fn admit_as<K: Kind>(
    r: &Resource,
    object: Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> Result<Admitted, Rejection> {
    let (mut typed, unknown) = decode::<K>(r, object)?;
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        let each: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match validation {
            FieldValidation::Strict => {
                return Err(Rejection::Decode(format!(
                    "strict decoding error: {}",
                    each.join(", ")
                )))
            }
            FieldValidation::Warn => warnings = each,
            FieldValidation::Ignore => {}
        }
    }
    // The stored object was admitted once, so it decodes; if it somehow does not, there is
    // nothing to compare with.
    let old = old
        .and_then(|o| decode::<K>(r, o.clone()).ok())
        .map(|(o, _)| o);
    if let Some(old) = &old {
        typed.update_from(old);
    }
    typed.default();
    let mut errors = Vec::new();
    typed.validate(&mut errors);
    if let Some(old) = &old {
        typed.validate_update(old, &mut errors);
    }
    if !errors.is_empty() {
        return Err(Rejection::Invalid(errors));
    }
    let object = serde_json::to_value(&typed).map_err(|e| Rejection::Decode(e.to_string()))?;
    Ok(Admitted { object, warnings })
}

/// Decodes `object` as `K`, collecting the paths of fields `K` does not have.
fn decode<K: DeserializeOwned>(r: &Resource, object: Value) -> Result<(K, Vec<String>), Rejection> {
    let mut unknown = Vec::new();
    let typed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        object,
        &mut |path: serde_ignored::Path| unknown.push(ignored_path(&path)),
    ))
    .map_err(|e| {
        let path = error_path(e.path());
        let at = if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        };
        Rejection::Decode(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {at}{err}",
            kind = r.kind,
            version = r.version,
            err = e.inner(),
        ))
    })?;
    Ok((typed, unknown))
}

/// `spec.containers[0].foo`, as Kubernetes names a field.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .fold(String::new(), |acc, segment| match segment {
            Segment::Seq { index } => format!("{acc}[{index}]"),
            Segment::Map { key } => join(&acc, key),
            Segment::Enum { variant } => join(&acc, variant),
            Segment::Unknown => acc,
        })
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `kind` and `apiVersion`, when given, must be the resource's.
fn type_meta(r: &Resource, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(kind) = object["kind"].as_str().filter(|k| *k != r.kind) {
        errors.push(FieldError::invalid(
            "kind",
            kind,
            &format!("must be {}", r.kind),
        ));
    }
    if let Some(v) = object["apiVersion"]
        .as_str()
        .filter(|v| *v != r.api_version())
    {
        errors.push(FieldError::invalid(
            "apiVersion",
            v,
            &format!("must be {}", r.api_version()),
        ));
    }
    errors
}

/// What every object's metadata must satisfy.
fn object_meta(r: &Resource, meta: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = meta["name"].as_str().unwrap_or("");
    // Namespaces and services are DNS labels (they become DNS names); the rest subdomains.
    errors.extend(match r.plural {
        "namespaces" | "services" => dns1123_label("metadata.name", name),
        _ => dns1123_subdomain("metadata.name", name),
    });
    errors.extend(labels("metadata.labels", &string_map(&meta["labels"])));
    errors.extend(annotations(
        "metadata.annotations",
        &string_map(&meta["annotations"]),
    ));
    errors
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn schema_of<K: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<K>()
}

/// The OpenAPI v3 schemas (`components.schemas`) of `resources` and every type they use, each
/// resource's schema marked with its `x-kubernetes-group-version-kind` (which `kubectl explain`
/// looks for).
pub fn openapi_schemas(resources: &[&Resource]) -> Map<String, Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut names = Vec::new();
    for r in resources {
        let schema = with_kind!(r, schema_of, &mut generator);
        let name = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit('/').next())
            .map(str::to_string);
        names.push((r, name));
    }
    let mut schemas = generator.take_definitions(true);
    for (r, name) in names {
        if let Some(schema) = name.and_then(|n| schemas.get_mut(&n)) {
            schema["x-kubernetes-group-version-kind"] = serde_json::json!([
                {"group": r.group, "version": r.version, "kind": r.kind}
            ]);
        }
    }
    schemas
}

#[cfg(test)]
mod tests;
