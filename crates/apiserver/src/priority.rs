//! Priority admission: a new pod's `spec.priority` from its PriorityClass, as Kubernetes' `Priority`
//! admission plugin sets it.

use flotilla_store::Engine;
use serde_json::{json, Value};

use crate::writes::WriteError;

/// Every PriorityClass in the local replica.
fn priority_classes(engine: &dyn Engine) -> Vec<Value> {
    engine
        .list("/scheduling.k8s.io/priorityclasses/", None, 0)
        .map(|l| {
            l.items
                .iter()
                .filter_map(|(_, r)| serde_json::from_slice(&r.value).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A new pod's `spec.priority` (and `preemptionPolicy`) from its `priorityClassName` or the
/// default class, as Kubernetes' Priority admission sets them; a class that does not exist
/// is a 403, as there.
pub(crate) fn set_priority(
    engine: &dyn Engine,
    pod: &mut Value,
    name: &str,
) -> Result<(), WriteError> {
    let class = pod["spec"]["priorityClassName"]
        .as_str()
        .map(str::to_string);
    match flotilla_api::kinds::priority_of(class.as_deref(), &priority_classes(engine)) {
        Ok(Some((value, policy))) => {
            pod["spec"]["priority"] = json!(value);
            pod["spec"]["preemptionPolicy"] = json!(policy);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(why) => Err(WriteError::new(
            403,
            "Forbidden",
            format!("pods \"{name}\" is forbidden: {why}"),
        )),
    }
}
