//! The Deployment controller's planner. A Deployment owns ReplicaSets, one per pod template it
//! has had; the one whose template is the Deployment's is the *new* one (its name ends in the
//! template's hash, its pods carry `pod-template-hash`), the others are old. A round makes at
//! most one kind of change, as Kubernetes' controller does: create the new ReplicaSet, scale
//! the new one up (within `maxSurge`), scale old ones down (keeping `maxUnavailable`), or for
//! `Recreate` everything old down first; a change of `replicas` alone is spread over the
//! active ReplicaSets in proportion. It keeps the `deployment.kubernetes.io/revision`
//! annotations that `kubectl rollout history|undo` read, prunes old ReplicaSets past
//! `revisionHistoryLimit`, and writes the status and conditions that `kubectl rollout status`
//! follows.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use flotilla_api::meta::safe_encode;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{owner_ref, whole_seconds};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    REVISION,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/revision-history",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// A change to make.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create this ReplicaSet.
    Create(Box<ReplicaSet>),
    /// Set the replicas and annotations of the ReplicaSet at this index.
    Update {
        index: usize,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    },
    /// Delete the ReplicaSet at this index (past the revision history limit).
    Delete { index: usize },
}

/// What a round does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Events to record (reason, message), all `Normal`.
    pub events: Vec<(String, String)>,
    /// The Deployment's revision annotation, when it changes.
    pub revision: Option<String>,
    /// The status to write, when it differs.
    pub status: Option<DeploymentStatus>,
    /// Look again after this long (the progress deadline).
    pub recheck: Option<Duration>,
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> Option<SystemTime> {
    rs.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

/// A template without the hash label, for comparing a ReplicaSet's with the Deployment's.
fn without_hash(template: Option<&PodTemplateSpec>) -> serde_json::Value {
    let mut t = template.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    serde_json::to_value(t).unwrap_or_default()
}

/// Whether `rs` runs `d`'s current pod template.
pub fn is_current(d: &Deployment, rs: &ReplicaSet) -> bool {
    without_hash(rs.spec.template.as_ref()) == without_hash(Some(&d.spec.template))
}

/// The hash that names a template's ReplicaSet (FNV-1a of its JSON and the collision count).
pub fn template_hash(template: &PodTemplateSpec, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let text = serde_json::to_string(template).unwrap_or_default();
    for b in text.bytes().chain(collisions.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    safe_encode(u64::from(h))
}

/// `maxSurge` and `maxUnavailable` as pod counts (a percentage of `replicas`, the surge rounded
/// up and the unavailability down; never both zero).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = d.spec.replicas.unwrap_or(1);
    let rolling = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let resolve = |v: Option<&IntOrString>, up: bool| match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let p: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
            let exact = p * f64::from(replicas) / 100.0;
            (if up { exact.ceil() } else { exact.floor() }) as i32
        }
        None => {
            let exact = 0.25 * f64::from(replicas);
            (if up { exact.ceil() } else { exact.floor() }) as i32
        }
    };
    if is_recreate(d) {
        return (0, 0);
    }
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), true);
    let unavailable = resolve(rolling.and_then(|r| r.max_unavailable.as_ref()), false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// The planner's view of one round.
struct Round<'a> {
    d: &'a Deployment,
    rss: &'a [&'a ReplicaSet],
    /// Index of the new ReplicaSet, if it exists.
    new: Option<usize>,
    /// Old ReplicaSets, oldest first.
    old: Vec<usize>,
    replicas: i32,
    surge: i32,
    unavailable: i32,
    plan: Plan,
    /// Replica counts as this round leaves them.
    planned: Vec<i32>,
}

impl Round<'_> {
    fn name(&self, i: usize) -> String {
        self.rss[i].metadata.name.clone().unwrap_or_default()
    }

    /// Scales ReplicaSet `i` to `to`, with its annotations brought up to date.
    fn scale(&mut self, i: usize, to: i32) {
        let from = self.planned[i];
        let mut annotations = self.rss[i].metadata.annotations.clone().unwrap_or_default();
        annotations.insert(DESIRED_REPLICAS.into(), self.replicas.to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (self.replicas + self.surge).to_string(),
        );
        // An update already planned for it this round (its revision) is extended, not
        // followed by a second write of the same object.
        if let Some(Action::Update {
            replicas,
            annotations: planned,
            ..
        }) = self
            .plan
            .actions
            .iter_mut()
            .find(|a| matches!(a, Action::Update { index, .. } if *index == i))
        {
            planned.insert(DESIRED_REPLICAS.into(), self.replicas.to_string());
            planned.insert(
                MAX_REPLICAS.into(),
                (self.replicas + self.surge).to_string(),
            );
            *replicas = to;
        } else {
            if from == to && Some(&annotations) == self.rss[i].metadata.annotations.as_ref() {
                return;
            }
            self.plan.actions.push(Action::Update {
                index: i,
                replicas: to,
                annotations,
            });
        }
        self.planned[i] = to;
        if from != to {
            let way = if to > from { "up" } else { "down" };
            self.plan.events.push((
                "ScalingReplicaSet".into(),
                format!(
                    "Scaled {way} replica set {} to {to} from {from}",
                    self.name(i)
                ),
            ));
        }
    }

    fn total(&self) -> i32 {
        self.planned.iter().sum()
    }

    fn available(&self, i: usize) -> i32 {
        self.rss[i]
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    }

    /// How many replicas the new ReplicaSet may have now.
    fn new_replicas(&self, current: i32) -> i32 {
        if is_recreate(self.d) {
            return self.replicas;
        }
        let max_total = self.replicas + self.surge;
        let total = self.total();
        if total >= max_total {
            return current;
        }
        current + (max_total - total).min(self.replicas - current).max(0)
    }

    /// Scales old ReplicaSets down within `maxUnavailable`; whether it did.
    fn scale_down_old(&mut self) -> bool {
        let old_total: i32 = self.old.iter().map(|i| self.planned[*i]).sum();
        if old_total == 0 {
            return false;
        }
        let min_available = self.replicas - self.unavailable;
        let new_unavailable = self
            .new
            .map_or(0, |n| (self.planned[n] - self.available(n)).max(0));
        let mut budget = self.total() - min_available - new_unavailable;
        if budget <= 0 {
            return false;
        }
        let before = self.plan.actions.len();
        // First the old pods that are not available anyway.
        for i in self.old.clone() {
            if budget == 0 {
                break;
            }
            let unhealthy = (self.planned[i] - self.available(i)).max(0).min(budget);
            if unhealthy > 0 {
                self.scale(i, self.planned[i] - unhealthy);
                budget -= unhealthy;
            }
        }
        // Then available ones, as long as enough stay available.
        let available: i32 = (0..self.rss.len())
            .map(|i| self.available(i).min(self.planned[i]))
            .sum();
        let mut room = (available - min_available).min(budget);
        for i in self.old.clone() {
            if room <= 0 {
                break;
            }
            let down = self.planned[i].min(room);
            if down > 0 {
                self.scale(i, self.planned[i] - down);
                room -= down;
            }
        }
        self.plan.actions.len() > before
    }

    /// A change of `replicas` alone: spread over the active ReplicaSets.
    fn scale_proportionally(&mut self) {
        let active: Vec<usize> = (0..self.rss.len())
            .filter(|i| self.planned[*i] > 0)
            .collect();
        if active.len() <= 1 {
            let target = active
                .first()
                .copied()
                .or(self.new)
                .or(self.old.last().copied());
            if let Some(i) = target {
                self.scale(i, self.replicas);
            }
            return;
        }
        let allowed = if self.replicas > 0 {
            self.replicas + self.surge
        } else {
            0
        };
        let current: i32 = active.iter().map(|i| self.planned[*i]).sum();
        let to_add = allowed - current;
        let mut order = active.clone();
        // Largest first; among equals the newest when growing, the oldest when shrinking.
        order.sort_by_key(|i| {
            let c = created(self.rss[*i]);
            (
                std::cmp::Reverse(self.planned[*i]),
                if to_add > 0 {
                    std::cmp::Reverse(c)
                } else {
                    std::cmp::Reverse(None)
                },
                c,
            )
        });
        let mut added = 0;
        let mut targets: Vec<(usize, i32)> = Vec::new();
        for i in &order {
            let share = if current == 0 {
                0
            } else {
                (f64::from(self.planned[*i]) * f64::from(to_add) / f64::from(current)) as i32
            };
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            targets.push((*i, self.planned[*i] + share));
        }
        if let Some(first) = targets.first_mut() {
            first.1 += to_add - added;
        }
        for (i, to) in targets {
            self.scale(i, to.max(0));
        }
    }
}

/// Plans one round for `d` given the ReplicaSets it controls; `old_pods_running` tells whether
/// pods of its old ReplicaSets are still running (what `Recreate` waits for).
pub fn plan(d: &Deployment, rss: &[&ReplicaSet], old_pods_running: bool, now: SystemTime) -> Plan {
    let spec = d.spec.clone();
    let (surge, unavailable) = fenceposts(d);
    let mut new = None;
    for (i, rs) in rss.iter().enumerate() {
        if is_current(d, rs) && new.is_none_or(|n: usize| created(rss[n]) > created(rs)) {
            new = Some(i);
        }
    }
    let mut old: Vec<usize> = (0..rss.len()).filter(|i| Some(*i) != new).collect();
    old.sort_by_key(|i| (created(rss[*i]), rss[*i].metadata.name.clone()));
    let mut round = Round {
        d,
        rss,
        new,
        old,
        replicas: spec.replicas.unwrap_or(1),
        surge,
        unavailable,
        plan: Plan::default(),
        planned: rss.iter().map(|rs| replicas_of(rs)).collect(),
    };
    let paused = spec.paused == Some(true);
    let mut status = d.status.clone().unwrap_or_default();
    let max_old_revision = round
        .old
        .iter()
        .map(|i| revision_of(rss[*i]))
        .max()
        .unwrap_or(0);

    // The new ReplicaSet's revision comes after every old one (also when `rollout undo` made
    // an old template current again); the Deployment carries the same.
    if let Some(n) = new {
        if revision_of(rss[n]) <= max_old_revision {
            let mut annotations = copied_annotations(d, rss[n]);
            annotations.insert(REVISION.into(), (max_old_revision + 1).to_string());
            round.plan.actions.push(Action::Update {
                index: n,
                replicas: round.planned[n],
                annotations,
            });
        }
    }
    let scaling = (0..rss.len()).any(|i| {
        round.planned[i] > 0
            && annotation(&rss[i].metadata, DESIRED_REPLICAS)
                .is_some_and(|v| v != round.replicas.to_string())
    });
    let mut created_new = None;
    if paused || scaling {
        if round.plan.actions.is_empty() {
            round.scale_proportionally();
        }
    } else if new.is_none() {
        // Create the new ReplicaSet (unless its name is taken by another template).
        let collisions = status.collision_count.unwrap_or(0);
        let hash = template_hash(&spec.template, collisions);
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
        if rss
            .iter()
            .any(|rs| rs.metadata.name.as_deref() == Some(&name))
        {
            status.collision_count = Some(collisions + 1);
        } else {
            let wait = is_recreate(d) && (round.total() > 0 || old_pods_running);
            if is_recreate(d) && round.total() > 0 {
                for i in round.old.clone() {
                    round.scale(i, 0);
                }
            }
            if !wait {
                let replicas = round.new_replicas(0);
                let rs = new_replica_set(d, &hash, replicas, max_old_revision + 1, surge);
                round.plan.events.push((
                    "ScalingReplicaSet".into(),
                    format!("Scaled up replica set {name} to {replicas} from 0"),
                ));
                round.plan.actions.push(Action::Create(Box::new(rs)));
                created_new = Some((name, replicas));
            }
        }
    } else if let Some(n) = new {
        if is_recreate(d) {
            let olds_up = round.old.iter().any(|i| round.planned[*i] > 0);
            if olds_up {
                for i in round.old.clone() {
                    round.scale(i, 0);
                }
            } else if !old_pods_running && round.planned[n] != round.replicas {
                round.scale(n, round.replicas);
            }
        } else if round.planned[n] > round.replicas {
            round.scale(n, round.replicas);
        } else {
            let to = round.new_replicas(round.planned[n]);
            if to != round.planned[n] {
                round.scale(n, to);
            } else {
                round.scale_down_old();
            }
        }
    }

    // Prune old, empty ReplicaSets past the history limit once the rollout is done.
    let complete_now = new.is_some_and(|n| {
        round.planned[n] == round.replicas
            && round.old.iter().all(|i| round.planned[*i] == 0)
            && round.available(n) >= round.replicas
    });
    if complete_now && !paused {
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut empty: Vec<usize> = round
            .old
            .iter()
            .copied()
            .filter(|i| {
                round.planned[*i] == 0
                    && rss[*i].status.as_ref().is_none_or(|s| s.replicas == 0)
                    && rss[*i].metadata.deletion_timestamp.is_none()
            })
            .collect();
        empty.sort_by_key(|i| revision_of(rss[*i]));
        let excess = empty.len().saturating_sub(limit);
        for i in empty.into_iter().take(excess) {
            round.plan.actions.push(Action::Delete { index: i });
        }
    }

    // The Deployment's revision annotation follows its new ReplicaSet's.
    let new_revision = match (&created_new, new) {
        (Some(_), _) => Some(max_old_revision + 1),
        (None, Some(n)) => Some(revision_of(rss[n]).max(max_old_revision + 1)),
        _ => None,
    };
    if let Some(r) = new_revision {
        if annotation(&d.metadata, REVISION) != Some(r.to_string()) {
            round.plan.revision = Some(r.to_string());
        }
    }

    let new_name = created_new
        .as_ref()
        .map(|(n, _)| n.clone())
        .or(new.map(|n| round.name(n)));
    let fresh = compute_status(
        &round,
        &status,
        new_name.as_deref(),
        created_new.is_some(),
        paused,
        now,
    );
    round.plan.recheck = fresh.1;
    if fresh.0 != *d.status.as_ref().unwrap_or(&DeploymentStatus::default()) {
        round.plan.status = Some(fresh.0);
    }
    round.plan
}

/// The Deployment's annotations that its ReplicaSets carry too (`kubernetes.io/change-cause`).
fn copied_annotations(d: &Deployment, rs: &ReplicaSet) -> BTreeMap<String, String> {
    let mut out = rs.metadata.annotations.clone().unwrap_or_default();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn new_replica_set(
    d: &Deployment,
    hash: &str,
    replicas: i32,
    revision: i64,
    surge: i32,
) -> ReplicaSet {
    let spec = d.spec.clone();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    let labels = meta.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.into());
    let mut annotations = BTreeMap::new();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let want = spec.replicas.unwrap_or(1);
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + surge).to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                d.metadata.name.as_deref().unwrap_or("")
            )),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref("apps/v1", "Deployment", &d.metadata)]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: SystemTime,
) -> DeploymentCondition {
    let t = Time(whole_seconds(now));
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(t.clone()),
        last_transition_time: Some(t),
    }
}

/// Sets a condition, keeping its transition time (and, when only the time would change, its
/// update time) from the same status as before.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
                if old.reason == c.reason && old.message == c.message {
                    c.last_update_time = old.last_update_time.clone();
                }
            }
            *old = c;
        }
        None => conditions.push(c),
    }
}

fn compute_status(
    round: &Round<'_>,
    before: &DeploymentStatus,
    new_name: Option<&str>,
    created_new: bool,
    paused: bool,
    now: SystemTime,
) -> (DeploymentStatus, Option<Duration>) {
    let d = round.d;
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| round.rss.iter().map(|rs| f(rs)).sum::<i32>();
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let available = sum(&|rs| st(rs).available_replicas.unwrap_or(0));
    let mut s = DeploymentStatus {
        replicas: Some(sum(&|rs| st(rs).replicas)),
        updated_replicas: Some(round.new.map_or(0, |n| st(round.rss[n]).replicas)),
        ready_replicas: Some(sum(&|rs| st(rs).ready_replicas.unwrap_or(0))),
        available_replicas: Some(available),
        unavailable_replicas: Some((round.total() - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: before.collision_count,
        conditions: before.conditions.clone(),
        ..DeploymentStatus::default()
    };
    let mut conditions = s.conditions.take().unwrap_or_default();
    if available >= round.replicas - round.unavailable {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let progressing = conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .cloned();
    let reason = progressing.as_ref().and_then(|c| c.reason.clone());
    let mut recheck = None;
    let rs_name = new_name.unwrap_or("");
    if paused {
        if reason.as_deref() != Some("DeploymentPaused") {
            set_condition(
                &mut conditions,
                condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                    now,
                ),
            );
        }
    } else if reason.as_deref() == Some("DeploymentPaused") {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                now,
            ),
        );
    } else if created_new {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
                now,
            ),
        );
    } else {
        let replicas = round.replicas;
        let complete = s.updated_replicas == Some(replicas)
            && s.replicas == Some(replicas)
            && available >= replicas
            && round.new.is_some_and(|n| round.planned[n] == replicas);
        let already_complete =
            reason.as_deref() == Some("NewReplicaSetAvailable") && s.replicas == s.updated_replicas;
        let advanced = s.updated_replicas > before.updated_replicas
            || s.replicas < before.replicas
            || s.ready_replicas > before.ready_replicas
            || s.available_replicas > before.available_replicas
            || !round.plan.actions.is_empty();
        let deadline = d
            .spec
            .progress_deadline_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64));
        if complete && !already_complete {
            set_condition(
                &mut conditions,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                    now,
                ),
            );
        } else if !complete && advanced {
            set_condition(
                &mut conditions,
                condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    now,
                ),
            );
            // Progress moves the deadline: it counts from the latest progress.
            if let Some(c) = conditions
                .iter_mut()
                .find(|c| c.type_.as_deref() == Some("Progressing"))
            {
                c.last_update_time = Some(Time(whole_seconds(now)));
            }
            recheck = deadline;
        } else if !complete && !already_complete {
            if let (Some(deadline), Some(c)) = (deadline, &progressing) {
                let since = c
                    .last_update_time
                    .as_ref()
                    .map_or(now, |t| SystemTime::from(t.0));
                let due = since + deadline;
                if reason.as_deref() != Some("ProgressDeadlineExceeded") {
                    match due.duration_since(now) {
                        Ok(left) if !left.is_zero() => recheck = Some(left),
                        _ => set_condition(
                            &mut conditions,
                            condition(
                                "Progressing",
                                "False",
                                "ProgressDeadlineExceeded",
                                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                                now,
                            ),
                        ),
                    }
                }
            }
        }
    }
    s.conditions = Some(conditions);
    (s, recheck)
}

#[cfg(test)]
mod tests;
