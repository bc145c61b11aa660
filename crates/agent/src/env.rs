//! A container's environment as Kubernetes defines it: `envFrom` first, then `env` in order
//! (values, `configMapKeyRef`, `secretKeyRef`, `fieldRef`, `resourceFieldRef`), each value
//! expanded with `$(VAR)` against what came before; and `command`/`args` expanded the same way.
//! Pure: configMaps and secrets come through [`Lookup`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// The configMaps and secrets of the pod's namespace, as the local replica has them.
pub trait Lookup {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
}

/// What the environment needs from the running pod beyond its spec.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// Why a container's configuration cannot be made (`CreateContainerConfigError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Expands `$(NAME)` with `vars`; `$$` is a literal `$`; an unknown name stays as written, as
/// the kubelet does.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `fieldRef` path `path` for `pod`.
fn field(pod: &Pod, path: &str, rt: &Runtime) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let label_or_annotation = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix("['"))
            .and_then(|k| k.strip_suffix("']"))?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let whole = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => whole(&meta.labels),
        "metadata.annotations" => whole(&meta.annotations),
        "spec.nodeName" => rt.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => rt.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => rt.host_ip.clone(),
        other => {
            if let Some(v) = label_or_annotation("metadata.labels", &meta.labels) {
                v
            } else if let Some(v) = label_or_annotation("metadata.annotations", &meta.annotations) {
                v
            } else {
                return Err(ConfigError(format!(
                    "unsupported fieldRef fieldPath {other:?}"
                )));
            }
        }
    })
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, ...), in the divisor's
/// units (default 1): CPU rounded up to whole units, as the kubelet does.
fn resource(
    container: &Container,
    name: &str,
    divisor: Option<&str>,
    node: &crate::resources::NodeCapacity,
) -> Result<String, ConfigError> {
    use crate::resources::{parse_cpu_millis, parse_quantity};
    let res = container.resources.as_ref();
    let (set, key) = name
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef resource {name:?}")))?;
    let map = match set {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let value = map.and_then(|m| m.get(key)).map(|q| q.0.clone());
    match key {
        "cpu" => {
            let millis = match value {
                Some(v) => parse_cpu_millis(&v),
                None if set == "limits" => Some(u64::from(node.cpus) * 1000),
                None => Some(0),
            }
            .ok_or_else(|| ConfigError(format!("bad cpu quantity for {name}")))?;
            let div = divisor
                .map(parse_cpu_millis)
                .unwrap_or(Some(1000))
                .filter(|d| *d > 0)
                .ok_or_else(|| ConfigError(format!("bad divisor for {name}")))?;
            Ok(millis.div_ceil(div).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match value {
                Some(v) => parse_quantity(&v),
                None if set == "limits" && key == "memory" => Some(node.memory_bytes),
                None => Some(0),
            }
            .ok_or_else(|| ConfigError(format!("bad quantity for {name}")))?;
            let div = divisor
                .map(parse_quantity)
                .unwrap_or(Some(1))
                .filter(|d| *d > 0)
                .ok_or_else(|| ConfigError(format!("bad divisor for {name}")))?;
            Ok(bytes.div_ceil(div).to_string())
        }
        _ => Err(ConfigError(format!(
            "unsupported resourceFieldRef resource {name:?}"
        ))),
    }
}

fn one(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    vars: &BTreeMap<String, String>,
    lookup: &dyn Lookup,
    rt: &Runtime,
    node: &crate::resources::NodeCapacity,
) -> Result<Option<String>, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(v) = &var.value {
        return Ok(Some(expand(v, vars)));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        return match lookup.config_map(ns, &r.name) {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(text(v))),
                None if optional => Ok(None),
                None => Err(ConfigError(format!(
                    "couldn't find key {} in ConfigMap {ns}/{}",
                    r.key, r.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        return match lookup.secret(ns, &r.name) {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(text(v))),
                None if optional => Ok(None),
                None => Err(ConfigError(format!(
                    "couldn't find key {} in Secret {ns}/{}",
                    r.key, r.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(ConfigError(format!("secret \"{}\" not found", r.name))),
        };
    }
    if let Some(r) = &from.field_ref {
        return field(pod, &r.field_path, rt).map(Some);
    }
    if let Some(r) = &from.resource_field_ref {
        let target = match r.container_name.as_deref() {
            Some(name) if !name.is_empty() => crate::spec::all_containers(pod)
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    ConfigError(format!("resourceFieldRef names no container {name:?}"))
                })?,
            _ => container,
        };
        return resource(
            target,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
            node,
        )
        .map(Some);
    }
    Ok(Some(String::new()))
}

/// The container's environment, in order (later names override earlier ones).
pub fn environment(
    pod: &Pod,
    container: &Container,
    lookup: &dyn Lookup,
    rt: &Runtime,
    node: &crate::resources::NodeCapacity,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what, name) = if let Some(r) = &from.config_map_ref {
            (
                lookup.config_map(ns, &r.name),
                r.optional == Some(true),
                "configmap",
                &r.name,
            )
        } else if let Some(r) = &from.secret_ref {
            (
                lookup.secret(ns, &r.name),
                r.optional == Some(true),
                "secret",
                &r.name,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut vars, format!("{prefix}{k}"), text(&v));
                }
            }
            None if optional => {}
            None => return Err(ConfigError(format!("{what} \"{name}\" not found"))),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(v) = one(pod, container, var, &vars, lookup, rt, node)? {
            set(&mut vars, var.name.clone(), v);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars[&k].clone();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Maps;
    impl Lookup for Maps {
        fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (ns == "default" && name == "cfg").then(|| {
                BTreeMap::from([
                    ("COLOR".to_string(), b"blue".to_vec()),
                    ("SIZE".to_string(), b"10".to_vec()),
                ])
            })
        }
        fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            (ns == "default" && name == "creds")
                .then(|| BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]))
        }
    }

    fn pod(env: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "app", "image": "busybox",
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                "env": env,
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            }]},
        }))
        .unwrap()
    }

    fn env_of(p: &Pod) -> Result<Vec<(String, String)>, ConfigError> {
        let rt = Runtime {
            pod_ip: "10.244.0.5".into(),
            host_ip: "10.0.0.1".into(),
            node_name: "n1".into(),
        };
        let node = crate::resources::NodeCapacity {
            cpus: 2,
            memory_bytes: 1 << 30,
        };
        environment(
            p,
            &p.spec.as_ref().unwrap().containers[0],
            &Maps,
            &rt,
            &node,
        )
    }

    #[test]
    fn every_kind_of_source_gives_its_value_in_order() {
        let p = pod(json!([
            {"name": "GREETING", "value": "hello $(CFG_COLOR) $$(x) $(MISSING)"},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "COLOR"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "NOPE", "optional": true}}},
        ]));
        let env: BTreeMap<String, String> = env_of(&p).unwrap().into_iter().collect();
        assert_eq!(env["CFG_COLOR"], "blue");
        assert_eq!(env["CFG_SIZE"], "10");
        assert_eq!(env["GREETING"], "hello blue $(x) $(MISSING)");
        assert_eq!(env["COLOR"], "blue");
        assert_eq!(env["PASS"], "hunter2");
        assert_eq!(env["POD"], "web");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.244.0.5");
        assert_eq!(env["NODE"], "n1");
        assert_eq!(env["CPU"], "1");
        assert_eq!(env["MEM"], "64");
        assert!(!env.contains_key("OPT"));
    }

    #[test]
    fn a_missing_key_or_object_names_it() {
        let p = pod(
            json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "NOPE"}}}]),
        );
        assert_eq!(
            env_of(&p).unwrap_err().0,
            "couldn't find key NOPE in ConfigMap default/cfg"
        );
        let p = pod(
            json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]),
        );
        assert_eq!(env_of(&p).unwrap_err().0, "secret \"gone\" not found");
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$A-$(", &vars), "1-$(B)-$(A)-$A-$(");
    }
}
