//! Resource quantities (`64Mi`, `250m`) and what a pod requests of a node, as Kubernetes
//! computes them.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// A quantity in base units (`64Mi`, `1G`, `500k`, `1e3`, `100m` → 0 rounded up to 1).
pub fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((number * factor).ceil() as u64)
}

/// A CPU quantity in millicores (`250m`, `0.5`, `2`).
pub fn parse_cpu_millis(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.ceil() as u64);
    }
    text.parse::<f64>().ok().map(|v| (v * 1000.0).ceil() as u64)
}

/// What a pod asks of a node: CPU in millicores, memory and ephemeral storage in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
}

impl Requests {
    fn of(c: &Container) -> Requests {
        let Some(r) = c.resources.as_ref() else {
            return Requests::default();
        };
        // A limit alone is also the request (Kubernetes defaults the request to it).
        let get = |key: &str| {
            r.requests
                .as_ref()
                .and_then(|m| m.get(key))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(key)))
                .map(|q| q.0.as_str())
        };
        Requests {
            cpu_millis: get("cpu").and_then(parse_cpu_millis).unwrap_or(0),
            memory: get("memory").and_then(parse_quantity).unwrap_or(0),
            ephemeral_storage: get("ephemeral-storage")
                .and_then(parse_quantity)
                .unwrap_or(0),
        }
    }

    fn add(self, o: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory: self.memory + o.memory,
            ephemeral_storage: self.ephemeral_storage + o.ephemeral_storage,
        }
    }

    fn max(self, o: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.max(o.cpu_millis),
            memory: self.memory.max(o.memory),
            ephemeral_storage: self.ephemeral_storage.max(o.ephemeral_storage),
        }
    }

    /// A pod's effective requests: the sum of its containers', or the largest of its init
    /// containers' when that is more (they run one at a time, before the others), per
    /// resource.
    pub fn of_pod(spec: &PodSpec) -> Requests {
        let apps = spec
            .containers
            .iter()
            .map(Requests::of)
            .fold(Requests::default(), Requests::add);
        spec.init_containers
            .iter()
            .flatten()
            .map(Requests::of)
            .fold(apps, Requests::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("64Mi"), Some(64 << 20));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3"), Some(1000));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("1.5"), Some(1500));
    }

    #[test]
    fn a_pod_requests_its_containers_sum_or_its_largest_init_container() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3", "memory": "1Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}},
            ],
        }))
        .unwrap();
        assert_eq!(
            Requests::of_pod(&spec),
            Requests {
                cpu_millis: 3000,
                memory: 128 << 20,
                ephemeral_storage: 0
            }
        );
    }
}
