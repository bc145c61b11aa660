//! Issue 4, must-show 1–3 with the real kubectl against a 3-node cluster: a multi-document
//! manifest applied, read in every output format, changed by every verb, applied again after
//! editing (the strategic merge patch removes a container and an env entry), explained, and
//! deleted with the objects it owns; an invalid manifest refused with its field error and
//! nothing stored; and every node answering the same.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use flotilla_tests::{eventually, Cluster, Kubectl, Options};
use serde_json::Value;

const APP: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  namespace: shop
data:
  mode: production
---
apiVersion: v1
kind: Secret
metadata:
  name: shop-secret
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: shop
  labels:
    app: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: production
        - name: DEBUG
          value: "0"
      - name: sidecar
        image: busybox:1.36
        command: ["sleep", "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: shop
  namespace: shop
spec:
  selector:
    app: shop
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

/// The manifest after an edit: a new image, the sidecar and the DEBUG variable removed.
fn edited() -> String {
    APP.replace(
        "        - name: DEBUG\n          value: \"0\"\n      - name: sidecar\n        image: busybox:1.36\n        command: [\"sleep\", \"3600\"]\n",
        "",
    )
    .replace("busybox:1.36", "busybox:1.37")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_is_applied_read_changed_reapplied_and_deleted_through_every_node() {
    let cluster = Cluster::start(3, Options::default().in_lab())
        .await
        .unwrap();
    let leader = cluster.leader().await.unwrap();
    let lab = cluster.lab.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: dir.path().join("cache"),
    };
    tokio::task::spawn_blocking(move || {
        let server = |i: usize| format!("https://{}:6443", lab.addr(i));
        let followers: Vec<String> = (0..3).filter(|i| *i != leader).map(server).collect();
        let all: Vec<String> = (0..3).map(server).collect();
        let (f1, f2, l) = (&followers[0], &followers[1], &server(leader));

        // Apply through a follower; a linearizable read through the other sees it at once.
        let app = write(dir.path(), "app.yaml", APP);
        let out = k.ok(f1, &["apply", "-f", &app]);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "namespace/shop created",
                "configmap/shop-config created",
                "secret/shop-secret created",
                "deployment.apps/shop created",
                "service/shop created"
            ],
            "{out}"
        );
        let d = json(&k.ok(f2, &["get", "deploy", "shop", "-n", "shop", "-o", "json"]));
        assert_eq!(d["spec"]["replicas"], 2);
        // Kubernetes' defaults were filled in.
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        let secret = k.ok(l, &["get", "secret", "shop-secret", "-n", "shop", "-o", "jsonpath={.data.password}"]);
        assert_eq!(secret, "aHVudGVyMg==", "stringData is stored as data");

        // Every node gives the same objects.
        let lists: Vec<Value> = all
            .iter()
            .map(|s| json(&k.ok(s, &["get", "deploy,svc,cm,secret", "-n", "shop", "-o", "json"])))
            .collect();
        assert_eq!(lists[0]["items"].as_array().map(Vec::len), Some(4), "{}", lists[0]);
        assert!(lists.iter().all(|l| l["items"] == lists[0]["items"]), "nodes disagree");

        // Tables, wide tables, YAML, JSONPath, describe.
        let table = k.ok(f2, &["get", "deploy", "-n", "shop"]);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{table}");
        assert!(table.lines().nth(1).unwrap().starts_with("shop "), "{table}");
        let wide = k.ok(l, &["get", "deploy", "shop", "-n", "shop", "-o", "wide"]);
        let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(&header[5..], ["CONTAINERS", "IMAGES", "SELECTOR"], "{wide}");
        let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&row[5..], ["web,sidecar", "busybox:1.36,busybox:1.36", "app=shop"], "{wide}");
        let svc = k.ok(f1, &["get", "svc", "-n", "shop", "-o", "wide"]);
        assert!(svc.lines().nth(1).is_some_and(|r| r.contains("80/TCP") && r.contains("app=shop")), "{svc}");
        let yaml = k.ok(f1, &["get", "deploy", "shop", "-n", "shop", "-o", "yaml"]);
        assert!(yaml.contains("kind: Deployment") && yaml.contains("  replicas: 2\n"), "{yaml}");
        let names = k.ok(f2, &["get", "deploy", "shop", "-n", "shop", "-o", "jsonpath={.spec.template.spec.containers[*].name}"]);
        assert_eq!(names, "web sidecar");
        let described = k.ok(l, &["describe", "deploy", "shop", "-n", "shop"]);
        for expected in ["Name:                   shop", "Namespace:              shop", "2 desired", "StrategyType:           RollingUpdate", "Image:      busybox:1.36"] {
            assert!(described.contains(expected), "{expected:?} not in:\n{described}");
        }

        // label, annotate, scale, and the three patch types, each read back through another node.
        k.ok(f1, &["label", "deploy", "shop", "-n", "shop", "tier=front"]);
        k.ok(f2, &["annotate", "deploy", "shop", "-n", "shop", "team=core"]);
        assert_eq!(k.ok(l, &["get", "deploy", "-n", "shop", "-l", "tier=front", "-o", "name"]).trim(), "deployment.apps/shop");
        assert_eq!(k.ok(f1, &["get", "deploy", "shop", "-n", "shop", "-o", "jsonpath={.metadata.annotations.team}"]), "core");
        assert_eq!(k.ok(l, &["scale", "deploy", "shop", "-n", "shop", "--replicas=4"]).trim(), "deployment.apps/shop scaled");
        assert_eq!(k.ok(f2, &["get", "deploy", "shop", "-n", "shop", "-o", "jsonpath={.spec.replicas}"]), "4");
        k.ok(f1, &["patch", "deploy", "shop", "-n", "shop", "--type", "merge", "-p", r#"{"spec":{"minReadySeconds":5}}"#]);
        k.ok(f2, &["patch", "deploy", "shop", "-n", "shop", "--type", "json", "-p", r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]"#]);
        k.ok(l, &["patch", "deploy", "shop", "-n", "shop", "--type", "strategic", "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"PATCHED","value":"1"}]}]}}}}"#]);
        let d = json(&k.ok(f1, &["get", "deploy", "shop", "-n", "shop", "-o", "json"]));
        assert_eq!((d["spec"]["minReadySeconds"].as_i64(), d["spec"]["revisionHistoryLimit"].as_i64()), (Some(5), Some(3)));
        let env: BTreeSet<&str> = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(env, BTreeSet::from(["MODE", "DEBUG", "PATCHED"]), "the strategic patch merged by name");
        let generation = d["metadata"]["generation"].as_i64().unwrap();

        // Apply the edited file: the strategic merge patch replaces the image and removes the
        // sidecar and DEBUG (in the last applied file, not in the new one) but keeps PATCHED
        // (never applied from a file).
        let app2 = write(dir.path(), "app.yaml", &edited());
        let out = k.ok(f2, &["apply", "-f", &app2]);
        assert!(out.contains("deployment.apps/shop configured"), "{out}");
        let d = json(&k.ok(l, &["get", "deploy", "shop", "-n", "shop", "-o", "json"]));
        let containers = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "the sidecar is gone: {containers:?}");
        assert_eq!(containers[0]["image"], "busybox:1.37");
        let env: BTreeSet<&str> = containers[0]["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(env, BTreeSet::from(["MODE", "PATCHED"]));
        assert_eq!(d["spec"]["replicas"], 2, "the file's replicas win again");
        assert!(d["metadata"]["generation"].as_i64().unwrap() > generation, "the spec changed");
        assert_eq!(d["metadata"]["labels"]["tier"], "front", "labels set outside the file stay");
        // Applying the same file again changes nothing. (kubectl still sends a patch, with only
        // `$setElementOrder` for the env list it shares with PATCHED, so it says "configured":
        // the spec and generation stay. The resourceVersion may move: the deployment
        // controller writes the status meanwhile.)
        let (generation, spec) = (d["metadata"]["generation"].clone(), d["spec"].clone());
        k.ok(f1, &["apply", "-f", &app2]);
        let d = json(&k.ok(f2, &["get", "deploy", "shop", "-n", "shop", "-o", "json"]));
        assert_eq!(d["metadata"]["generation"], generation, "a no-op apply changed the spec");
        assert_eq!(d["spec"], spec, "a no-op apply changed the spec");
        let env: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(env.len(), 2, "{env:?}");
        let cm = k.ok(l, &["apply", "-f", &app2]);
        assert!(cm.contains("configmap/shop-config unchanged") && cm.contains("service/shop unchanged"), "{cm}");

        // explain reads the OpenAPI schemas.
        let explained = k.ok(l, &["explain", "deployment.spec"]);
        assert!(explained.contains("FIELD: spec <DeploymentSpec>"), "{explained}");
        assert!(explained.contains("replicas\t<integer>"), "{explained}");
        let explained = k.ok(f1, &["explain", "pods.spec.containers.ports"]);
        assert!(explained.contains("containerPort\t<integer> -required-"), "{explained}");

        // Invalid manifests: kubectl prints the field error and nothing is stored.
        let unknown = write(dir.path(), "unknown.yaml", &APP.split("---\n").nth(3).unwrap().replace("name: shop\n  namespace: shop", "name: typo\n  namespace: shop").replace("  replicas: 2", "  replica: 2"));
        let (ok, _, err) = k.run(f1, &["apply", "-f", &unknown]);
        assert!(!ok);
        assert!(err.contains(r#"strict decoding error: unknown field "spec.replica""#), "{err}");
        let mismatch = write(dir.path(), "mismatch.yaml", &APP.split("---\n").nth(3).unwrap().replace("name: shop\n  namespace: shop", "name: bad\n  namespace: shop").replace("      labels:\n        app: shop", "      labels:\n        app: other"));
        let (ok, _, err) = k.run(f2, &["create", "-f", &mismatch]);
        assert!(!ok);
        assert!(err.contains("spec.template.metadata.labels: Invalid value") && err.contains("`selector` does not match template `labels`"), "{err}");
        // kubectl names the kind and the object, from the Status details, as with Kubernetes.
        assert!(err.contains(r#"The Deployment "bad" is invalid"#), "{err}");
        for name in ["typo", "bad"] {
            let (ok, _, err) = k.run(l, &["get", "deploy", name, "-n", "shop"]);
            assert!(!ok && err.contains("NotFound"), "{name} was stored: {err}");
        }

        // An object owned by a deployment goes with it (the garbage collector).
        let web = write(dir.path(), "web.yaml", &APP.split("---\n").nth(3).unwrap().replace("namespace: shop", "namespace: default"));
        k.ok(f1, &["apply", "-f", &web]);
        let uid = k.ok(f2, &["get", "deploy", "shop", "-o", "jsonpath={.metadata.uid}"]);
        let owned = write(dir.path(), "owned.yaml", &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences:\n  - apiVersion: apps/v1\n    kind: Deployment\n    name: shop\n    uid: {uid}\n"
        ));
        k.ok(l, &["create", "-f", &owned]);
        k.ok(f2, &["create", "configmap", "unowned", "--from-literal=a=1"]);
        assert_eq!(k.ok(f1, &["delete", "-f", &web]).trim(), "deployment.apps \"shop\" deleted");
        let gone = eventually(Duration::from_secs(20), || {
            !k.run(l, &["get", "cm", "owned"]).0
        });
        assert!(gone, "the owned configmap outlived its owner");
        assert!(k.run(f2, &["get", "cm", "unowned"]).0, "an unowned configmap was collected");

        // delete -f the whole manifest: the namespace terminates and takes its content along.
        let out = k.ok(l, &["delete", "-f", &app2]);
        assert!(out.contains("namespace \"shop\" deleted"), "{out}");
        let empty = eventually(Duration::from_secs(20), || {
            let (ok, _, err) = k.run(f1, &["get", "ns", "shop"]);
            !ok && err.contains("NotFound")
        });
        assert!(empty, "namespace shop never went away");
        for s in &all {
            let left = k.ok(s, &["get", "deploy,svc,cm,secret", "-n", "shop", "-o", "name"]);
            assert!(left.trim().is_empty(), "left in shop via {s}: {left}");
        }

        // Server-side apply creates what is missing, then merges.
        let ssa = write(dir.path(), "ssa.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"1\"\n");
        assert_eq!(k.ok(f1, &["apply", "--server-side", "-f", &ssa]).trim(), "configmap/ssa serverside-applied");
        assert_eq!(k.ok(f2, &["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "1");

        // drain: cordon, then evict the node's pod (deleted after its 1 s grace period).
        let pod = write(dir.path(), "pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pinned\nspec:\n  nodeName: n2\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1.36\n");
        k.ok(l, &["create", "-f", &pod]);
        let drained = k.ok(f1, &["drain", "n2", "--force", "--timeout=60s"]);
        assert!(drained.contains("node/n2 cordoned") && drained.contains("pod/pinned evicted") && drained.contains("node/n2 drained"), "{drained}");
        let (ok, _, err) = k.run(f2, &["get", "pod", "pinned"]);
        assert!(!ok && err.contains("NotFound"), "{err}");
        assert_eq!(k.ok(l, &["get", "node", "n2", "-o", "jsonpath={.spec.unschedulable}"]), "true");
    })
    .await
    .unwrap();
}
