//! Deployments, replica sets, daemon sets, jobs and cron jobs: their defaults, their templates
//! checked as pod specs, selectors that must match the template's labels, and what an update
//! may not change.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{default_spec, validate_spec};
use super::Kind;
use crate::validation::{labels, FieldError};

/// Whether `selector` selects an object with `labels` (`matchLabels` and `matchExpressions`).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// The selector's own rules: label syntax, known operators, values where they belong.
fn validate_selector(selector: &LabelSelector, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(m) = &selector.match_labels {
        errors.extend(labels(&format!("{path}.matchLabels"), m));
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                errors.push(FieldError::required(format!("{at}.values")))
            }
            "Exists" | "DoesNotExist" if has_values => errors.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::not_supported(
                format!("{at}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
}

/// A controller's selector and template at `path` (`spec`): the selector is required and not
/// empty, the template's labels match it, and the template is a valid pod spec whose restart
/// policy is one of `restart_policies`.
fn validate_template(
    selector: Option<&LabelSelector>,
    template: &PodTemplateSpec,
    path: &str,
    restart_policies: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let empty = LabelSelector::default();
    let selector = selector.unwrap_or(&empty);
    if selector_is_empty(selector) {
        errors.push(FieldError::required(format!("{path}.selector")));
    } else {
        validate_selector(selector, &format!("{path}.selector"), errors);
    }
    let template_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    errors.extend(labels(
        &format!("{path}.template.metadata.labels"),
        &template_labels,
    ));
    if !selector_is_empty(selector) && !selector_matches(selector, &template_labels) {
        let shown: Vec<String> = template_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        errors.push(FieldError::invalid(
            format!("{path}.template.metadata.labels"),
            &shown.join(","),
            "`selector` does not match template `labels`",
        ));
    }
    template_spec(template, path, restart_policies, errors);
}

/// The template's pod spec at `path.template.spec`: present, valid, and with one of
/// `restart_policies`.
fn template_spec(
    template: &PodTemplateSpec,
    path: &str,
    restart_policies: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let at = format!("{path}.template.spec");
    match &template.spec {
        Some(spec) => {
            validate_spec(spec, &at, errors);
            let policy = spec.restart_policy.as_deref().unwrap_or("");
            if !restart_policies.contains(&policy) {
                errors.push(FieldError::not_supported(
                    format!("{at}.restartPolicy"),
                    policy,
                    restart_policies,
                ));
            }
        }
        None => errors.push(FieldError::required(at)),
    }
}

fn non_negative(field: &str, value: Option<i32>, errors: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errors.push(FieldError::invalid_number(
            field,
            v.into(),
            "must be greater than or equal to 0",
        ));
    }
}

fn default_template(template: &mut PodTemplateSpec, restart_always: bool) {
    if let Some(spec) = template.spec.as_mut() {
        default_spec(spec, restart_always);
    }
}

fn immutable_selector(
    new: Option<&LabelSelector>,
    old: Option<&LabelSelector>,
    errors: &mut Vec<FieldError>,
) {
    if new != old {
        errors.push(FieldError::immutable("spec.selector", &format!("{new:?}")));
    }
}

fn percent(p: &str) -> IntOrString {
    IntOrString::String(p.into())
}

impl Kind for Deployment {
    fn default(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let rolling = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            rolling.max_surge.get_or_insert_with(|| percent("25%"));
            rolling
                .max_unavailable
                .get_or_insert_with(|| percent("25%"));
        }
        default_template(&mut spec.template, true);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = &self.spec;
        non_negative("spec.replicas", spec.replicas, errors);
        non_negative(
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
            errors,
        );
        validate_template(
            Some(&spec.selector),
            &spec.template,
            "spec",
            &["Always"],
            errors,
        );
        if let Some(s) = &spec.strategy {
            let kind = s.type_.as_deref().unwrap_or("");
            if !["RollingUpdate", "Recreate"].contains(&kind) {
                errors.push(FieldError::not_supported(
                    "spec.strategy.type",
                    kind,
                    &["Recreate", "RollingUpdate"],
                ));
            }
            if kind == "Recreate" && s.rolling_update.is_some() {
                errors.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            if let Some(r) = &s.rolling_update {
                let zero = |v: &Option<IntOrString>| {
                    matches!(v, Some(IntOrString::Int(0)))
                        || matches!(v, Some(IntOrString::String(s)) if s == "0%")
                };
                if zero(&r.max_surge) && zero(&r.max_unavailable) {
                    errors.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        "0",
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
        }
    }

    fn validate_update(&self, old: &Deployment, errors: &mut Vec<FieldError>) {
        immutable_selector(Some(&self.spec.selector), Some(&old.spec.selector), errors);
    }
}

impl Kind for ReplicaSet {
    fn default(&mut self) {
        let spec = &mut self.spec;
        spec.replicas.get_or_insert(1);
        if let Some(t) = spec.template.as_mut() {
            default_template(t, true);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = &self.spec;
        non_negative("spec.replicas", spec.replicas, errors);
        let template = spec.template.clone().unwrap_or_default();
        validate_template(Some(&spec.selector), &template, "spec", &["Always"], errors);
    }

    fn validate_update(&self, old: &ReplicaSet, errors: &mut Vec<FieldError>) {
        immutable_selector(Some(&self.spec.selector), Some(&old.spec.selector), errors);
    }
}

impl Kind for DaemonSet {
    fn default(&mut self) {
        let spec = &mut self.spec;
        spec.revision_history_limit.get_or_insert(10);
        let strategy = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if kind == "RollingUpdate" {
            let rolling = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            rolling.max_unavailable.get_or_insert(IntOrString::Int(1));
            rolling.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(&mut spec.template, true);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = &self.spec;
        validate_template(
            Some(&spec.selector),
            &spec.template,
            "spec",
            &["Always"],
            errors,
        );
    }

    fn validate_update(&self, old: &DaemonSet, errors: &mut Vec<FieldError>) {
        immutable_selector(Some(&self.spec.selector), Some(&old.spec.selector), errors);
    }
}

const JOB_RESTART_POLICIES: &[&str] = &["OnFailure", "Never"];

fn validate_job_spec(spec: &JobSpec, path: &str, errors: &mut Vec<FieldError>) {
    non_negative(&format!("{path}.parallelism"), spec.parallelism, errors);
    non_negative(&format!("{path}.completions"), spec.completions, errors);
    non_negative(&format!("{path}.backoffLimit"), spec.backoff_limit, errors);
    // A job without a selector gets one from its uid at creation (see `Job::default`); a job
    // template's selector is made when each job is.
    let selector = spec.selector.as_ref();
    match selector {
        Some(s) if !selector_is_empty(s) => {
            validate_template(Some(s), &spec.template, path, JOB_RESTART_POLICIES, errors)
        }
        _ => template_spec(&spec.template, path, JOB_RESTART_POLICIES, errors),
    }
}

impl Kind for Job {
    /// Besides counts, a job without a selector gets Kubernetes' generated one: its uid in the
    /// `batch.kubernetes.io/controller-uid` label, on the selector and the template.
    fn default(&mut self) {
        let uid = self.metadata.uid.clone();
        let name = self.metadata.name.clone().unwrap_or_default();
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
            spec.parallelism = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.completion_mode
            .get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        if let (None, Some(uid), false) = (&spec.selector, uid, spec.manual_selector == Some(true))
        {
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", uid.as_str()),
                ("batch.kubernetes.io/job-name", name.as_str()),
                ("controller-uid", uid.as_str()),
                ("job-name", name.as_str()),
            ] {
                labels.entry(k.into()).or_insert_with(|| v.into());
            }
            spec.selector = Some(LabelSelector {
                match_labels: Some(
                    [("batch.kubernetes.io/controller-uid".to_string(), uid)].into(),
                ),
                ..Default::default()
            });
        }
        default_template(&mut spec.template, false);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        match &self.spec {
            Some(spec) => validate_job_spec(spec, "spec", errors),
            None => errors.push(FieldError::required("spec")),
        }
    }

    fn validate_update(&self, old: &Job, errors: &mut Vec<FieldError>) {
        let (new, old) = (
            self.spec.clone().unwrap_or_default(),
            old.spec.clone().unwrap_or_default(),
        );
        immutable_selector(new.selector.as_ref(), old.selector.as_ref(), errors);
        if new.template != old.template {
            errors.push(FieldError::immutable("spec.template", "template"));
        }
        if new.completions != old.completions {
            errors.push(FieldError::immutable(
                "spec.completions",
                &format!("{:?}", new.completions),
            ));
        }
    }
}

const CONCURRENCY_POLICIES: &[&str] = &["Allow", "Forbid", "Replace"];

/// A cron schedule: five fields, or one of the `@` macros.
fn valid_schedule(schedule: &str) -> bool {
    if let Some(m) = schedule.strip_prefix('@') {
        return [
            "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly",
        ]
        .contains(&m)
            || m.strip_prefix("every ").is_some_and(|d| {
                let d = d.trim();
                let digits = d.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                digits.parse::<u64>().is_ok_and(|n| n > 0) && d.len() > digits.len()
            });
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c))
        })
}

impl Kind for CronJob {
    fn default(&mut self) {
        let spec = &mut self.spec;
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(job) = spec.job_template.spec.as_mut() {
            default_template(&mut job.template, false);
        }
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = &self.spec;
        if spec.schedule.trim().is_empty() {
            errors.push(FieldError::required("spec.schedule"));
        } else if !valid_schedule(&spec.schedule) {
            errors.push(FieldError::invalid(
                "spec.schedule",
                &spec.schedule,
                "unparseable cron schedule: expected exactly 5 fields or an @ descriptor",
            ));
        }
        if let Some(p) = spec.concurrency_policy.as_deref() {
            if !CONCURRENCY_POLICIES.contains(&p) {
                errors.push(FieldError::not_supported(
                    "spec.concurrencyPolicy",
                    p,
                    CONCURRENCY_POLICIES,
                ));
            }
        }
        match &spec.job_template.spec {
            Some(job) => validate_job_spec(job, "spec.jobTemplate.spec", errors),
            None => errors.push(FieldError::required("spec.jobTemplate.spec")),
        }
    }
}

const EVICTION_POLICIES: &[&str] = &["IfHealthyBudget", "AlwaysAllow"];

/// An int-or-percent that must be a count ≥ 0 or a percentage `0%`–`100%`.
fn int_or_percent(field: &str, value: Option<&IntOrString>, errors: &mut Vec<FieldError>) {
    match value {
        Some(IntOrString::Int(n)) if *n < 0 => errors.push(FieldError::invalid_number(
            field,
            i64::from(*n),
            "must be greater than or equal to 0",
        )),
        Some(IntOrString::String(s)) => {
            let pct = s.strip_suffix('%').and_then(|p| p.parse::<u32>().ok());
            match pct {
                None => errors.push(FieldError::invalid(field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
                Some(p) if p > 100 => errors.push(FieldError::invalid(field, s, "must not be greater than 100%")),
                Some(_) => {}
            }
        }
        _ => {}
    }
}

impl Kind for PodDisruptionBudget {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        let spec = self.spec.clone().unwrap_or_default();
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            errors.push(FieldError::invalid(
                "spec",
                "",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        int_or_percent("spec.minAvailable", spec.min_available.as_ref(), errors);
        int_or_percent("spec.maxUnavailable", spec.max_unavailable.as_ref(), errors);
        if let Some(s) = &spec.selector {
            validate_selector(s, "spec.selector", errors);
        }
        if let Some(p) = spec.unhealthy_pod_eviction_policy.as_deref() {
            if !EVICTION_POLICIES.contains(&p) {
                errors.push(FieldError::not_supported(
                    "spec.unhealthyPodEvictionPolicy",
                    p,
                    EVICTION_POLICIES,
                ));
            }
        }
    }
}

const PREEMPTION_POLICIES: &[&str] = &["PreemptLowerPriority", "Never"];
/// User classes stay below the system ones (2,000,000,000 and up), as in Kubernetes.
const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;

impl Kind for PriorityClass {
    fn default(&mut self) {
        self.preemption_policy
            .get_or_insert_with(|| "PreemptLowerPriority".into());
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let name = self.metadata.name.as_deref().unwrap_or("");
        match self.value {
            None => errors.push(FieldError::required("value")),
            Some(v) if v > HIGHEST_USER_PRIORITY && !name.starts_with("system-") => {
                errors.push(FieldError::invalid_number(
                    "value",
                    i64::from(v),
                    "must be less than or equal to 1000000000",
                ))
            }
            Some(_) => {}
        }
        if let Some(p) = self.preemption_policy.as_deref() {
            if !PREEMPTION_POLICIES.contains(&p) {
                errors.push(FieldError::not_supported(
                    "preemptionPolicy",
                    p,
                    PREEMPTION_POLICIES,
                ));
            }
        }
    }

    fn validate_update(&self, old: &PriorityClass, errors: &mut Vec<FieldError>) {
        if self.value != old.value {
            errors.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
    }
}

/// A pod's priority from the class it names (`priorityClassName`), or from the cluster's
/// default class when it names none: `(priority, preemptionPolicy)`; an error names a class
/// that does not exist. `classes` are the PriorityClass objects.
pub fn priority_of(
    class_name: Option<&str>,
    classes: &[serde_json::Value],
) -> Result<Option<(i32, String)>, String> {
    let found = |c: &&serde_json::Value| match class_name {
        Some(n) => c["metadata"]["name"] == n,
        None => c["globalDefault"] == true,
    };
    match (classes.iter().find(found), class_name) {
        (Some(c), _) => Ok(Some((
            c["value"].as_i64().unwrap_or(0) as i32,
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ))),
        (None, Some("system-node-critical")) => {
            Ok(Some((2_000_001_000, "PreemptLowerPriority".into())))
        }
        (None, Some("system-cluster-critical")) => {
            Ok(Some((2_000_000_000, "PreemptLowerPriority".into())))
        }
        (None, Some(n)) => Err(format!("no PriorityClass with name {n} was found")),
        (None, None) => Ok(None),
    }
}
