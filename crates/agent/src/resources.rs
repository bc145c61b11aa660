//! Resource quantities, the limits a container's cgroup gets from them, and the pod's QoS
//! class, as Kubernetes computes them.

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the node has, for `resourceFieldRef` of a limit a container does not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCapacity {
    pub cpus: u32,
    pub memory_bytes: u64,
}

pub use flotilla_api::quantity::{parse_cpu_millis, parse_quantity};

fn quantity(c: &Container, set: &str, key: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = match set {
        "limits" => r.limits.as_ref(),
        _ => r.requests.as_ref(),
    }?;
    map.get(key).map(|q| q.0.clone())
}

/// The cgroup limits of a container: CPU shares from its request (the limit when only that is
/// set), a CFS quota from its CPU limit, its memory limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_shares: u64,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: u64,
    pub memory_bytes: Option<i64>,
}

/// The CFS period the kubelet uses.
pub const CPU_PERIOD_US: u64 = 100_000;

pub fn limits(c: &Container) -> Limits {
    let cpu_limit = quantity(c, "limits", "cpu").and_then(|q| parse_cpu_millis(&q));
    let cpu_request = quantity(c, "requests", "cpu")
        .and_then(|q| parse_cpu_millis(&q))
        .or(cpu_limit);
    Limits {
        // 1024 shares a core; at least 2, the kernel's minimum.
        cpu_shares: cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        cpu_quota_us: cpu_limit.map(|m| ((m * CPU_PERIOD_US / 1000) as i64).max(1000)),
        cpu_period_us: CPU_PERIOD_US,
        memory_bytes: quantity(c, "limits", "memory")
            .and_then(|q| parse_quantity(&q))
            .map(|b| b as i64),
    }
}

/// The pod's QoS class: `Guaranteed` when every container limits and requests CPU and memory
/// equally, `BestEffort` when none asks for anything, else `Burstable`.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers: Vec<&Container> = crate::spec::all_containers(pod).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        for key in ["cpu", "memory"] {
            let limit = quantity(c, "limits", key);
            let request = quantity(c, "requests", key).or_else(|| limit.clone());
            any |= limit.is_some() || request.is_some();
            let equal = match (&limit, &request) {
                (Some(l), Some(r)) => {
                    let parse = |q: &str| {
                        if key == "cpu" {
                            parse_cpu_millis(q)
                        } else {
                            parse_quantity(q)
                        }
                    };
                    parse(l) == parse(r)
                }
                _ => false,
            };
            guaranteed &= equal;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: &[serde_json::Value]) -> Pod {
        let containers: Vec<_> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"name": format!("c{i}"), "image": "busybox", "resources": r}))
            .collect();
        serde_json::from_value(json!({"spec": {"containers": containers}})).unwrap()
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("64Mi"), Some(64 << 20));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3"), Some(1000));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("12"), Some(12));
        assert_eq!(parse_quantity("ten"), None);
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
    }

    #[test]
    fn limits_become_shares_quota_and_memory() {
        let p = pod(&[
            json!({"limits": {"cpu": "500m", "memory": "32Mi"}, "requests": {"cpu": "250m"}}),
        ]);
        let l = limits(&p.spec.as_ref().unwrap().containers[0]);
        assert_eq!(l.cpu_shares, 256);
        assert_eq!(l.cpu_quota_us, Some(50_000));
        assert_eq!(l.memory_bytes, Some(32 << 20));
        let p = pod(&[json!({})]);
        assert_eq!(
            limits(&p.spec.as_ref().unwrap().containers[0]),
            Limits {
                cpu_shares: 2,
                cpu_quota_us: None,
                cpu_period_us: CPU_PERIOD_US,
                memory_bytes: None
            }
        );
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&pod(&[json!({})])), "BestEffort");
        assert_eq!(
            qos_class(&pod(&[json!({"limits": {"cpu": "1", "memory": "1Gi"}})])),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(&[
                json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                json!({"requests": {"cpu": "100m"}})
            ])),
            "Burstable"
        );
    }
}
