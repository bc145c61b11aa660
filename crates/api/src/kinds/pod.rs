//! Pods and pod templates: the defaults Kubernetes fills in and the checks it makes on a
//! `PodSpec`, shared by pods and every workload's template (`spec.template.spec`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe, Toleration};

use super::Kind;
use crate::validation::{dns1123_label, FieldError};

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// The defaults of a pod spec. `restart_always`: a pod and the templates of deployments,
/// replica sets and daemon sets default `restartPolicy` to `Always`; a job's template has none.
pub(super) fn default_spec(spec: &mut PodSpec, restart_always: bool) {
    if restart_always {
        spec.restart_policy.get_or_insert_with(|| "Always".into());
    }
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    let init = spec.init_containers.iter_mut().flatten();
    for c in spec.containers.iter_mut().chain(init) {
        default_container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        // A volume that names no source is an empty directory, as Kubernetes defaults it.
        if volume_types(v).is_empty() {
            v.empty_dir = Some(Default::default());
        }
        if let Some(cm) = v.config_map.as_mut() {
            cm.default_mode.get_or_insert(0o644);
        }
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
    }
}

/// The volume types a node can mount (the rest of Kubernetes' are refused at admission,
/// rather than leaving a pod stuck on its node).
const SUPPORTED_VOLUMES: [&str; 6] = [
    "emptyDir",
    "configMap",
    "secret",
    "hostPath",
    "downwardAPI",
    "projected",
];

/// The source fields a volume sets (its JSON keys besides `name`).
fn volume_types(v: &k8s_openapi::api::core::v1::Volume) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(k, _)| k != "name")
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or("")).into());
    }
    c.resources.get_or_insert_with(Default::default);
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ] {
        if let Some(p) = probe.as_mut() {
            default_probe(p);
        }
    }
}

fn default_probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
}

/// `Always` for an image without a tag or tagged `latest`, else `IfNotPresent`.
pub(super) fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or("");
    let last = without_digest.rsplit('/').next().unwrap_or("");
    match last.rsplit_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

/// Checks a pod spec found at `path` (`spec`, `spec.template.spec`).
pub(super) fn validate_spec(spec: &PodSpec, path: &str, errors: &mut Vec<FieldError>) {
    if spec.containers.is_empty() {
        errors.push(FieldError::required(format!("{path}.containers")));
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("{path}.volumes[{i}].name");
        errors.extend(dns1123_label(&field, &v.name));
        if !volumes.insert(v.name.as_str()) {
            errors.push(FieldError::duplicate(field, &v.name));
        }
        let at = format!("{path}.volumes[{i}]");
        match volume_types(v).as_slice() {
            [] => {}
            [one] if SUPPORTED_VOLUMES.contains(&one.as_str()) => {}
            [one] => errors.push(FieldError::not_supported(&at, one, &SUPPORTED_VOLUMES)),
            [_, second, ..] => errors.push(FieldError {
                reason: "FieldValueForbidden",
                message: "Forbidden: may not specify more than 1 volume type".into(),
                field: format!("{at}.{second}"),
            }),
        }
    }
    let mut names = BTreeSet::new();
    let mut port_names = BTreeSet::new();
    let init = spec.init_containers.iter().flatten();
    let lists = init
        .enumerate()
        .map(|(i, c)| (format!("{path}.initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{path}.containers[{i}]"), c)),
        );
    for (at, c) in lists {
        let field = format!("{at}.name");
        errors.extend(dns1123_label(&field, &c.name));
        if !c.name.is_empty() && !names.insert(c.name.as_str()) {
            errors.push(FieldError::duplicate(field, &c.name));
        }
        validate_container(c, &at, &volumes, &mut port_names, errors);
    }
    if let Some(p) = spec.restart_policy.as_deref() {
        if !RESTART_POLICIES.contains(&p) {
            errors.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                p,
                RESTART_POLICIES,
            ));
        }
    }
    if let Some(p) = spec.dns_policy.as_deref() {
        if !DNS_POLICIES.contains(&p) {
            errors.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                p,
                DNS_POLICIES,
            ));
        }
    }
    if let Some(s) = spec.termination_grace_period_seconds.filter(|s| *s < 0) {
        errors.push(FieldError::invalid_number(
            format!("{path}.terminationGracePeriodSeconds"),
            s,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(s) = spec.active_deadline_seconds.filter(|s| *s <= 0) {
        errors.push(FieldError::invalid_number(
            format!("{path}.activeDeadlineSeconds"),
            s,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
}

fn validate_container(
    c: &Container,
    at: &str,
    volumes: &BTreeSet<&str>,
    port_names: &mut BTreeSet<String>,
    errors: &mut Vec<FieldError>,
) {
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errors.push(FieldError::required(format!("{at}.image")));
    }
    if let Some(p) = c.image_pull_policy.as_deref() {
        if !PULL_POLICIES.contains(&p) {
            errors.push(FieldError::not_supported(
                format!("{at}.imagePullPolicy"),
                p,
                PULL_POLICIES,
            ));
        }
    }
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let field = format!("{at}.ports[{j}]");
        port_number(&format!("{field}.containerPort"), p.container_port, errors);
        if let Some(h) = p.host_port.filter(|h| *h != 0) {
            port_number(&format!("{field}.hostPort"), h, errors);
        }
        if let Some(proto) = p.protocol.as_deref() {
            if !PROTOCOLS.contains(&proto) {
                errors.push(FieldError::not_supported(
                    format!("{field}.protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
        }
        if let Some(name) = p.name.as_deref() {
            errors.extend(port_name(&format!("{field}.name"), name));
            if !port_names.insert(name.to_string()) {
                errors.push(FieldError::duplicate(format!("{field}.name"), name));
            }
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let ok = !e.name.is_empty()
            && e.name
                .chars()
                .all(|ch| ch.is_ascii_graphic() && ch != '=' || ch == ' ');
        if !ok {
            errors.push(FieldError::invalid(
                format!("{at}.env[{j}].name"),
                &e.name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            errors.push(FieldError::not_found(
                format!("{at}.volumeMounts[{j}].name"),
                &m.name,
            ));
        }
        if m.mount_path.is_empty() {
            errors.push(FieldError::required(format!(
                "{at}.volumeMounts[{j}].mountPath"
            )));
        }
    }
}

/// A port number: 1 to 65535.
pub(super) fn port_number(field: &str, port: i32, errors: &mut Vec<FieldError>) {
    if !(1..=65535).contains(&port) {
        errors.push(FieldError::invalid_number(
            field,
            port.into(),
            "must be between 1 and 65535, inclusive",
        ));
    }
}

/// A port name (an IANA service name): at most 15 lowercase alphanumerics and `-`, with a
/// letter, no `--`, not starting or ending with `-`.
pub(super) fn port_name(field: &str, name: &str) -> Vec<FieldError> {
    let detail = if name.is_empty() || name.len() > 15 {
        Some("must be no more than 15 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    } else if name.contains("--") {
        Some("must not contain consecutive hyphens")
    } else if !name.chars().any(|c| c.is_ascii_lowercase()) {
        Some("must contain at least one letter (a-z)")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must not begin or end with a hyphen")
    } else {
        None
    };
    detail
        .map(|d| vec![FieldError::invalid(field, name, d)])
        .unwrap_or_default()
}

/// How long a pod tolerates, by default, the node it runs on being not ready or unreachable
/// before it is evicted: Kubernetes' `DefaultTolerationSeconds` admission, with Flotilla's
/// default of 1 s instead of 300 s (`flotilla node --default-toleration-seconds`).
static DEFAULT_TOLERATION_SECONDS: AtomicI64 = AtomicI64::new(1);

/// Sets the default toleration of not-ready and unreachable nodes for pods admitted from now.
pub fn set_default_toleration_seconds(seconds: i64) {
    DEFAULT_TOLERATION_SECONDS.store(seconds, Ordering::Relaxed);
}

/// The taints every pod tolerates for a while unless it says otherwise.
pub const NODE_DOWN_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Adds the default `NoExecute` tolerations of not-ready and unreachable nodes to a pod that
/// has none for them.
fn default_tolerations(spec: &mut PodSpec) {
    let seconds = DEFAULT_TOLERATION_SECONDS.load(Ordering::Relaxed);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in NODE_DOWN_TAINTS {
        let covered = tolerations.iter().any(|t| {
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == key,
            };
            key_ok
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute")
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(seconds),
                value: None,
            });
        }
    }
}

impl Kind for Pod {
    fn default(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            default_spec(spec, true);
            default_tolerations(spec);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        match &self.spec {
            Some(spec) => validate_spec(spec, "spec", errors),
            None => errors.push(FieldError::required("spec")),
        }
    }

    /// Kubernetes lets an update change only images, `activeDeadlineSeconds` and tolerations
    /// (and `nodeName` once, by binding: the scheduler writes it through the store).
    fn validate_update(&self, old: &Pod, errors: &mut Vec<FieldError>) {
        let mutable_cleared = |spec: &Option<PodSpec>| {
            let mut spec = spec.clone().unwrap_or_default();
            let init = spec.init_containers.iter_mut().flatten();
            for c in spec.containers.iter_mut().chain(init) {
                c.image = None;
            }
            spec.active_deadline_seconds = None;
            spec.tolerations = None;
            spec.node_name = None;
            spec
        };
        if mutable_cleared(&self.spec) != mutable_cleared(&old.spec) {
            errors.push(FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations`",
            ));
        }
    }
}
