use serde_json::json;

use super::*;
use crate::find;

fn resource(group: &str, plural: &str) -> &'static Resource {
    find(group, "v1", plural).expect("served")
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                    "ports": [{"containerPort": 80}]}]},
            },
        },
    })
}

fn admit_new(r: &Resource, object: Value) -> Result<Admitted, Rejection> {
    admit(r, object, None, FieldValidation::Strict)
}

fn fields(rejection: Rejection) -> Vec<String> {
    match rejection {
        Rejection::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
        other => panic!("expected field errors, got {other:?}"),
    }
}

#[test]
fn a_deployment_gets_kubernetes_defaults() {
    let r = resource("apps", "deployments");
    let out = admit_new(r, deployment()).unwrap().object;
    let spec = &out["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    let c = &pod["containers"][0];
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
}

#[test]
fn pull_policy_follows_the_tag() {
    assert_eq!(pod::default_pull_policy("nginx"), "Always");
    assert_eq!(pod::default_pull_policy("nginx:latest"), "Always");
    assert_eq!(pod::default_pull_policy("nginx:1.27"), "IfNotPresent");
    assert_eq!(
        pod::default_pull_policy("registry:5000/nginx"),
        "Always",
        "a registry port is not a tag"
    );
    assert_eq!(
        pod::default_pull_policy("nginx@sha256:abcd"),
        "IfNotPresent"
    );
}

#[test]
fn a_wrong_type_is_a_decode_error_naming_the_field() {
    let r = resource("apps", "deployments");
    let mut d = deployment();
    d["spec"]["replicas"] = json!("three");
    match admit_new(r, d).unwrap_err() {
        Rejection::Decode(message) => {
            assert!(
                message.starts_with(
                    "Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas: "
                ),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut d = deployment();
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("x");
    match admit_new(r, d).unwrap_err() {
        Rejection::Decode(message) => assert!(
            message.contains("spec.template.spec.containers[0].ports[0].containerPort: "),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_fields_are_refused_when_strict_and_dropped_with_a_warning_otherwise() {
    let r = resource("apps", "deployments");
    let mut d = deployment();
    d["spec"]["replica"] = json!(3);
    d["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = json!("x");
    match admit(r, d.clone(), None, FieldValidation::Strict).unwrap_err() {
        Rejection::Decode(message) => assert_eq!(
            message,
            "strict decoding error: unknown field \"spec.replica\", unknown field \"spec.template.spec.containers[0].imagePolicy\""
        ),
        other => panic!("{other:?}"),
    }
    let warned = admit(r, d.clone(), None, FieldValidation::Warn).unwrap();
    assert_eq!(
        warned.warnings,
        vec![
            "unknown field \"spec.replica\"",
            "unknown field \"spec.template.spec.containers[0].imagePolicy\""
        ]
    );
    assert!(warned.object["spec"].get("replica").is_none());
    let ignored = admit(r, d, None, FieldValidation::Ignore).unwrap();
    assert!(ignored.warnings.is_empty());
}

#[test]
fn template_and_container_errors_carry_their_paths() {
    let r = resource("apps", "deployments");
    let mut d = deployment();
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    d["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "Web_1", "image": "nginx"},
        {"name": "side", "image": "", "ports": [{"containerPort": 70000, "protocol": "XTP"}]},
        {"name": "side", "image": "x"},
    ]);
    d["spec"]["replicas"] = json!(-1);
    let got = fields(admit_new(r, d).unwrap_err());
    assert_eq!(
        got,
        vec![
            "spec.replicas",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].name",
            "spec.template.spec.containers[1].image",
            "spec.template.spec.containers[1].ports[0].containerPort",
            "spec.template.spec.containers[1].ports[0].protocol",
            "spec.template.spec.containers[2].name",
        ]
    );
    let mut d = deployment();
    d["spec"]["selector"] = json!({});
    d["spec"]["template"]["spec"]["containers"] = json!([]);
    assert_eq!(
        fields(admit_new(r, d).unwrap_err()),
        vec!["spec.selector", "spec.template.spec.containers"]
    );
    let mut d = deployment();
    d["metadata"]["name"] = json!("Bad_Name");
    assert_eq!(fields(admit_new(r, d).unwrap_err()), vec!["metadata.name"]);
}

#[test]
fn an_update_may_not_change_a_selector() {
    let r = resource("apps", "deployments");
    let old = admit_new(r, deployment()).unwrap().object;
    let mut new = old.clone();
    new["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
    new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
    let got = fields(admit(r, new, Some(&old), FieldValidation::Strict).unwrap_err());
    assert_eq!(got, vec!["spec.selector"]);
    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(5);
    assert!(admit(r, scaled, Some(&old), FieldValidation::Strict).is_ok());
}

#[test]
fn pods_change_only_images_after_creation() {
    let r = resource("", "pods");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
    let old = admit_new(r, pod).unwrap().object;
    let mut image = old.clone();
    image["spec"]["containers"][0]["image"] = json!("busybox:2");
    assert!(admit(r, image, Some(&old), FieldValidation::Strict).is_ok());
    let mut command = old.clone();
    command["spec"]["containers"][0]["command"] = json!(["sh"]);
    assert_eq!(
        fields(admit(r, command, Some(&old), FieldValidation::Strict).unwrap_err()),
        vec!["spec"]
    );
}

#[test]
fn services_default_target_ports_and_keep_their_cluster_ip() {
    let r = resource("", "services");
    let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let mut old = admit_new(r, svc.clone()).unwrap().object;
    assert_eq!(old["spec"]["type"], "ClusterIP");
    assert_eq!(old["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(old["spec"]["ports"][0]["protocol"], "TCP");
    old["spec"]["clusterIP"] = json!("10.96.0.10");
    let replaced = admit(r, svc, Some(&old), FieldValidation::Strict).unwrap();
    assert_eq!(replaced.object["spec"]["clusterIP"], "10.96.0.10");
    let mut moved = old.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.11");
    assert_eq!(
        fields(admit(r, moved, Some(&old), FieldValidation::Strict).unwrap_err()),
        vec!["spec.clusterIP"]
    );
    let two =
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}, {"port": 443}]}});
    assert_eq!(
        fields(admit_new(r, two).unwrap_err()),
        vec!["spec.ports[0].name", "spec.ports[1].name"]
    );
    let none = json!({"metadata": {"name": "web"}, "spec": {}});
    assert_eq!(fields(admit_new(r, none).unwrap_err()), vec!["spec.ports"]);
}

#[test]
fn secrets_fold_string_data_into_data() {
    let r = resource("", "secrets");
    let s = json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "bee", "a": "A"}});
    let out = admit_new(r, s).unwrap().object;
    assert_eq!(out["data"], json!({"a": "QQ==", "b": "YmVl"}));
    assert_eq!(out["type"], "Opaque");
    assert!(out.get("stringData").is_none());
    let bad = json!({"metadata": {"name": "s"}, "data": {"a": "not base64!"}});
    assert!(matches!(admit_new(r, bad), Err(Rejection::Decode(m)) if m.contains("data.a")));
}

#[test]
fn immutable_config_maps_keep_their_data() {
    let r = resource("", "configmaps");
    let cm = json!({"metadata": {"name": "c"}, "data": {"k": "v"}, "immutable": true});
    let old = admit_new(r, cm).unwrap().object;
    let mut changed = old.clone();
    changed["data"]["k"] = json!("w");
    assert_eq!(
        fields(admit(r, changed, Some(&old), FieldValidation::Strict).unwrap_err()),
        vec!["data"]
    );
    let bad_key = json!({"metadata": {"name": "c"}, "data": {"a/b": "v"}});
    assert_eq!(fields(admit_new(r, bad_key).unwrap_err()), vec!["data"]);
}

#[test]
fn jobs_get_a_selector_from_their_uid_and_need_a_restart_policy() {
    let r = resource("batch", "jobs");
    let job = json!({"metadata": {"name": "pi", "uid": "1234"}, "spec": {"template": {"spec": {
        "containers": [{"name": "pi", "image": "busybox"}], "restartPolicy": "Never"}}}});
    let out = admit_new(r, job.clone()).unwrap().object;
    assert_eq!(
        out["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        "1234"
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"]["job-name"],
        "pi"
    );
    assert_eq!(out["spec"]["backoffLimit"], 6);
    assert_eq!(out["spec"]["completions"], 1);
    let mut always = job;
    always["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    assert_eq!(
        fields(admit_new(r, always).unwrap_err()),
        vec!["spec.template.spec.restartPolicy"]
    );
}

#[test]
fn cron_schedules_are_checked() {
    let r = resource("batch", "cronjobs");
    let cj = |schedule: &str| {
        json!({"metadata": {"name": "c"}, "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "OnFailure"}}}}}})
    };
    assert!(admit_new(r, cj("*/5 * * * *")).is_ok());
    assert!(admit_new(r, cj("@hourly")).is_ok());
    assert_eq!(
        fields(admit_new(r, cj("every minute")).unwrap_err()),
        vec!["spec.schedule"]
    );
}

#[test]
fn kind_and_api_version_must_match_the_resource() {
    let r = resource("", "configmaps");
    let cm = json!({"apiVersion": "v2", "kind": "Secret", "metadata": {"name": "c"}});
    assert_eq!(
        fields(admit_new(r, cm).unwrap_err()),
        vec!["kind", "apiVersion"]
    );
    let bare = admit_new(r, json!({"metadata": {"name": "c"}}))
        .unwrap()
        .object;
    assert_eq!(
        (bare["kind"].as_str(), bare["apiVersion"].as_str()),
        (Some("ConfigMap"), Some("v1"))
    );
}

#[test]
fn schemas_name_their_kinds_and_resolve_their_references() {
    let apps: Vec<&Resource> = crate::RESOURCES
        .iter()
        .filter(|r| r.group == "apps")
        .collect();
    let schemas = openapi_schemas(&apps);
    let d = &schemas["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        d["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
    );
    assert!(d["properties"]["spec"]
        .to_string()
        .contains("#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"));
    // Every reference points at a schema in the same document.
    let text = Value::Object(schemas.clone()).to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }
}

#[test]
fn volume_types_a_node_cannot_mount_are_refused() {
    let r = resource("", "pods");
    let pod = |volumes: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": volumes}})
    };
    // No source: an empty directory, as Kubernetes defaults it.
    let out = admit_new(r, pod(json!([{"name": "x"}]))).unwrap().object;
    assert_eq!(out["spec"]["volumes"][0]["emptyDir"], json!({}));
    let err = admit_new(
        r,
        pod(json!([{"name": "x", "nfs": {"server": "a", "path": "/"}}])),
    )
    .unwrap_err();
    let Rejection::Invalid(errors) = err else {
        panic!("expected field errors")
    };
    assert_eq!(errors[0].field, "spec.volumes[0]");
    assert!(
        errors[0].message.contains("\"nfs\""),
        "{}",
        errors[0].message
    );
    assert!(
        errors[0].message.contains("\"configMap\""),
        "{}",
        errors[0].message
    );
    let two = pod(json!([{"name": "x", "emptyDir": {}, "hostPath": {"path": "/tmp"}}]));
    assert_eq!(
        fields(admit_new(r, two).unwrap_err()),
        ["spec.volumes[0].hostPath"]
    );
}

#[test]
fn pods_tolerate_a_down_node_for_the_default_time_unless_they_say_otherwise() {
    let pod = |tolerations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "tolerations": tolerations}})
    };
    let admitted = admit_new(resource("", "pods"), pod(json!([])))
        .unwrap()
        .object;
    assert_eq!(
        admitted["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1},
        ])
    );
    // A pod that tolerates being unreachable forever keeps that; templates get nothing.
    let forever = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]);
    let admitted = admit_new(resource("", "pods"), pod(forever))
        .unwrap()
        .object;
    let list = admitted["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0]["tolerationSeconds"].is_null());
    let d = admit_new(resource("apps", "deployments"), deployment())
        .unwrap()
        .object;
    assert!(d["spec"]["template"]["spec"]["tolerations"].is_null());
}
