//! The columns `kubectl get` shows for each resource, computed on the server (Table output):
//! the same headings and cell rules as Kubernetes' printers for the common resources, NAME
//! and AGE for the rest. Columns with priority 1 appear only with `-o wide`.

use flotilla_api::Resource;
use serde_json::{json, Value};

/// (heading, type, priority).
type Column = (&'static str, &'static str, u8);

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn node_status(o: &Value) -> String {
    let ready = o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| s(&c["status"]));
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        // kubectl's printer: any other status of the condition (False or Unknown).
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(o: &Value) -> String {
    let roles: Vec<&str> = o["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    or_none(roles.join(","))
}

fn pod_ready(o: &Value) -> String {
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = o["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| c["ready"] == true).count());
    format!("{ready}/{total}")
}

/// A terminated container's reason, or its signal or exit code when it has none.
fn terminated_reason(t: &Value) -> String {
    match t["reason"].as_str().filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None if n(&t["signal"]) != 0 => format!("Signal:{}", n(&t["signal"])),
        None => format!("ExitCode:{}", n(&t["exitCode"])),
    }
}

/// The STATUS column as kubectl shows it: the first init container not done (`Init:0/1`,
/// `Init:CrashLoopBackOff`), else the last container's waiting or terminated reason, else the
/// phase; `Terminating` once deleted.
fn pod_status(o: &Value) -> String {
    let status = &o["status"];
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let inits = status["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total_inits = o["spec"]["initContainers"].as_array().map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let state = &c["state"];
        if state["terminated"].is_object() && n(&state["terminated"]["exitCode"]) == 0 {
            continue;
        }
        initializing = true;
        let waiting = state["waiting"]["reason"].as_str().unwrap_or("");
        reason = if state["terminated"].is_object() {
            format!("Init:{}", terminated_reason(&state["terminated"]))
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{total_inits}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        let containers = status["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in containers.iter().rev() {
            let state = &c["state"];
            if let Some(w) = state["waiting"]["reason"]
                .as_str()
                .filter(|w| !w.is_empty())
            {
                reason = w.to_string();
            } else if state["terminated"].is_object() {
                reason = terminated_reason(&state["terminated"]);
            } else if state["running"].is_object() && c["ready"] == true {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if o["metadata"]["deletionTimestamp"].is_string() {
        return if status["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn restarts(o: &Value) -> i64 {
    o["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |c| c.iter().map(|c| n(&c["restartCount"])).sum())
}

fn service_ports(o: &Value) -> String {
    let ports: Vec<String> = o["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", n(&p["port"])),
                        None => format!("{}/{proto}", n(&p["port"])),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(ports.join(","))
}

fn selector_text(selector: &Value) -> String {
    let pairs: Vec<String> = selector
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    or_none(pairs.join(","))
}

fn containers(o: &Value, field: &str) -> String {
    let list: Vec<String> = o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().map(|c| s(&c[field])).collect())
        .unwrap_or_default();
    list.join(",")
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// The age of a timestamp field, or `<none>`.
fn age_of_field(v: &Value) -> String {
    v.as_str()
        .and_then(crate::objects::age_text)
        .unwrap_or_else(|| "<none>".into())
}

fn job_status(o: &Value) -> String {
    let holds = |kind: &str| {
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
    };
    if holds("Complete") {
        "Complete".into()
    } else if holds("Failed") {
        "Failed".into()
    } else if o["spec"]["suspend"] == true {
        "Suspended".into()
    } else {
        "Running".into()
    }
}

fn job_completions(o: &Value) -> String {
    let done = n(&o["status"]["succeeded"]);
    match o["spec"]["completions"].as_i64() {
        Some(c) => format!("{done}/{c}"),
        None => format!(
            "{done}/1 of {}",
            o["spec"]["parallelism"].as_i64().unwrap_or(1)
        ),
    }
}

/// From `startTime` to `completionTime` (or now), as kubectl prints durations.
fn job_duration(o: &Value) -> String {
    let st = &o["status"];
    let Some(start) = st["startTime"]
        .as_str()
        .and_then(crate::objects::unix_seconds)
    else {
        return String::new();
    };
    let end = st["completionTime"]
        .as_str()
        .and_then(crate::objects::unix_seconds)
        .unwrap_or_else(crate::objects::now_unix);
    crate::objects::human_age(end - start)
}

fn template_containers(spec: &Value, field: &str) -> String {
    let list: Vec<String> = spec["containers"]
        .as_array()
        .map(|c| c.iter().map(|c| s(&c[field])).collect())
        .unwrap_or_default();
    list.join(",")
}

fn endpoints(o: &Value) -> String {
    let mut all = Vec::new();
    for subset in o["subsets"].as_array().into_iter().flatten() {
        for a in subset["addresses"].as_array().into_iter().flatten() {
            let ports = subset["ports"].as_array().cloned().unwrap_or_default();
            if ports.is_empty() {
                all.push(s(&a["ip"]));
            }
            for p in ports {
                all.push(format!("{}:{}", s(&a["ip"]), n(&p["port"])));
            }
        }
    }
    or_none(first_three(all))
}

/// The first three of `items`, then how many more, as kubectl's printers shorten lists.
fn first_three(mut all: Vec<String>) -> String {
    let more = all.len().saturating_sub(3);
    all.truncate(3);
    let mut text = all.join(",");
    if more > 0 {
        text.push_str(&format!(" + {more} more..."));
    }
    text
}

fn slice_ports(o: &Value) -> String {
    let ports: Vec<String> = o["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["port"].as_i64() {
            Some(n) => n.to_string(),
            None => "<unset>".into(),
        })
        .collect();
    or_none(ports.join(","))
}

fn slice_endpoints(o: &Value) -> String {
    let all = o["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .map(|a| s(&a))
        .collect();
    or_none(first_three(all))
}

/// Whether NAME leads the row (events put it last, in their wide columns).
pub fn leads_with_name(r: &Resource) -> bool {
    r.plural != "events"
}

/// The columns of `r`, after NAME (the last is usually AGE, which the caller fills).
pub fn columns(r: &Resource) -> Vec<Column> {
    match r.plural {
        "nodes" => vec![
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("Pod-CIDR", "string", 1),
        ],
        "namespaces" => vec![("Status", "string", 0), ("Age", "string", 0)],
        "configmaps" => vec![("Data", "integer", 0), ("Age", "string", 0)],
        "secrets" => vec![
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        "pods" => vec![
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "integer", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        "services" => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        "deployments" => vec![
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "replicasets" => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "daemonsets" => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "jobs" => vec![
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "priorityclasses" => vec![
            ("Value", "integer", 0),
            ("Global-Default", "boolean", 0),
            ("Age", "string", 0),
            ("PreemptionPolicy", "string", 0),
        ],
        "poddisruptionbudgets" => vec![
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        "cronjobs" => vec![
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "events" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "integer", 1),
            ("Name", "string", 1),
        ],
        "endpoints" => vec![("Endpoints", "string", 0), ("Age", "string", 0)],
        "endpointslices" => vec![
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        "serviceaccounts" => vec![("Secrets", "integer", 0), ("Age", "string", 0)],
        _ => vec![("Age", "string", 0)],
    }
}

/// The cells of `o` for [`columns`], `age` standing for the AGE cell.
pub fn cells(r: &Resource, o: &Value, age: Value) -> Vec<Value> {
    let st = &o["status"];
    let sp = &o["spec"];
    match r.plural {
        "nodes" => {
            let ip = st["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .map(|a| s(&a["address"]))
                .unwrap_or_default();
            vec![
                json!(node_status(o)),
                json!(node_roles(o)),
                age,
                json!(s(&st["nodeInfo"]["kubeletVersion"])),
                json!(or_none(ip)),
                json!(or_none(s(&sp["podCIDR"]))),
            ]
        }
        "namespaces" => vec![json!(s(&st["phase"])), age],
        "configmaps" => vec![json!(count(&o["data"]) + count(&o["binaryData"])), age],
        "secrets" => vec![json!(s(&o["type"])), json!(count(&o["data"])), age],
        "pods" => vec![
            json!(pod_ready(o)),
            json!(pod_status(o)),
            json!(restarts(o)),
            age,
            json!(or_none(s(&st["podIP"]))),
            json!(or_none(s(&sp["nodeName"]))),
        ],
        "services" => {
            let kind = sp["type"].as_str().unwrap_or("ClusterIP").to_string();
            vec![
                json!(kind),
                json!(or_none(s(&sp["clusterIP"]))),
                json!("<none>"),
                json!(service_ports(o)),
                age,
                json!(selector_text(&sp["selector"])),
            ]
        }
        "deployments" => vec![
            json!(format!(
                "{}/{}",
                n(&st["readyReplicas"]),
                n(&sp["replicas"])
            )),
            json!(n(&st["updatedReplicas"])),
            json!(n(&st["availableReplicas"])),
            age,
            json!(containers(o, "name")),
            json!(containers(o, "image")),
            json!(selector_text(&sp["selector"]["matchLabels"])),
        ],
        "replicasets" => vec![
            json!(n(&sp["replicas"])),
            json!(n(&st["replicas"])),
            json!(n(&st["readyReplicas"])),
            age,
            json!(containers(o, "name")),
            json!(containers(o, "image")),
        ],
        "daemonsets" => {
            let pod = &sp["template"]["spec"];
            vec![
                json!(n(&st["desiredNumberScheduled"])),
                json!(n(&st["currentNumberScheduled"])),
                json!(n(&st["numberReady"])),
                json!(n(&st["updatedNumberScheduled"])),
                json!(n(&st["numberAvailable"])),
                json!(selector_text(&pod["nodeSelector"])),
                age,
                json!(template_containers(pod, "name")),
                json!(template_containers(pod, "image")),
                json!(selector_text(&sp["selector"]["matchLabels"])),
            ]
        }
        "jobs" => {
            let pod = &sp["template"]["spec"];
            vec![
                json!(job_status(o)),
                json!(job_completions(o)),
                json!(job_duration(o)),
                age,
                json!(template_containers(pod, "name")),
                json!(template_containers(pod, "image")),
                json!(selector_text(&sp["selector"]["matchLabels"])),
            ]
        }
        "priorityclasses" => vec![
            json!(n(&o["value"])),
            json!(o["globalDefault"] == true),
            age,
            json!(s(&o["preemptionPolicy"])),
        ],
        "poddisruptionbudgets" => {
            let shown = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            vec![
                json!(shown(&sp["minAvailable"])),
                json!(shown(&sp["maxUnavailable"])),
                json!(n(&st["disruptionsAllowed"])),
                age,
            ]
        }
        "cronjobs" => {
            let job = &sp["jobTemplate"]["spec"];
            let pod = &job["template"]["spec"];
            vec![
                json!(s(&sp["schedule"])),
                json!(or_none(s(&sp["timeZone"]))),
                json!(sp["suspend"] == true),
                json!(len(&st["active"])),
                json!(age_of_field(&st["lastScheduleTime"])),
                age,
                json!(template_containers(pod, "name")),
                json!(template_containers(pod, "image")),
                json!(selector_text(&job["selector"]["matchLabels"])),
            ]
        }
        "events" => {
            let last = if o["lastTimestamp"].is_string() {
                &o["lastTimestamp"]
            } else if o["eventTime"].is_string() {
                &o["eventTime"]
            } else {
                &o["metadata"]["creationTimestamp"]
            };
            let first = if o["firstTimestamp"].is_string() {
                &o["firstTimestamp"]
            } else {
                last
            };
            let involved = &o["involvedObject"];
            let source = [s(&o["source"]["component"]), s(&o["source"]["host"])]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                json!(age_of_field(last)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&involved["kind"]).to_lowercase(),
                    s(&involved["name"])
                )),
                json!(s(&involved["fieldPath"])),
                json!(source),
                json!(s(&o["message"])),
                json!(age_of_field(first)),
                json!(o["count"].as_i64().unwrap_or(1)),
                o["metadata"]["name"].clone(),
            ]
        }
        "endpoints" => vec![json!(endpoints(o)), age],
        "endpointslices" => vec![
            json!(s(&o["addressType"])),
            json!(slice_ports(o)),
            json!(slice_endpoints(o)),
            age,
        ],
        "serviceaccounts" => vec![json!(len(&o["secrets"])), age],
        _ => vec![age],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(plural: &str) -> &'static Resource {
        flotilla_api::RESOURCES
            .iter()
            .find(|r| r.plural == plural)
            .unwrap()
    }

    #[test]
    fn every_row_has_as_many_cells_as_columns() {
        for r in flotilla_api::RESOURCES {
            assert_eq!(
                columns(r).len(),
                cells(r, &json!({}), json!("1s")).len(),
                "{}",
                r.plural
            );
        }
    }

    #[test]
    fn cells_follow_kubernetes_printers() {
        let node = json!({
            "metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"podCIDR": "10.244.1.0/24", "unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]},
        });
        let c = cells(resource("nodes"), &node, json!("5m"));
        assert_eq!(
            c,
            vec![
                json!("Ready,SchedulingDisabled"),
                json!("control-plane"),
                json!("5m"),
                json!(""),
                json!("10.0.0.2"),
                json!("10.244.1.0/24")
            ]
        );

        let pod = json!({
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]},
        });
        let c = cells(resource("pods"), &pod, json!("1h"));
        assert_eq!(c[..3], [json!("1/2"), json!("CrashLoopBackOff"), json!(3)]);

        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9", "selector": {"app": "web"},
                                  "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}});
        let c = cells(resource("services"), &svc, json!("2d"));
        assert_eq!(c[3], json!("80:30080/TCP,53/UDP"));
        assert_eq!(c[5], json!("app=web"));

        let job = json!({"spec": {"completions": 3, "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
            "status": {"succeeded": 3, "startTime": "2026-12-01T00:00:00Z", "completionTime": "2026-12-01T00:01:05Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let c = cells(resource("jobs"), &job, json!("2m"));
        assert_eq!(c[..3], [json!("Complete"), json!("3/3"), json!("65s")]);
        let ev = json!({"type": "Warning", "reason": "BackOff", "message": "restarting", "count": 4,
            "involvedObject": {"kind": "Pod", "name": "web-1"}, "metadata": {"name": "web-1.abc"}});
        let c = cells(resource("events"), &ev, json!("1s"));
        assert_eq!(
            c[1..4],
            [json!("Warning"), json!("BackOff"), json!("pod/web-1")]
        );
        assert_eq!(c[8..], [json!(4), json!("web-1.abc")]);
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            cells(resource("endpoints"), &ep, json!("1s"))[0],
            json!("10.0.0.1:80,10.0.0.1:443,10.0.0.2:80 + 1 more...")
        );
        let slice = json!({"addressType": "IPv4", "ports": [{"port": 80}, {"name": "x"}],
            "endpoints": [{"addresses": ["10.244.0.5"]}, {"addresses": ["10.244.1.5"]}]});
        assert_eq!(
            cells(resource("endpointslices"), &slice, json!("1s")),
            [
                json!("IPv4"),
                json!("80,<unset>"),
                json!("10.244.0.5,10.244.1.5"),
                json!("1s")
            ]
        );
        let cm = json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}});
        assert_eq!(cells(resource("configmaps"), &cm, json!("3s"))[0], json!(3));
    }

    #[test]
    fn the_pod_status_column_follows_kubectl() {
        let status = |v: Value| pod_status(&v);
        let init = |state: Value| {
            json!({"spec": {"initContainers": [{"name": "i"}, {"name": "j"}]},
                   "status": {"phase": "Pending", "initContainerStatuses": [
                       {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                       {"state": state}]}})
        };
        assert_eq!(status(init(json!({"running": {}}))), "Init:1/2");
        assert_eq!(
            status(init(json!({"waiting": {"reason": "CrashLoopBackOff"}}))),
            "Init:CrashLoopBackOff"
        );
        assert_eq!(
            status(init(
                json!({"terminated": {"exitCode": 2, "reason": "Error"}})
            )),
            "Init:Error"
        );
        let pod =
            |phase: &str, c: Value| json!({"status": {"phase": phase, "containerStatuses": c}});
        assert_eq!(
            status(pod(
                "Failed",
                json!([{"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
            )),
            "OOMKilled"
        );
        assert_eq!(
            status(pod(
                "Running",
                json!([{"ready": true, "state": {"running": {}}},
                                         {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])
            )),
            "Running"
        );
        assert_eq!(
            status(pod(
                "Failed",
                json!([{"state": {"terminated": {"exitCode": 3}}}])
            )),
            "ExitCode:3"
        );
        let mut deleting = pod("Running", json!([]));
        deleting["metadata"] = json!({"deletionTimestamp": "2026-01-01T00:00:00Z"});
        assert_eq!(status(deleting), "Terminating");
    }
}
